"""Crash, signal and NaN: through the real ``vlp fit`` command in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_OVERRIDES
from test_data_fit import write_shapes_csv

EXPERIMENT = str(REPO / "experiments" / "tiny_vit.yaml")
# 256 / 32 = 8 optimizer steps per epoch, 16 in all; last.ckpt rewritten every 3 steps.
RUN = TINY_OVERRIDES + ["trainer.max_epochs=2", "checkpoint.every_n_steps=3", "eval=[]"]

# Imported at interpreter start (sitecustomize) by the run to crash: a real SIGKILL of the
# `vlp fit` process right after a chosen optimizer step, so the crash point is exact.
KILL_AFTER_STEP = """
import os, signal
from vlp.model import VLPModule

def _crash(self, *args, **kwargs):
    if self.global_step == int(os.environ["KILL_AFTER_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)

VLPModule.on_train_batch_end = _crash
"""


def vlp(*args: str, extra_path: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(extra_path or ""), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    environment = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "vlp", *args], env=environment, capture_output=True, text=True, timeout=600)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_last_gives_bit_identical_weights(tmp_path: Path):
    whole = vlp("fit", EXPERIMENT, *RUN, "checkpoint.keep=2", f"run_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    # saved at steps 3, 6, 8 (epoch end), 9, 12, 15, 16 (epoch end): the newest two numbered ones are kept
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()) == ["last.ckpt", "step=15.ckpt", "step=16.ckpt"]

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AFTER_STEP)
    crashed = tmp_path / "crashed"
    killed = vlp("fit", EXPERIMENT, *RUN, f"run_dir={crashed}", extra_path=hook, KILL_AFTER_STEP="5")
    assert killed.returncode == -signal.SIGKILL
    saved = torch.load(crashed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3  # mid first epoch (3 of 8 batches; 2 more were lost): the resumed run crosses an epoch

    resumed = vlp("fit", EXPERIMENT, *RUN, f"run_dir={crashed}", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((crashed / "metrics.json").read_text())["global_step"] == 16
    for run in (tmp_path / "whole", crashed):  # the final state, not the last periodic save
        assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 16
    expected, got = weights(tmp_path / "whole"), weights(crashed)
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, different


@pytest.fixture(scope="module")
def augmented_files(tmp_path_factory) -> Path:
    """Rendered shapes as PNG files in a CSV table: the ``csv`` datamodule crops them at random in training."""
    root = tmp_path_factory.mktemp("augmented")
    write_shapes_csv(root / "data")  # 64 training rows, one of them a bad image: 4 steps of 16 per epoch
    return root


def files_run(root: Path, workers: int) -> list[str]:
    data = root / "data"
    return [o for o in TINY_OVERRIDES if not o.startswith("data.")] + [
        f"data={{name: csv, train: {data / 'train.csv'}, val: {data / 'val.csv'}, root: {data}, image_size: 16, "
        f"batch_size: 16, max_bad_fraction: 0.05, num_workers: {workers}}}",
        "trainer.max_epochs=2", "checkpoint.every_n_steps=3", "eval=[]"]


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "kill_after", "saved_at"), [(2, 7, 6), (2, 5, 4)])  # 0 workers: test_loader_draws.py
def test_kill_9_with_augmented_images_and_loader_workers_resumes_bit_identical(augmented_files: Path, tmp_path: Path,
                                                                               workers: int, kill_after: int, saved_at: int):
    """Random crops draw in the workers (or the main process); a resume must replay them and must not drop an epoch.

    Saved at step 6 the run is mid second epoch (2 of 4 batches); at step 4 it is at the first
    epoch's end, where a resumed run with workers used to skip the whole second epoch.
    """
    run = files_run(augmented_files, workers)
    whole = augmented_files / f"whole-{workers}"
    if not whole.exists():  # one uninterrupted run per worker count, shared by the cases
        finished = vlp("fit", EXPERIMENT, *run, f"run_dir={whole}")
        assert finished.returncode == 0, finished.stderr[-3000:]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AFTER_STEP)
    crashed = tmp_path / "crashed"
    killed = vlp("fit", EXPERIMENT, *run, f"run_dir={crashed}", extra_path=hook, KILL_AFTER_STEP=str(kill_after))
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(crashed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == saved_at
    resumed = vlp("fit", EXPERIMENT, *run, f"run_dir={crashed}", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((crashed / "metrics.json").read_text())["global_step"] == 8
    expected, got = weights(whole), weights(crashed)
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, different


@pytest.mark.slow
def test_a_two_process_ddp_run_resumed_mid_epoch_from_a_numbered_checkpoint_is_bit_identical(tmp_path: Path):
    """`vlp fit` under `ddp` (2 CPU processes): each rank's share of the order and its own caption draws resume.

    Lightning used to wrap the sampler in a DistributedSampler that redrew the order on resume, and it
    saves rank 0's loader state only, which rank 1 then loaded; both changed what a resumed run read.
    """
    run = RUN + ["checkpoint.keep=10", "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
    whole = tmp_path / "whole"  # 256 / (2 x 32) = 4 steps per epoch
    finished = vlp("fit", EXPERIMENT, *run, f"run_dir={whole}")
    assert finished.returncode == 0, finished.stderr[-3000:]
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(whole, resumed_dir)
    resumed = vlp("fit", EXPERIMENT, *run, f"run_dir={resumed_dir}", "--resume", str(resumed_dir / "checkpoints" / "step=3.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 8
    expected, got = weights(whole), weights(resumed_dir)
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, different


@pytest.mark.slow
def test_a_moved_run_directory_resumes_and_keeps_writing_its_last_checkpoint(tmp_path: Path):
    """Runs move (scratch to project storage); a resumed run used to save into last-v1.ckpt, which `--resume last` never reads."""
    first = vlp("fit", EXPERIMENT, *RUN, "trainer.max_epochs=1", f"run_dir={tmp_path / 'scratch'}")
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp_path / "scratch").rename(tmp_path / "project")
    resumed = vlp("fit", EXPERIMENT, *RUN, f"run_dir={tmp_path / 'project'}", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "project" / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "project" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 16


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_exits_non_zero_with_how_to_resume(tmp_path: Path, signum: int):
    run_dir = tmp_path / "run"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AFTER_STEP.replace("signal.SIGKILL", f"signal.{signum.name}"))
    result = vlp("fit", EXPERIMENT, *RUN, "checkpoint.every_n_steps=null", f"run_dir={run_dir}", extra_path=hook,
                 KILL_AFTER_STEP="5")
    assert result.returncode == 128 + signum
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"vlp: stopped: Stopped by {signum.name}") and "--resume last" in message
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 5  # the batch in flight finished, then the state was saved


@pytest.mark.slow
def test_a_non_finite_loss_stops_naming_step_and_objective_and_keeps_the_last_good_checkpoint(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = vlp("fit", EXPERIMENT, *RUN, "optim.lr=1e30", "optim.warmup_steps=0", "checkpoint.every_n_steps=1",
                 f"run_dir={run_dir}")
    assert result.returncode == 1, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "non-finite" in message and "at optimizer step " in message
    assert "Objective clip gave a non-finite loss" in message or "The gradient of " in message
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "metrics.json").exists()
