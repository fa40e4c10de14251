"""tools/bench_gpu.py: its FLOP formula equals torch's FLOP counter on the real towers, and it runs on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_gpu  # noqa: E402


def test_formula_counts_exactly_the_matmul_flops_torch_counts_in_a_tiny_clip_forward():
    torch.manual_seed(0)
    module = bench_gpu.build(bench_gpu.TINY, torch.device("cpu"))
    tokens = module.encoder.text_tower.max_length
    batch = bench_gpu.random_batch(module, 6, tokens, torch.device("cpu"))
    # The fused CPU attention kernel has no FLOP formula in torch's counter; the math backend
    # computes the same products as batched matmuls, which it counts.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module._objective_losses(batch, "train")
    assert counter.get_total_flops() == bench_gpu.clip_forward_flops(module, 6, tokens) > 0


def test_vit_b16_image_tower_formula_gives_timms_published_17_6_gmacs():
    shape = bench_gpu.TransformerShape(tokens=197, width=768, depth=12, mlp_width=3072)
    patch_embed = 2 * 196 * (3 * 16 * 16) * 768
    assert round((bench_gpu.transformer_flops(shape) + patch_embed) / 2e9, 1) == 17.6


def test_tiny_benchmark_runs_on_cpu_and_reports_utilisation():
    results = bench_gpu.main(["--tiny", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--peak-tflops", "1"])
    assert results["images_per_s"] > 0 and 0 < results["mfu"] < 1
    assert results["train_flops_per_step"] % 3 == 0
