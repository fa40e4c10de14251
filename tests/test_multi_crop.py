"""Multi-crop views (``data.multi_crop``): cut from the source image in the data path, before the resize."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_fixtures import tokenize, write_image
from torchvision import transforms

from vlp.build import build_datamodule
from vlp.config.experiment import load_experiment
from vlp.data.multi_crop import CROP_RATIO, GLOBAL_CROPS, LOCAL_CROPS, MultiCrop
from vlp.data.shapes import ShapesDataModule
from vlp.data.table import CsvDataModule
from vlp.registry import ConfigError

from conftest import REPO

CROPS = {"global_crops": 2, "local_crops": 3, "global_scale": [0.4, 1.0], "local_scale": [0.05, 0.4], "local_size": 8}
SOURCE = (48, 40)  # width, height: larger than the 16 px tower input


def pil_crop(source: Image.Image, box: tuple[int, int, int, int], side: int) -> np.ndarray:
    """The reference: PIL's own crop and bicubic resize of the box (top, left, height, width)."""
    top, left, height, width = box
    return np.asarray(source.crop((left, top, left + width, top + height)).resize((side, side), Image.BICUBIC)).transpose(2, 0, 1)


def assert_near_pil(crop: torch.Tensor, reference: np.ndarray) -> None:
    """Datamodules cut crops from decoded pixels (uint8 tensors): torch's uint8 resampling is within one grey level of Pillow's here."""
    assert crop.dtype == torch.uint8 and np.abs(crop.numpy().astype(int) - reference.astype(int)).max() <= 1


