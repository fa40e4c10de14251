"""Bad-sample accounting: skipped samples are counted by cause, never fatal one by one.

A dataset returns a :class:`Skipped` marker instead of raising; the collate drops it and
sends the counts along with the batch, so counts made in worker processes reach the
main process. Too many bad samples usually means a wrong root path, so past
``max_bad_fraction`` the counter raises a :class:`ConfigError`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vlp.registry import ConfigError

log = logging.getLogger(__name__)

MISSING_FILE = "missing_file"
UNREADABLE_IMAGE = "unreadable_image"
MISSING_IMAGE = "missing_image"
EMPTY_CAPTION = "empty_caption"
CAPTION_NOT_UTF8 = "caption_not_utf8"
BAD_RECORD = "bad_record"
SHARD_READ_ERROR = "shard_read_error"

BATCH_KEY = "data_quality"  # extras key carrying tally() of a batch from the collate


@dataclass(frozen=True)
class Skipped:
    """Returned by a dataset in place of a sample it could not read."""

    cause: str
    key: str = ""


class BadSample(Exception):
    """Raised by readers for one bad sample; carries the cause it is counted under."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause


COUNTING = (
    "each sample counted once: annotation rows once when read; samples streamed from shards once per "
    "training epoch (the latest epoch) and once per validation pass (the largest pass); a bad sample met "
    "again (another epoch, an evaluation set) is not counted again"
)


def tally(items: list, scope: str) -> dict:
    """What a batch carries to the main process: its ``scope``, how many items, and each bad one's (cause, key)."""
    return {"scope": scope, "seen": len(items), "bad": [(item.cause, item.key) for item in items if isinstance(item, Skipped)]}


@dataclass
class _Scope:
    """Counts of one stream of samples (annotations, training, validation, an evaluation folder)."""

    count: int = 0  # samples of the current pass
    best: int = 0  # largest finished pass (validation passes repeat the same samples)
    bad: dict[str, str] = field(default_factory=dict)  # key -> cause: a sample is bad once

    @property
    def seen(self) -> int:
        return max(self.count, self.best)


class DataQuality:
    """Counts each sample once (see :data:`COUNTING`) and bad ones by cause; fails past ``max_bad_fraction``.

    Samples live in scopes ("annotations", "train", "val", one per evaluation folder); a
    bad sample is identified by its key within its scope, so meeting it again in another
    epoch or in an evaluation set does not count it twice. ``restart`` starts a new pass
    of a scope: a new training epoch forgets the last one, a new validation pass keeps
    the largest count and the bad keys. The fraction is judged once ``min_samples`` have
    been seen (1,000, or the whole of a smaller dataset), on bad / seen.
    """

    def __init__(self, max_bad_fraction: float = 0.01, min_samples: int = 1000) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.scopes: dict[str, _Scope] = {}

    @property
    def seen(self) -> int:
        return sum(scope.seen for scope in self.scopes.values())

    @property
    def skipped(self) -> Counter[str]:
        return Counter(cause for scope in self.scopes.values() for cause in scope.bad.values())

    @property
    def bad(self) -> int:
        return sum(len(scope.bad) for scope in self.scopes.values())

    def restart(self, scope: str, keep: bool) -> None:
        """A new pass over ``scope``: keep its largest count and bad keys (validation) or forget them (a new epoch)."""
        old = self.scopes.setdefault(scope, _Scope())
        self.scopes[scope] = _Scope(best=old.seen, bad=old.bad) if keep else _Scope()

    def add(self, scope: str, seen: int, bad: list[tuple[str, str]], where: str) -> None:
        """Record ``seen`` more samples of ``scope`` and its bad (cause, key) pairs; log new ones, check the threshold."""
        counts = self.scopes.setdefault(scope, _Scope())
        counts.count += seen
        new: Counter[str] = Counter()
        for cause, key in bad:
            if key not in counts.bad:
                counts.bad[key] = cause
                new[cause] += 1
        for cause, count in new.items():
            log.warning("Skipped %d sample(s) of %s: %s", count, where, cause)
        self.check(where)

    def add_counts(self, scope: str, seen: int, skipped: dict[str, int], where: str) -> None:
        """Counts without keys (annotation rows, each read once): every one is a distinct sample."""
        start = len(self.scopes.get(scope, _Scope()).bad)
        causes = [cause for cause, count in skipped.items() for _ in range(count)]
        self.add(scope, seen, [(cause, f"#{start + i}") for i, cause in enumerate(causes)], where)

    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def check(self, where: str) -> None:
        if self.seen < self.min_samples or self.bad <= self.max_bad_fraction * self.seen:
            return
        causes = ", ".join(f"{n} {cause}" for cause, n in self.skipped.most_common())
        raise ConfigError(
            f"{self.bad} of {self.seen} samples of {where} are bad ({causes}), more than "
            f"max_bad_fraction={self.max_bad_fraction}; check the data root path and files, or raise max_bad_fraction."
        )

    def as_dict(self) -> dict:
        return {"seen": self.seen, "skipped": dict(sorted(self.skipped.items())), "bad_fraction": self.fraction(), "counting": COUNTING}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n")
