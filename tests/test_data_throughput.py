"""Throughput changes keep the pixels: uint8 batches equal the float path exactly; draft decoding stays within its bound."""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from test_data_fixtures import tokenize, write_image
from torch.utils.data import DataLoader, IterableDataset

from vlp.batch import Batch
from vlp.data.base import Collate, stack_pixels
from vlp.data.decode import open_image
from vlp.data.transforms import data_config, image_transform, unit_float
from vlp.data.web_shards import WebDatasetDataModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import make_shards  # noqa: E402


def seed(value: int) -> None:
    """timm's random crop draws from Python's random module."""
    random.seed(value)
    torch.manual_seed(value)


def photo_jpeg(index: int) -> bytes:
    """One of scikit-learn's real photos (427 x 640), encoded as a JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(load_sample_images().images[index]).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("train", [True, False])
def test_uint8_transform_divided_on_the_device_equals_the_float_transform_bit_for_bit(train: bool):
    image = open_image(photo_jpeg(0))
    config = data_config(64)
    seed(3)
    as_uint8 = image_transform(config, train, dtype=torch.uint8)(image)
    seed(3)
    as_float = image_transform(config, train)(image)
    assert as_uint8.dtype == torch.uint8 and as_float.dtype == torch.float32
    assert torch.equal(unit_float(as_uint8), as_float)  # x / 255 either way: no rounding at all


def test_collate_keeps_uint8_only_when_asked():
    items = [(torch.full((3, 2, 2), 255, dtype=torch.uint8), ["a"]), (torch.zeros(3, 2, 2, dtype=torch.uint8), ["b"])]
    assert Collate(tokenize, sample_caption=False, keep_uint8=True)(items).images.dtype == torch.uint8
    floats = Collate(tokenize, sample_caption=False)(items).images
    assert floats.dtype == torch.float32 and floats[0].eq(1).all() and floats[1].eq(0).all()


def pil_tensors(count: int) -> list[torch.Tensor]:
    """uint8 images as pil_to_tensor leaves them: (C, H, W) views of (H, W, C) pixels (evaluation transform: the same in any process)."""
    transform = image_transform(data_config(16), train=False, dtype=torch.uint8)
    return [transform(Image.fromarray(load_sample_images().images[i % 2])) for i in range(count)]


class StackedInWorker(IterableDataset):
    def __iter__(self):
        stacked = stack_pixels(pil_tensors(3))
        yield stacked, stacked.is_shared()


def test_stacked_pixels_equal_torch_stack_in_the_images_layout_and_made_in_shared_memory_in_workers():
    images = pil_tensors(3)
    assert images[0].permute(1, 2, 0).is_contiguous()  # the case stack_pixels copies without transposing
    stacked = stack_pixels(images)
    assert torch.equal(stacked, torch.stack(images)) and stacked.is_contiguous(memory_format=torch.channels_last)
    assert not stacked.is_shared() and torch.equal(unit_float(stacked), torch.stack(images).float() / 255) and unit_float(stacked).is_contiguous()
    from_worker, shared_there = next(iter(DataLoader(StackedInWorker(), batch_size=None, num_workers=1)))
    assert shared_there and torch.equal(from_worker, stacked)
    contiguous = [image.contiguous() for image in images]  # as the training crop's resize leaves them: the batch keeps that layout
    stacked = stack_pixels(contiguous)
    assert torch.equal(stacked, torch.stack(images)) and stacked.is_contiguous()
    with pytest.raises(RuntimeError):
        stack_pixels([images[0], images[0][:, :-1]])


@pytest.fixture(scope="module")
def shard_pattern(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("throughput")
    lines = ["filepath,title"]
    for i in range(8):
        write_image(folder / f"{i}.jpg", i, size=(24, 20))
        lines.append(f"{i}.jpg,picture {i}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    make_shards.main(["--format", "csv", "--annotations", str(folder / "train.csv"), "--root", str(folder),
                      "--output", str(folder / "shards"), "--shard-size", "4", "--quiet"])
    return str(folder / "shards" / "shard-{000000..000001}.tar")


class ImageProbe(L.LightningModule):
    """Records the images that reach training_step through Lightning's transfer hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch.images)
        return self.weight * batch.images.float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_shard_batches_leave_the_loader_as_uint8_and_reach_the_model_as_the_same_floats(shard_pattern: str, tmp_path: Path):
    dm = WebDatasetDataModule(train=[shard_pattern], image_size=8, batch_size=4, shuffle_buffer=0)
    dm.attach_tokenizer(tokenize)
    dm.setup("fit")
    loaded = list(dm.train_dataloader())
    assert [b.images.dtype for b in loaded] == [torch.uint8, torch.uint8]
    probe = ImageProbe()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(probe, datamodule=dm)
    assert len(probe.seen) == 2 and all(images.dtype == torch.float32 and images.is_contiguous() for images in probe.seen)
    images = torch.cat(probe.seen)
    assert 0 <= images.min() < images.max() <= 1
    assert torch.equal(unit_float((images * 255).round().to(torch.uint8)), images)  # uint8 / 255, converted after transfer


def test_draft_decoding_is_not_used_when_the_image_is_not_twice_the_needed_size():
    raw = photo_jpeg(1)  # 640 x 427
    transform = image_transform(data_config(224), train=False, dtype=torch.uint8)
    assert transform.decode_short_side == 448  # 2 x (224 / crop_pct 1.0, the resize input)
    drafted = open_image(raw, transform.decode_short_side)
    assert drafted.size == (640, 427) and np.array_equal(np.asarray(drafted), np.asarray(open_image(raw)))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("index", [0, 1])
def test_draft_decoding_keeps_twice_the_resize_input_and_stays_within_its_documented_bound(train: bool, index: int):
    """A 640 x 427 photo to a 64 px model: decoded at 1/2 scale (320 x 214 >= 2 x the resize input).

    Bound (docs: transforms.DRAFT_MARGIN): mean absolute difference at most 2.5 grey levels of 255
    from a full decode with the same crop; measured 1.1-2.1 on these photos.
    """
    raw = photo_jpeg(index)
    transform = image_transform(data_config(64), train, dtype=torch.uint8)
    drafted = open_image(raw, transform.decode_short_side)
    assert drafted.size == (320, 214) and min(drafted.size) >= transform.decode_short_side
    seed(0)
    full = transform(open_image(raw)).float()
    seed(0)
    reduced = transform(drafted).float()
    assert 0 < (full - reduced).abs().mean() <= 2.5


def test_png_is_always_decoded_in_full(tmp_path: Path):
    write_image(tmp_path / "big.png", 0, size=(400, 300))
    assert open_image(str(tmp_path / "big.png"), 16).size == (400, 300)


def test_bench_data_runs_as_the_readme_shows_and_reports_every_loop(tmp_path: Path):
    """`python tools/bench_data.py` (tiny sizes): every loop reads samples, and draft decoding stays within its 2.5-level bound."""
    import re
    import subprocess

    tools = Path(__file__).resolve().parents[1] / "tools"
    result = subprocess.run([sys.executable, str(tools / "bench_data.py"), "--images", "32", "--size", "64", "--image-size", "32",
                             "--draft-side", "256"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rates = dict(re.findall(r"^\s*(\w+):\s+([\d.]+) samples/s", result.stdout, re.MULTILINE))
    assert set(rates) == {"plain_pil_float", "plain_pil", "worker_steps", "shards_0_worker", "shards_1_worker", "shards_2_worker"}
    assert all(float(rate) > 0 for rate in rates.values())
    difference = float(re.search(r"mean difference ([\d.]+) grey levels", result.stdout).group(1))
    assert difference <= 2.5
