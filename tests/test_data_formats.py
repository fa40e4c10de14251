"""CSV/TSV, JSONL and Karpathy JSON datamodules on tiny generated fixtures, bad samples included."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_data_fixtures import drain, tokenize, write_corrupt, write_image

from vlp.data.karpathy import KarpathyDataModule
from vlp.data.quality import COUNTING
from vlp.data.table import CsvDataModule, JsonlDataModule
from vlp.registry import ConfigError


def write_csv(tmp_path: Path, separator: str = ",") -> Path:
    """Rows 0-3 good; 4 missing file; 5 corrupt image; 6 empty caption; 7 non-UTF-8 caption."""
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.png", i)
    write_corrupt(tmp_path / "img" / "5.png")
    write_image(tmp_path / "img" / "6.png", 6)
    write_image(tmp_path / "img" / "7.png", 7)
    lines = [f"filepath{separator}title".encode()]
    lines += [f"img/{i}.png{separator}caption {i}".encode() for i in range(4)]
    lines += [f"img/4.png{separator}caption 4".encode(), f"img/5.png{separator}caption 5".encode(), f"img/6.png{separator}".encode()]
    lines += [f"img/7.png{separator}".encode() + b"caf\xe9 latin-1"]
    path = tmp_path / ("train.tsv" if separator == "\t" else "train.csv")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def csv_module(tmp_path: Path, path: Path, **kwargs) -> CsvDataModule:
    module = CsvDataModule(train=str(path), root=str(tmp_path), image_size=8, batch_size=3, max_bad_fraction=0.9, **kwargs)
    module.attach_tokenizer(tokenize)
    module.setup("fit")
    return module


@pytest.mark.parametrize("separator", [",", "\t"])
def test_csv_skips_and_counts_every_kind_of_bad_sample(tmp_path: Path, separator: str) -> None:
    module = csv_module(tmp_path, write_csv(tmp_path, separator))
    assert module.quality.as_dict()["skipped"] == {"caption_not_utf8": 1, "empty_caption": 1}
    keys, batches = drain(module, module.val_dataloader() or module._loader(module.train_set, train=False))
    assert sorted(keys) == ["0", "1", "2", "3"]
    drain(module, module.val_dataloader() or module._loader(module.train_set, train=False))  # a second pass adds nothing
    assert module.quality.as_dict() == {
        "seen": 8,  # 8 annotation rows: each sample once, however often it is loaded
        "skipped": {"caption_not_utf8": 1, "empty_caption": 1, "missing_file": 1, "unreadable_image": 1},
        "bad_fraction": 4 / 8,
        "counting": COUNTING,
    }
    assert all(b.images.shape[1:] == (3, 8, 8) and "data_quality" not in b.extras for b in batches)


def test_bad_sample_counts_travel_from_worker_processes(tmp_path: Path) -> None:
    module = csv_module(tmp_path, write_csv(tmp_path), num_workers=2)
    keys, _ = drain(module, module._loader(module.train_set, train=False))
    assert sorted(keys) == ["0", "1", "2", "3"]
    assert module.quality.skipped["missing_file"] == 1 and module.quality.skipped["unreadable_image"] == 1


def test_too_many_bad_samples_is_a_clear_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path)
    with pytest.raises(ConfigError, match="2 of 8 samples .* max_bad_fraction=0.01"):
        CsvDataModule(train=str(path), root=str(tmp_path)).setup("fit")
    wrong_root = CsvDataModule(train=str(path), root=str(tmp_path / "nowhere"), batch_size=3, max_bad_fraction=0.3)
    wrong_root.attach_tokenizer(tokenize)
    wrong_root.setup("fit")
    with pytest.raises(ConfigError, match="root path"):
        drain(wrong_root, wrong_root._loader(wrong_root.train_set, train=False))


def test_quality_report_is_written_to_the_run_directory(tmp_path: Path) -> None:
    module = csv_module(tmp_path, write_csv(tmp_path))
    module.trainer = SimpleNamespace(global_rank=0, default_root_dir=str(tmp_path / "run"))
    drain(module, module._loader(module.train_set, train=False))
    report = json.loads((tmp_path / "run" / "data_quality.json").read_text())
    assert report["skipped"] == {"caption_not_utf8": 1, "empty_caption": 1, "missing_file": 1, "unreadable_image": 1}
    assert report["seen"] == 8 and "once" in report["counting"]


def test_csv_columns_are_configurable_and_checked(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 0)
    (tmp_path / "t.csv").write_text("path,text\na.png,a red square\n")
    module = csv_module(tmp_path, tmp_path / "t.csv", image_column="path", caption_column="text")
    assert module.train_set.records[0].captions == ["a red square"]
    with pytest.raises(ConfigError, match=r"no column\(s\) \['filepath'\]"):
        csv_module(tmp_path, tmp_path / "t.csv", caption_column="text")


def test_jsonl_reads_string_and_list_captions_and_skips_broken_lines(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.jpg", i)
    lines = [json.dumps({"image": "0.jpg", "caption": "one"}), json.dumps({"image": "1.jpg", "caption": ["two", " ", "deux"]}),
             "{broken", json.dumps({"image": "2.jpg", "caption": ""})]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    module = JsonlDataModule(train=str(tmp_path / "train.jsonl"), root=str(tmp_path), image_size=8, max_bad_fraction=0.9)
    module.setup("fit")
    assert [r.captions for r in module.train_set.records] == [["one"], ["two", "deux"]]
    assert dict(module.quality.skipped) == {"bad_record": 1, "empty_caption": 1}


def karpathy_json(images: list[dict], name: str) -> dict:
    """The layout of Karpathy's dataset_*.json: images with split, filename and sentences[].raw/tokens."""
    sent = 0
    for imgid, image in enumerate(images):
        image["imgid"] = imgid
        image["sentids"] = list(range(sent, sent + len(image["sentences"])))
        image["sentences"] = [{"raw": s, "tokens": s.lower().split(), "imgid": imgid, "sentid": sent + k} for k, s in enumerate(image["sentences"])]
        sent += len(image["sentences"])
    return {"images": images, "dataset": name}


def test_karpathy_json_splits_and_multiple_captions(tmp_path: Path) -> None:
    entries = [
        {"filepath": "train2014", "filename": "a.jpg", "split": "train", "sentences": ["A cat.", "A small cat."]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "sentences": ["A dog."]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "sentences": ["A bird.", "Birds.", "A bird flying."]},
        {"filepath": "val2014", "filename": "d.jpg", "split": "val", "sentences": ["A fish."]},
    ]
    for k, entry in enumerate(entries):
        write_image(tmp_path / entry["filepath"] / entry["filename"], k)
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy_json(entries, "coco")))
    module = KarpathyDataModule(annotations=str(tmp_path / "dataset_coco.json"), root=str(tmp_path), image_size=8)
    module.setup("fit")
    assert [(r.image, r.captions) for r in module.train_set.records] == [
        ("train2014/a.jpg", ["A cat.", "A small cat."]), ("val2014/b.jpg", ["A dog."])]
    (retrieval,) = module.retrieval_sets()
    assert retrieval.texts == ["A bird.", "Birds.", "A bird flying."] and retrieval.image_to_texts == [[0, 1, 2]]
    assert retrieval.images[0].shape == (3, 8, 8)
    with pytest.raises(ConfigError, match="Unknown Karpathy split"):
        KarpathyDataModule(annotations=str(tmp_path / "dataset_coco.json"), eval_split="dev").setup("fit")
