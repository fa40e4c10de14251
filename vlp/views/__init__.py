"""Named views of a batch (a patch-dropped image, masked text), declared in YAML under ``model.views``."""
