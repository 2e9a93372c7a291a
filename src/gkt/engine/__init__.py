"""Engine: the training loop, evaluation, the prediction store, cached model outputs, DDP, metrics and
experiment trackers. Knows models and data, not transfer methods."""
