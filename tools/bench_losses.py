"""Time and peak memory of each contrastive loss's forward+backward over a batch-size sweep.

CLIP (softmax over B x B), SigLIP (sigmoid over B x B, rank-blocked) and FILIP (token-wise,
chunked) side by side in one run, on random unit features, on CPU or the current GPU:

    python tools/bench_losses.py --batch-sizes 256 1024 4096 16384 --dim 512 --tokens 16

Peak memory is measured with CUDA's allocator statistics on a GPU and as the growth of
the process's peak resident set size (``ru_maxrss``) on CPU, so CPU numbers only grow
once a batch needs more than every earlier one did; run one size per process for exact
CPU peaks.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vlp.functional import filip_loss, infonce_loss, sigmoid_loss


def losses(args: argparse.Namespace) -> dict:
    return {
        "clip": lambda b, device: infonce_loss(*_pooled(b, args.dim, device), torch.tensor(14.3, device=device)),
        "siglip": lambda b, device: sigmoid_loss(*_pooled(b, args.dim, device), torch.tensor(10.0, device=device), torch.tensor(-10.0, device=device)),
        "filip": lambda b, device: filip_loss(*_tokens(b, args, device), torch.tensor(14.3, device=device), chunk_size=args.chunk_size),
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


def measure(loss_fn, batch: int, device: str) -> tuple[float, int]:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = 0 if device == "cuda" else peak_bytes(device)
    started = time.perf_counter()
    loss_fn(batch, device).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, peak_bytes(device) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--losses", nargs="+", default=["clip", "siglip", "filip"])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = losses(args)
    print(f"device={device} dim={args.dim} patches={args.patches} tokens={args.tokens} filip_chunk={args.chunk_size}")
    print(f"{'loss':<8}{'batch':>8}{'seconds':>10}{'peak MiB':>10}{'vs clip s':>11}")
    for batch in args.batch_sizes:
        clip_seconds = None
        for name in args.losses:
            seconds, peak = measure(table[name], batch, device)
            clip_seconds = seconds if name == "clip" else clip_seconds
            ratio = f"{seconds / clip_seconds:10.2f}x" if clip_seconds else f"{'-':>11}"
            print(f"{name:<8}{batch:>8}{seconds:>10.3f}{peak / 2**20:>10.1f}{ratio}")


if __name__ == "__main__":
    main()
