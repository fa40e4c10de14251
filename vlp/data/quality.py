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
from dataclasses import dataclass
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

BATCH_KEY = "data_quality"  # extras key carrying {"seen": n, cause: count} from the collate


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


class DataQuality:
    """Counts samples seen and skipped (by cause); fails past ``max_bad_fraction``.

    The fraction is only judged once ``min_samples`` have been seen, so a single bad
    sample early in an epoch is not mistaken for a broken dataset.
    """

    def __init__(self, max_bad_fraction: float = 0.01, min_samples: int = 1000) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.seen = 0
        self.skipped: Counter[str] = Counter()

    @property
    def bad(self) -> int:
        return sum(self.skipped.values())

    def add(self, seen: int, skipped: dict[str, int], where: str) -> None:
        """Record a batch's (or a file's) counts, log new causes and check the threshold."""
        self.seen += seen
        for cause, count in skipped.items():
            if count:
                log.warning("Skipped %d sample(s) of %s: %s", count, where, cause)
                self.skipped[cause] += count
        self.check(where)

    def check(self, where: str) -> None:
        if self.seen < self.min_samples or self.bad <= self.max_bad_fraction * self.seen:
            return
        causes = ", ".join(f"{n} {cause}" for cause, n in self.skipped.most_common())
        raise ConfigError(
            f"{self.bad} of {self.seen} samples of {where} are bad ({causes}), more than "
            f"max_bad_fraction={self.max_bad_fraction}; check the data root path and files, or raise max_bad_fraction."
        )

    def as_dict(self) -> dict:
        fraction = self.bad / self.seen if self.seen else 0.0
        return {"seen": self.seen, "skipped": dict(sorted(self.skipped.items())), "bad_fraction": fraction}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n")
