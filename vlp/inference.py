"""``vlp embed`` and ``vlp classify``: a trained model applied to image files, shards or texts.

Embeddings are computed batch by batch on the available device (CUDA when present) with
a progress bar, and written as safetensors (tensor ``embeddings``) or numpy ``.npy``; the
name of each row (image path, shard key or line number) goes to ``<out>.names.txt``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from vlp.api import load
from vlp.data.image_folder import IMAGE_EXTENSIONS
from vlp.registry import ConfigError

SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


class ImageFiles(Dataset):
    """(path, preprocessed image) for every image under a directory, in sorted order."""

    def __init__(self, root: str, preprocess) -> None:
        self.files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise ConfigError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}); point --images at an image directory.")
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        with Image.open(self.files[index]) as image:
            return str(self.files[index]), self.preprocess(image)


class ShardImages(IterableDataset):
    """(key, preprocessed image) for every image sample of WebDataset shards, read in order by one process."""

    def __init__(self, pattern: str, preprocess) -> None:
        from vlp.data.web_shards import shard_urls

        self.urls = shard_urls(pattern)
        self.preprocess = preprocess

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        import webdataset as wds

        for sample in wds.WebDataset(self.urls, shardshuffle=False, empty_check=False):
            key = next((k for k in SHARD_IMAGE_KEYS if k in sample), None)
            if key is not None:
                with Image.open(io.BytesIO(sample[key])) as image:
                    yield sample["__key__"], self.preprocess(image)


def write_embeddings(embeddings: torch.Tensor, names: list[str], out: str) -> Path:
    """``out`` as ``.safetensors`` or ``.npy`` (by its suffix), names one per line beside it."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({"embeddings": embeddings.contiguous()}, str(path))
    elif path.suffix == ".npy":
        np.save(path, embeddings.numpy())
    else:
        raise ConfigError(f"--out {out} must end in .safetensors or .npy; pick one of the two formats.")
    path.with_name(path.name + ".names.txt").write_text("".join(f"{name}\n" for name in names))
    return path


@torch.no_grad()
def embed(checkpoint: str, out: str, images: str | None = None, texts: str | None = None, batch_size: int = 64, num_workers: int = 0) -> Path:
    """Embed every image (directory or shards) or every line of a text file; returns the written file."""
    if (images is None) == (texts is None):
        raise ConfigError("vlp embed needs exactly one of --images or --texts.")
    model, preprocess, _ = load(checkpoint)
    device = next(model.parameters()).device
    names, chunks = [], []
    if texts is not None:
        lines = [line for line in Path(texts).read_text(encoding="utf-8").splitlines() if line.strip()]
        for start in tqdm(range(0, len(lines), batch_size), desc="embedding texts", unit="batch"):
            chunks.append(model.encode_text(lines[start : start + batch_size]).float().cpu())
        names = [str(i) for i in range(len(lines))]
    else:
        if Path(images).is_dir():
            loader = DataLoader(ImageFiles(images, preprocess), batch_size=batch_size, num_workers=num_workers)
        else:
            loader = DataLoader(ShardImages(images, preprocess), batch_size=batch_size)
        for batch_names, batch in tqdm(loader, desc="embedding images", unit="batch"):
            chunks.append(model.encode_image(batch.to(device)).float().cpu())
            names.extend(batch_names)
    if not chunks:
        raise ConfigError(f"Nothing to embed in {images or texts}; check the path.")
    return write_embeddings(torch.cat(chunks), names, out)


@torch.no_grad()
def classify(checkpoint: str, classes: list[str], images: list[str], template: str = "{}") -> list[tuple[str, list[tuple[str, float]]]]:
    """Zero-shot: each image's classes by cosine similarity to ``template`` filled with the class, best first."""
    if len(classes) < 2:
        raise ConfigError('vlp classify needs at least two classes, e.g. --classes "a circle,a square".')
    model, preprocess, _ = load(checkpoint)
    device = next(model.parameters()).device
    text = model.encode_text([template.format(c) for c in classes])
    results = []
    for path in images:
        if not Path(path).is_file():
            raise ConfigError(f"Image {path} does not exist; pass image files after the options.")
        with Image.open(path) as image:
            scores = (model.encode_image(preprocess(image)[None].to(device)) @ text.T)[0].tolist()
        results.append((path, sorted(zip(classes, scores), key=lambda pair: -pair[1])))
    return results
