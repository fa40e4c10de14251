"""The lean tar reader yields exactly the (name, bytes) members that webdataset's tarfile-based iterator yields.

Archives from every writer a shard may come from: vlp's own (tools/make_shards.py), Python's
``tarfile`` in ustar, GNU and PAX formats (long names, ustar prefixes, non-ASCII names, links,
directories, ``__meta__`` members, a global PAX header, a PAX size record), and webdataset's
``TarWriter``. A damaged or truncated shard raises one :class:`CorruptShard` sentence naming it,
after exactly the members ``tarfile`` read before the damage.
"""

from __future__ import annotations

import gzip
import io
from contextlib import nullcontext
import sys
import tarfile
from functools import partial
from pathlib import Path

import pytest
import webdataset as wds
from test_data_fixtures import drain, tokenize
from test_data_shards import png_bytes, tar_with
from webdataset.handlers import ignore_and_continue, reraise_exception
from webdataset.tariterators import tar_file_iterator

from vlp.data.tar_members import CorruptShard, shard_samples, tar_members
from vlp.data.web_shards import WebDatasetDataModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import make_shards  # noqa: E402

LONG_NAME = "deep/" * 60 + "sample.jpg"  # 310 characters: a PAX path or a GNU long-name header
PREFIXED_NAME = "folder-" * 20 + "/0001.jpg"  # 149 characters: split into ustar's prefix and name fields


def reference(raw: bytes) -> list[tuple[str, bytes]]:
    """What vlp read before: webdataset's iterator over ``tarfile``, stopping at the first error as its expander does."""
    members = []
    try:
        for item in tar_file_iterator(io.BytesIO(raw), handler=reraise_exception):
            members.append((item["fname"], item["data"]))
    except (tarfile.TarError, OSError):
        pass
    return members


def lean(raw: bytes) -> list[tuple[str, bytes]]:
    return list(tar_members(io.BytesIO(raw)))


def archive(format: int, long_names: bool, pax_headers: dict[str, str] | None = None) -> bytes:
    """Regular files of awkward sizes and names, links, a directory and meta members, written by ``tarfile``."""
    members: list[tuple[str, bytes, bytes]] = [
        ("0001.jpg", b"\xff\xd8" + bytes(range(256)) * 3, tarfile.REGTYPE), ("0001.txt", "a caption".encode(), tarfile.REGTYPE),
        ("0002.txt", b"", tarfile.REGTYPE), ("0002.json", b"{" + b" " * 510 + b"}", tarfile.REGTYPE),  # empty; exactly one block
        ("0003.txt", b"x" * 513, tarfile.REGTYPE), ("dir", b"", tarfile.DIRTYPE), ("0003.link", b"", tarfile.SYMTYPE),
        ("__meta__", b"skipped", tarfile.REGTYPE), ("__index__/list.txt", b"skipped too", tarfile.REGTYPE),
        ("café/ünïcode.txt", "déjà vu".encode(), tarfile.REGTYPE), (PREFIXED_NAME, b"prefixed", tarfile.REGTYPE),
    ]
    if long_names:
        members += [(LONG_NAME, b"long", tarfile.REGTYPE), ("0004.hard", b"", tarfile.LNKTYPE)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format, pax_headers=pax_headers or {}) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime = kind, len(data), 1_700_000_000.5  # a float time: a PAX header per member
            info.linkname = ("target/" * 20 + "0001.jpg") if long_names and kind != tarfile.REGTYPE else "0001.jpg"
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


TARFILE_ARCHIVES = {
    "ustar": lambda: archive(tarfile.USTAR_FORMAT, long_names=False),
    "gnu": lambda: archive(tarfile.GNU_FORMAT, long_names=True),
    "pax": lambda: archive(tarfile.PAX_FORMAT, long_names=True),
    "pax_global": lambda: archive(tarfile.PAX_FORMAT, long_names=True, pax_headers={"comment": "a global header", "uname": "somebody"}),
}


def test_the_reference_archives_hold_what_they_should():
    """The cases are real: PAX and GNU headers and ustar prefixes are present, meta members filtered, links skipped."""
    pax, gnu, ustar = TARFILE_ARCHIVES["pax_global"](), TARFILE_ARCHIVES["gnu"](), TARFILE_ARCHIVES["ustar"]()
    assert pax[156] == ord("g") and b"x" in {bytes([pax[i + 156]]) for i in block_starts(pax)} and b"././@LongLink" in gnu
    assert any(ustar[i + 345] not in (0, 32) for i in block_starts(ustar))  # a non-empty ustar prefix
    names = [name for name, _ in reference(pax)]
    assert LONG_NAME in names and PREFIXED_NAME in names and "café/ünïcode.txt" in names
    assert not {"__meta__", "__index__/list.txt", "dir", "0003.link", "0004.hard"} & set(names) and len(names) == 8


def block_starts(raw: bytes) -> list[int]:
    """Offsets of every header block, found by walking the archive with tarfile."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return sorted({m.offset for m in tar} | {m.offset_data - 512 for m in tar})


@pytest.mark.parametrize("kind", sorted(TARFILE_ARCHIVES))
def test_members_equal_tarfiles_for_ustar_gnu_and_pax_archives(kind: str):
    raw = TARFILE_ARCHIVES[kind]()
    assert lean(raw) == reference(raw) and len(lean(raw)) == 8 - (kind == "ustar")


def test_a_pax_size_record_overrides_the_header_size():
    """A PAX ``size`` (written for members over 8 GiB) wins: here the ustar size field is zeroed and tarfile still reads 700 bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("0001.bin", bytes(range(100)) * 7), ("0001.txt", b"after it")):
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(data), {"size": str(len(data))}
            tar.addfile(info, io.BytesIO(data))
    raw = bytearray(buffer.getvalue())
    header = 1024  # after the first member's PAX header block and its records' block
    assert raw[header + 156] == ord("0") and bytes(raw[header:header + 8]) == b"0001.bin"
    raw[header + 124:header + 136] = b"00000000000\0"
    raw[header + 148:header + 156] = b" " * 8  # the checksum counts its own field as spaces
    raw[header + 148:header + 155] = b"%06o\0" % sum(raw[header:header + 512])
    assert reference(bytes(raw)) == [("0001.bin", bytes(range(100)) * 7), ("0001.txt", b"after it")]
    assert lean(bytes(raw)) == reference(bytes(raw))


