"""When checkpoints are written, how (atomically), and what a signal or a non-finite loss does.

YAML ``checkpoint`` section (:class:`CheckpointConfig`)::

    checkpoint: {every_n_steps: null, every_minutes: 10, every_epoch: true, keep: 0}

``last.ckpt`` is rewritten at every trigger, so a crash loses at most ``every_minutes``
(or ``every_n_steps``) of training; ``keep`` numbered ``step=N.ckpt`` files are kept
besides it. Every write goes to a temporary file in the destination directory and is
renamed over the old file only once complete, so a crash while saving never destroys
the previous checkpoint. SIGTERM (what SLURM sends) and SIGINT (Ctrl+C) stop training
at the end of the current batch through Lightning's SIGTERM handling, save
``last.ckpt`` and raise :class:`TrainingInterrupted`.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torchdata.stateful_dataloader import StatefulDataLoader

LAST = "last.ckpt"


@dataclass
class CheckpointConfig:
    """The YAML ``checkpoint`` section: when ``last.ckpt`` is rewritten and how many numbered ones stay.

    ``every_n_steps`` counts optimizer steps; ``every_minutes`` is wall-clock time since the
    last save (``null`` turns a trigger off); ``every_epoch`` saves at each epoch end;
    ``keep`` is how many numbered ``step=N.ckpt`` checkpoints to keep besides ``last.ckpt``.
    """

    every_n_steps: int | None = None
    every_minutes: float | None = 10.0
    every_epoch: bool = True
    keep: int = 0


class TrainingStopped(RuntimeError):
    """Training stopped early on purpose; the message is one sentence and ``exit_code`` the process status."""

    exit_code = 1


class TrainingInterrupted(TrainingStopped):
    """SIGTERM or SIGINT arrived: ``last.ckpt`` was saved and the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "killed by this signal"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the destination, fsync, then ``os.replace``.

    Lightning's own write goes through a temporary file under ``TMPDIR``; when that is on
    another filesystem the final move becomes a copy that truncates the old checkpoint first.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomically(Path(path), lambda handle: torch.save(checkpoint, handle))


