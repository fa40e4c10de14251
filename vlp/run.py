"""The two things a user runs: ``fit`` an experiment into a run directory, ``evaluate`` a checkpoint."""

from __future__ import annotations

import json
import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from vlp.build import build_datamodule, build_module
from vlp.callbacks import build_entries
from vlp.checkpointing import (
    LAST, AtomicCheckpointIO, CheckpointConfig, ExactResume, NonFiniteGuard, PeriodicCheckpoint, StopOnSignal,
    TrainingInterrupted, interrupted_message,
)
from vlp.config.experiment import Experiment, experiment_from_resolved, load_experiment
from vlp.config.resume import check_resume_changes
from vlp.evaluation.during_fit import EvaluateOnDevice
from vlp.parallel import FSDP2, check_ranks_agree, inherited_run_dir, read_distributed_checkpoint, shared_with_launched_ranks, strategy_from_name
from vlp.preflight import preflight
from vlp.registry import ConfigError
from vlp.report import write_report


def default_run_dir(experiment: Experiment) -> Path:
    return Path("runs") / experiment.run.name / datetime.now().strftime("%Y%m%d-%H%M%S")


def resolve_resume(resume: str | None, run_dir: Path) -> str | None:
    """``last`` means the run directory's last checkpoint; anything else is a path."""
    if resume is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.exists():  # a file, or a directory of distributed checkpoint shards (FSDP2)
        raise ConfigError(f"Cannot resume: checkpoint {path} does not exist; pass an existing .ckpt or set run_dir to the run to continue.")
    return str(path)


def format_table(metrics: dict[str, float], before: dict[str, float] | None = None) -> str:
    """Metrics as a text table; with ``before``, also the starting model's values and the change."""
    width = max((len(k) for k in metrics), default=10)
    if before is None:
        lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
        lines += [f"{name:<{width}}  {value:6.4f}" for name, value in sorted(metrics.items())]
    else:
        lines = [f"{'metric':<{width}}  before   after   change", f"{'-' * width}  ------  ------  ------"]
        lines += [
            f"{name:<{width}}  {before.get(name, float('nan')):6.4f}  {value:6.4f}  {value - before.get(name, float('nan')):+6.4f}"
            for name, value in sorted(metrics.items())
        ]
    return "\n".join(lines)


def write_metrics(path: Path, metrics: dict[str, float], extra: dict[str, Any]) -> None:
    path.write_text(json.dumps({"metrics": metrics, **extra}, indent=2) + "\n")


def fit(experiment_path: str, overrides: list[str] = (), resume: str | None = None) -> Path:
    """Validate, build, train, evaluate; returns the run directory.

    Everything that can fail on bad input (config, components, data) is built before
    the run directory is created, so a failed start leaves nothing behind. Under
    multi-process strategies every rank runs this function; only rank 0 checks and
    writes the run directory, and the ranks Lightning's ``ddp`` launches inherit it.
    """
    experiment = load_experiment(experiment_path, overrides)
    explicit = experiment.run.run_dir is not None or resume not in (None, "last")
    run_dir = Path(experiment.run.run_dir) if experiment.run.run_dir else default_run_dir(experiment)
    if resume is not None and resume != "last" and experiment.run.run_dir is None:
        run_dir = Path(resume).resolve().parent.parent
    run_dir = inherited_run_dir() or run_dir  # a rank launched by Lightning's ``ddp`` uses its launcher's
    resume_path = resolve_resume(resume, run_dir)
    trainer = build_trainer(experiment.trainer, run_dir, experiment.checkpoint,
                            evaluate_before=experiment.run.evaluate_before and resume_path is None)
    check_ranks_agree(trainer, explicit)
    launching = trainer.global_rank == 0  # ranks > 0 re-run this function: they neither check nor write
    if launching and resume_path is None and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"Run directory {run_dir} already holds a run; continue it with --resume last or choose another run_dir=.")

    stored = None if resume_path is None else load_vlp_checkpoint(resume_path)["vlp"]
    if stored is not None:
        check_resume_changes(yaml.safe_load(stored["config"]), experiment.resolved, resume_path)
    L.seed_everything(experiment.run.seed, workers=True, verbose=False)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule, tokenizer_json=None if stored is None else stored["tokenizer"])
    preflight(module, datamodule, trainer.world_size)
    if launching:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(experiment.resolved, sort_keys=False))
    for logger in trainer.loggers:  # TensorBoard's hparams tab (and any user logger) get the resolved config
        logger.log_hyperparams(experiment.resolved)
    started = time.perf_counter()
    try:
        with shared_with_launched_ranks(run_dir):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path)
    except SIGTERMException as stop:
        signum = next(c.signum for c in trainer.callbacks if isinstance(c, StopOnSignal)) or 15
        kept = [o for o in overrides if not o.startswith("run_dir=")]
        command = shlex.join(["vlp", "fit", str(experiment_path), *kept, f"run_dir={run_dir}", "--resume", "last"])
        raise TrainingInterrupted(interrupted_message(signum, run_dir / "checkpoints" / LAST, command), signum) from stop
    train_seconds = time.perf_counter() - started
    if not launching:
        return run_dir
    evaluated = EvaluateOnDevice.read(run_dir / "metrics.json")  # rank 0 evaluated on the training device
    metrics, before = evaluated["metrics"], evaluated.get("before")
    extra = {"experiment": experiment.run.name, "checkpoint": str(run_dir / "checkpoints" / LAST),
             "train_seconds": round(train_seconds, 1), "global_step": evaluated["global_step"]}
    if before is not None:
        extra["before"] = before
        extra["change"] = {name: value - before[name] for name, value in metrics.items() if name in before}
    quality = getattr(datamodule, "quality", None)
    if quality is not None:
        datamodule.write_quality()
        extra["data_quality"] = quality.as_dict()
    write_metrics(run_dir / "metrics.json", metrics, extra)
    print(format_table(metrics, before))
    print(f"Report: {write_report(run_dir, module, datamodule, metrics, extra, run_dir=run_dir)}")
    print(f"Run directory: {run_dir}")
    return run_dir


