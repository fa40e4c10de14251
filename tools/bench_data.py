"""Samples/s of decoding + augmenting from shards (in process, 1 and 2 workers) next to a plain PIL loop over the same files.

    python tools/bench_data.py --images 512 --size 256     # generated JPEGs, in a temporary folder

The plain loops run in this process. ``plain_pil_float`` is the original baseline (full
decode, timm's PIL training transform to floats); ``plain_pil`` is the plain PIL loop the
shard workers are measured against (draft decoding of large JPEGs, timm's PIL transform
to uint8); ``worker_steps`` is a worker's own per-sample work without the pipeline
(draft decoding, vlp's uint8 training transform, which resizes on tensors). The shard loops run the training loader of
:class:`WebDatasetDataModule`, in this process (0 workers: the pipeline's own cost, no
inter-process transfer) and with 1 and 2 worker processes. Besides samples/s (wall clock), each line gives CPU
milliseconds per sample over every process involved (main and workers), which a busy
shared machine disturbs much less. The last lines give the ratios and how many workers
would feed a given rate (``--target``, e.g. a ViT-B/16 at 4,000 images/s) at the measured
per-worker rate. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_shards  # noqa: E402

from timm.data import create_transform  # noqa: E402

from vlp.data.decode import open_image, open_pixels  # noqa: E402
from vlp.data.transforms import TRAIN_CROP_RATIO, TRAIN_CROP_SCALE, data_config, image_transform  # noqa: E402
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


def cpu_seconds() -> float:
    """CPU time of this process plus its finished (joined) child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timm_pil_transform(image_size: int, uint8: bool):
    """timm's PIL training transform with vlp's crop range: to uint8 pixels, or to floats in [0, 1]."""
    transform = create_transform(image_size, is_training=True, interpolation="bicubic", scale=TRAIN_CROP_SCALE, ratio=TRAIN_CROP_RATIO,
                                 hflip=0.0, color_jitter=None, normalize=False)
    return transform if uint8 else lambda image: transform(image).float().div_(255)


def plain_float_loop(folder: Path, count: int, image_size: int) -> int:
    """The original baseline: open, decode in full and transform to floats with PIL, in one process."""
    transform = timm_pil_transform(image_size, uint8=False)
    for i in range(count):
        transform(Image.open(folder / f"{i}.jpg").convert("RGB"))
    return count


def plain_loop(folder: Path, count: int, image_size: int) -> int:
    """The plain PIL loop: decode (draft when large) and timm's PIL transform to uint8, in one process."""
    transform = timm_pil_transform(image_size, uint8=True)
    draft_side = image_transform(data_config(image_size), train=True).decode_short_side
    for i in range(count):
        transform(open_image(str(folder / f"{i}.jpg"), draft_side))
    return count


def worker_steps_loop(folder: Path, count: int, image_size: int) -> int:
    """A worker's per-sample work without the pipeline: decode (draft when large), vlp's uint8 training transform."""
    transform = image_transform(data_config(image_size), train=True, dtype=torch.uint8)
    for i in range(count):
        transform(open_pixels(str(folder / f"{i}.jpg"), transform.decode_short_side))
    return count


