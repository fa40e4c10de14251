"""Image and text towers. Every module here registers its towers by name."""

from vlp.encoders.features import Features

__all__ = ["Features"]
