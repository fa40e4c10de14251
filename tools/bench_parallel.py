"""Step time and peak memory: 1 process vs 2 DDP processes vs 2 FSDP2 processes, side by side.

Every mode trains the experiment's towers (default: experiments/tiny_vit.yaml) on the same
global batch (2 processes take half each) through Lightning's Trainer with vlp's module,
for ``--steps`` steps; the first ``--warmup`` are not timed. Each mode runs in its own
subprocess (Lightning re-runs it once per extra rank) and reports the median step time
and the peak memory of its largest rank during training: accelerator memory on a GPU;
on a CPU the peak resident set size, reset when training starts (Linux ``clear_refs``), so
it includes the interpreter, libraries and data already loaded. Usage::

    python tools/bench_parallel.py [experiments/tiny_vit.yaml] [--steps 20] [--batch 128] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODES = {"1 process": (1, "auto"), "2 DDP": (2, "ddp"), "2 FSDP2": (2, "fsdp2")}


def worker(args: argparse.Namespace) -> None:
    """One mode; under 2 processes Lightning runs this function again in rank 1."""
    import lightning as L

    from vlp.build import build_datamodule, build_module
    from vlp.config.experiment import load_experiment
    from vlp.parallel import strategy_from_name

    devices, strategy = MODES[args.mode]
    overrides = [f"data.batch_size={args.batch // devices}", f"data.train_size={args.batch * (args.steps + 1)}"]
    experiment = load_experiment(args.experiment, args.overrides + overrides)
    torch.manual_seed(0)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    module.evaluations = []
    timer = StepTimer()
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    trainer = L.Trainer(**strategy_from_name({"strategy": strategy}), accelerator=accelerator, devices=devices,
                        max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer],
                        precision=args.precision)
    trainer.fit(module, datamodule=datamodule)
    times = timer.times[args.warmup:]
    peak = torch.cuda.max_memory_allocated() if accelerator == "gpu" else _peak_rss()
    Path(args.out, f"rank{trainer.global_rank}.json").write_text(json.dumps({"median_s": statistics.median(times), "peak_bytes": peak}))


class StepTimer:
    """Lightning callback: wall time of each training step (synchronised on a GPU)."""

    def __new__(cls):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self) -> None:
                self.times: list[float] = []

            def on_train_start(self, *args) -> None:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                else:
                    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)

            def on_train_batch_start(self, *args) -> None:
                _sync()
                self.started = time.perf_counter()

            def on_train_batch_end(self, *args) -> None:
                _sync()
                self.times.append(time.perf_counter() - self.started)

        return _Timer()


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default=str(REPO / "experiments" / "tiny_vit.yaml"))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="global batch size")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        worker(args)
        return
    results = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for mode in MODES:
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, __file__, args.experiment, *args.overrides, "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--batch", str(args.batch), "--precision", args.precision, "--mode", mode, "--out", out]
            subprocess.run(command, env=env, check=True, capture_output=True)
            ranks = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]
        results[mode] = (max(r["median_s"] for r in ranks), max(r["peak_bytes"] for r in ranks))
    base_time, base_memory = results["1 process"]
    print(f"global batch {args.batch}, {args.steps - args.warmup} timed steps, precision {args.precision}, "
          f"{'GPU' if torch.cuda.is_available() else 'CPU'}")
    print(f"{'mode':<10} {'ms/step':>8} {'x 1 proc':>9} {'peak MB/rank':>13} {'x 1 proc':>9}")
    for mode, (seconds, peak) in results.items():
        print(f"{mode:<10} {seconds * 1e3:8.1f} {seconds / base_time:9.2f} {peak / 2**20:13.0f} {peak / base_memory:9.2f}")


if __name__ == "__main__":
    main()
