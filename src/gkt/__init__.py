"""gkt — general knowledge transfer between any pretrained classifiers."""

__version__ = "0.1.0"
