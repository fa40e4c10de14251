"""Training images/s and model FLOPs utilisation (MFU) of a ViT-B/16 CLIP at bf16, on the current accelerator.

    python tools/bench_gpu.py                       # ViT-B/16 image tower, CLIP text transformer, batch 256
    python tools/bench_gpu.py --batch-size 512 --steps 30 --compile
    python tools/bench_gpu.py --tiny --peak-tflops 1  # a tiny model on CPU (what the test runs)

The model is vlp's own: ``experiments/tiny_vit.yaml`` with the towers set to CLIP ViT-B/16
(timm ``vit_base_patch16_224``; text: 12 layers, width 512, 8 heads, 77 tokens; embedding 512)
and the CLIP objective. Batches are random pixels and token ids already on the device, so
the number is the model's training speed (forward, loss, backward, AdamW step), not the
data pipeline's (``tools/bench_data.py``). Autocast runs the towers in bf16.

FLOPs follow the usual MFU convention (Chowdhery et al., 2022, App. B): matrix products
only, counted by a formula from the towers' shapes (:func:`clip_forward_flops`, checked
against ``torch.utils.flop_counter`` in tests/test_bench_gpu.py), and a training step is 3x
the forward pass. MFU = achieved FLOP/s / the device's dense bf16 peak (a table of common
GPUs, or ``--peak-tflops``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

VIT_B16 = [
    "model.embed_dim=512",
    "model.image_encoder.model_name=vit_base_patch16_224",
    "model.image_encoder.model_kwargs={}",
    "model.text_encoder.config={model_type: clip_text_model, hidden_size: 512, intermediate_size: 2048, "
    "num_hidden_layers: 12, num_attention_heads: 8, max_position_embeddings: 77}",
    "model.text_encoder.max_length=77",
    "model.objectives=[{name: clip, weight: 1.0}]",
    "data.train_size=64", "data.val_size=16", "data.image_size=224",
]
TINY = [
    "model.embed_dim=32",
    "model.image_encoder.model_kwargs={img_size: 32, patch_size: 8, embed_dim: 48, depth: 2, num_heads: 2, mlp_ratio: 2.0}",
    "model.text_encoder.config={model_type: clip_text_model, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2}",
    "model.text_encoder.max_length=12",
    "model.objectives=[{name: clip, weight: 1.0}]",
    "data.train_size=64", "data.val_size=16",
]

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0, "V100": 125.0}


@dataclass
class TransformerShape:
    tokens: int
    width: int
    depth: int
    mlp_width: int


def transformer_flops(shape: TransformerShape) -> int:
    """Forward matmul FLOPs of one sample through pre-norm transformer blocks (2 per multiply-add).

    Per block: QKV 3 N w^2, attention scores and weighted values 2 N^2 w, output projection
    N w^2, MLP 2 N w m (multiply-adds).
    """
    n, w, m = shape.tokens, shape.width, shape.mlp_width
    return 2 * shape.depth * (3 * n * w * w + 2 * n * n * w + n * w * w + 2 * n * w * m)


def tower_shapes(module, text_tokens: int) -> tuple[TransformerShape, int, TransformerShape]:
    """(image transformer, patch-embedding FLOPs per sample, text transformer) read from the built towers."""
    vit = module.encoder.image_tower.backbone
    patches = vit.patch_embed.num_patches
    image = TransformerShape(patches + vit.num_prefix_tokens, vit.embed_dim, len(vit.blocks), vit.blocks[0].mlp.fc1.out_features)
    patch_embed = 2 * patches * vit.patch_embed.proj.weight[0].numel() * vit.embed_dim
    config = module.encoder.text_tower.backbone.config
    text = TransformerShape(text_tokens, config.hidden_size, config.num_hidden_layers, config.intermediate_size)
    return image, patch_embed, text


def clip_forward_flops(module, batch_size: int, text_tokens: int) -> int:
    """Forward matmul FLOPs of a CLIP training batch: both towers, both projections, the B x B logits (twice)."""
    image, patch_embed, text = tower_shapes(module, text_tokens)
    embed = module.encoder.image_tower.projection.out_features
    per_sample = patch_embed + transformer_flops(image) + transformer_flops(text) + 2 * embed * (image.width + text.width)
    return batch_size * per_sample + 2 * (2 * batch_size * batch_size * embed)


def build(overrides: list[str], device: torch.device):
    from vlp.build import build_datamodule, build_module
    from vlp.config.experiment import load_experiment

    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", overrides)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    return build_module(experiment, datamodule).to(device)


def random_batch(module, batch_size: int, text_tokens: int, device: torch.device):
    from vlp.batch import Batch

    size = module.encoder.image_tower.backbone.patch_embed.img_size
    vocabulary = module.encoder.text_tower.backbone.config.vocab_size
    images = torch.rand(batch_size, 3, *size, device=device)
    input_ids = torch.randint(0, vocabulary, (batch_size, text_tokens), device=device)
    return Batch(images, input_ids, torch.ones_like(input_ids))


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke run)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both towers")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    module = build(TINY if args.tiny else VIT_B16, device)
    text_tokens = module.encoder.text_tower.max_length  # CLIP pads every caption to its context length
    if args.compile:
        module.encoder.image_tower = torch.compile(module.encoder.image_tower)
        module.encoder.text_tower = torch.compile(module.encoder.text_tower)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = random_batch(module, args.batch_size, text_tokens, device)
    times = []
    module.train()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: the module's logging is inert
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = module._objective_losses(batch, "train")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    flops = 3 * clip_forward_flops(module, args.batch_size, text_tokens)
    achieved = flops / seconds / 1e12
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"images_per_s": args.batch_size / seconds, "step_s": seconds, "tflops": achieved, "train_flops_per_step": flops,
               "mfu": achieved / peak if peak else float("nan")}
    print(f"{name}: {'tiny model' if args.tiny else 'CLIP ViT-B/16'}, batch {args.batch_size}, bf16 autocast, compile={args.compile}")
    print(f"median step {seconds * 1000:.1f} ms over {args.steps} steps: {results['images_per_s']:.0f} images/s, "
          f"{flops / 1e12:.2f} TFLOP per step, {achieved:.1f} TFLOP/s, "
          + (f"MFU {results['mfu']:.1%} of {peak:.0f} TFLOP/s" if peak else "MFU unknown (pass --peak-tflops)"))
    return results


if __name__ == "__main__":
    main()
