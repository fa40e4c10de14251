"""Side by side on the embedded shapes data, same steps: CLIP vs CLIP + SILC, and a small student with and without a teacher.

1. ``clip`` vs ``clip`` + ``silc`` on the default towers: the shape linear probe (and zero-shot).
2. A larger CLIP trained first is the teacher; a smaller student trains with ``clip`` alone
   and with ``clip`` + ``affinity_distillation`` from the teacher's checkpoint: zero-shot.

    python tools/compare_teachers.py [--epochs 2] [--train-size 10000] [--out runs/compare_teachers]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = str(REPO / "experiments" / "tiny_vit.yaml")
SMALL = [
    "model.embed_dim=64",
    "model.image_encoder.model_kwargs={img_size: 32, patch_size: 4, embed_dim: 48, depth: 1, num_heads: 3, mlp_ratio: 2.0}",
    "model.text_encoder.config={model_type: clip_text_model, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 1, num_attention_heads: 2}",
]
# experiments/silc.yaml's multi-crop views: 2 global and 4 local crops, all at the tower's 32 px.
SILC_CROPS = ["model.image_encoder.model_kwargs.dynamic_img_size=true", "data.multi_crop={global_crops: 2, local_crops: 4, local_size: 32}"]
COLUMNS = {"zero-shot colour": "zeroshot/colour/top1", "zero-shot shape": "zeroshot/shape/top1",
           "held-out shape": "zeroshot/heldout_shape/top1", "probe shape": "linearprobe/shape/top1",
           "i2t R@1": "retrieval/shapes_val/per_instance/image_to_text_R@1",
           "t2i R@1": "retrieval/shapes_val/per_instance/text_to_image_R@1"}


def run(name: str, overrides: list[str], out: Path) -> dict[str, float]:
    from vlp.run import fit

    run_dir = fit(EXPERIMENT, overrides + [f"run_dir={out / name}", "trainer.enable_progress_bar=false"])
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--out", default="runs/compare_teachers")
    args = parser.parse_args()
    out = Path(args.out)
    common = [f"trainer.max_epochs={args.epochs}", f"data.train_size={args.train_size}"]
    silc = "{name: silc, weight: 1.0, out_dim: 1024, hidden_dim: 512, bottleneck_dim: 128}"
    results = {
        "clip (default towers)": run("clip", common, out),
        "clip + silc (default towers)": run("clip_silc", common + SILC_CROPS + [f"model.objectives=[{{name: clip}}, {silc}]"], out),
    }
    teacher_ckpt = out / "clip" / "checkpoints" / "last.ckpt"
    results["student: clip"] = run("student", common + SMALL, out)
    results["student: clip + affinity_distillation"] = run(
        "student_distilled", common + SMALL + [f"model.objectives=[{{name: clip}}, {{name: affinity_distillation, teacher: '{teacher_ckpt}'}}]"], out)
    width = max(len(n) for n in results)
    print(f"{'run':<{width}}  " + "  ".join(COLUMNS))
    for run_name, metrics in results.items():
        print(f"{run_name:<{width}}  " + "  ".join(f"{metrics.get(key, float('nan')):>{len(column)}.3f}" for column, key in COLUMNS.items()))

if __name__ == "__main__":
    main()
