"""Domain datamodules on tiny fixtures written in each dataset's published layout."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from test_data_fixtures import drain, tokenize, write_image
from test_data_formats import karpathy_json

from vlp.data.art import SemArtDataModule
from vlp.data.astronomy import CosmoClipDataModule
from vlp.data.biomedical import BiomedicaDataModule, PmcOaDataModule, RocoDataModule
from vlp.data.histopathology import QuiltDataModule
from vlp.data.radiology import MimicCxrDataModule, report_sections
from vlp.data.remote_sensing import Rs5mDataModule, RsicdDataModule, UcmCaptionsDataModule

SMALL = {"image_size": 8, "batch_size": 2}


def ready(module):
    module.attach_tokenizer(tokenize)
    module.setup("fit")
    return module


def test_rsicd_karpathy_json_and_scene_zero_shot(tmp_path: Path) -> None:
    names = [("airport_1.jpg", "train"), ("beach_2.jpg", "test"), ("denseresidential_3.jpg", "test"), ("00017.jpg", "test")]
    for k, (name, _) in enumerate(names):
        write_image(tmp_path / "RSICD_images" / name, k)
    entries = [{"filename": n, "split": s, "sentences": [f"view {k}", f"scene {k}"]} for k, (n, s) in enumerate(names)]
    (tmp_path / "dataset_rsicd.json").write_text(json.dumps(karpathy_json(entries, "rsicd")))
    dm = ready(RsicdDataModule(root=str(tmp_path), **SMALL))
    keys, batches = drain(dm, dm._loader(dm.train_set, train=False))
    assert keys == ["0"] and batches[0].images.shape == (1, 3, 8, 8)
    (task,) = dm.zero_shot_tasks()
    assert task.class_names == ["beach", "dense residential area"] and task.labels.tolist() == [0, 1]
    assert len(dm.retrieval_sets()[0].texts) == 6


def test_ucm_captions_numbers_map_to_land_use_classes(tmp_path: Path) -> None:
    names = [("1.tif", "train"), ("101.tif", "test"), ("2100.tif", "test")]
    for k, (name, _) in enumerate(names):
        write_image(tmp_path / "imgs" / name, k)
    entries = [{"filename": n, "split": s, "sentences": ["there are some planes ."]} for n, s in names]
    (tmp_path / "dataset.json").write_text(json.dumps(karpathy_json(entries, "ucm")))
    dm = ready(UcmCaptionsDataModule(root=str(tmp_path), **SMALL))
    (task,) = dm.zero_shot_tasks()
    assert task.class_names == ["airplane", "tennis court"] and task.labels.tolist() == [0, 1]
    assert task.images[0].shape == (3, 8, 8)


def test_quilt_lookup_csv_split_column(tmp_path: Path) -> None:
    header = ",caption,image_path,subset,split,pathology,roi_text,noisy_text,corrected_text,med_umls_ids,magnification,height,width"
    rows = [f"{i},caption {i},{i}.jpg,openpath,{'train' if i < 3 else 'val'},['Lung'],[],[],[],[],0,16,20" for i in range(4)]
    for i in range(4):
        write_image(tmp_path / "quilt_1m" / f"{i}.jpg", i)
    (tmp_path / "quilt_1M_lookup.csv").write_text("\n".join([header] + rows) + "\n")
    dm = ready(QuiltDataModule(root=str(tmp_path), **SMALL))
    assert [r.captions for r in dm.train_set.records] == [["caption 0"], ["caption 1"], ["caption 2"]]
    assert [r.image for r in dm.val_records] == ["3.jpg"]
    assert sorted(drain(dm, dm._loader(dm.train_set, train=False))[0]) == ["0", "1", "2"]


def test_pmc_oa_jsonl(tmp_path: Path) -> None:
    lines = [{"image": f"PMC100{i}_F{i}.jpg", "caption": f"Panel {i}: CT scan."} for i in range(3)]
    for k, line in enumerate(lines):
        write_image(tmp_path / "images" / line["image"], k)
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n")
    (tmp_path / "valid.jsonl").write_text(json.dumps(lines[2]) + "\n")
    dm = ready(PmcOaDataModule(root=str(tmp_path), **SMALL))
    assert [r.image for r in dm.train_set.records] == ["PMC1000_F0.jpg", "PMC1001_F1.jpg"]
    assert dm.retrieval_sets()[0].texts == ["Panel 2: CT scan."]


def test_roco_captions_txt(tmp_path: Path) -> None:
    for split, ids in (("train", ["ROCO_00002", "ROCO_00003"]), ("validation", ["ROCO_00010"])):
        folder = tmp_path / split / "radiology"
        for k, roco_id in enumerate(ids):
            write_image(folder / "images" / f"{roco_id}.jpg", k)
        (folder / "captions.txt").write_text("".join(f"{r}\t Computed tomography of case {r}. \n" for r in ids))
    dm = ready(RocoDataModule(root=str(tmp_path), **SMALL))
    assert [(r.key, r.captions) for r in dm.train_set.records] == [
        ("ROCO_00002", ["Computed tomography of case ROCO_00002."]), ("ROCO_00003", ["Computed tomography of case ROCO_00003."])]
    assert sorted(drain(dm, dm.val_dataloader())[0]) == ["ROCO_00010"]


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 FINDINGS:
 The lungs are clear.  There is no
 pleural effusion.

 IMPRESSION:
 No acute cardiopulmonary process.
"""


