"""Annotation readers: CSV/TSV, JSONL and Karpathy-split JSON into :class:`Record` lists.

A row that cannot become a sample (empty or non-UTF-8 caption, broken JSON line) is
skipped and counted by cause; the caller adds the counts to its :class:`DataQuality`.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from vlp.data.decode import clean_captions
from vlp.data.quality import BAD_RECORD, BadSample
from vlp.registry import ConfigError


@dataclass(frozen=True)
class Record:
    """One image and its captions; ``image`` is relative to the dataset root unless absolute."""

    key: str
    image: str
    captions: list[str]
    label: int = -1


@dataclass
class Reading:
    """Records read from one annotation file and what was skipped on the way."""

    records: list[Record] = field(default_factory=list)
    seen: int = 0
    skipped: Counter = field(default_factory=Counter)


def collect(rows: Iterable[Any], to_record: Callable[[int, Any], Record | None]) -> Reading:
    """Apply ``to_record`` to every row; ``None`` drops a row silently (e.g. another split)."""
    reading = Reading()
    for index, row in enumerate(rows):
        try:
            record = to_record(index, row)
        except BadSample as bad:
            reading.seen += 1
            reading.skipped[bad.cause] += 1
            continue
        if record is not None:
            reading.seen += 1
            reading.records.append(record)
    return reading


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"The {what} file {path} does not exist; set the path to the dataset's {what} file.")
    return path


def table_rows(path: str | Path, delimiter: str | None = None, encoding: str = "utf-8") -> Iterator[dict[str, str]]:
    """Rows of a CSV (or TSV, by extension) as dicts; bytes not in ``encoding`` survive as surrogates.

    A ``.gz`` file is read decompressed (MIMIC-CXR ships its split table gzipped).
    """
    path = require_file(path, "annotation")
    plain = path.with_suffix("") if path.suffix == ".gz" else path
    delimiter = delimiter or ("\t" if plain.suffix.lower() in (".tsv", ".tab") else ",")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding=encoding, errors="surrogateescape") as file:
        yield from csv.DictReader(file, delimiter=delimiter)


def check_columns(row: dict, columns: Iterable[str], path: str | Path) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise ConfigError(f"{path} has no column(s) {missing} (it has {sorted(row)}); set the column names in the data config.")


def read_table(path: str | Path, image_column: str, caption_column: str) -> Reading:
    """One sample per row: ``image_column`` names the image file, ``caption_column`` its caption."""

    def to_record(index: int, row: dict[str, str]) -> Record:
        if index == 0:
            check_columns(row, (image_column, caption_column), path)
        return Record(str(index), row[image_column], clean_captions([row[caption_column] or ""]))

    return collect(table_rows(path), to_record)


def jsonl_rows(path: str | Path) -> Iterator[dict | BadSample]:
    """Parsed lines; a broken or non-UTF-8 line comes out as a BadSample to be counted."""
    with open(require_file(path, "annotation"), "rb") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                yield BadSample(BAD_RECORD)
                continue
            yield value if isinstance(value, dict) else BadSample(BAD_RECORD)


def read_jsonl(path: str | Path, image_key: str, caption_key: str) -> Reading:
    """One sample per line; the caption may be a string or a list of strings."""

    def to_record(index: int, row: dict | BadSample) -> Record:
        if isinstance(row, BadSample):
            raise row
        if image_key not in row or caption_key not in row:
            raise ConfigError(f'{path} line {index + 1} lacks "{image_key}" or "{caption_key}" (it has {sorted(row)}); set image_key/caption_key.')
        value = row[caption_key]
        return Record(str(row.get("id", index)), str(row[image_key]), clean_captions(value if isinstance(value, list) else [value or ""]))

    return collect(jsonl_rows(path), to_record)


# Karpathy's COCO split keeps "restval" images apart; everyone trains on them.
KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def read_karpathy(path: str | Path, split: str) -> Reading:
    """Images of one split of a Karpathy JSON (``{"images": [{filename, split, sentences: [{raw}]}]}``).

    COCO's entries carry a ``filepath`` folder (``val2014``) joined before the file name.
    """
    if split not in KARPATHY_SPLITS:
        raise ConfigError(f'Unknown Karpathy split "{split}"; use one of {sorted(KARPATHY_SPLITS)}.')
    try:
        images = json.loads(require_file(path, "Karpathy JSON").read_text(encoding="utf-8"))["images"]
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not a Karpathy-split JSON (no images list: {error}); point the path at e.g. dataset_coco.json.") from error

    def to_record(index: int, entry: dict) -> Record | None:
        if entry.get("split") not in KARPATHY_SPLITS[split]:
            return None
        image = str(Path(entry.get("filepath", "")) / entry["filename"])
        return Record(str(entry.get("imgid", index)), image, clean_captions([s.get("raw", "") for s in entry.get("sentences", [])]))

    return collect(images, to_record)


def held_out(key: str, fraction: float, seed: int) -> bool:
    """Whether ``key`` falls in a seeded ``fraction`` of keys (stable across runs, machines and file order)."""
    return zlib.crc32(f"{seed}:{key}".encode()) < fraction * 2**32
