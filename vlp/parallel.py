"""Multi-process runs: every rank of one ``vlp fit`` agrees on one run directory.

Lightning's ``ddp`` strategy re-runs the user's command once per extra rank, so
everything before ``trainer.fit`` (including the choice of a timestamped run directory)
runs again in each of them. The launching rank publishes its choice in the environment
before ``trainer.fit``; the processes Lightning starts inherit that environment and use it.
Processes started by an external launcher (torchrun, SLURM, one command per node) share
no such moment, so they must be given the same ``run_dir``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lightning as L

from vlp.registry import ConfigError

RUN_DIR_ENV = "VLP_RUN_DIR"


def inherited_run_dir() -> Path | None:
    """The run directory chosen by the rank that launched this process, if it launched this one."""
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def check_ranks_agree(trainer: L.Trainer, explicit_run_dir: bool) -> None:
    """Refuse externally launched multi-process runs whose ranks would each pick a directory."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    external = environment is not None and environment.creates_processes_externally
    if trainer.world_size > 1 and external and not explicit_run_dir and inherited_run_dir() is None:
        raise ConfigError(
            f"The {trainer.world_size} processes of this run were started by an external launcher "
            f"({type(environment).__name__}) and would each choose their own run directory; pass run_dir=runs/NAME."
        )


@contextmanager
def shared_with_launched_ranks(run_dir: Path) -> Iterator[None]:
    """Publish ``run_dir`` to the ranks that ``trainer.fit`` launches (they copy this environment)."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
