"""Helpers that write tiny generated images and annotation files in real dataset layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 16)) -> np.ndarray:
    """A random RGB image (PNG unless the suffix says otherwise); returns its pixels (H, W, 3)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def write_corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")


def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in tokenizer: caption length as the only token."""
    ids = torch.tensor([[len(t)] for t in texts])
    return ids, torch.ones_like(ids)


def drain(datamodule, loader) -> tuple[list[str], list]:
    """Every sample key of every batch, counting bad samples as Lightning's hook would."""
    keys, batches = [], []
    for batch in loader:
        datamodule.record_quality(batch)
        keys += batch.extras["key"]
        batches.append(batch)
    return keys, batches


def test_helpers_write_readable_images(tmp_path: Path) -> None:
    pixels = write_image(tmp_path / "a.png", 0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), pixels)
