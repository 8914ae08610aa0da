"""cirkit: training-free composed image retrieval from pretrained models."""

__version__ = "0.1.0"
