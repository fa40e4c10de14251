"""vlp: modular vision-language pretraining on Lightning."""

__version__ = "0.1.0"
