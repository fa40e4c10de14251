"""``vlp fit`` with 2 CPU processes, run as a user runs it (the command in a subprocess).

Lightning's ``ddp`` re-runs the command for rank 1, ``ddp_spawn`` forks it from inside
fit, and ``torchrun`` starts both ranks itself. Each must leave one run directory holding
one run whose weights and metrics equal a single process trained on the same global
batches (two ranks of 16 = one process of 32; SGD, so equal gradients give equal weights).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_OVERRIDES

TESTS = Path(__file__).resolve().parent
OVERRIDES = TINY_OVERRIDES + [
    "plugins=[fixed_order_data]", "data.name=fixed_order_shapes", "data.image_size=16", "data.train_size=128", "data.val_size=48",
    "optim.name=sgd", "optim.warmup_steps=0", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
    "eval=[{name: zero_shot}, {name: retrieval}, {name: linear_probe, steps_per_decade: 1}]",
]
GLOBAL_BATCH = 32


def vlp(*args: str, cwd: Path, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "vlp"] if launcher else [shutil.which("vlp") or sys.executable, *([] if shutil.which("vlp") else ["-m", "vlp"])]
    result = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def trained(run_dir: Path) -> tuple[dict, dict]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["state_dict"], json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[dict, dict]:
    cwd = tmp_path_factory.mktemp("single")
    vlp("fit", str(REPO / "experiments" / "tiny_vit.yaml"), *OVERRIDES, f"data.batch_size={GLOBAL_BATCH}", "run_dir=run", cwd=cwd)
    return trained(cwd / "run")


def assert_one_run(run_dir: Path) -> None:
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["version_0"]
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == ["version_0"]
    assert (run_dir / "config.yaml").is_file()


def assert_same_run(run_dir: Path, one_process: tuple[dict, dict]) -> None:
    weights, metrics = trained(run_dir)
    expected_weights, expected_metrics = one_process
    assert metrics["global_step"] == expected_metrics["global_step"] == 128 // GLOBAL_BATCH
    assert set(weights) == set(expected_weights)
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # Both ranks embedded half of every evaluation set; rank 0 scored the gathered embeddings.
    assert metrics["metrics"] == pytest.approx(expected_metrics["metrics"], abs=1e-6)


@pytest.mark.slow
def test_ddp_subprocess_launch_makes_one_timestamped_run(tmp_path: Path, one_process):
    """Rank 1 re-runs ``vlp fit``: it must join rank 0's timestamped directory, not make its own."""
    vlp("fit", str(REPO / "experiments" / "tiny_vit.yaml"), *OVERRIDES, f"data.batch_size={GLOBAL_BATCH // 2}",
        "trainer.strategy=ddp", "trainer.devices=2", cwd=tmp_path)
    runs = list((tmp_path / "runs" / "tiny_vit").iterdir())
    assert len(runs) == 1, runs
    assert_one_run(runs[0])
    assert_same_run(runs[0], one_process)


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["torchrun", "ddp_spawn"])
def test_torchrun_and_ddp_spawn_fill_the_given_run_dir_once(tmp_path: Path, one_process, launch: str):
    args = ["fit", str(REPO / "experiments" / "tiny_vit.yaml"), *OVERRIDES, f"data.batch_size={GLOBAL_BATCH // 2}",
            "trainer.devices=2", "run_dir=run"]
    if launch == "torchrun":
        torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
        vlp(*args, "trainer.strategy=ddp", cwd=tmp_path, launcher=torchrun)
    else:
        vlp(*args, "trainer.strategy=ddp_spawn", cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert_one_run(tmp_path / "run")
    assert_same_run(tmp_path / "run", one_process)


@pytest.mark.slow
def test_fsdp2_fit_export_and_resume_from_distributed_checkpoint(tmp_path: Path, one_process):
    """experiments/fsdp.yaml: shards per block, DCP checkpoint directory, export on one process, resume on two."""
    from vlp.export import load_exported
    from vlp.run import load_vlp_checkpoint

    args = ["fit", str(REPO / "experiments" / "fsdp.yaml"), *OVERRIDES, f"data.batch_size={GLOBAL_BATCH // 2}",
            "trainer.precision=32-true", "run_dir=run"]
    vlp(*args, cwd=tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_dir() and (checkpoint / "meta.pt").is_file()  # one shard file per rank
    assert len(list(checkpoint.glob("*.distcp"))) == 2
    weights = load_vlp_checkpoint(checkpoint)["state_dict"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    expected_weights, expected_metrics = one_process
    assert set(weights) == set(expected_weights)
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert metrics["metrics"] == pytest.approx(expected_metrics["metrics"], abs=1e-6)

    vlp("export", "--ckpt", str(checkpoint), "--out", "exported", "--format", "safetensors", cwd=tmp_path)
    exported = load_exported(tmp_path / "exported").state_dict()
    for name, value in weights.items():
        torch.testing.assert_close(exported[name], value, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")

    vlp(*args, "trainer.max_epochs=2", "--resume", "last", cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 2 * 128 // GLOBAL_BATCH
    assert sorted(p.name for p in (tmp_path / "run" / "csv").iterdir()) == ["version_0", "version_1"]


def test_externally_launched_ranks_without_run_dir_are_refused(tmp_path: Path, monkeypatch):
    """torchrun's ranks cannot agree on a timestamp: one sentence asks for run_dir, nothing is written."""
    from vlp.registry import ConfigError
    from vlp.run import fit

    monkeypatch.chdir(tmp_path)
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                       "TORCHELASTIC_RUN_ID": "test", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29561"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="external launcher .*TorchElasticEnvironment.*pass run_dir="):
        fit(str(REPO / "experiments" / "tiny_vit.yaml"), TINY_OVERRIDES + ["trainer.strategy=ddp", "trainer.devices=2",
                                                                          "trainer.accelerator=cpu"])
    assert list(tmp_path.iterdir()) == []
