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

With ``--captioner CKPT --synthetic-captions N`` (a ``vlp fit`` checkpoint trained with
``coca``), each sample also gets ``syn.json`` (``{"captions": [...]}``: N synthetic
captions, MobileCLIP's DataCompDR stores 5 from CoCa) and ``teacher_syn_text.npy``
(teachers, N, D float32, L2-normalised: the teachers' embeddings of each synthetic
caption). The captions are generated exactly as ``vlp caption --ckpt CKPT --beam N
--captions N`` captions the stored image file (same code, :func:`vlp.captioning.load_captioner`):
the whole image prepared as the checkpoint's validation images (not a stored crop,
which may cut the subject out), and the N best beams of an N-wide beam search. Beam
search rather than sampling, because it is deterministic without seeds, so a rerun or
a resumed run writes the same captions whatever the batch or process; the price is
that the N beams of one image are less varied than sampled captions would be.
Train on them with ``data.synthetic_caption_probability``.
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

from vlp.captioning import Captioner, load_captioner
from vlp.data.decode import open_image
from vlp.data.replay import apply_crop, draw_crops
from vlp.data.shards import IMAGE_EXTENSIONS, captions_of
from vlp.data.tar_members import shard_samples, shard_writer
from vlp.data.web_shards import INDEX_FILE, shard_urls
from vlp.registry import ConfigError
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


def text_embeddings_of(teacher: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    """The teacher's L2-normalised embeddings of ``texts``, (len(texts), D)."""
    ids, mask = teacher.text_tower.tokenize(texts)
    return F.normalize(teacher.text_tower(ids, mask).embedding, dim=-1)


def load_synthetic_captioner(path: str) -> Captioner:
    """The checkpoint's caption decoder; any problem with it is one sentence naming ``--captioner``."""
    try:
        return load_captioner(path)
    except ConfigError as error:
        raise ConfigError(f"--captioner {path}: {error}") from None


@torch.no_grad()
def reinforce_sample(sample: dict, teachers: list, augmentations: int, seed: int,
                     captioner: Captioner | None = None, synthetic_captions: int = 0) -> dict:
    image = open_image(sample[next(ext for ext in IMAGE_EXTENSIONS if ext in sample)])
    caption = captions_of(sample)[0]
    crops = draw_crops(image, augmentations, sample_seed(seed, sample["__key__"]))
    synthetic = captioner.captions([image], synthetic_captions, synthetic_captions)[0] if captioner else []
    image_embeddings, text_embeddings, synthetic_embeddings = [], [], []
    for teacher, _ in teachers:
        size = (image_size_of(teacher.image_tower) or (224, 224))[0]
        pixels = torch.stack([apply_crop(image, crop, size) for crop in crops]).float() / 255
        image_embeddings.append(F.normalize(teacher.image_tower(pixels).embedding, dim=-1))
        text_embeddings.append(text_embeddings_of(teacher, [caption])[0])
        if synthetic:
            synthetic_embeddings.append(text_embeddings_of(teacher, synthetic))
    written = {
        **{k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"},
        "aug.json": json.dumps({"crops": [c.as_dict() for c in crops]}).encode(),
        "teacher_image.npy": to_npy(torch.stack(image_embeddings).numpy().astype(np.float32)),
        "teacher_text.npy": to_npy(torch.stack(text_embeddings).numpy().astype(np.float32)),
        "teacher.json": json.dumps({"logit_scales": [scale for _, scale in teachers]}).encode(),
    }
    if synthetic:
        written["syn.json"] = json.dumps({"captions": synthetic}).encode()
        written["teacher_syn_text.npy"] = to_npy(torch.stack(synthetic_embeddings).numpy().astype(np.float32))
    return written


def reinforce(args: argparse.Namespace) -> int:
    """Write every missing output shard; returns how many were written now."""
    if (args.captioner is None) != (args.synthetic_captions is None):
        raise ConfigError("--captioner and --synthetic-captions go together; pass both (a coca checkpoint and N >= 1) or neither.")
    if args.synthetic_captions is not None and args.synthetic_captions < 1:
        raise ConfigError(f"--synthetic-captions {args.synthetic_captions} is not a number of captions; pass 1 or more.")
    urls = shard_urls(args.shards)
    captioner = load_synthetic_captioner(args.captioner) if args.captioner else None  # before the teachers: fail fast
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
                sink.write(reinforce_sample(sample, teachers, args.augmentations, args.seed, captioner, args.synthetic_captions or 0))
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
    parser.add_argument("--captioner", help="vlp checkpoint trained with coca, for synthetic captions (optional)")
    parser.add_argument("--synthetic-captions", type=int, help="N synthetic captions per image, the N best beams (MobileCLIP: 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        written = reinforce(args)
    except ConfigError as error:
        print(f"reinforce.py: error: {error}", file=sys.stderr)
        return 2
    print(f"{written} reinforced shard(s) written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
