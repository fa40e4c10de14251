"""The run report, learning-rate logging, hparams, and callbacks/loggers from YAML."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, TINY_OVERRIDES
from test_api_export import run_vlp
from vlp.config.experiment import load_experiment
from vlp.optim import warmup_cosine
from vlp.registry import ConfigError
from vlp.report import confusion_matrix

EXPERIMENT = REPO / "experiments" / "tiny_vit.yaml"


@pytest.mark.slow
def test_fit_and_eval_write_reports_with_plots_and_yaml_callbacks_and_loggers(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_vlp(
        "fit", str(EXPERIMENT), *TINY_OVERRIDES, f"run_dir={run_dir}", "optim.warmup_steps=3", "trainer.log_every_n_steps=1",
        "trainer.callbacks=[{class: EarlyStopping, monitor: val/loss, patience: 5}]",
        "trainer.logger=[{class: CSVLogger, name: user_csv}]",
    )
    report = (run_dir / "report.md").read_text()
    for plot in ("loss_clip", "learning_rate", "temperature", "confusion_shape", "confusion_colour", "retrieval_examples"):
        assert (run_dir / f"{plot}.png").stat().st_size > 1000 and f"({plot}.png)" in report
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for name, value in metrics.items():
        assert f"| `{name}` | {value:.4f} |" in report

    # The learning rate of every logged step is the schedule's value (warmup then cosine).
    logged = list(csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open()))
    columns = [c for c in logged[0] if c.startswith("lr-AdamW")]  # one per parameter group (decay / no decay)
    rows = [row for row in logged if row[columns[0]]]
    total = 256 // 32  # TINY_OVERRIDES: 256 images, batch 32, one epoch
    assert columns and [int(r["step"]) for r in rows] == list(range(total))
    for row in rows:
        for column in columns:
            assert float(row[column]) == pytest.approx(1e-3 * warmup_cosine(int(row["step"]), 3, total, 0.0, "cosine"), rel=1e-6)
    # TensorBoard's hparams hold the resolved config; the YAML logger wrote its own logs beside vlp's.
    hparams = yaml.safe_load((run_dir / "tensorboard" / "version_0" / "hparams.yaml").read_text())
    assert hparams["model"]["embed_dim"] == 32 and hparams["data"]["name"] == "shapes"
    assert list((run_dir / "user_csv").glob("version_0/metrics.csv"))

    run_vlp("eval", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"))
    eval_report = (run_dir / "eval-last-report" / "report.md").read_text()
    assert "(confusion_shape.png)" in eval_report and "(loss_clip.png)" in eval_report


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("trainer.callbacks=[{class: os.system}]", 'Unknown callback "os.system"'),  # no dotted imports from YAML
        ("trainer.callbacks=[{class: EarlyStopping, monitr: val/loss}]", "Unknown key `trainer.callbacks[0].monitr`"),
        ("trainer.logger=[{class: NoSuchLogger}]", 'Unknown logger "NoSuchLogger"'),
        ("trainer.callbacks=[EarlyStopping]", "must be a list of entries with a `class`"),
    ],
)
def test_bad_callback_or_logger_entries_are_config_errors(entry: str, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(EXPERIMENT, [entry])


def test_plugin_registered_callback_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "my_callbacks.py").write_text(
        "import lightning as L\nfrom vlp.callbacks import CALLBACKS\n\n"
        "@CALLBACKS.register('count_steps')\nclass CountSteps(L.Callback):\n    def __init__(self, every: int = 1) -> None:\n        self.every = every\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    experiment = load_experiment(EXPERIMENT, ["plugins=[my_callbacks]", "trainer.callbacks=[{class: count_steps, every: 3}]"])
    from vlp.run import build_trainer

    trainer = build_trainer(experiment.trainer, tmp_path / "run")
    (callback,) = [c for c in trainer.callbacks if type(c).__name__ == "CountSteps"]
    assert callback.every == 3


def test_confusion_matrix_counts_true_predicted_pairs():
    labels, predictions = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2])
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(labels.tolist(), predictions.tolist()):
        expected[t, p] += 1
    assert torch.equal(confusion_matrix(predictions, labels, 3), expected)
