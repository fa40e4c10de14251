"""PNG grid of an MAE checkpoint on validation images: input, masked input, reconstruction (one row each).

    python tools/inspect_mae.py runs/mae/<time>/checkpoints/last.ckpt --out mae.png --count 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from PIL import Image

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import experiment_from_resolved
from vlp.objectives.mae import MAE
from vlp.registry import ConfigError
from vlp.run import load_vlp_checkpoint


def rows_to_png(rows: list[torch.Tensor], cell: int = 64) -> Image.Image:
    """Rows of images (N, 3, H, W) in [0, 1] as one grid, each image scaled to ``cell`` pixels."""
    count = len(rows[0])
    canvas = Image.new("RGB", (count * cell, len(rows) * cell), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            pixels = (image.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(pixels).resize((cell - 2, cell - 2), Image.NEAREST), (c * cell + 1, r * cell + 1))
    return canvas


@torch.no_grad()
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", default="mae.png")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random patch masks")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    checkpoint = load_vlp_checkpoint(args.checkpoint)
    experiment = experiment_from_resolved(yaml.safe_load(checkpoint["vlp"]["config"]), source=args.checkpoint)
    datamodule = build_datamodule(experiment)
    datamodule.setup("validate")
    module = build_module(experiment, datamodule, tokenizer_json=checkpoint["vlp"]["tokenizer"])
    module.load_trained_state(checkpoint["state_dict"])
    module.eval()
    mae = next((o for o in module.objectives.values() if isinstance(o, MAE)), None)
    if mae is None:
        raise ConfigError(f"{args.checkpoint} was trained without an mae objective; there is no decoder to inspect.")
    batch = next(iter(datamodule.val_dataloader()))
    batch.images = images = batch.images[: args.count]  # views read only the images and their count
    torch.manual_seed(args.seed)
    features = module.image_views[mae.image_view](module.encoder, batch)
    masked, rebuilt = mae.reconstruct(images, features)
    out = Path(args.out)
    rows_to_png([images, masked, rebuilt]).save(out)
    print(f"Wrote {out}: rows are input, masked input (view {mae.image_view}), reconstruction.")
    return out


if __name__ == "__main__":
    main()
