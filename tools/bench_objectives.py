"""Step time and peak memory of objective mixes on the same towers and batches, side by side.

Each mix (CLIP, FLIP at 50% and 75% masking, CoCa, CLIP+MAE, CLIP+MLM) trains the same
encoders on the same batches in its own subprocess (so peak memory is per mix), with a
plain forward/backward/AdamW loop; mixes alternate for ``--rounds`` rounds and medians are
compared with CLIP's. A mix whose objective is not registered is skipped by name.

On a GPU: wall time per step and peak allocated memory. On CPU, where these machines are
shared, each child runs one thread and the stable measures are the process's CPU time per
step (the work a step does) and the peak resident memory during the steps (VmHWM, reset
after setup), next to the wall time. Usage::

    python tools/bench_objectives.py [experiments/tiny_vit.yaml] [--steps 20] [--rounds 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
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

    torch.set_num_threads(1)
    steps = args.steps + args.warmup
    probe = load_experiment(args.experiment, args.overrides)
    size = f"data.train_size={steps * probe.data.params.get('batch_size', 128)}"  # generate only what is trained on
    experiment = load_experiment(args.experiment, [size, *args.overrides, f"model.objectives={MIXES[args.mix]}"])
    torch.manual_seed(experiment.run.seed)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device).train()
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(steps)]
    optimizer = build_optimizer(module, experiment.optim)
    times, cpu_times = [], []
    for index, batch in enumerate(batches):
        batch = datamodule.on_after_batch_transfer(module.transfer_batch_to_device(batch, device, 0), 0)
        if index == args.warmup:
            reset_peak_memory(device)
        start, cpu_start = time.perf_counter(), time.process_time()
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
            cpu_times.append(time.process_time() - cpu_start)
    print(json.dumps({"times": times, "cpu_times": cpu_times, "peak_mb": peak_memory(device), "device": device.type}))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident set size (VmHWM)


def peak_memory(device: torch.device) -> float:
    """MiB: peak GPU memory allocated, or peak resident memory, since the reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", nargs="?", default=str(REPO / "experiments" / "tiny_vit.yaml"))
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
    results: dict[str, dict] = {mix: {"times": [], "cpu_times": [], "peak_mb": 0.0} for mix in mixes}
    for _ in range(args.rounds):
        for mix in mixes:
            command = [sys.executable, __file__, args.experiment, *args.overrides, "--mix", mix,
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            measured = json.loads(output)
            results[mix]["times"] += measured["times"]
            results[mix]["cpu_times"] += measured["cpu_times"]
            results[mix]["peak_mb"] = max(results[mix]["peak_mb"], measured["peak_mb"])
            results[mix]["device"] = measured["device"]
    gpu = any(r.get("device") == "cuda" for r in results.values())
    key = "times" if gpu else "cpu_times"
    base = statistics.median(results["CLIP"][key]) if "CLIP" in results else None
    memory = "peak GPU MiB" if gpu else "peak RSS MiB"
    measure = "step ms" if gpu else "CPU ms/step"
    print(f"{'mix':<12} {measure:>12} {'vs CLIP':>8} {'wall ms':>9} {memory:>13}")
    for mix, result in results.items():
        median = statistics.median(result[key])
        ratio = f"{median / base:.2f}x" if base else "-"
        print(f"{mix:<12} {median * 1000:12.1f} {ratio:>8} {statistics.median(result['times']) * 1000:9.1f} {result['peak_mb']:13.0f}")


if __name__ == "__main__":
    main()
