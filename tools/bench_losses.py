"""Time and peak memory of each contrastive loss's forward+backward over a batch-size sweep.

CLIP (softmax over B x B), SigLIP (sigmoid over B x B, rank-blocked), FILIP (token-wise,
chunked) and the tiled exact CLIP and SigLIP (``vlp.tiled``) side by side in one run, on
random features, on CPU or the current GPU:

    python tools/bench_losses.py --batch-sizes 256 1024 4096 16384 --dim 512 --tokens 16
    python tools/bench_losses.py --batch-sizes 4096 16384 65536 --dim 512 --losses clip clip_tiled siglip siglip_tiled --isolate

Peak memory is the extra memory of the loss over its inputs: CUDA's allocator statistics
on a GPU; on CPU the growth of the peak resident set size (``ru_maxrss``) over the resident
size once the inputs exist. ``--isolate`` measures each (loss, batch) in a fresh process, so
every CPU peak is exact (otherwise a peak only shows once it exceeds every earlier one).
Dense losses above ``--max-dense-batch`` are skipped (B x B floats: 17 GB at 65,536).
The last column is the time relative to the dense loss of the same family at that batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from vlp.functional import filip_loss, infonce_loss, sigmoid_loss
from vlp.tiled import tiled_infonce_loss, tiled_sigmoid_loss

DENSE_OF = {"clip_tiled": "clip", "siglip_tiled": "siglip"}


def losses(args: argparse.Namespace) -> dict:
    """name -> (make inputs for a batch on a device, loss of those inputs)."""
    scale, bias, tile = torch.tensor(14.3), torch.tensor(-10.0), args.tile_size
    pooled = lambda b, device: _pooled(b, args.dim, device)  # noqa: E731
    return {
        "clip": (pooled, lambda x, y: infonce_loss(x, y, scale.to(x.device))),
        "siglip": (pooled, lambda x, y: sigmoid_loss(x, y, scale.to(x.device), bias.to(x.device))),
        "filip": (lambda b, device: _tokens(b, args, device), lambda *t: filip_loss(*t, scale.to(t[0].device), chunk_size=args.chunk_size)),
        "clip_tiled": (pooled, lambda x, y: tiled_infonce_loss(x, y, scale.to(x.device), tile)),
        "siglip_tiled": (pooled, lambda x, y: tiled_sigmoid_loss(x, y, scale.to(x.device), bias.to(x.device), tile)),
    }


def _pooled(batch: int, dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(batch, dim, device=device, requires_grad=True), torch.randn(batch, dim, device=device, requires_grad=True))


def _tokens(batch: int, args: argparse.Namespace, device: str) -> tuple:
    images = torch.randn(batch, args.patches, args.dim, device=device, requires_grad=True)
    texts = torch.randn(batch, args.tokens, args.dim, device=device, requires_grad=True)
    return images, torch.ones(batch, args.patches, dtype=torch.bool, device=device), texts, torch.ones(batch, args.tokens, dtype=torch.bool, device=device)


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resident_bytes(device: str) -> int:
    """Memory in use now: allocated CUDA memory, or the process's resident set size."""
    if device == "cuda":
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(entry: tuple, batch: int, device: str) -> tuple[float, int]:
    """Seconds of forward + backward, and peak bytes above what the inputs already hold."""
    make_inputs, loss_fn = entry
    inputs = make_inputs(batch, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = resident_bytes(device)
    started = time.perf_counter()
    loss_fn(*inputs).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, max(0, peak_bytes(device) - before)


def measure_isolated(name: str, batch: int, argv: list[str]) -> tuple[float, int]:
    """The same measurement in a fresh interpreter, so the CPU peak is this loss's alone."""
    command = [sys.executable, __file__, *argv, "--only", name, str(batch)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds, peak = json.loads(result.stdout.strip().splitlines()[-1])
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--losses", nargs="+", default=["clip", "siglip", "filip"], choices=["clip", "siglip", "filip", "clip_tiled", "siglip_tiled"])
    parser.add_argument("--tile-size", type=int, default=4096, help="rows and columns per tile of the tiled losses")
    parser.add_argument("--max-dense-batch", type=int, default=16384, help="skip clip/siglip/filip above this batch")
    parser.add_argument("--isolate", action="store_true", help="one fresh process per measurement (exact CPU peaks)")
    parser.add_argument("--only", nargs=2, metavar=("LOSS", "BATCH"), help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = losses(args)
    if args.only:  # a child of --isolate: one measurement, printed as JSON
        print(json.dumps(measure(table[args.only[0]], int(args.only[1]), device)))
        return
    child_argv = [a for a in argv if a != "--isolate"]
    print(f"device={device} dim={args.dim} tile={args.tile_size} patches={args.patches} tokens={args.tokens} "
          f"filip_chunk={args.chunk_size} isolated={args.isolate} threads={torch.get_num_threads()}")
    print(f"{'loss':<14}{'batch':>8}{'seconds':>10}{'peak MiB':>10}{'vs dense':>10}")
    for batch in args.batch_sizes:
        dense_seconds: dict[str, float] = {}
        for name in args.losses:
            if name not in DENSE_OF and batch > args.max_dense_batch:
                print(f"{name:<14}{batch:>8}{'skipped (dense above --max-dense-batch)':>40}")
                continue
            seconds, peak = measure_isolated(name, batch, child_argv) if args.isolate else measure(table[name], batch, device)
            dense_seconds[name] = seconds
            dense = dense_seconds.get(DENSE_OF.get(name, ""))
            ratio = f"{seconds / dense:9.2f}x" if dense else f"{'-':>10}"
            print(f"{name:<14}{batch:>8}{seconds:>10.3f}{peak / 2**20:>10.1f}{ratio}", flush=True)


if __name__ == "__main__":
    main()
