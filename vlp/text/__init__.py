"""Tokenizers: loaded from a local directory, or built from the training captions."""
