"""Training-step speed and peak memory: vlp (Lightning) vs a plain PyTorch loop, side by side.

Both run the same encoders, the same objectives and the same pre-collated batches with
the same optimizer and schedule; only the training machinery differs. Each mode runs
in its own subprocess (so peak memory is per mode), the modes alternate for ``--rounds``
rounds, and the medians are compared. Usage::

    python tools/bench.py [experiments/tiny_vit.yaml] [--steps 60] [--rounds 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def prepare(experiment_path: str, overrides: list[str], steps: int):
    from vlp.build import build_datamodule, build_module
    from vlp.config.experiment import load_experiment

    experiment = load_experiment(experiment_path, overrides + ["trainer.enable_progress_bar=false"])
    torch.manual_seed(experiment.run.seed)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    loader = iter(datamodule.train_dataloader())
    batches = [datamodule.on_after_batch_transfer(next(loader), 0) for _ in range(steps)]  # uint8 images -> [0, 1]
    return experiment, module, batches


class StepTimer:
    """Wall-clock time of each step, start to start."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def tick(self) -> None:
        self.starts.append(time.perf_counter())

    def step_times(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[warmup:], self.starts[warmup + 1 :])]


def run_vlp(experiment, module, batches, warmup: int) -> list[float]:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    timer = StepTimer()

    class Timing(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            timer.tick()

        def on_train_end(self, *args) -> None:
            timer.tick()

    trainer_args = {k: v for k, v in experiment.trainer.items() if k not in ("max_epochs", "enable_progress_bar")}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = L.Trainer(
            max_steps=len(batches), max_epochs=1, logger=[TensorBoardLogger(run_dir), CSVLogger(run_dir)],
            callbacks=[Timing()], enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **trainer_args,
        )
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return timer.step_times(warmup)


def run_plain(experiment, module, batches, warmup: int) -> list[float]:
    """The loop a researcher would write by hand around the same modules."""
    from vlp.optim import build_optimizer, warmup_cosine
    from vlp.step import Step

    config = experiment.optim
    optimizer = build_optimizer(module, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, config.warmup_steps, len(batches), config.min_lr_ratio, config.schedule)
    )
    clip = experiment.trainer.get("gradient_clip_val")
    module.train()
    timer = StepTimer()
    for batch in batches:
        timer.tick()
        step = Step(batch, module.encoder, module.image_views, module.text_views)
        loss = sum(module.weights[n] * o(step)["loss"] for n, o in module.objectives.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        scheduler.step()
        loss.item()  # the loop logs its loss, as Lightning does
    timer.tick()
    return timer.step_times(warmup)


def child(args: argparse.Namespace) -> None:
    experiment, module, batches = prepare(args.experiment, args.overrides, args.steps)
    runner = run_vlp if args.mode == "vlp" else run_plain
    times = runner(experiment, module, batches, warmup=args.warmup)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": args.mode, "median_s": statistics.median(times), "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", default=str(REPO / "experiments" / "tiny_vit.yaml"))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mode", choices=["vlp", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        return child(args)
    results: dict[str, list[dict]] = {"vlp": [], "plain": []}
    for _ in range(args.rounds):
        for mode in ("plain", "vlp"):
            command = [sys.executable, __file__, args.experiment, *args.overrides, "--mode", mode,
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[mode].append(json.loads(output.strip().splitlines()[-1]))
    summary = {m: (statistics.median(r["median_s"] for r in rs), max(r["peak_rss_mb"] for r in rs)) for m, rs in results.items()}
    print(f"{'mode':<8}{'median step (ms)':>18}{'peak RSS (MB)':>16}")
    for mode, (step, peak) in summary.items():
        print(f"{mode:<8}{step * 1000:>18.1f}{peak:>16.0f}")
    print(f"vlp / plain step time: {summary['vlp'][0] / summary['plain'][0]:.3f}")


if __name__ == "__main__":
    main()