def tensor_crop(source: torch.Tensor, box: tuple[int, int, int, int], side: int) -> torch.Tensor:
    """The reference for tensor sources: slice, then torch's antialiased bicubic resize in float, rounded to uint8."""
    top, left, height, width = box
    patch = source[:, top : top + height, left : left + width].double().unsqueeze(0)
    resized = torch.nn.functional.interpolate(patch, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    return resized.squeeze(0).round().clamp(0, 255)


def redraw_boxes(source, seed: int, global_crops: int, local_crops: int) -> tuple[list, list]:
    """The boxes the crops must come from: torchvision's RandomResizedCrop draws, globals first, from the same seed."""
    torch.manual_seed(seed)
    draw = transforms.RandomResizedCrop.get_params
    return ([draw(source, [0.4, 1.0], list(CROP_RATIO)) for _ in range(global_crops)],
            [draw(source, [0.05, 0.4], list(CROP_RATIO)) for _ in range(local_crops)])


def area_fraction(box: tuple[int, int, int, int], height: int, width: int) -> float:
    return box[2] * box[3] / (height * width)


def test_pil_crops_are_cut_from_the_source_at_their_own_sizes(tmp_path: Path):
    write_image(tmp_path / "a.png", 0, SOURCE)
    source = Image.open(tmp_path / "a.png").convert("RGB")
    crop = MultiCrop(size=16, **CROPS)
    box = (3, 5, 30, 20)
    assert np.array_equal(crop.cut(source, box, 16).numpy(), pil_crop(source, box, 16))
    for seed in range(5):
        torch.manual_seed(seed)
        crops = crop(source)
        assert crops[GLOBAL_CROPS].shape == (2, 3, 16, 16) and crops[LOCAL_CROPS].shape == (3, 3, 8, 8)
        assert crops[GLOBAL_CROPS].dtype == crops[LOCAL_CROPS].dtype == torch.uint8
        global_boxes, local_boxes = redraw_boxes(source, seed, 2, 3)
        for k, b in enumerate(global_boxes):
            assert 0.4 - 0.05 <= area_fraction(b, SOURCE[1], SOURCE[0]) <= 1.0
            assert np.array_equal(crops[GLOBAL_CROPS][k].numpy(), pil_crop(source, b, 16))
        for k, b in enumerate(local_boxes):
            assert 0.05 - 0.02 <= area_fraction(b, SOURCE[1], SOURCE[0]) <= 0.4 + 0.02  # integer box sides round the area
            assert np.array_equal(crops[LOCAL_CROPS][k].numpy(), pil_crop(source, b, 8))


def test_file_datamodule_cuts_crops_from_the_decoded_source_and_batches_them(tmp_path: Path):
    for i in range(4):
        write_image(tmp_path / f"{i}.png", i, SOURCE)
    (tmp_path / "train.csv").write_text("filepath,title\n" + "".join(f"{i}.png,image {i}\n" for i in range(4)))
    module = CsvDataModule(train=str(tmp_path / "train.csv"), val=str(tmp_path / "train.csv"), root=str(tmp_path),
                           image_size=16, batch_size=4, multi_crop=CROPS)
    module.setup("fit")
    module.attach_tokenizer(tokenize)
    source = Image.open(tmp_path / "2.png").convert("RGB")
    torch.manual_seed(7)
    image, _, extras = module.train_set[2]
    global_boxes, local_boxes = redraw_boxes(source, 7, 2, 3)  # drawn before the training transform's own crop
    assert image.shape == (3, 16, 16)
    assert_near_pil(extras[GLOBAL_CROPS][1], pil_crop(source, global_boxes[1], 16))
    assert_near_pil(extras[LOCAL_CROPS][2], pil_crop(source, local_boxes[2], 8))
    batch = next(iter(module.train_dataloader()))
    assert batch.extras[GLOBAL_CROPS].shape == (4, 2, 3, 16, 16) and batch.extras[LOCAL_CROPS].shape == (4, 3, 3, 8, 8)
    assert batch.extras[LOCAL_CROPS].dtype == torch.uint8  # training loaders keep uint8, like the images
    raw = batch.extras[LOCAL_CROPS].clone()
    moved = module.on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(moved.extras[LOCAL_CROPS], raw.double().div(255).float(), rtol=0, atol=0)
    val = next(iter(module.val_dataloader()))
    assert val.extras[GLOBAL_CROPS].dtype == torch.float32 and float(val.extras[GLOBAL_CROPS].max()) <= 1.0


def test_shapes_crops_are_cut_from_the_generated_image():
    module = ShapesDataModule(image_size=16, train_size=8, val_size=8, batch_size=4, multi_crop=CROPS)
    module.setup("fit")
    module.attach_tokenizer(tokenize)
    source = module.train_set.images[3]
    torch.manual_seed(11)
    image, _, crops = module.train_set[3]
    assert torch.equal(image, source)
    global_boxes, local_boxes = redraw_boxes(source, 11, 2, 3)
    for k, b in enumerate(global_boxes):
        assert (crops[GLOBAL_CROPS][k].double() - tensor_crop(source, b, 16)).abs().max() <= 1  # uint8 kernel rounding
    for k, b in enumerate(local_boxes):
        assert 0.05 - 0.05 < area_fraction(b, 16, 16) <= 0.4 + 0.05
        assert (crops[LOCAL_CROPS][k].double() - tensor_crop(source, b, 8)).abs().max() <= 1
    batch = next(iter(module.train_dataloader()))
    assert batch.extras[GLOBAL_CROPS].shape == (4, 2, 3, 16, 16) and batch.extras[LOCAL_CROPS].shape == (4, 3, 3, 8, 8)


def test_local_size_defaults_to_dinos_proportion_and_jpegs_keep_the_pixels_the_smallest_crop_needs():
    assert MultiCrop(size=224).local_size == 96 and MultiCrop(size=32).local_size == 14
    # A local crop of 5% of the area at aspect 3/4 has a short side sqrt(0.05 * 0.75) of the image's; 96 px of it, twice.
    assert MultiCrop(size=224).decode_short_side(2.0) == math.ceil(2 * 96 / math.sqrt(0.05 * 0.75)) == 992


@pytest.mark.parametrize(("override", "message"), [
    ("data.multi_crop={local_scale: [0.5, 0.1]}", "data.multi_crop.local_scale is [0.5, 0.1]"),
    ("data.multi_crop={global_scale: [0.0, 1.0]}", "data.multi_crop.global_scale"),
    ("data.multi_crop={local_crops: 0}", "local_crops >= 1"),
    ("data.multi_crop={local_crop: 4}", "Unknown key `data.multi_crop.local_crop`"),
    ("data.multi_crop={local_size: big}", "`data.multi_crop.local_size`"),
])
def test_bad_multi_crop_settings_are_one_clear_sentence(override: str, message: str):
    experiment = load_experiment(str(REPO / "experiments" / "tiny_vit.yaml"), [override])
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_datamodule(experiment)


def test_local_crops_a_fixed_size_vit_cannot_take_are_one_sentence_before_the_run(tmp_path: Path, capsys):
    from vlp.cli import main

    from conftest import TINY_OVERRIDES

    run_dir = tmp_path / "run"
    overrides = ["model.objectives=[{name: clip}, {name: silc, out_dim: 16, hidden_dim: 16, bottleneck_dim: 8}]",
                 "data.multi_crop={local_size: 8}", f"run_dir={run_dir}"]
    assert main(["fit", str(REPO / "experiments" / "tiny_vit.yaml"), *TINY_OVERRIDES, *overrides]) == 2
    error = capsys.readouterr().err.strip()
    assert "The multi-crop views local_crops (8x8) do not fit the image tower" in error and "dynamic_img_size: true" in error, error
    assert len(error.splitlines()) == 1 and not run_dir.exists()


def test_webdataset_shards_cut_crops_from_the_decoded_member(tmp_path: Path):
    import tarfile

    from vlp.data.reinforced import ReinforcedDataModule
    from vlp.data.web_shards import WebDatasetDataModule

    write_image(tmp_path / "a.png", 4, SOURCE)
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        for i in range(2):
            tar.add(tmp_path / "a.png", f"s{i}.png")
            (tmp_path / "a.txt").write_text(f"image {i}")
            tar.add(tmp_path / "a.txt", f"s{i}.txt")
    module = WebDatasetDataModule(train=[str(tmp_path / "shard-000000.tar")], image_size=16, batch_size=2, epoch_samples=2,
                                  shuffle_buffer=0, multi_crop=CROPS)
    module.attach_tokenizer(tokenize)
    module.setup("fit")
    torch.manual_seed(5)
    batch = next(iter(module.train_dataloader()))
    global_boxes, local_boxes = redraw_boxes(Image.open(tmp_path / "a.png"), 5, 2, 3)
    assert batch.images.shape == (2, 3, 16, 16)
    assert_near_pil(batch.extras[GLOBAL_CROPS][0, 1], pil_crop(Image.open(tmp_path / "a.png").convert("RGB"), global_boxes[1], 16))
    assert_near_pil(batch.extras[LOCAL_CROPS][0, 2], pil_crop(Image.open(tmp_path / "a.png").convert("RGB"), local_boxes[2], 8))
    assert batch.extras[LOCAL_CROPS].shape == (2, 3, 3, 8, 8)
    with pytest.raises(ConfigError, match="data.multi_crop does not apply to reinforced shards"):
        ReinforcedDataModule(train=[str(tmp_path / "shard-000000.tar")], multi_crop=CROPS)
