"""vlp: modular vision-language pretraining on Lightning."""

__version__ = "0.1.0"


def load(path, device=None):
    """``model, preprocess, tokenizer = vlp.load(PATH)``: see :func:`vlp.api.load` (imported on first use: ``import vlp`` stays light)."""
    from vlp.api import load as _load

    return _load(path, device)
