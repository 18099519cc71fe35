"""ledger: an experiment runner for Kaggle-style image classification."""

__version__ = "0.1.0"
