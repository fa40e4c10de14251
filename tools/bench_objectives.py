"""Step time and peak memory of objective mixes on the same towers and batches, side by side.

Each mix (CLIP, FLIP at 50% and 75% masking, CoCa, CLIP+MAE, CLIP+MLM) trains the same
encoders on the same pre-collated batches in its own subprocess (so peak memory is per
mix), with a plain forward/backward/AdamW loop; mixes alternate for ``--rounds`` rounds
and medians are compared with CLIP's. A mix whose objective is not registered is skipped
by name. Usage::

    python tools/bench_objectives.py [experiments/default.yaml] [--steps 20] [--rounds 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MIXES = {
    "CLIP": "[{name: clip}]",
    "CLIP+FLIP50": "[{name: flip, mask_ratio: 0.5}]",
    "CLIP+FLIP75": "[{name: flip, mask_ratio: 0.75}]",
    "CoCa": "[{name: coca}]",
    "CLIP+MAE": "[{name: clip}, {name: mae, mask_ratio: 0.75}]",
    "CLIP+MLM": "[{name: clip}, {name: mlm}]",
}


def registered(objectives: str) -> list[str]:
    """Names in an objective list that no registry entry answers to."""
    import yaml

    from vlp.registry import OBJECTIVES

    return [entry["name"] for entry in yaml.safe_load(objectives) if entry["name"] not in OBJECTIVES.names()]


def child(args: argparse.Namespace) -> None:
    from vlp.build import build_datamodule, build_module
    from vlp.config.experiment import load_experiment
    from vlp.optim import build_optimizer
    from vlp.step import Step

    experiment = load_experiment(args.experiment, args.overrides + [f"model.objectives={MIXES[args.mix]}"])
    torch.manual_seed(experiment.run.seed)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device).train()
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(args.steps + args.warmup)]
    optimizer = build_optimizer(module, experiment.optim)
    times = []
    for index, batch in enumerate(batches):
        batch = module.transfer_batch_to_device(batch, device, 0)
        if index == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step = Step(batch, module.encoder, module.image_views, module.text_views)
        loss = sum(module.weights[name] * objective(step)["loss"] for name, objective in module.objectives.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "peak_mb": peak, "device": device.type}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", nargs="?", default=str(REPO / "experiments" / "default.yaml"))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mixes", default=",".join(MIXES), help="comma-separated subset of " + ", ".join(MIXES))
    parser.add_argument("--mix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mix:
        return child(args)
    mixes = []
    for mix in args.mixes.split(","):
        missing = registered(MIXES[mix])
        if missing:
            print(f"skipping {mix}: objective(s) {missing} not registered")
        else:
            mixes.append(mix)
    results: dict[str, dict] = {mix: {"times": [], "peak_mb": 0.0} for mix in mixes}
    for _ in range(args.rounds):
        for mix in mixes:
            command = [sys.executable, __file__, args.experiment, *args.overrides, "--mix", mix,
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            measured = json.loads(output)
            results[mix]["times"] += measured["times"]
            results[mix]["peak_mb"] = max(results[mix]["peak_mb"], measured["peak_mb"])
            results[mix]["device"] = measured["device"]
    base = statistics.median(results["CLIP"]["times"]) if "CLIP" in results else None
    memory = "peak GPU MiB" if any(r.get("device") == "cuda" for r in results.values()) else "peak RSS MiB"
    print(f"{'mix':<12} {'step ms':>8} {'vs CLIP':>8} {memory:>13}")
    for mix, result in results.items():
        median = statistics.median(result["times"])
        ratio = f"{median / base:.2f}x" if base else "-"
        print(f"{mix:<12} {median * 1000:8.1f} {ratio:>8} {result['peak_mb']:13.0f}")


if __name__ == "__main__":
    main()
