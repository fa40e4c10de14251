"""Files -> shards (tools/make_shards.py) -> training batches: exactly once over 2 ranks x 2 workers, bad data counted."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from test_data_fixtures import drain, tokenize, write_corrupt, write_image

from vlp.data.web_shards import WebDatasetDataModule
from vlp.registry import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import make_shards  # noqa: E402

GOOD = [i for i in range(26) if i not in (7, 19)]  # 7 is missing, 19 is corrupt


def write_source(tmp_path: Path) -> Path:
    lines = ["filepath,title"]
    for i in range(26):
        if i == 19:
            write_corrupt(tmp_path / "img" / f"{i}.png")
        elif i != 7:
            write_image(tmp_path / "img" / f"{i}.png", i)
        lines.append(f"img/{i}.png,picture number {i}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "train.csv"


def shard(tmp_path: Path, *extra: str) -> dict:
    args = ["--format", "csv", "--annotations", str(write_source(tmp_path)), "--root", str(tmp_path),
            "--output", str(tmp_path / "shards"), "--shard-size", "5", "--workers", "2", "--quiet", *extra]
    return make_shards.main(args)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("shards")
    summary = shard(tmp_path)
    assert summary["samples"] == 24 and summary["skipped"] == {"missing_file": 1, "unreadable_image": 1}
    assert list(summary["shards"].values()) == [5, 4, 5, 4, 5, 1]
    return tmp_path / "shards"


def module(pattern: str, **kwargs) -> WebDatasetDataModule:
    dm = WebDatasetDataModule(train=[pattern], image_size=8, batch_size=4, **{"max_bad_fraction": 0.5, **kwargs})
    dm.attach_tokenizer(tokenize)
    dm.setup("fit")
    return dm


def test_round_trip_reads_every_good_sample_once_per_epoch_over_2_workers_with_the_exact_length(shards: Path) -> None:
    """Worker 0 reads shards 0, 2, 4 (5 + 5 + 5 samples: 4 batches of 4), worker 1 shards 1, 3, 5 (4 + 4 + 1: 3 batches)."""
    dm = module(str(shards / "shard-{000000..000005}.tar"), num_workers=2, shuffle_buffer=8)
    loader = dm.train_dataloader()
    assert dm.epoch_samples == 24 and len(loader) == 4 + 3
    for _ in range(2):
        keys, batches = drain(dm, loader)
        assert sorted(keys) == [f"{i:09d}" for i in GOOD] and len(batches) == len(loader)
        assert all(b.images.shape[1:] == (3, 8, 8) for b in batches)


def test_finite_epochs_on_several_processes_are_refused_pointing_at_resampled(shards: Path, monkeypatch) -> None:
    """Issue 13: ranks reading different shards could take different numbers of steps and hang in a gather."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="resampled=true"):
        module(str(shards / "shard-{000000..000005}.tar")).train_dataloader()
    resampled = module(str(shards / "shard-{000000..000005}.tar"), resampled=True, epoch_samples=24)
    assert len(resampled.train_dataloader()) == 24 // (2 * 4)


def test_shards_hold_the_original_image_bytes_and_all_captions(shards: Path) -> None:
    with tarfile.open(shards / "shard-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert sorted(members)[:3] == ["000000000.json", "000000000.png", "000000000.txt"]
    assert members["000000000.png"] == (shards.parent / "img" / "0.png").read_bytes()
    assert json.loads(members["000000000.json"]) == {"captions": ["picture number 0"], "key": "0"}
    assert members["000000000.txt"] == b"picture number 0"


def test_resampled_mode_cuts_equal_epochs_of_full_batches(shards: Path) -> None:
    """32 samples per epoch, batches of 4, 2 workers: 4 full batches from each worker."""
    dm = module(str(shards / "shard-{000000..000005}.tar"), resampled=True, epoch_samples=32, num_workers=2)
    loader = dm.train_dataloader()
    keys, batches = drain(dm, loader)
    assert len(loader) == 8 and len(batches) == 8 and all(len(b) == 4 for b in batches)
    assert set(keys) <= {f"{i:09d}" for i in GOOD}


def test_weighted_mixing_follows_the_weights(shards: Path) -> None:
    first, last = str(shards / "shard-000000.tar"), str(shards / "shard-000005.tar")
    dm = WebDatasetDataModule(train=[first, last], train_weights=[1.0, 0.0], resampled=True, epoch_samples=16, image_size=8, batch_size=4)
    dm.attach_tokenizer(tokenize)
    dm.setup("fit")
    keys, _ = drain(dm, dm.train_dataloader())
    assert len(keys) == 16 and set(keys) <= {f"{i:09d}" for i in range(5)}
    with pytest.raises(ConfigError, match="one weight per source"):
        WebDatasetDataModule(train=[first, last], train_weights=[1.0])


def test_make_shards_resumes_by_writing_only_missing_shards(tmp_path: Path) -> None:
    first = shard(tmp_path)
    (tmp_path / "shards" / "shard-000002.tar").unlink()
    (tmp_path / "shards" / "shard-000002.tar.tmp").write_bytes(b"half written")
    again = shard(tmp_path)
    assert first["written"] == 6 and again["written"] == 1
    assert again["shards"] == first["shards"] and again["skipped"] == first["skipped"]


def tar_with(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png_bytes(tmp_path: Path, seed: int) -> bytes:
    write_image(tmp_path / f"p{seed}.png", seed)
    return (tmp_path / f"p{seed}.png").read_bytes()


def test_bad_members_and_truncated_shards_are_skipped_and_counted(tmp_path: Path) -> None:
    members = []
    for i in range(6):
        image = b"garbage" if i == 2 else png_bytes(tmp_path, i)
        caption = b"" if i == 4 else (b"\xff\xfe" if i == 5 else f"caption {i}".encode())
        members += [(f"a{i}.png", image), (f"a{i}.txt", caption)]
    members += [("a6.txt", b"no image"), ("a7.png", png_bytes(tmp_path, 7)), ("a7.json", b"{broken")]
    tar_with(tmp_path / "bad-0.tar", members)
    tar_with(tmp_path / "bad-1.tar", [(f"b{i}.{ext}", png_bytes(tmp_path, 10 + i) if ext == "png" else b"caption") for i in range(4) for ext in ("png", "txt")])
    whole = (tmp_path / "bad-1.tar").read_bytes()
    (tmp_path / "bad-1.tar").write_bytes(whole[: 512 * 7 + 100])  # cut inside b1.png: b0 is whole
    dm = module(str(tmp_path / "bad-{0..1}.tar"), shuffle_buffer=0, epoch_samples=8, max_bad_fraction=0.9)
    keys, _ = drain(dm, dm.train_dataloader())
    assert sorted(keys) == ["a0", "a1", "a3", "b0"]
    assert dict(dm.quality.skipped) == {"unreadable_image": 1, "empty_caption": 1, "caption_not_utf8": 1, "missing_image": 1, "shard_read_error": 1, "bad_record": 1}


def test_validation_shards_under_ddp_become_an_in_memory_dataset_for_the_distributed_sampler(shards: Path, monkeypatch) -> None:
    """Streaming validation shards split by node could give ranks different batch counts; in memory, Lightning shares them out equally."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dm = module(str(shards / "shard-{000000..000005}.tar"), resampled=True, epoch_samples=24, val=str(shards / "shard-{000000..000005}.tar"))
    loader = dm.val_dataloader()
    assert not isinstance(loader.dataset, torch.utils.data.IterableDataset) and len(loader.dataset) == len(GOOD)
    assert sorted(item[2]["key"] for item in loader.dataset) == [f"{i:09d}" for i in GOOD]
