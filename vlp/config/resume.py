"""Which config values may change when a run is resumed, and a clear refusal for the rest.

A resumed run restores weights, optimizer state (including each group's learning
rate), schedule and data position from the checkpoint, so a changed ``optim.lr`` or
model key would be silently ignored or break the run. Only values that change how long
or how observably the run continues may differ; ``config.yaml`` and later checkpoints
then record the new values, i.e. what actually ran.
"""

from __future__ import annotations

from typing import Any

from vlp.registry import ConfigError

# Key paths (and their sub-keys) that may differ from the checkpoint's config on resume.
RESUMABLE = (
    "run_dir", "evaluate_before", "eval", "checkpoint",
    "trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.log_every_n_steps", "trainer.num_sanity_val_steps",
    "trainer.check_val_every_n_epoch", "trainer.val_check_interval", "trainer.limit_val_batches",
)  # not data.num_workers: the loader's saved position and augmentation draws are per worker


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    return {prefix: node}


def _resumable(path: str) -> bool:
    return any(path == key or path.startswith((key + ".", key + "[")) for key in RESUMABLE)


def check_resume_changes(stored: dict[str, Any], requested: dict[str, Any], checkpoint: str) -> None:
    """Raise one sentence for the first value that differs from the checkpoint's and cannot change on resume."""
    before, after = _leaves(stored), _leaves(requested)
    for path in sorted(set(before) | set(after)):
        if _resumable(path) or before.get(path, "<unset>") == after.get(path, "<unset>"):
            continue
        raise ConfigError(
            f"`{path}` is {after.get(path, '<unset>')!r} but the run in {checkpoint} used {before.get(path, '<unset>')!r}, "
            f"and it cannot change on resume (the checkpoint's optimizer, schedule and data state continue the old values); "
            f"drop the override, or start a new run from the weights with model.init_from. "
            f"Keys that may change on resume: {', '.join(RESUMABLE)}."
        )
