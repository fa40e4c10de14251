"""Long-CLIP's loss against the official recipe written out (eigen-decomposition PCA, loops), float64, and under DDP."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlp.objectives.long_clip import long_clip_losses
from vlp.views.first_sentence import first_sentence


def official_pca(x: torch.Tensor, k: int) -> torch.Tensor:
    """The official script's first PCA: eigenvectors of the covariance, sorted by eigenvalue."""
    mean = x.mean(0)
    centred = x - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred)
    top = vectors[:, values.argsort(descending=True)[:k]]
    return centred @ top @ top.T + mean


def smoothed_ce(logits: torch.Tensor, eps: float) -> float:
    """Mean over rows of -sum_j q_j log p_j with q = (1-eps) one-hot(diagonal) + eps/N."""
    n = logits.shape[1]
    total = 0.0
    for row in range(logits.shape[0]):
        values = [float(v) for v in logits[row]]
        log_z = max(values) + math.log(sum(math.exp(v - max(values)) for v in values))
        total += -sum(((1 - eps) * (j == row) + eps / n) * (values[j] - log_z) for j in range(n))
    return total / logits.shape[0]


def reference(images, long_texts, short_texts, scale, k, eps):
    images, long_texts, short_texts = (F.normalize(t, dim=-1) for t in (images, long_texts, short_texts))
    long_loss = (smoothed_ce(scale * images @ long_texts.T, eps) + smoothed_ce(scale * long_texts @ images.T, eps)) / 2
    coarse = official_pca(images, k)
    short_loss = (smoothed_ce(scale * coarse @ short_texts.T, eps) + smoothed_ce(scale * short_texts @ coarse.T, eps)) / 2
    return long_loss, short_loss


def inputs():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(8, 6, generator=generator, dtype=torch.float64) for _ in range(3)] + [
        torch.randn(6, 6, generator=generator, dtype=torch.float64)]


def test_losses_equal_the_official_recipe():
    images, long_texts, short_texts, _ = inputs()
    scale = torch.tensor(7.0, dtype=torch.float64)
    got = long_clip_losses(images, long_texts, short_texts, scale, 3, 0.1)
    expected = reference(images, long_texts, short_texts, 7.0, 3, 0.1)
    assert abs(got[0].item() - expected[0]) < 1e-12 and abs(got[1].item() - expected[1]) < 1e-10


def test_primary_component_gradient_matches_finite_differences():
    images, long_texts, short_texts, _ = inputs()
    images.requires_grad_(True)
    scale = torch.tensor(7.0, dtype=torch.float64)
    long_clip_losses(images, long_texts, short_texts, scale, 3, 0.1)[1].backward()
    step = 1e-6
    for index in [(0, 0), (4, 3), (7, 5)]:
        plus, minus = images.detach().clone(), images.detach().clone()
        plus[index] += step
        minus[index] -= step
        numeric = (long_clip_losses(plus, long_texts, short_texts, scale, 3, 0.1)[1]
                   - long_clip_losses(minus, long_texts, short_texts, scale, 3, 0.1)[1]) / (2 * step)
        assert abs(numeric.item() - images.grad[index].item()) < 1e-6


def test_short_caption_is_the_first_sentence():
    assert first_sentence("A red circle. It sits at the top left. The background is grey.") == "A red circle"
    assert first_sentence("one sentence only") == "one sentence only"


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        images, long_texts, short_texts, weight = inputs()
        rows = slice(0, 3) if rank == 0 else slice(3, 8)
        shared = weight.clone().requires_grad_(True)
        long_loss, short_loss = long_clip_losses(images[rows] @ shared, long_texts[rows] @ shared, short_texts[rows] @ shared,
                                                 torch.tensor(7.0, dtype=torch.float64), 3, 0.1)
        loss = long_loss + 0.1 * short_loss
        loss.backward()
        grad, mean = shared.grad.clone(), loss.detach().clone()
        dist.all_reduce(grad)
        dist.all_reduce(mean)
        torch.save((mean / 2, grad / 2), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_the_global_batch(tmp_path: Path):
    mp.spawn(worker, args=(str(tmp_path), 29545), nprocs=2, join=True)
    images, long_texts, short_texts, weight = inputs()
    shared = weight.clone().requires_grad_(True)
    long_loss, short_loss = long_clip_losses(images @ shared, long_texts @ shared, short_texts @ shared,
                                             torch.tensor(7.0, dtype=torch.float64), 3, 0.1)
    (long_loss + 0.1 * short_loss).backward()
    for rank in range(2):
        loss, grad = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(loss, (long_loss + 0.1 * short_loss).detach())
        torch.testing.assert_close(grad, shared.grad)


def test_example_experiment_fine_tunes_a_pretrained_clip_on_long_captions(tmp_path: Path):
    """`vlp fit experiments/long_clip.yaml` on a tiny local CLIPModel (77 positions) and a JSONL of long captions."""
    import json

    from PIL import Image
    from transformers import CLIPConfig, CLIPModel

    from vlp.text.word_tokenizer import build_word_tokenizer

    from conftest import REPO, run_vlp

    words = ["red", "green", "blue", "circle", "square", "top", "left", "a", "the", "it", "is", "at", "on", "grey"]
    captions = [" ".join(words[(i + j) % len(words)] for j in range(90)).replace("grey", "grey.") for i in range(8)]
    tokenizer = build_word_tokenizer(captions)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**tower, "vocab_size": len(tokenizer), "max_position_embeddings": 77, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    clip = tmp_path / "clip"
    CLIPModel(CLIPConfig(text_config=text, vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16)).save_pretrained(clip)
    tokenizer.save_pretrained(clip)
    (tmp_path / "images").mkdir()
    lines = []
    for i, caption in enumerate(captions):
        Image.new("RGB", (40, 40), (30 * i, 255 - 30 * i, 90)).save(tmp_path / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": caption}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    run_vlp("fit", str(REPO / "experiments" / "long_clip.yaml"),
        f"vars.clip={clip}", f"vars.train={tmp_path / 'data.jsonl'}", f"vars.val={tmp_path / 'data.jsonl'}",
        f"vars.images={tmp_path / 'images'}", "vars.image_size=32", "model.embed_dim=16", "data.batch_size=4",
        "trainer.max_epochs=1", "trainer.precision=32-true", "trainer.enable_progress_bar=false", f"run_dir={run_dir}",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    assert any(k.startswith("retrieval") for k in metrics["metrics"])
