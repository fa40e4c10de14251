"""Biomedical literature: PMC-OA (JSONL), ROCO (captions.txt per split) and BIOMEDICA (WebDataset shards)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from vlp.data.decode import clean_captions, decode_text
from vlp.data.files import FileDataModule
from vlp.data.records import Reading, Record, collect, held_out, read_jsonl, require_file
from vlp.data.web_shards import WebDatasetDataModule
from vlp.registry import DATAMODULES, ConfigError

TEMPLATES = ["a figure of {}.", "a medical image showing {}.", "a biomedical image of {}.", "{}."]


@DATAMODULES.register("pmc_oa")
class PmcOaDataModule(FileDataModule):
    """PMC-OA (huggingface.co/datasets/axiong/pmc_oa): JSON lines ``{"image": "PMC212319_Fig3_4.jpg", "caption": ...}``.

    ``images.zip`` unpacks to ``caption_T060_filtered_top4_sep_v0_subfigures/``. Two published
    variants: ``train.jsonl``/``valid.jsonl`` (earlier cards), or the single ``pmc_oa.jsonl`` of
    the current card, whose images are split by a seeded ``val_fraction`` of image names.
    """

    TEMPLATES = TEMPLATES

    def __init__(
        self,
        root: str,
        train: str = "train.jsonl",
        val: str | None = "valid.jsonl",
        single: str = "pmc_oa.jsonl",
        val_fraction: float = 0.01,
        images: str = "caption_T060_filtered_top4_sep_v0_subfigures",
        **common: Any,
    ) -> None:
        super().__init__(root=str(Path(root) / images), **common)
        self.files = {"train": Path(root) / train, "val": Path(root) / val if val else None}
        self.single, self.val_fraction = Path(root) / single, val_fraction

    def read(self, split: str) -> Reading | None:
        if not self.files["train"].is_file() and not self.single.is_file():
            raise ConfigError(f"PMC-OA has neither {self.files['train']} nor {self.single}; point data.root at the unpacked dataset.")
        if self.files["train"].is_file():
            path = self.files[split]
            return None if path is None else read_jsonl(path, "image", "caption")
        whole = read_jsonl(self.single, "image", "caption")
        keep = [r for r in whole.records if held_out(r.image, self.val_fraction, self.seed) == (split == "val")]
        skipped = whole.skipped if split == "train" else Counter()  # bad lines are counted once, with train
        return Reading(keep, len(keep) + sum(skipped.values()), skipped)


@DATAMODULES.register("roco")
class RocoDataModule(FileDataModule):
    """ROCO (github.com/razorx89/roco-dataset): ``<root>/<split>/<subset>/captions.txt`` lines ``ROCO_00002<TAB>caption``.

    Images are ``images/ROCO_00002.jpg`` in copies named by ROCO id, or, as the repository's
    ``scripts/fetch.py`` names them, ``images/<PMCID>_<figure file>`` found through
    ``dlinks.txt`` (``ROCO_00002<TAB>wget ... /PMC3498864.tar.gz ...<TAB>figure.jpg``).
    """

    TEMPLATES = TEMPLATES

    def __init__(
        self,
        root: str,
        subset: str = "radiology",
        train_split: str = "train",
        val_split: str = "validation",
        **common: Any,
    ) -> None:
        super().__init__(root="", **common)
        self.folders = {"train": Path(root) / train_split / subset, "val": Path(root) / val_split / subset}

    def read(self, split: str) -> Reading | None:
        folder = self.folders[split]
        fetched = fetched_names(folder)

        def to_record(index: int, line: bytes) -> Record | None:
            name, _, caption = line.rstrip(b"\r\n").partition(b"\t")
            if not name.strip():
                return None
            key = decode_text(name).strip()
            by_id = folder / "images" / f"{key}.jpg"
            image = by_id if key not in fetched or by_id.is_file() else folder / "images" / fetched[key]
            return Record(key, str(image), clean_captions([caption]))

        with open(require_file(folder / "captions.txt", "ROCO captions.txt"), "rb") as file:
            reading = collect(file, to_record)
        images = folder / "images"
        if reading.records and images.is_dir() and any(images.iterdir()) and not any(Path(r.image).is_file() for r in reading.records):
            raise ConfigError(
                f"No image named in {folder / 'captions.txt'} is in {images} (as ROCO_00002.jpg, or as <PMCID>_<figure> through "
                f"dlinks.txt): this copy names its images another way (an older release); fetch it again with the repository's scripts/fetch.py."
            )
        return reading


def fetched_names(folder: Path) -> dict[str, str]:
    """``ROCO id -> <PMCID>_<figure file>``, the names ``scripts/fetch.py`` gives images, from ``dlinks*.txt``."""
    names = {}
    for path in sorted(folder.glob("dlinks*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and ".tar.gz" in parts[1]:
                archive = next(word for word in parts[1].split() if word.endswith(".tar.gz"))
                names[parts[0].strip()] = f"{archive.rsplit('/', 1)[-1][: -len('.tar.gz')]}_{parts[-1].strip()}"
    return names


@DATAMODULES.register("biomedica")
class BiomedicaDataModule(WebDatasetDataModule):
    """BIOMEDICA's WebDataset shards (``jpg`` + ``txt`` caption + ``json`` metadata), with biomedical prompts.

    The shards ship no sample count (no ``shards.json``), so ``epoch_samples`` must be set.
    """

    TEMPLATES = TEMPLATES
