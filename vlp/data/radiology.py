"""Radiology: MIMIC-CXR(-JPG) images with report sections as captions, as in ConVIRT.

Layout: ``mimic-cxr-2.0.0-split.csv(.gz)`` (dicom_id, study_id, subject_id, split),
images ``files/p10/p10000032/s50414267/<dicom_id>.jpg`` and free-text reports
``files/p10/p10000032/s50414267.txt`` with sections such as ``FINDINGS:`` and
``IMPRESSION:``. Each requested non-empty section is one caption of the image; headings
are read as MIMIC-CXR's official section parser reads them (see
:mod:`vlp.data.report_sections`), and a report with no findings or impression is
captioned by its last paragraph. A report with nothing left is skipped as ``empty_caption``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlp.data.decode import clean_captions
from vlp.data.files import FileDataModule
from vlp.data.quality import MISSING_FILE, BadSample
from vlp.data.records import Reading, Record, check_columns, collect, table_rows
from vlp.data.report_sections import report_sections
from vlp.registry import DATAMODULES

TEMPLATES = ["a chest x-ray showing {}.", "chest radiograph with {}.", "findings consistent with {}.", "{}."]
CHEXPERT_COMPETITION = {"atelectasis": "atelectasis", "cardiomegaly": "cardiomegaly", "consolidation": "consolidation",
                        "edema": "edema", "pleural_effusion": "pleural effusion"}
def study_folder(subject_id: str, study_id: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


@DATAMODULES.register("mimic_cxr")
class MimicCxrDataModule(FileDataModule):
    """MIMIC-CXR-JPG images (``root``) with MIMIC-CXR reports (``reports_root``, default ``root``)."""

    TEMPLATES = TEMPLATES
    CLASS_NAMES = CHEXPERT_COMPETITION

    def __init__(
        self,
        root: str,
        reports_root: str | None = None,
        split_file: str = "mimic-cxr-2.0.0-split.csv.gz",
        sections: list[str] | None = None,
        train_split: str = "train",
        val_split: str = "validate",
        **common: Any,
    ) -> None:
        super().__init__(root=root, **common)
        self.reports_root = Path(reports_root or root)
        self.split_file = Path(root) / split_file
        self.sections = [s.lower() for s in (sections or ["findings", "impression"])]
        self.splits = {"train": train_split, "val": val_split}

    def captions(self, subject_id: str, study_id: str) -> list[str]:
        report = self.reports_root / f"{study_folder(subject_id, study_id)}.txt"
        if not report.is_file():
            raise BadSample(MISSING_FILE, str(report))
        found = report_sections(report.read_bytes().decode("utf-8", "surrogateescape"))
        captions = [found[name] for name in self.sections if found.get(name)]
        return clean_captions(captions or [found.get("last_paragraph", "")])

    def read(self, split: str) -> Reading | None:
        def to_record(index: int, row: dict[str, str]) -> Record | None:
            if index == 0:
                check_columns(row, ("dicom_id", "study_id", "subject_id", "split"), self.split_file)
            if row["split"] != self.splits[split]:
                return None
            image = f"{study_folder(row['subject_id'], row['study_id'])}/{row['dicom_id']}.jpg"
            return Record(row["dicom_id"], image, self.captions(row["subject_id"], row["study_id"]))

        return collect(table_rows(self.split_file), to_record)
