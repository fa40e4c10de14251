"""Transforms follow the encoder's timm data config: evaluation equals a direct PIL computation, training timm's PIL crop within a grey level."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from test_data_fixtures import tokenize, write_image
from timm.data import create_transform

from vlp.data.class_folders import ImageFolderDataModule
from vlp.data.transforms import TRAIN_CROP_RATIO, TRAIN_CROP_SCALE, data_config, image_transform


def pil_reference(image: Image.Image, short_side: int, crop: int) -> torch.Tensor:
    """Resize the shorter side bicubically (long side truncated, as torchvision does), centre-crop, scale to [0, 1]."""
    w, h = image.size
    size = (short_side, int(h * short_side / w)) if w <= h else (int(w * short_side / h), short_side)
    resized = image.resize(size, Image.BICUBIC)
    left, top = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
    pixels = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)


def test_plain_transform_matches_pil(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 0, size=(40, 30))
    image = Image.open(tmp_path / "a.png").convert("RGB")
    out = image_transform(data_config(16), train=False)(image)
    assert out.dtype == torch.float32 and out.shape == (3, 16, 16)
    assert torch.equal(out, pil_reference(image, 16, 16))


def test_timm_encoder_config_sets_size_crop_and_interpolation(tmp_path: Path) -> None:
    config = data_config(224, "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8})
    assert config["input_size"] == (3, 32, 32) and config["interpolation"] == "bicubic" and config["crop_pct"] == 0.9
    write_image(tmp_path / "a.png", 1, size=(48, 64))
    image = Image.open(tmp_path / "a.png").convert("RGB")
    assert torch.equal(image_transform(config, train=False)(image), pil_reference(image, 35, 32))  # floor(32 / 0.9) = 35


def test_train_transform_crops_to_size_without_normalising(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 2, size=(40, 30))
    out = image_transform(data_config(16), train=True)(Image.open(tmp_path / "a.png").convert("RGB"))
    assert out.dtype == torch.float32 and out.shape == (3, 16, 16) and 0 <= out.min() < out.max() <= 1


@pytest.mark.parametrize(("size", "interpolation", "worst"), [(64, "bicubic", 1), (64, "bilinear", 1), (800, "bicubic", 2)])
def test_training_crop_on_pixels_matches_timms_pil_crop(size: int, interpolation: str, worst: int):
    """Same random boxes as timm's PIL training transform (same draws from ``random``); torch's uint8 resampling vs Pillow's.

    scikit-learn's two photos (427 x 640), five crops each: downsampled to 64 px the pixels
    differ by at most 1 grey level, upsampled to 800 px by at most 2, and on average by
    under 0.01 either way (a different box would differ by tens of levels).
    """
    config = {**data_config(size), "interpolation": interpolation}
    ours = image_transform(config, train=True, dtype=torch.uint8)
    timms = create_transform(size, is_training=True, interpolation=interpolation, scale=TRAIN_CROP_SCALE, ratio=TRAIN_CROP_RATIO,
                             hflip=0.0, color_jitter=None, normalize=False)
    for photo in load_sample_images().images:
        image = Image.fromarray(photo)
        for draw in range(5):
            random.seed(draw)
            expected = timms(image)
            after_timm = random.getstate()
            random.seed(draw)
            got = ours(image)
            assert random.getstate() == after_timm and got.dtype == torch.uint8 and got.shape == expected.shape == (3, size, size)
            difference = (got.int() - expected.int()).abs()
            assert difference.max() <= worst and difference.float().mean() < 0.01


def test_image_folder_zero_shot_linear_probe_and_prompts(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for k, cls in enumerate(["river", "tennis_court"]):
            write_image(tmp_path / split / cls / f"{k}.png", k)
    (tmp_path / "test" / "templates.txt").write_text("an aerial view of a {}.\n")
    dm = ImageFolderDataModule(root=str(tmp_path), templates=["a photo of a {}."], image_size=8, batch_size=2)
    dm.attach_tokenizer(tokenize)
    dm.setup("fit")
    assert [r.captions for r in dm.train_set.records] == [["a photo of a river."], ["a photo of a tennis court."]]
    (task,) = dm.zero_shot_tasks()
    assert task.class_names == ["river", "tennis court"] and task.templates == ["an aerial view of a {}."]
    assert task.labels.tolist() == [0, 1] and task.images[1].shape == (3, 8, 8)
    (probe,) = dm.linear_probe_sets()
    assert probe.train_labels.tolist() == [0, 1] and len(probe.test_images) == 2