def build_trainer(
    arguments: dict[str, Any], run_dir: Path, checkpoint: CheckpointConfig | None = None, evaluate_before: bool = False
) -> L.Trainer:
    """Lightning's Trainer with vlp's loggers and checkpoints; a value Lightning rejects is a ConfigError.

    Checkpoints are periodic and atomic, signals save one and stop, a non-finite loss or
    gradient stops before the optimizer uses it (see :mod:`vlp.checkpointing`); the
    evaluations run inside fit, on the training device (:mod:`vlp.evaluation.during_fit`).
    Built before the run directory exists (loggers and checkpoints create theirs lazily).
    """
    arguments = dict(arguments)  # the user's trainer.callbacks / trainer.logger entries join vlp's own
    callbacks, loggers = build_entries(arguments, "callbacks"), build_entries(arguments, "logger", save_dir=str(run_dir))
    arguments.pop("callbacks", None), arguments.pop("logger", None)
    plugins = arguments.pop("plugins", None) or []
    plugins = plugins if isinstance(plugins, list) else [plugins]
    if arguments.get("strategy") != FSDP2:  # FSDP2 writes distributed-checkpoint directories through its own IO
        plugins = [*plugins, AtomicCheckpointIO()]
    try:
        return L.Trainer(
            default_root_dir=run_dir,
            # Versioned log directories: a resumed run adds version_1, ... and never rewrites earlier logs.
            logger=[TensorBoardLogger(run_dir, name="tensorboard"), CSVLogger(run_dir, name="csv"), *loggers],
            callbacks=[PeriodicCheckpoint(run_dir / "checkpoints", checkpoint or CheckpointConfig()), StopOnSignal(),
                       ExactResume(), NonFiniteGuard(), LearningRateMonitor(logging_interval="step"),
                       EvaluateOnDevice(run_dir / "metrics.json", before=evaluate_before), *callbacks],
            plugins=plugins,
            **strategy_from_name(arguments),
        )
    except (ValueError, TypeError, MisconfigurationException) as error:
        raise ConfigError(f"Lightning rejected the `trainer` section ({error}); fix the value it names.") from error


def load_vlp_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check that vlp wrote it."""
    path = Path(path)
    if path.is_dir() and (path / "meta.pt").is_file():
        checkpoint = read_distributed_checkpoint(path)
    elif not path.is_file():
        raise ConfigError(f"Checkpoint {path} does not exist; pass the path of a .ckpt in a run's checkpoints/ directory.")
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ConfigError(f"Checkpoint {path} cannot be loaded safely ({type(error).__name__}); it is corrupt or not a vlp checkpoint.") from error
    if not isinstance(checkpoint, dict) or "vlp" not in checkpoint or "state_dict" not in checkpoint:
        raise ConfigError(
            f"{path} is not a vlp checkpoint (it has no vlp config); to start from foreign weights, "
            f"point the encoder's `checkpoint`/`pretrained` option at them instead."
        )
    return checkpoint


def evaluate(checkpoint_path: str, overrides: list[str] = (), output: str | None = None) -> dict[str, float]:
    """Rebuild the model stored in a checkpoint, run its evaluations, write metrics JSON."""
    checkpoint = load_vlp_checkpoint(checkpoint_path)
    stored = checkpoint["vlp"]
    experiment = experiment_from_resolved(yaml.safe_load(stored["config"]), overrides, source=str(checkpoint_path))
    datamodule = build_datamodule(experiment)
    datamodule.setup("validate")
    module = build_module(experiment, datamodule, tokenizer_json=stored["tokenizer"])
    module.load_trained_state(checkpoint["state_dict"])
    if torch.cuda.is_available():
        module.cuda()
    metrics = module.evaluate(datamodule)
    out = Path(output) if output else Path(checkpoint_path).resolve().parent.parent / f"eval-{Path(checkpoint_path).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {"experiment": experiment.run.name, "checkpoint": str(checkpoint_path)}
    write_metrics(out, metrics, extra)
    print(format_table(metrics))
    logs = Path(checkpoint_path).resolve().parent.parent
    print(f"Report: {write_report(out.parent / f'{out.stem}-report', module, datamodule, metrics, extra, run_dir=logs)}")
    print(f"Metrics written to {out}")
    return metrics