def draft_effect(short_side: int, image_size: int, repeats: int = 20) -> tuple[float, float, float]:
    """(full-decode ms, draft-decode ms, mean |difference| in grey levels) for one real photo.

    scikit-learn's china.jpg upscaled to ``short_side`` and re-encoded (quality 90), then
    opened and transformed for training at ``image_size``, with and without draft decoding.
    """
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[0])
    photo = photo.resize((round(photo.width * short_side / photo.height), short_side), Image.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    raw = buffer.getvalue()
    transform = image_transform(data_config(image_size), train=False, dtype=torch.uint8)
    outputs, times = [], []
    for side in (None, transform.decode_short_side):
        started = time.process_time()
        for _ in range(repeats):
            out = transform(open_image(raw, side))
        times.append(1000 * (time.process_time() - started) / repeats)
        outputs.append(out.float())
    return times[0], times[1], (outputs[0] - outputs[1]).abs().mean().item()


def shard_loop(pattern: str, count: int, image_size: int, workers: int) -> tuple[int, float, int]:
    """Samples read, when the first batch arrived, and samples after it (steady state: workers started, buffer filled)."""
    dm = WebDatasetDataModule(train=[pattern], epoch_samples=count, image_size=image_size, batch_size=32, num_workers=workers, shuffle_buffer=100)
    dm.attach_tokenizer(lambda texts: (torch.zeros(len(texts), 1, dtype=torch.long),) * 2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen, first_at, first = 0, 0.0, 0
    for batch in loader:
        seen += len(batch)  # uint8 images: the division by 255 happens on the accelerator, after transfer
        if not first:
            first_at, first = time.perf_counter(), seen
    del loader  # joins the workers, so their CPU time is counted
    return seen, first_at, seen - first


def timed(run, *args) -> tuple[float, float, float]:
    """(samples/s, CPU ms per sample, samples/s after the first batch) of one loop.

    The last is the shard loops' steady state: a training run with persistent workers pays
    their start-up (a fork, ~50 CPU ms here) and the shuffle buffer's first fill once.
    """
    started, cpu = time.perf_counter(), cpu_seconds()
    out = run(*args)
    ended = time.perf_counter()
    seen, first_at, after_first = out if isinstance(out, tuple) else (out, started, out)
    return seen / (ended - started), 1000 * (cpu_seconds() - cpu) / seen, after_first / (ended - first_at)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=256, help="short side of the generated images")
    parser.add_argument("--image-size", type=int, default=224, help="encoder input size")
    parser.add_argument("--draft-side", type=int, default=1344, help="short side of the photo for the draft-decoding line")
    parser.add_argument("--target", type=float, default=4000.0, help="samples/s to feed (ViT-B/16 training on one H100: ~4,000)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)  # as in a DataLoader worker: one thread per process, so CPU times compare
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = write_images(folder, args.images, args.size)
        make_shards.main(["--format", "csv", "--annotations", str(csv), "--root", tmp, "--output", f"{tmp}/shards", "--shard-size", str(max(1, args.images // 8)), "--quiet"])
        pattern = f"{tmp}/shards/shard-{{000000..{len(list((folder / 'shards').glob('*.tar'))) - 1:06d}}}.tar"
        measured = {"plain_pil_float": timed(plain_float_loop, folder, args.images, args.image_size),
                    "plain_pil": timed(plain_loop, folder, args.images, args.image_size),
                    "worker_steps": timed(worker_steps_loop, folder, args.images, args.image_size)}
        for workers in (0, 1, 2):
            measured[f"shards_{workers}_worker"] = timed(shard_loop, pattern, args.images, args.image_size, workers)
    print(f"{args.images} JPEGs, short side {args.size} -> {args.image_size} px")
    for name, (rate, cpu_ms, steady) in measured.items():
        print(f"{name:>16}: {rate:8.1f} samples/s {cpu_ms:8.2f} CPU ms/sample {steady:8.1f} samples/s after the first batch")
    results = {name: rate for name, (rate, _, _) in measured.items()}
    cpu = {name: cpu_ms for name, (_, cpu_ms, _) in measured.items()}
    steady = {name: rate for name, (_, _, rate) in measured.items()}
    per_worker = 1000 / cpu["shards_1_worker"]  # samples/s one fully busy worker sustains
    print(f"shards (1 worker) / plain PIL: {results['shards_1_worker'] / results['plain_pil']:.2f}x wall clock, "
          f"{cpu['plain_pil'] / cpu['shards_1_worker']:.2f}x by CPU time; shards (0 workers) / plain PIL: "
          f"{results['shards_0_worker'] / results['plain_pil']:.2f}x wall clock, {cpu['plain_pil'] / cpu['shards_0_worker']:.2f}x by CPU time; "
          f"2 workers / 1 worker: "
          f"{results['shards_2_worker'] / results['shards_1_worker']:.2f}x; "
          f"vs the original float baseline: {cpu['plain_pil_float'] / cpu['shards_1_worker']:.2f}x by CPU time")
    print(f"pipeline cost: shards (1 worker) / worker steps in process {cpu['worker_steps'] / cpu['shards_1_worker']:.2f}x, "
          f"shards (0 workers) / worker steps {cpu['worker_steps'] / cpu['shards_0_worker']:.2f}x by CPU time")
    print(f"after the first batch: shards (1 worker) / plain PIL {steady['shards_1_worker'] / results['plain_pil']:.2f}x, "
          f"shards (0 workers) / plain PIL {steady['shards_0_worker'] / results['plain_pil']:.2f}x wall clock")
    print(f"workers (one core each) to feed {args.target:.0f} samples/s at {per_worker:.0f} samples/s per worker: "
          f"{math.ceil(args.target / per_worker)}")
    full_ms, draft_ms, difference = draft_effect(args.draft_side, args.image_size)
    print(f"draft decoding, a {args.draft_side}-px photo to {args.image_size} px: {full_ms:.1f} -> {draft_ms:.1f} CPU ms "
          f"({full_ms / draft_ms:.1f}x), mean difference {difference:.2f} grey levels of 255")
    return results


if __name__ == "__main__":
    main()