def write_atomically(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s directory, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.partial"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with the step, time and epoch triggers combined.

    Lightning accepts only one trigger per callback; here ``last.ckpt`` is rewritten when any
    of them fires, and only at an optimizer-step boundary (never inside gradient
    accumulation, whose partial gradients a checkpoint cannot hold). Numbered checkpoints
    are ranked by step, so ``keep`` retains the newest.
    """

    def __init__(self, dirpath: Path, config: CheckpointConfig) -> None:
        super().__init__(
            dirpath=dirpath, filename="step={step}", auto_insert_metric_name=False, monitor="step", mode="max",
            save_top_k=config.keep, save_last=True, every_n_epochs=1 if config.every_epoch else 0,
            # at the epoch's true end (after its validation), where Lightning's loops resume cleanly into the next epoch
            save_on_train_epoch_end=True,
            # a run directory that was moved still rewrites its own last.ckpt (Lightning would write last-v1.ckpt
            # beside a file it did not itself write in this location, and `--resume last` would reread the old one)
            enable_version_counter=False,
        )
        self.every_n_steps = config.every_n_steps
        self.every_seconds = None if config.every_minutes is None else 60.0 * config.every_minutes

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if self._should_skip_saving_checkpoint(trainer) or trainer.fit_loop.epoch_loop._should_accumulate():
            return
        due = bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0
        if self.every_seconds is not None and self._last_time_checked is not None:
            due = due or time.monotonic() - self._last_time_checked >= self.every_seconds
        if trainer.strategy.broadcast(due):  # every rank takes part in a save: rank 0's clock decides
            self.save_now(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's own epoch save writes last.ckpt only when it also wrote a numbered one (keep > 0)
        if self._every_n_epochs >= 1 and not self._should_skip_saving_checkpoint(trainer):
            self.save_now(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Saves happen at training batch and epoch ends only (see ``save_on_train_epoch_end``)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final state is always in last.ckpt (Lightning skips it when the last step saved nothing)."""
        if not self._should_skip_saving_checkpoint(trainer):
            self.save_now(trainer)

    def save_now(self, trainer: L.Trainer) -> None:
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._last_time_checked = time.monotonic()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A signal saves (the state is consistent: Lightning stops between batches); any other error does not."""
        if isinstance(exception, SIGTERMException) and self._last_global_step_saved != trainer.global_step:
            self.save_now(trainer)


class StopOnSignal(Callback):
    """Make SIGINT (Ctrl+C) stop like SIGTERM: Lightning's flag, checked between batches.

    Lightning's own SIGTERM handler still runs (it tells the other ranks). A second Ctrl+C
    interrupts at once (the first restores Python's default handler). Lightning restores
    the original handlers when the run ends. ``signum`` records which signal arrived.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may install handlers (ddp_spawn workers run in processes, not threads)
        lightning_sigterm = signal.getsignal(signal.SIGTERM)

        def stop(signum: int, frame: Any) -> None:
            self.signum = self.signum or signum
            trainer._signal_connector.received_sigterm = True  # Lightning stops after the current batch
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            elif callable(lightning_sigterm):
                lightning_sigterm(signum, frame)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


class ExactResume(Callback):
    """Store the global RNG states (torch, numpy, Python) and every rank's loader state; restore both on resume.

    Lightning checkpoints weights, optimizer, scheduler, loop counters and a stateful data
    loader's position; random draws made in the training step (dropout, masking) also need
    the generators' states for a resumed run to equal an uninterrupted one. Lightning writes
    rank 0's loader state only, but each rank's loader draws its own augmentations and
    caption choices (:class:`vlp.data.resumable.CarriesDraws`): the ranks' states are
    gathered into ``vlp_loader_states`` and each rank resumes from its own.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._loader_states: list[Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["vlp_rng"] = rng_states()
        own = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
        if own and trainer.world_size > 1 and torch.distributed.is_initialized():  # every rank has the same loaders
            every_rank: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(every_rank, own)
            checkpoint["vlp_loader_states"] = every_rank

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get("vlp_rng")
        every_rank = checkpoint.get("vlp_loader_states")
        self._loader_states = every_rank[trainer.global_rank] if every_rank and len(every_rank) == trainer.world_size else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the restored loader position into effect.

        ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``, which builds
        the training loader before Lightning restores the loop state, so Lightning never
        hands the checkpoint's loader state to it: do that here and restart the iterator
        (Lightning does not start a new one for the first epoch after a resume).
        """
        fit_loop = trainer.fit_loop
        states, fit_loop._combined_loader_states_to_load = fit_loop._combined_loader_states_to_load, []
        if states and self._loader_states is not None:
            states = self._loader_states  # this rank's own, not rank 0's
        if not states or fit_loop._combined_loader is None:
            return
        loaders = [loader for loader in fit_loop._combined_loader.flattened if isinstance(loader, StatefulDataLoader)]
        for loader, state in zip(loaders, states):
            loader.load_state_dict(state)
            if batches_served(state) >= len(loader) and not state.get("_iterator_finished", False):
                for _ in loader:  # saved after the epoch's last batch: reach its end (no batch is left), so that
                    pass  # the next iterator starts the next epoch from the restored generators
        iter(fit_loop._data_fetcher)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


def batches_served(loader_state: dict[str, Any]) -> int:
    """Batches a ``StatefulDataLoader`` had served this epoch when its state was saved (either process layout)."""
    if "_num_yielded" in loader_state:  # loading in the main process
        return loader_state["_num_yielded"]
    return loader_state["_snapshot"]["_snapshot_step"]  # loader workers


def rng_states() -> dict[str, Any]:
    """The global generators' states, as types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class NonFiniteError(TrainingStopped):
    """A loss or gradient was NaN or infinite: training stopped before the optimizer used it."""


class NonFiniteGuard(Callback):
    """Stop at the first non-finite objective loss or gradient, before the optimizer step.

    The module lists the last step's objective losses in ``pl_module.objective_losses``.
    Nothing is saved on the way out, so ``last.ckpt`` stays the last good state. Under
    float16 mixed precision infinite gradients are the loss scaler's business (it skips
    the step and lowers the scale), so only losses are checked there.
    """

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        step = trainer.global_step
        losses = getattr(pl_module, "objective_losses", {})
        for name, loss in losses.items():
            if not torch.isfinite(loss).all():
                raise NonFiniteError(
                    f"Objective {name} gave a non-finite loss ({loss.item()}) at optimizer step {step}; training stopped "
                    f"and the last good checkpoint was kept: lower optim.lr, check its weight and data, then resume with --resume last."
                )
        if str(trainer.precision).startswith("16"):
            return
        named = [(name, _local(p.grad)) for name, p in pl_module.named_parameters() if p.grad is not None]
        if not named or torch.stack([torch.isfinite(g).all() for _, g in named]).all():
            return  # one device sync per step; the search below runs only on failure
        name = next(n for n, g in named if not torch.isfinite(g).all())
        summary = ", ".join(f"{n}={float(v):.4g}" for n, v in losses.items())
        raise NonFiniteError(
            f"The gradient of {name} is non-finite at optimizer step {step} (objective losses: {summary}); training "
            f"stopped and the last good checkpoint was kept: lower optim.lr or set trainer.gradient_clip_val, then resume with --resume last."
        )


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) gradient; a plain tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def interrupted_message(signum: int, checkpoint: Path, command: str) -> str:
    name = signal.Signals(signum).name
    return f"Stopped by {name}; training state saved to {checkpoint}; continue with: {command}"
