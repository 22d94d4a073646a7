"""mtsearch: hyperparameter search and ablations for multi-task video models."""

__version__ = "0.1.0"
