"""FSDP2 (Lightning's ModelParallelStrategy, ``fully_shard`` per block) on 2 CPU processes.

The strategy re-executes the launching script, so the run is a subprocess. With a LoRA
image tower and a locked text tower (frozen and trainable parameters in the same
units), the mean of the rank losses and the full gradients after FSDP2's reduction equal
one process's loss and gradients on the whole 8-sample batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlp.step import Step

from conftest import REPO, TINY_OVERRIDES

TESTS = Path(__file__).resolve().parent
OVERRIDES = TINY_OVERRIDES + [
    "optim.name=sgd", "optim.warmup_steps=0",
    "model.tuning={image: {mode: lora, lora: {r: 4}}, text: {mode: locked, unlocked_blocks: 1}}",
]


@pytest.mark.slow
def test_fsdp2_two_processes_equal_one_process_with_lora_and_locked_towers(tmp_path: Path):
    from fsdp_equivalence_script import build
    from test_ddp_equivalence import GLOBAL_BATCH
    from vlp.data.base import Collate

    experiment = str(REPO / "experiments" / "tiny_vit.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(TESTS / "fsdp_equivalence_script.py"), str(tmp_path), experiment, *OVERRIDES],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    reference, dataset = build(experiment, OVERRIDES)
    batch = Collate(reference.encoder.text_tower.tokenize, sample_caption=False)([dataset[i] for i in range(GLOBAL_BATCH)])
    reference.train()
    loss = reference.objectives["clip"](Step(batch, reference.encoder, reference.image_views, reference.text_views))["loss"]
    loss.backward()

    # every block and tower is sharded, LoRA and frozen weights included; the temperature is replicated
    assert "encoder.image_tower.backbone.blocks.0.attn.qkv.lora_A.default.weight" in ranks[0]["sharded"]
    assert "encoder.text_tower.backbone.embeddings.token_embedding.weight" in ranks[0]["sharded"]
    assert set(ranks[0]["sharded"]) == {n for n, _ in reference.named_parameters() if not n.startswith("objectives.")}
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=1e-5, atol=1e-6)
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert set(ranks[0]["grads"]) == set(ranks[1]["grads"]) == set(expected)
    assert not any("token_embedding" in n for n in expected)  # the locked part has no gradient
    for name, grad in expected.items():
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
