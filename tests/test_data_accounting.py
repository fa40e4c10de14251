"""Bad-sample accounting: every bad sample counted once per epoch, the threshold judged on bad / samples, at its boundary."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data_fixtures import drain, tokenize, write_image
from test_data_shards import png_bytes, tar_with

from vlp.data.table import CsvDataModule
from vlp.data.web_shards import WebDatasetDataModule
from vlp.registry import ConfigError


def shard_module(tmp_path: Path, good: int, bad: int, **kwargs) -> WebDatasetDataModule:
    """One shard: ``good`` image+caption samples, then ``bad`` samples with a caption and no image."""
    members = [m for i in range(good) for m in ((f"g{i}.png", png_bytes(tmp_path, i)), (f"g{i}.txt", f"caption {i}".encode()))]
    members += [(f"b{i}.txt", b"a caption without its image") for i in range(bad)]
    tar_with(tmp_path / "s-0.tar", members)
    dm = WebDatasetDataModule(train=[str(tmp_path / "s-0.tar")], epoch_samples=good + bad, shuffle_buffer=0, image_size=8, batch_size=2, **kwargs)
    dm.attach_tokenizer(tokenize)
    dm.setup("fit")
    return dm


def test_trailing_bad_shard_samples_are_counted(tmp_path: Path) -> None:
    """4 good samples then 3 without images: before, the 3 were dropped uncounted with the partial batch."""
    dm = shard_module(tmp_path, good=4, bad=3, max_bad_fraction=1.0)
    keys, batches = drain(dm, dm.train_dataloader())
    assert sorted(keys) == ["g0", "g1", "g2", "g3"] and len(batches) == 2
    assert dm.quality.as_dict()["skipped"] == {"missing_image": 3} and dm.quality.seen == 7


def test_a_stream_with_no_good_sample_is_a_config_error(tmp_path: Path) -> None:
    dm = shard_module(tmp_path, good=0, bad=3, val=str(tmp_path / "s-0.tar"), max_bad_fraction=1.0)
    with pytest.raises(ConfigError, match="image_key/caption_key"):
        drain(dm, dm.train_dataloader())
    with pytest.raises(ConfigError, match="validation shards .* hold no sample"):
        dm.retrieval_sets()
    resampled = shard_module(tmp_path, good=0, bad=3, resampled=True, max_bad_fraction=1.0)  # before: an endless loop
    with pytest.raises(ConfigError, match="image_key/caption_key"):
        next(iter(resampled.train_dataloader()))


def test_shard_samples_count_once_per_epoch(tmp_path: Path) -> None:
    dm = shard_module(tmp_path, good=4, bad=2, max_bad_fraction=1.0)
    loader = dm.train_dataloader()
    for epoch in range(2):
        dm.trainer = type("Trainer", (), {"current_epoch": epoch, "global_rank": 0, "default_root_dir": str(tmp_path / "run")})()
        drain(dm, loader)
        assert dm.quality.as_dict()["skipped"] == {"missing_image": 2} and dm.quality.seen == 6


def csv_module(tmp_path: Path, rows: int, missing: int, **kwargs) -> CsvDataModule:
    """``rows`` training rows of which ``missing`` (rows 1, 5, 9, ...) name no file; 4 ``val`` rows of which 2 name no file."""
    lines = ["filepath,title"]
    for i in range(rows):
        if not (i % 4 == 1 and i < 4 * missing):
            write_image(tmp_path / "img" / f"{i}.png", i)
        lines.append(f"img/{i}.png,picture {i}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.csv").write_text("filepath,title\nimg/0.png,zero\nnone/a.png,gone\nimg/2.png,two\nnone/b.png,gone too\n")
    dm = CsvDataModule(train=str(tmp_path / "train.csv"), val=str(tmp_path / "val.csv"), root=str(tmp_path), image_size=8, batch_size=2, **kwargs)
    dm.attach_tokenizer(tokenize)
    dm.setup("fit")
    return dm


def test_file_samples_count_once_however_often_they_are_read(tmp_path: Path) -> None:
    """Before: 2 missing validation files met by two validation passes and the retrieval set counted 6 times."""
    dm = csv_module(tmp_path, rows=6, missing=1, max_bad_fraction=1.0)
    for _ in range(2):
        drain(dm, dm._loader(dm.train_set, train=False))
        drain(dm, dm.val_dataloader())
    dm.retrieval_sets()
    assert dm.quality.as_dict()["skipped"] == {"missing_file": 3} and dm.quality.seen == 6 + 4


@pytest.mark.parametrize("missing, fails", [(2, False), (3, True)])
def test_threshold_at_its_boundary_for_files(tmp_path: Path, missing: int, fails: bool) -> None:
    """26 rows (22 training + 4 validation), 2 bad validation files, max_bad_fraction 4/26: 4 bad pass, 5 fail."""
    dm = csv_module(tmp_path, rows=22, missing=missing, max_bad_fraction=4 / 26)
    if fails:
        with pytest.raises(ConfigError, match="5 of 26 samples"):
            drain(dm, dm._loader(dm.train_set, train=True))
            drain(dm, dm.val_dataloader())
    else:
        drain(dm, dm._loader(dm.train_set, train=True))
        drain(dm, dm.val_dataloader())
        assert dm.quality.bad == 4 and dm.quality.fraction() == 4 / 26


@pytest.mark.parametrize("bad, fails", [(2, False), (3, True)])
def test_threshold_at_its_boundary_for_shards_below_1000_samples(tmp_path: Path, bad: int, fails: bool) -> None:
    """20 samples, max_bad_fraction 0.1: 2 bad pass, 3 fail; before, under 1,000 samples it was never judged."""
    dm = shard_module(tmp_path, good=20 - bad, bad=bad, max_bad_fraction=0.1)
    if fails:
        with pytest.raises(ConfigError, match="3 of 20 samples"):
            drain(dm, dm.train_dataloader())
    else:
        drain(dm, dm.train_dataloader())
        assert dm.quality.fraction() == 2 / 20


def test_fewer_training_records_than_one_batch_is_a_config_error(tmp_path: Path) -> None:
    """An epoch that yields no batch would train 0 steps and exit 0."""
    dm = csv_module(tmp_path, rows=6, missing=0)
    dm.batch_size = 8
    with pytest.raises(ConfigError, match="fewer than one batch of data.batch_size=8"):
        dm.train_dataloader()
