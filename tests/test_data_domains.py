"""Domain datamodules on tiny copies of each dataset's published layout (see ``domain_layouts``: sources named there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from domain_layouts import PMC_OA_IMAGES, SPACENET_CLASSES, biomedica, cosmoclip, mimic_cxr, pmc_oa, quilt, roco, rs5m, rsicd, semart, ucm_captions
from test_data_fixtures import drain, tokenize, write_image

from vlp.data.art import SemArtDataModule
from vlp.data.astronomy import CosmoClipDataModule
from vlp.data.biomedical import BiomedicaDataModule, PmcOaDataModule, RocoDataModule
from vlp.data.histopathology import QuiltDataModule
from vlp.data.radiology import MimicCxrDataModule
from vlp.data.records import held_out
from vlp.data.remote_sensing import Rs5mDataModule, RsicdDataModule, UcmCaptionsDataModule
from vlp.data.report_sections import report_sections
from vlp.registry import ConfigError

SMALL = {"image_size": 8, "batch_size": 2}


def ready(module):
    module.attach_tokenizer(tokenize)
    module.setup("fit")
    return module


def config(layout: dict) -> dict:
    return {k: v for k, v in layout.items() if k != "name"}


def test_rsicd_reads_annotations_rsicd_folder_and_scene_zero_shot(tmp_path: Path) -> None:
    dm = ready(RsicdDataModule(**config(rsicd(tmp_path)), **SMALL))
    keys, batches = drain(dm, dm._loader(dm.train_set, train=False))
    assert keys == ["0", "1"] and batches[0].images.shape == (2, 3, 8, 8)
    (task,) = dm.zero_shot_tasks()
    assert task.class_names == ["beach", "dense residential area"] and task.labels.tolist() == [0, 1]
    assert len(dm.retrieval_sets()[0].texts) == 6


def test_ucm_captions_numbers_map_to_land_use_classes(tmp_path: Path) -> None:
    dm = ready(UcmCaptionsDataModule(**config(ucm_captions(tmp_path)), **SMALL))
    (task,) = dm.zero_shot_tasks()
    assert task.class_names == ["airplane", "tennis court"] and task.labels.tolist() == [0, 1]
    assert task.images[0].shape == (3, 8, 8)


def test_quilt_lookup_csv_split_column(tmp_path: Path) -> None:
    dm = ready(QuiltDataModule(**config(quilt(tmp_path)), **SMALL))
    assert [r.captions for r in dm.train_set.records] == [["caption 0"], ["caption 1"], ["caption 2"]]
    assert [r.image for r in dm.val_records] == ["3.jpg"]
    assert sorted(drain(dm, dm._loader(dm.train_set, train=False))[0]) == ["0", "1", "2"]


def test_pmc_oa_published_image_folder_with_split_files(tmp_path: Path) -> None:
    dm = ready(PmcOaDataModule(**config(pmc_oa(tmp_path)), **SMALL))
    assert dm.root == str(tmp_path / PMC_OA_IMAGES)
    assert sorted(drain(dm, dm._loader(dm.train_set, train=False))[0]) == ["0", "1", "2", "3"] and dm.quality.bad == 0
    assert dm.retrieval_sets()[0].texts == ["A. Real time image 4 of the translocation.", "A. Real time image 5 of the translocation."]


def test_pmc_oa_single_jsonl_is_split_by_a_seeded_fraction(tmp_path: Path) -> None:
    dm = ready(PmcOaDataModule(**config(pmc_oa(tmp_path, single=True)), **SMALL))
    names = [f"PMC21231{i}_Fig3_{i}.jpg" for i in range(6)]
    expected_val = [n for n in names if held_out(n, 0.5, 0)]
    assert [r.image for r in dm.val_records] == expected_val and 0 < len(expected_val) < 6
    assert sorted(r.image for r in dm.train_set.records) == sorted(set(names) - set(expected_val))
    with pytest.raises(ConfigError, match="pmc_oa.jsonl"):
        ready(PmcOaDataModule(root=str(tmp_path / "nowhere"), **SMALL))


def test_roco_images_named_by_fetch_script_through_dlinks_or_by_roco_id(tmp_path: Path) -> None:
    layout = roco(tmp_path)
    dm = ready(RocoDataModule(**config(layout), **SMALL))
    assert [(r.key, Path(r.image).name) for r in dm.train_set.records][:2] == [
        ("ROCO_00002", "PMC3498860_jovr-04-256f0.jpg"), ("ROCO_00003", "PMC3498861_jovr-04-256f1.jpg")]
    assert dm.train_set.records[0].captions == ["Computed tomography of the chest, case 2."]
    assert sorted(drain(dm, dm.val_dataloader())[0]) == ["ROCO_81834"] and dm.quality.bad == 0
    write_image(tmp_path / "data/train/radiology/images/ROCO_00004.jpg", 99)  # a copy named by ROCO id wins
    by_id = ready(RocoDataModule(**config(layout), **SMALL))
    assert Path(by_id.train_set.records[2].image).name == "ROCO_00004.jpg"


def test_mimic_cxr_official_heading_synonyms_and_last_paragraph(tmp_path: Path) -> None:
    """CONCLUSION and FINDINGS AND IMPRESSION are the impression; a report without either is captioned by its last paragraph."""
    dm = ready(MimicCxrDataModule(**config(mimic_cxr(tmp_path)), **SMALL))
    assert [(r.key, r.captions) for r in dm.train_set.records] == [
        ("d1", ["The lungs are clear. There is no pleural effusion.", "No acute cardiopulmonary process."]),
        ("d2", ["Mild pulmonary edema."]),
        ("d3", ["Right lower lobe pneumonia."]),
    ]
    assert [(r.key, r.captions) for r in dm.val_records] == [("d4", ["Heart size is normal. Lungs are clear."])]
    assert dict(dm.quality.skipped) == {"empty_caption": 1}  # d5: only a comparison, still skipped and counted
    assert report_sections(" EXAMINATION:  CHEST (PA AND LAT)\n \n CHEST, TWO VIEWS:\n Clear.\n")["findings"] == "Clear."


def test_cosmoclip_spacenet_tree_is_split_by_seed_and_captioned_by_class_prompts(tmp_path: Path) -> None:
    dm = ready(CosmoClipDataModule(**config(cosmoclip(tmp_path)), **SMALL))
    keys = [f"{c}/{c}_{i}.jpg" for c in SPACENET_CLASSES[:4] for i in range(3)]
    assert [r.key for r in dm.val_records] == [k for k in keys if held_out(k, 0.3, 0)]
    assert len(dm.train_set.records) + len(dm.val_records) == 12 and dm.val_records
    first = dm.train_set.records[0]
    assert first.captions == [t.format(first.key.split("/")[0].replace("_", " ")) for t in CosmoClipDataModule.TEMPLATES]
    (task,) = dm.zero_shot_tasks()
    assert task.class_names == ["asteroid", "black hole", "comet", "constellation"]
    (tmp_path / "captions.json").write_text(json.dumps({k: f"a bright object {k}" for k in keys}))
    generated = ready(CosmoClipDataModule(**config(cosmoclip(tmp_path / "again")) | {"root": str(tmp_path)}, **SMALL))
    assert generated.train_set.records[0].captions == [f"a bright object {generated.train_set.records[0].key}"]


def test_semart_windows_1252_tab_separated_catalogue(tmp_path: Path) -> None:
    dm = ready(SemArtDataModule(**config(semart(tmp_path)), **SMALL))
    assert dm.quality.bad == 0 and len(dm.train_set.records) == 3
    assert dm.train_set.records[0].captions == [
        '"Allegory" by Aachen, Hans Von (1598), Oil on copper, 56 x 47 cm; a religious painting of the German school.', "The panel shows a saint."]
    assert dm.train_set.records[2].captions[1] == "A view of the Alps, painted en plein air by Müller."
    assert dm.val_records[1].captions[0] == '"Self-Portrait" by Rembrandt Harmenszoon Van Rijn, Oil on canvas; a portrait painting of the Dutch school.'
    (task,) = dm.zero_shot_tasks()
    assert task.class_names == ["portrait", "still-life"] and task.labels.tolist() == [1, 0]


def test_biomedica_shards(tmp_path: Path) -> None:
    dm = ready(BiomedicaDataModule(**config(biomedica(tmp_path)), **SMALL))
    keys, batches = drain(dm, dm.train_dataloader())
    assert sorted(keys) == [f"PMC{i}_fig{i}_train" for i in range(4)] and batches[0].images.shape[1:] == (3, 8, 8)


def test_rs5m_reads_img_content_and_caption_members(tmp_path: Path) -> None:
    """Before image_key/caption_key every RS5M sample was dropped as missing_image."""
    dm = ready(Rs5mDataModule(**config(rs5m(tmp_path)), **SMALL))
    keys, _ = drain(dm, dm.train_dataloader())
    assert sorted(keys) == [f"train_{i:06d}" for i in range(4)] and dm.quality.bad == 0
    assert dm.retrieval_sets()[0].texts == ["a satellite image of farmland val 0", "a satellite image of farmland val 1"]
    wrong = ready(Rs5mDataModule(**config(rs5m(tmp_path / "w")), image_key="jpg", **SMALL))
    with pytest.raises(ConfigError, match="image_key/caption_key"):
        drain(wrong, wrong.train_dataloader())


def test_roco_copy_with_unknown_image_names_is_detected(tmp_path: Path) -> None:
    layout = roco(tmp_path)
    for image in (tmp_path / "data/train/radiology/images").iterdir():
        image.rename(image.with_name(f"old-{image.name}"))
    (tmp_path / "data/train/radiology/dlinks.txt").unlink()
    with pytest.raises(ConfigError, match="older release"):
        ready(RocoDataModule(**config(layout), **SMALL))


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "experiments" / "data").glob("*.yaml")))
def test_data_example_experiments_validate(name: str) -> None:
    from vlp.config import load_experiment

    experiment = load_experiment(str(Path(__file__).resolve().parents[1] / "experiments" / "data" / name), [])
    assert experiment.data.name == experiment.resolved["data"]["name"]
