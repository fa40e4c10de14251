"""MobileCLIP-style dataset reinforcement: store teacher embeddings of K augmentations per image beside the shards.

    python tools/reinforce.py --shards 'shards/train/shard-{000000..000009}.tar' --teachers teachers.yaml \
        --output shards/train_reinforced --augmentations 10

``teachers.yaml`` lists frozen dual encoders built from registered towers with local weights::

    - {image_encoder: {name: hf_clip, pretrained: /models/clip-b16}, text_encoder: {name: hf_clip, pretrained: /models/clip-b16},
       embed_dim: 512, logit_scale: 100.0}

Every output shard has the input shard's name and members, plus ``aug.json`` (the K crops:
top, left, height, width, flip, drawn by torchvision under a per-sample seed),
``teacher_image.npy`` (teachers, K, D float32, L2-normalised), ``teacher_text.npy``
(teachers, D, of the first caption) and ``teacher.json`` (the teachers' logit scales).
Shards are written to a temporary file and renamed when complete, so a rerun writes only
the missing ones. Train on them with the ``reinforced`` datamodule and the
``mobileclip_distillation`` objective: no teacher runs during training.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
import yaml
from webdataset.handlers import reraise_exception
from tqdm import tqdm

from vlp.data.decode import open_image
from vlp.data.replay import apply_crop, draw_crops
from vlp.data.shards import IMAGE_EXTENSIONS, captions_of
from vlp.data.tar_members import shard_samples, shard_writer
from vlp.data.web_shards import INDEX_FILE, shard_urls
from vlp.teachers import build_teacher, image_size_of


def load_teachers(path: str) -> list[tuple[torch.nn.Module, float]]:
    entries = yaml.safe_load(Path(path).read_text())
    if not isinstance(entries, list) or not entries:
        raise SystemExit(f"{path} must list at least one teacher ({{image_encoder, text_encoder, embed_dim, logit_scale}}).")
    return [(build_teacher(e["image_encoder"], e["text_encoder"], e["embed_dim"], f"teachers[{i}]").eval(), float(e.get("logit_scale", 100.0)))
            for i, e in enumerate(entries)]


def sample_seed(seed: int, key: str) -> int:
    """A per-sample seed that does not depend on which process or order reads the sample."""
    return seed * 1_000_003 + zlib.crc32(key.encode())


def to_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@torch.no_grad()
def reinforce_sample(sample: dict, teachers: list, augmentations: int, seed: int) -> dict:
    image = open_image(sample[next(ext for ext in IMAGE_EXTENSIONS if ext in sample)])
    caption = captions_of(sample)[0]
    crops = draw_crops(image, augmentations, sample_seed(seed, sample["__key__"]))
    image_embeddings, text_embeddings = [], []
    for teacher, _ in teachers:
        size = (image_size_of(teacher.image_tower) or (224, 224))[0]
        pixels = torch.stack([apply_crop(image, crop, size) for crop in crops]).float() / 255
        image_embeddings.append(F.normalize(teacher.image_tower(pixels).embedding, dim=-1))
        ids, mask = teacher.text_tower.tokenize([caption])
        text_embeddings.append(F.normalize(teacher.text_tower(ids, mask).embedding, dim=-1)[0])
    return {
        **{k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"},
        "aug.json": json.dumps({"crops": [c.as_dict() for c in crops]}).encode(),
        "teacher_image.npy": to_npy(torch.stack(image_embeddings).numpy().astype(np.float32)),
        "teacher_text.npy": to_npy(torch.stack(text_embeddings).numpy().astype(np.float32)),
        "teacher.json": json.dumps({"logit_scales": [scale for _, scale in teachers]}).encode(),
    }


def reinforce(args: argparse.Namespace) -> int:
    """Write every missing output shard; returns how many were written now."""
    urls = shard_urls(args.shards)
    teachers = load_teachers(args.teachers)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    written = 0
    for url in tqdm(urls, desc="shards", disable=args.quiet):
        target = output / Path(url).name
        if target.is_file():
            continue
        temporary = target.with_suffix(".tar.tmp")
        with shard_writer(str(temporary)) as sink:
            for sample in wds.DataPipeline(wds.SimpleShardList([url]), partial(shard_samples, handler=reraise_exception)):
                sink.write(reinforce_sample(sample, teachers, args.augmentations, args.seed))
        os.replace(temporary, target)
        written += 1
    index = Path(urls[0]).parent / INDEX_FILE
    if index.is_file() and not (output / INDEX_FILE).is_file():
        shutil.copy(index, output / INDEX_FILE)
    return written


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True, help="brace pattern of the input shards (tools/make_shards.py layout)")
    parser.add_argument("--teachers", required=True, help="YAML list of teacher dual encoders")
    parser.add_argument("--output", required=True, help="folder for the reinforced shards (same names)")
    parser.add_argument("--augmentations", type=int, default=10, help="K stored crops per image (MobileCLIP: 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    print(f"{reinforce(args)} reinforced shard(s) written to {args.output}")


if __name__ == "__main__":
    main()