def test_mimic_cxr_report_sections_become_captions(tmp_path: Path) -> None:
    rows = [("d1", "50414267", "10000032", "train"), ("d2", "53189527", "10000032", "validate"), ("d3", "50000001", "11000011", "train")]
    for k, (dicom, study, subject, _) in enumerate(rows):
        write_image(tmp_path / f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg", k)
    for study in ("50414267", "53189527"):
        (tmp_path / f"files/p10/p10000032/s{study}.txt").write_text(REPORT)
    table = "dicom_id,study_id,subject_id,split\n" + "".join(",".join(r) + "\n" for r in rows)
    (tmp_path / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(gzip.compress(table.encode()))
    dm = ready(MimicCxrDataModule(root=str(tmp_path), max_bad_fraction=0.5, **SMALL))
    assert [(r.key, r.captions) for r in dm.train_set.records] == [
        ("d1", ["The lungs are clear. There is no pleural effusion.", "No acute cardiopulmonary process."])]
    assert dict(dm.quality.skipped) == {"missing_file": 1}  # d3 has no report
    assert report_sections(REPORT)["examination"] == "CHEST (PA AND LAT)"


def test_cosmoclip_class_folders_with_generated_captions(tmp_path: Path) -> None:
    for split, items in (("train", [("galaxy", "g1.png"), ("nebula", "n1.png")]), ("test", [("galaxy", "g2.png"), ("nebula", "n2.png")])):
        for k, (cls, name) in enumerate(items):
            write_image(tmp_path / split / cls / name, k)
        (tmp_path / split / "captions.json").write_text(json.dumps({f"{c}/{n}": f"a bright {c} {n}" for c, n in items}))
    dm = ready(CosmoClipDataModule(root=str(tmp_path), **SMALL))
    assert [r.captions for r in dm.train_set.records] == [["a bright galaxy g1.png"], ["a bright nebula n1.png"]]
    (task,) = dm.zero_shot_tasks()
    assert task.class_names == ["galaxy", "nebula"] and task.labels.tolist() == [0, 1]
    assert task.templates[0] == "an astronomical image of a {}."


def test_semart_metadata_becomes_captions_and_type_is_zero_shot(tmp_path: Path) -> None:
    header = "IMAGE_FILE\tDESCRIPTION\tAUTHOR\tTITLE\tTECHNIQUE\tDATE\tTYPE\tSCHOOL\tTIMEFRAME"
    rows = {"train": ["19873-1darmst.jpg\tThe panel shows a saint.\tAACHEN, Hans von\tAllegory\tOil on copper, 56 x 47 cm\t1598\treligious\tGerman\t1551-1600"],
            "val": ["1.jpg\t\tGOGH, Vincent van\tSunflowers\tOil on canvas\t1888\tstill-life\tDutch\t1851-1900",
                    "2.jpg\tA man.\tREMBRANDT\tSelf-Portrait\tOil\t-\tportrait\tDutch\t1651-1700"]}
    for split, lines in rows.items():
        (tmp_path / f"semart_{split}.csv").write_text("\n".join([header] + lines) + "\n")
        for k, line in enumerate(lines):
            write_image(tmp_path / "Images" / line.split("\t")[0], k)
    dm = ready(SemArtDataModule(root=str(tmp_path), **SMALL))
    assert dm.train_set.records[0].captions == [
        '"Allegory" by Aachen, Hans Von (1598), Oil on copper, 56 x 47 cm; a religious painting of the German school.', "The panel shows a saint."]
    assert dm.val_records[1].captions[0] == '"Self-Portrait" by Rembrandt, Oil; a portrait painting of the Dutch school.'
    (task,) = dm.zero_shot_tasks()
    assert task.class_names == ["portrait", "still-life"] and task.labels.tolist() == [1, 0]


def write_shard(path: Path, samples: list[tuple[str, bytes, dict]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, image, meta in samples:
            for name, data in ((f"{key}.jpg", image), (f"{key}.json", json.dumps(meta).encode()), (f"{key}.txt", meta.get("text", "").encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def jpeg(tmp_path: Path, seed: int) -> bytes:
    write_image(tmp_path / f"{seed}.jpg", seed)
    return (tmp_path / f"{seed}.jpg").read_bytes()


def test_biomedica_and_rs5m_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "biomedica-000000.tar", [(f"PMC{i}_fig{i}", jpeg(tmp_path, i), {"text": f"Figure {i}. Histology.", "license": "CC BY"}) for i in range(3)])
    dm = ready(BiomedicaDataModule(train=[str(tmp_path / "biomedica-000000.tar")], epoch_samples=3, **SMALL))
    keys, batches = drain(dm, dm.train_dataloader())
    assert sorted(keys) == ["PMC0_fig0", "PMC1_fig1", "PMC2_fig2"] and batches[0].images.shape[1:] == (3, 8, 8)
    write_shard(tmp_path / "rs5m-000000.tar", [(f"rs_{i}", jpeg(tmp_path, 10 + i), {"caption": f"a satellite view of farmland {i}"}) for i in range(2)])
    rs = ready(Rs5mDataModule(train=[str(tmp_path / "rs5m-000000.tar")], val=str(tmp_path / "rs5m-000000.tar"), epoch_samples=2, **SMALL))
    assert rs.retrieval_sets()[0].texts == ["a satellite view of farmland 0", "a satellite view of farmland 1"]
