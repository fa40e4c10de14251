"""A replayed stored crop is bit-identical to torchvision's online RandomResizedCrop with the same draw."""

from __future__ import annotations

import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

from vlp.data.replay import Crop, apply_crop, draw_crops


def test_replay_equals_torchvision_online_augmentation():
    image = Image.fromarray(load_sample_images().images[0])  # a real photo (scikit-learn's china.jpg)
    crops = draw_crops(image, 3, seed=7)
    online = RandomResizedCrop(64, interpolation=InterpolationMode.BICUBIC, antialias=True)
    torch.manual_seed(7)  # the same draws: RandomResizedCrop calls get_params once per image
    for crop in crops:
        expected = TF.pil_to_tensor(online(image))
        assert torch.equal(apply_crop(image, crop, 64), expected)
    assert len({(c.top, c.left, c.height, c.width) for c in crops}) == 3


def test_draws_are_reproducible_and_leave_the_global_rng_alone():
    image = Image.new("RGB", (50, 40))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    assert draw_crops(image, 4, seed=3) == draw_crops(image, 4, seed=3) != draw_crops(image, 4, seed=4)
    assert torch.equal(torch.rand(1), before)


def test_flip_mirrors_the_crop():
    image = Image.fromarray(load_sample_images().images[1])
    crop = Crop(10, 20, 100, 120)
    flipped = apply_crop(image, Crop(10, 20, 100, 120, flip=True), 32)
    assert torch.equal(flipped, apply_crop(image, crop, 32).flip(-1))
