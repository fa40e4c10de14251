"""Tiny copies of each domain dataset in its real published layout (names, fields, separators, encodings).

Each writer fills ``root`` and returns the ``data`` config that points vlp at it; the
source each layout follows is named in the writer's docstring.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from test_data_fixtures import write_image
from test_data_formats import karpathy_json


def rsicd(root: Path) -> dict:
    """github.com/201528014227051/RSICD_optimal: ``dataset_rsicd.json`` (Karpathy format) kept in ``annotations_rsicd/``, images in ``RSICD_images/``."""
    names = [("airport_1.jpg", "train"), ("beach_2.jpg", "train"), ("beach_3.jpg", "test"), ("denseresidential_4.jpg", "test"), ("00017.jpg", "test")]
    for k, (name, _) in enumerate(names):
        write_image(root / "RSICD_images" / name, k)
    entries = [{"filename": n, "split": s, "sentences": [f"view {k} .", f"scene {k} from above ."]} for k, (n, s) in enumerate(names)]
    (root / "annotations_rsicd").mkdir(parents=True)
    (root / "annotations_rsicd" / "dataset_rsicd.json").write_text(json.dumps(karpathy_json(entries, "rsicd")))
    return {"name": "rsicd", "root": str(root)}


def ucm_captions(root: Path, name: str = "ucm_captions") -> dict:
    """Qu et al. 2016 (UCM-Captions / Sydney-Captions as distributed): ``dataset.json`` (Karpathy format) and ``imgs/<n>.tif``."""
    names = [("1.tif", "train"), ("2.tif", "train"), ("101.tif", "test"), ("2100.tif", "test")]
    for k, (image, _) in enumerate(names):
        write_image(root / "imgs" / image, k)
    entries = [{"filename": n, "split": s, "sentences": [f"there are some planes {k} ."]} for k, (n, s) in enumerate(names)]
    (root / "dataset.json").write_text(json.dumps(karpathy_json(entries, name.split("_")[0])))
    return {"name": name, "root": str(root)}


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _jpeg(root: Path, seed: int) -> bytes:
    path = root / "_src" / f"{seed}.jpg"
    write_image(path, seed)
    return path.read_bytes()


def rs5m(root: Path) -> dict:
    """github.com/om-ai-lab/RS5M ``dataloader.py``: shards ``{pub11,rs3}-{train,val}-{0000..0031}.tar`` of ``<key>.img_content``, ``.img_name``, ``.caption``."""
    for split, count in (("train", 4), ("val", 2)):
        members = []
        for i in range(count):
            key = f"{split}_{i:06d}"
            members += [(f"{key}.img_content", _jpeg(root, i + 10 * (split == "val"))), (f"{key}.img_name", f"{key}.jpg".encode()),
                        (f"{key}.caption", f"a satellite image of farmland {split} {i}".encode())]
        _tar(root / split / f"pub11-{split}-0000.tar", members)
    return {"name": "rs5m", "train": [str(root / "train" / "pub11-train-{0000..0000}.tar")], "val": str(root / "val" / "pub11-val-0000.tar"),
            "epoch_samples": 4}


def biomedica(root: Path) -> dict:
    """huggingface.co/datasets/BIOMEDICA/biomedica_webdataset_24M: shards of ``<key>.jpg``, ``<key>.txt`` (caption), ``<key>.json`` (metadata)."""
    for split, count in (("train", 4), ("val", 2)):
        members = []
        for i in range(count):
            key = f"PMC{i}_fig{i}_{split}"
            members += [(f"{key}.jpg", _jpeg(root, i + 10 * (split == "val"))), (f"{key}.txt", f"Figure {i}. Histology of {split} tissue.".encode()),
                        (f"{key}.json", json.dumps({"license": "CC BY", "image_id": key}).encode())]
        _tar(root / f"{split}-000000.tar", members)
    return {"name": "biomedica", "train": [str(root / "train-000000.tar")], "val": str(root / "val-000000.tar"), "epoch_samples": 4}


def quilt(root: Path) -> dict:
    """quilt1m.github.io: ``quilt_1M_lookup.csv`` (unnamed index, caption, image_path, subset, split, ...) and ``quilt_1m/`` images."""
    header = ",caption,image_path,subset,split,pathology,roi_text,noisy_text,corrected_text,med_umls_ids,magnification,height,width"
    rows = [f"{i},caption {i},{i}.jpg,openpath,{'train' if i < 3 else 'val'},['Lung'],[],[],[],[],0,16,20" for i in range(4)]
    for i in range(4):
        write_image(root / "quilt_1m" / f"{i}.jpg", i)
    (root / "quilt_1M_lookup.csv").write_text("\n".join([header] + rows) + "\n")
    return {"name": "quilt", "root": str(root)}


PMC_OA_IMAGES = "caption_T060_filtered_top4_sep_v0_subfigures"


def pmc_oa(root: Path, single: bool = False) -> dict:
    """huggingface.co/datasets/axiong/pmc_oa: ``images.zip`` unpacks to ``caption_T060_filtered_top4_sep_v0_subfigures/``;
    ``train.jsonl``/``valid.jsonl`` (earlier card: image, caption, pmcid, url_name) or one ``pmc_oa.jsonl`` (current card)."""
    lines = [{"image": f"PMC21231{i}_Fig3_{i}.jpg", "caption": f"A. Real time image {i} of the translocation.", "pmcid": f"PMC21231{i}",
              "url_name": f"1471-2121-4-13-{i}.jpg"} for i in range(6)]
    for k, line in enumerate(lines):
        write_image(root / PMC_OA_IMAGES / line["image"], k)
    if single:
        (root / "pmc_oa.jsonl").write_text("".join(json.dumps({"image": x["image"], "caption": x["caption"]}) + "\n" for x in lines))
        return {"name": "pmc_oa", "root": str(root), "val_fraction": 0.5}
    (root / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[:4]))
    (root / "valid.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[4:]))
    return {"name": "pmc_oa", "root": str(root)}


def roco(root: Path) -> dict:
    """github.com/razorx89/roco-dataset: ``data/<split>/radiology/captions.txt`` (``ROCO_00002<TAB> caption``), ``dlinks.txt``
    (``ROCO_id<TAB>wget -r ftp://.../PMCID.tar.gz -P /path/to/Dir<TAB>figure``) and images that ``scripts/fetch.py`` names ``<PMCID>_<figure>``."""
    data = root / "data"
    for split, ids in (("train", [2, 3, 4]), ("validation", [81834])):
        folder = data / split / "radiology"
        folder.mkdir(parents=True)
        captions, dlinks = [], []
        for k, n in enumerate(ids):
            roco_id, pmcid, figure = f"ROCO_{n:05d}", f"PMC349886{k}", f"jovr-04-256f{k}.jpg"
            write_image(folder / "images" / f"{pmcid}_{figure}", n)
            captions.append(f"{roco_id}\t Computed tomography of the chest, case {n}. \n")
            dlinks.append(f"{roco_id}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/69/93/{pmcid}.tar.gz -P /path/to/Dir\t{figure}\n")
        (folder / "captions.txt").write_text("".join(captions))
        (folder / "dlinks.txt").write_text("".join(dlinks))
    return {"name": "roco", "root": str(data)}


# MIMIC-CXR reports (physionet.org/content/mimic-cxr): one space before each line, headings as the official
# section parser (MIT-LCP/mimic-cxr txt/section_parser.py) maps them.
REPORTS = {
    "50414267": "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  Cough.\n \n"
                " FINDINGS:\n The lungs are clear.  There is no\n pleural effusion.\n \n IMPRESSION:\n No acute cardiopulmonary process.\n",
    "53189527": "                                 FINAL REPORT\n CHEST RADIOGRAPH\n \n CONCLUSION:\n Mild pulmonary edema.\n",
    "56699142": "                                 FINAL REPORT\n HISTORY:  Fever.\n \n FINDINGS AND IMPRESSION:\n Right lower lobe pneumonia.\n",
    "55000001": "                                 FINAL REPORT\n PA and lateral views of the chest.\n \n Heart size is normal.  Lungs are clear.\n",
    "55000002": "                                 FINAL REPORT\n COMPARISON:  None.\n",
}


def mimic_cxr(root: Path) -> dict:
    """physionet.org MIMIC-CXR-JPG 2.0.0: ``mimic-cxr-2.0.0-split.csv.gz`` (dicom_id, study_id, subject_id, split),
    ``files/p10/p10000032/s50414267/<dicom_id>.jpg``; MIMIC-CXR reports ``files/p10/p10000032/s50414267.txt``."""
    rows = [("d1", "50414267", "10000032", "train"), ("d2", "53189527", "10000032", "train"), ("d3", "56699142", "10000032", "train"),
            ("d4", "55000001", "10000032", "validate"), ("d5", "55000002", "10000032", "train")]
    for k, (dicom, study, subject, _) in enumerate(rows):
        write_image(root / f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg", k)
        (root / f"files/p{subject[:2]}/p{subject}/s{study}.txt").write_text(REPORTS[study])
    table = "dicom_id,study_id,subject_id,split\n" + "".join(",".join(r) + "\n" for r in rows)
    (root / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(gzip.compress(table.encode()))
    return {"name": "mimic_cxr", "root": str(root), "max_bad_fraction": 0.25}


SPACENET_CLASSES = ["asteroid", "black_hole", "comet", "constellation", "galaxy", "nebula", "planet", "star"]


def cosmoclip(root: Path) -> dict:
    """SpaceNet as CosmoCLIP (Imam et al. 2024) describes it: one class-folder tree of 8 classes, no splits, no captions."""
    for label, name in enumerate(SPACENET_CLASSES[:4]):
        for i in range(3):
            write_image(root / name / f"{name}_{i}.jpg", 10 * label + i)
    return {"name": "cosmoclip", "root": str(root), "val_fraction": 0.3}


SEMART_HEADER = "IMAGE_FILE\tDESCRIPTION\tAUTHOR\tTITLE\tTECHNIQUE\tDATE\tTYPE\tSCHOOL\tTIMEFRAME"
SEMART_ROWS = {
    "train": ["19873-1darmst.jpg\tThe panel shows a saint.\tAACHEN, Hans von\tAllegory\tOil on copper, 56 x 47 cm\t1598\treligious\tGerman\t1551-1600",
              "10-04goya.jpg\tThe Duchess of Alba in a white dress.\tGOYA Y LUCIENTES, Francisco de\tLa Duquesa de Alba\tOil on canvas\t1795\tportrait\tSpanish\t1751-1800",
              "3-mueller.jpg\tA view of the Alps, painted en plein air by Müller.\tMÜLLER, Ernst\tGebirgslandschaft\tOil on canvas\tc. 1850\tlandscape\tGerman\t1801-1850"],
    "val": ["1-sunflowe.jpg\t\tGOGH, Vincent van\tSunflowers\tOil on canvas\t1888\tstill-life\tDutch\t1851-1900",
            "2-selfport.jpg\tA man in a beret.\tREMBRANDT Harmenszoon van Rijn\tSelf-Portrait\tOil on canvas\t-\tportrait\tDutch\t1651-1700"],
}


def semart(root: Path) -> dict:
    """noagarcia.github.io/SemArt: ``semart_{train,val,test}.csv`` tab-separated in Windows-1252, images in ``Images/``."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        lines = SEMART_ROWS.get(split, SEMART_ROWS["val"])
        (root / f"semart_{split}.csv").write_bytes(("\r\n".join([SEMART_HEADER] + lines) + "\r\n").encode("cp1252"))
        for k, line in enumerate(lines):
            write_image(root / "Images" / line.split("\t")[0], k)
    return {"name": "semart", "root": str(root)}


LAYOUTS = {
    "rsicd": rsicd, "ucm_captions": ucm_captions, "sydney_captions": lambda root: ucm_captions(root, "sydney_captions"),
    "rs5m": rs5m, "biomedica": biomedica, "quilt": quilt, "pmc_oa": pmc_oa, "pmc_oa_single": lambda root: pmc_oa(root, single=True),
    "roco": roco, "mimic_cxr": mimic_cxr, "cosmoclip": cosmoclip, "semart": semart,
}
