"""Adaptation: new heads for a data set's label space (linear probe or fine-tuning) and domain teachers."""
