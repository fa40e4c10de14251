"""Write WebDataset tar shards from CSV/TSV, JSONL or Karpathy-JSON annotations and their images.

    python tools/make_shards.py --format csv --annotations train.csv --root images/ \
        --output shards/train --shard-size 1000 --resize 256 --workers 8

Shards are ``<output>/<prefix>-000000.tar`` ...; each sample is ``<index>.<jpg|png|webp>``,
``<index>.txt`` (first caption) and ``<index>.json`` (``captions``, source ``key``).
Shards are written in parallel, each to a temporary file renamed when complete, so a
rerun after an interruption writes only the missing shards. ``shards.json`` lists the
sample count of every shard (the webdataset datamodule reads it) and what was skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from vlp.data.decode import open_image
from vlp.data.files import resolve
from vlp.data.quality import BadSample
from vlp.data.records import Reading, Record, read_jsonl, read_karpathy, read_table
from vlp.data.tar_members import shard_writer

KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def read_records(args: argparse.Namespace) -> Reading:
    if args.format == "csv":
        return read_table(args.annotations, args.image_column, args.caption_column)
    if args.format == "jsonl":
        return read_jsonl(args.annotations, args.image_key, args.caption_key)
    return read_karpathy(args.annotations, args.split)


def encode(path: str, resize: int | None) -> tuple[str, bytes]:
    """The original bytes when they need no change, else a re-encoded (and resized) image."""
    image = open_image(path)  # raises BadSample for missing or undecodable files
    with Image.open(path) as original:
        kept = KEEP_FORMATS.get(original.format or "")
    if resize is None and kept:
        return kept, Path(path).read_bytes()
    if resize is not None and min(image.size) > resize:
        scale = resize / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return "jpg", buffer.getvalue()


def write_shard(job: tuple[Path, list[tuple[int, Record]], str, int | None]) -> tuple[str, int, dict[str, int]]:
    """Write one shard atomically; returns its name, sample count and skipped counts."""
    path, items, root, resize = job
    temporary = path.with_suffix(".tar.tmp")
    count, skipped = 0, Counter()
    with shard_writer(str(temporary)) as sink:
        for index, record in items:
            try:
                extension, data = encode(resolve(root, record.image), resize)
            except BadSample as bad:
                skipped[bad.cause] += 1
                continue
            meta = {"captions": record.captions, "key": record.key}
            sink.write({"__key__": f"{index:09d}", extension: data, "txt": record.captions[0], "json": json.dumps(meta).encode()})
            count += 1
    path.with_suffix(".stats.json").write_text(json.dumps({"samples": count, "skipped": skipped}))
    os.replace(temporary, path)
    return path.name, count, dict(skipped)


def make_shards(args: argparse.Namespace) -> dict[str, Any]:
    """Write the missing shards and the index; returns the index plus how many shards were written now."""
    reading = read_records(args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    items = list(enumerate(reading.records))
    jobs = []
    for number, start in enumerate(range(0, len(items), args.shard_size)):
        path = output / f"{args.prefix}-{number:06d}.tar"
        if not path.is_file():
            jobs.append((path, items[start : start + args.shard_size], args.root, args.resize))
    with Pool(args.workers) as pool:
        for _ in tqdm(pool.imap_unordered(write_shard, jobs), total=len(jobs), desc="shards", disable=args.quiet):
            pass
    shards, skipped = {}, Counter(reading.skipped)
    for path in sorted(output.glob(f"{args.prefix}-*.tar")):
        stats = json.loads(path.with_suffix(".stats.json").read_text())
        shards[path.name] = stats["samples"]
        skipped.update(stats["skipped"])
    index = {"shards": shards, "samples": sum(shards.values()), "skipped": dict(sorted(skipped.items()))}
    (output / "shards.json").write_text(json.dumps(index, indent=2) + "\n")
    return {**index, "written": len(jobs)}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--format", choices=("csv", "jsonl", "karpathy"), required=True)
    parser.add_argument("--annotations", required=True, help="CSV/TSV, JSONL or Karpathy JSON file")
    parser.add_argument("--root", default="", help="folder the image paths are relative to")
    parser.add_argument("--output", required=True)
    parser.add_argument("--prefix", default="shard")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--resize", type=int, default=None, help="shrink so the shorter side is at most this")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--image-column", default="filepath")
    parser.add_argument("--caption-column", default="title")
    parser.add_argument("--image-key", default="image")
    parser.add_argument("--caption-key", default="caption")
    parser.add_argument("--split", default="train", help="Karpathy split")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    summary = make_shards(parse(sys.argv[1:] if argv is None else argv))
    skipped = ", ".join(f"{n} {cause}" for cause, n in summary["skipped"].items()) or "none"
    print(f"{summary['samples']} samples in {len(summary['shards'])} shards ({summary['written']} written now); skipped: {skipped}")
    return summary


if __name__ == "__main__":
    main()
