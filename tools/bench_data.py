"""Samples/s of decoding + augmenting from shards (1 and 2 workers) next to a plain PIL loop over the same files.

    python tools/bench_data.py --images 512 --size 256     # generated JPEGs, in a temporary folder

One run prints all three numbers and the 1 -> 2 worker scaling; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_shards  # noqa: E402

from vlp.data.transforms import data_config, image_transform  # noqa: E402
from vlp.data.web_shards import WebDatasetDataModule  # noqa: E402


def write_images(folder: Path, count: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    lines = ["filepath,title"]
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size * 4 // 3, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
        lines.append(f"{i}.jpg,image {i}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return folder / "train.csv"


def plain_loop(folder: Path, count: int, image_size: int) -> float:
    """The baseline: open, decode and transform each file in one process."""
    transform = image_transform(data_config(image_size), train=True)
    started = time.perf_counter()
    for i in range(count):
        transform(Image.open(folder / f"{i}.jpg").convert("RGB"))
    return count / (time.perf_counter() - started)


def shard_loop(pattern: str, count: int, image_size: int, workers: int) -> float:
    dm = WebDatasetDataModule(train=[pattern], epoch_samples=count, image_size=image_size, batch_size=32, num_workers=workers, shuffle_buffer=100)
    dm.attach_tokenizer(lambda texts: (torch.zeros(len(texts), 1, dtype=torch.long),) * 2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    started, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch)
    return seen / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=256, help="short side of the generated images")
    parser.add_argument("--image-size", type=int, default=224, help="encoder input size")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = write_images(folder, args.images, args.size)
        make_shards.main(["--format", "csv", "--annotations", str(csv), "--root", tmp, "--output", f"{tmp}/shards", "--shard-size", str(max(1, args.images // 8)), "--quiet"])
        pattern = f"{tmp}/shards/shard-{{000000..{len(list((folder / 'shards').glob('*.tar'))) - 1:06d}}}.tar"
        results = {"plain_pil": plain_loop(folder, args.images, args.image_size)}
        for workers in (1, 2):
            results[f"shards_{workers}_worker"] = shard_loop(pattern, args.images, args.image_size, workers)
    for name, value in results.items():
        print(f"{name:>16}: {value:8.1f} samples/s")
    print(f"shards (1 worker) / plain PIL: {results['shards_1_worker'] / results['plain_pil']:.2f}x; "
          f"2 workers / 1 worker: {results['shards_2_worker'] / results['shards_1_worker']:.2f}x")
    return results


if __name__ == "__main__":
    main()