def test_members_equal_tarfiles_for_vlp_and_webdataset_writers_and_vlp_writes_no_pax_headers(tmp_path: Path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(tmp_path, i))
    (tmp_path / "train.csv").write_text("filepath,title\n" + "".join(f"{i}.png,caption {i}\n" for i in range(3)))
    make_shards.main(["--format", "csv", "--annotations", str(tmp_path / "train.csv"), "--root", str(tmp_path),
                      "--output", str(tmp_path / "shards"), "--shard-size", "3", "--quiet"])
    ours = (tmp_path / "shards" / "shard-000000.tar").read_bytes()
    with wds.TarWriter(str(tmp_path / "theirs.tar")) as sink:  # its default float mtime: a PAX header per member
        for i in range(3):
            sink.write({"__key__": f"{i:09d}", "png": png_bytes(tmp_path, i), "txt": f"caption {i}", "json": b"{}"})
    theirs = (tmp_path / "theirs.tar").read_bytes()
    assert {bytes([ours[i + 156]]) for i in block_starts(ours)} == {b"0"}  # plain ustar members only
    assert b"x" in {bytes([theirs[i + 156]]) for i in block_starts(theirs)}
    for raw in (ours, theirs):
        assert lean(raw) == reference(raw) and len(lean(raw)) == 9


@pytest.mark.parametrize("kind", ["gnu", "pax"])
def test_a_truncated_shard_yields_the_same_members_then_one_error(kind: str):
    """Cut at every 128th byte: the same members as tarfile; an error unless the cut falls between two members."""
    raw = TARFILE_ARCHIVES[kind]()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
        between = {m.offset for m in members} | {members[-1].offset_data + -(-members[-1].size // 512) * 512}
    for cut in range(0, max(between) + 512, 128):
        read: list[tuple[str, bytes]] = []
        with pytest.raises(CorruptShard, match="shard-7.tar") if cut not in between or cut == 0 else nullcontext():
            for member in tar_members(io.BytesIO(raw[:cut]), where="shard-7.tar"):
                read.append(member)
        assert read == reference(raw[:cut]), cut


def test_a_damaged_header_is_an_error_where_tarfile_silently_stopped():
    raw = bytearray(TARFILE_ARCHIVES["ustar"]())
    fifth = block_starts(bytes(raw))[4]
    raw[fifth + 10] ^= 0xFF  # breaks the checksum
    read: list[tuple[str, bytes]] = []
    with pytest.raises(CorruptShard, match=f"shard-3.tar has a damaged header at byte {fifth} \\(bad checksum\\)"):
        read.extend(tar_members(io.BytesIO(bytes(raw)), where="shard-3.tar"))
    assert read == reference(bytes(raw)) and len(read) == 4  # tarfile ends the archive there without a word
    with pytest.raises(CorruptShard, match="is empty"):
        list(tar_members(io.BytesIO(b"")))


def test_damaged_and_compressed_shards_through_the_pipeline(tmp_path: Path):
    """A damaged header mid-shard is counted as a shard read error (tarfile dropped the rest uncounted); .tar.gz and piped shards read as before."""
    members = [m for i in range(4) for m in ((f"g{i}.png", png_bytes(tmp_path, i)), (f"g{i}.txt", f"caption {i}".encode()))]
    tar_with(tmp_path / "s-0.tar", members)
    whole = (tmp_path / "s-0.tar").read_bytes()
    (tmp_path / "s-0.tar.gz").write_bytes(gzip.compress(whole))
    read = partial(shard_samples, handler=reraise_exception)
    plain = list(read([{"url": str(tmp_path / "s-0.tar")}]))
    compressed = list(read([{"url": str(tmp_path / "s-0.tar.gz")}]))
    piped = list(read([{"url": f"pipe:cat {tmp_path / 's-0.tar'}"}]))  # a stream that is not a file, as from a remote store
    assert [s["__key__"] for s in plain] == ["g0", "g1", "g2", "g3"]
    for other in (compressed, piped):
        assert [{k: v for k, v in s.items() if k != "__url__"} for s in other] == [{k: v for k, v in s.items() if k != "__url__"} for s in plain]
    damaged = bytearray(whole)
    damaged[block_starts(whole)[4] + 10] ^= 0xFF  # the header of g2.png
    (tmp_path / "s-0.tar").write_bytes(bytes(damaged))
    assert [s["__key__"] for s in partial(shard_samples, handler=ignore_and_continue)([{"url": str(tmp_path / "s-0.tar")}])] == ["g0", "g1"]
    dm = WebDatasetDataModule(train=[str(tmp_path / "s-0.tar")], epoch_samples=4, shuffle_buffer=0, image_size=8, batch_size=1, max_bad_fraction=1.0)
    dm.attach_tokenizer(tokenize)
    dm.setup("fit")
    keys, _ = drain(dm, dm.train_dataloader())
    assert keys == ["g0", "g1"] and dict(dm.quality.skipped) == {"shard_read_error": 1}

