"""Class-per-folder image sets (``root/<class>/<image>``) for zero-shot and linear-probe evaluation.

A folder may carry ``classnames.txt`` (one readable name per line, in sorted folder
order) and ``templates.txt`` (one prompt per line with ``{}`` for the class name);
otherwise class names are the folder names with ``_`` as spaces and the templates
are the caller's (a domain's own prompts) or :data:`DEFAULT_TEMPLATES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from vlp.data.records import Reading, Record
from vlp.registry import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")
DEFAULT_TEMPLATES = ["a photo of a {}."]


@dataclass
class LinearProbeSet:
    """Labelled train and test images for fitting a linear classifier on frozen image features."""

    name: str
    class_names: list[str]
    train_images: Dataset | Tensor
    train_labels: Tensor
    test_images: Dataset | Tensor
    test_labels: Tensor


@dataclass
class ClassFolder:
    """The records of a class-per-folder tree with its class names and prompt templates."""

    root: str
    reading: Reading
    folders: list[str]
    class_names: list[str]
    templates: list[str]


def _lines(path: Path) -> list[str] | None:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else None


def read_class_folder(root: str | Path, templates: list[str] | None = None, class_names: dict[str, str] | None = None) -> ClassFolder:
    """Every image under ``root/<class>/``; ``class_names`` maps folder names to readable names."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"Image folder {root} does not exist; point it at a folder with one subfolder per class.")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ConfigError(f"Image folder {root} has no class subfolders; put each class's images in root/<class name>/.")
    reading = Reading()
    for label, folder in enumerate(folders):
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                reading.records.append(Record(f"{folder}/{path.name}", str(path), [], label))
    reading.seen = len(reading.records)
    names = _lines(root / "classnames.txt") or [(class_names or {}).get(f, f.replace("_", " ")) for f in folders]
    if len(names) != len(folders):
        raise ConfigError(f"{root}/classnames.txt has {len(names)} names for {len(folders)} class folders; give one name per folder, in sorted folder order.")
    prompts = _lines(root / "templates.txt") or templates or DEFAULT_TEMPLATES
    return ClassFolder(str(root), reading, folders, names, prompts)


def captioned(folder: ClassFolder) -> list[Record]:
    """Records captioned with every template filled with their class name (for training on classes)."""
    return [Record(r.key, r.image, [t.format(folder.class_names[r.label]) for t in folder.templates], r.label) for r in folder.reading.records]
