"""Look at the data an experiment will train on: counts, caption lengths, and a PNG grid of samples.

    python tools/inspect_data.py experiments/data/csv.yaml --grid samples.png --count 16
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections import Counter

import torch
from PIL import Image, ImageDraw

from vlp.build import build_datamodule
from vlp.config.experiment import load_experiment


def words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def histogram(lengths: list[int], bins: tuple[int, ...] = (0, 5, 10, 20, 40, 77, 10**9)) -> list[str]:
    """Text bars of caption lengths in words (77 is CLIP's context length in tokens, a rough guide)."""
    counts = Counter(next(f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+" for lo, hi in zip(bins, bins[1:]) if lo <= n < hi) for n in lengths)
    width = max(counts.values(), default=1)
    return [f"{label:>7} words {counts[label]:8d} {'#' * round(40 * counts[label] / width)}" for label in
            [f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+" for lo, hi in zip(bins, bins[1:])]]


def grid(images: torch.Tensor, captions: list[str], cell: int = 160) -> Image.Image:
    """Images (N, 3, H, W), uint8 or floats in [0, 1], in a square grid, each with its caption wrapped underneath."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    canvas = Image.new("RGB", (columns * cell, rows * (cell + 48)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell, (i // columns) * (cell + 48)
        pixels = (image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).byte()).permute(1, 2, 0).numpy()
        canvas.paste(Image.fromarray(pixels).resize((cell - 8, cell - 8)), (x + 4, y + 4))
        draw.multiline_text((x + 4, y + cell), "\n".join(textwrap.wrap(caption, 28)[:3]), fill="black")
    return canvas


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for vlp fit")
    parser.add_argument("--grid", default="samples.png")
    parser.add_argument("--count", type=int, default=16, help="samples per batch, and in the grid")
    parser.add_argument("--batches", type=int, default=20, help="batches read for the caption-length histogram")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    datamodule = build_datamodule(load_experiment(args.experiment, args.overrides))
    datamodule.setup("fit")
    captions: list[str] = []

    def recording_tokenizer(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stands in for the text tower's tokenizer and keeps the captions the collate chose."""
        captions.extend(texts)
        return (torch.zeros(len(texts), 1, dtype=torch.long),) * 2

    datamodule.attach_tokenizer(recording_tokenizer)
    datamodule.batch_size, datamodule.num_workers, datamodule.all_captions = args.count, 0, False
    loader = iter(datamodule.train_dataloader())
    first = next(loader)
    datamodule.record_quality(first)
    for _, batch in zip(range(args.batches - 1), loader):
        datamodule.record_quality(batch)
    grid(first.images, captions[: len(first)]).save(args.grid)
    summary = {"train_batches": len(datamodule.train_dataloader()), "captions_read": len(captions), "quality": datamodule.quality.as_dict()}
    print(f"{datamodule.registry_name}: {summary['train_batches']} training batches; caption lengths of {len(captions)} sampled captions:")
    print("\n".join(histogram(words(captions))))
    print(f"bad samples so far: {summary['quality']['skipped'] or 'none'}; grid of {len(first)} samples written to {args.grid}")
    return summary


if __name__ == "__main__":
    main()
