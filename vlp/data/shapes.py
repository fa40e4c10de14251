"""The embedded default dataset: procedurally rendered shapes with templated captions.

Each image holds one or two shapes (circle, square, triangle, cross) of eight colours
and two sizes in a 3x3 grid of positions, on a noisy dark background. Everything is
generated from a seed in about a second; nothing is downloaded. Some colour-shape
combinations never appear in training, so the ``heldout_shape`` zero-shot task
measures compositional generalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vlp.data.base import ImageCaptionDataset, ImageTextDataModule, retrieval_set
from vlp.data.image_folder import LinearProbeSet
from vlp.data.multi_crop import multi_crop_from_config
from vlp.evaluation.base import RetrievalSet, ZeroShotTask
from vlp.registry import DATAMODULES, ConfigError

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 40),
    "blue": (50, 80, 240),
    "yellow": (240, 230, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
    "white": (240, 240, 240),
    "orange": (250, 140, 20),
}
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")
DISTINCT_TRIES = 50
HELD_OUT = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "cross"), ("cyan", "square")})

# Colour prompts are ensembles averaged over the attributes they do not ask about; shape
# prompts use the generic captions' form.
SHAPE_TEMPLATES = ["a {}"]
COLOUR_TEMPLATES = [f"a {size} {{}} {shape}" for size in SIZES for shape in SHAPES]


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major in the 3x3 grid

    @property
    def position(self) -> str:
        return f"{ROWS[self.cell // 3]} {COLUMNS[self.cell % 3]}"

    def words(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


def captions_for(things: list[Thing], colour_only: bool = False) -> list[str]:
    """Three captions (four with ``colour_only``), from specific to generic, in reading order.

    With positions ("a small red circle at the top left"), without ("a small red circle"),
    shapes only ("a circle") and, with ``colour_only``, colours only ("a red shape"). Real
    alt-texts vary in specificity the same way; the generic ones make prompts such as
    "a circle" part of the language the model learns. A model that binds colour to shape
    tightly (a CNN learns shape fast) needs the colour-only form to keep colour words
    meaningful across shapes, which colour prompt ensembles over shapes rely on.
    """
    ordered = sorted(things, key=lambda t: t.cell)
    detailed = " and ".join(f"{t.words()} at the {t.position}" for t in ordered)
    short = " and ".join(t.words() for t in ordered)
    generic = " and ".join(f"a {t.shape}" for t in ordered)
    colours = [" and ".join(f"a {t.colour} shape" for t in ordered)] if colour_only else []
    return [detailed, short, generic, *colours]


def shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= radius * 0.8
    if shape == "triangle":
        return (dy <= radius * 0.8) & (np.abs(dx) <= (dy + radius) * 0.55) & (dy >= -radius)
    arm = max(radius / 3, 0.8)
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))


def render(things: list[Thing], canvas: np.ndarray, grid: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> None:
    """Paint things onto ``canvas`` (3, size, size) in place."""
    ys, xs = grid
    cell = canvas.shape[-1] / 3
    for thing in things:
        radius = cell * (0.33 if thing.size == "small" else 0.5)
        cy = (thing.cell // 3 + 0.5) * cell + rng.uniform(-1, 1)
        cx = (thing.cell % 3 + 0.5) * cell + rng.uniform(-1, 1)
        mask = shape_mask(thing.shape, ys - cy, xs - cx, radius)
        canvas[:, mask] = np.array(COLOURS[thing.colour], dtype=canvas.dtype)[:, None]


def sample_things(rng: np.random.Generator, allow_held_out: bool, two_probability: float) -> list[Thing]:
    count = 2 if rng.random() < two_probability else 1
    cells = rng.choice(9, size=count, replace=False)
    things = []
    for cell in cells:
        while True:
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = list(COLOURS)[rng.integers(len(COLOURS))]
            if allow_held_out or (colour, shape) not in HELD_OUT:
                break
        things.append(Thing(shape, colour, SIZES[rng.integers(2)], int(cell)))
    return things


def shape_variants(things: list[Thing], count: int, rng: np.random.Generator, allow_held_out: bool) -> list[list[Thing]]:
    """``things`` and ``count - 1`` copies in each of which one object has another shape (held-out pairs excluded).

    The objects take turns, and each takes its other allowed shapes in a random order
    before any repeats, so a family of four single-object scenes shows distinct shapes
    wherever the colour allows.
    """
    alternatives = []
    for thing in things:
        options = [s for s in SHAPES if s != thing.shape and (allow_held_out or (thing.colour, s) not in HELD_OUT)]
        alternatives.append([options[i] for i in rng.permutation(len(options))])
    family = [things]
    for k in range(count - 1):
        index = k % len(things)
        options = alternatives[index]
        variant = list(things)
        variant[index] = replace(things[index], shape=options[(k // len(things)) % len(options)])
        family.append(variant)
    return family


def generate(
    count: int, size: int, seed: int, allow_held_out: bool, two_probability: float, distinct: bool = False, variants: int = 1
):
    """``count`` rendered scenes, in families of ``variants`` scenes that differ only in one object's shape.

    ``distinct`` redraws (a few times) a scene whose detailed caption was already drawn:
    an evaluation set in which each detailed caption names one image, as in COCO/Flickr
    retrieval, where a caption describes its own photo.
    """
    rng = np.random.default_rng(seed)
    scenes, seen = [], set()
    while len(scenes) < count:
        things = sample_things(rng, allow_held_out, two_probability)
        for _ in range(DISTINCT_TRIES if distinct else 0):
            if captions_for(things)[0] not in seen:
                break
            things = sample_things(rng, allow_held_out, two_probability)
        seen.add(captions_for(things)[0])
        scenes.extend(shape_variants(things, variants, rng, allow_held_out) if variants > 1 else [things])
    scenes = scenes[:count]
    canvas = 30 + 8 * rng.standard_normal((count, 3, size, size), dtype=np.float32)
    grid = tuple(np.mgrid[0:size, 0:size].astype(np.float32))
    for things, image in zip(scenes, canvas):
        render(things, image, grid, rng)
    return torch.from_numpy(np.clip(canvas, 0, 255).astype(np.uint8)), scenes


class FamilySampler(Sampler[int]):
    """Indices in families of ``size`` consecutive items, families in a new random order every epoch.

    Resumable like torchdata's ``RandomSampler``: each pass records the generator state it
    started from, and the loader saves that with the number of indices already yielded.
    """

    def __init__(self, count: int, size: int, generator: torch.Generator) -> None:
        self.count = count
        self.size = size
        self.generator = generator

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return _FamilyPass(self)


class _FamilyPass(Iterator[int]):
    """One epoch of a ``FamilySampler``, with the ``state_dict`` that ``StatefulDataLoader`` saves."""

    def __init__(self, sampler: FamilySampler) -> None:
        self.sampler = sampler
        self.start_state = sampler.generator.get_state()
        self.order = self._draw()
        self.yielded = 0

    def _draw(self) -> list[int]:
        size, count = self.sampler.size, self.sampler.count
        families = torch.randperm(math.ceil(count / size), generator=self.sampler.generator).tolist()
        return [i for family in families for i in range(family * size, min((family + 1) * size, count))]

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.yielded == len(self.order):
            raise StopIteration
        self.yielded += 1
        return self.order[self.yielded - 1]

    def state_dict(self) -> dict:
        return {"generator": self.start_state, "yielded": self.yielded}

    def load_state_dict(self, state: dict) -> None:
        self.start_state = state["generator"]
        self.sampler.generator.set_state(self.start_state)
        self.order = self._draw()
        self.yielded = state["yielded"]


@DATAMODULES.register("shapes")
class ShapesDataModule(ImageTextDataModule):
    """Rendered shapes: ``train_size`` training and ``val_size`` validation images.

    ``multi_crop`` (see :class:`vlp.data.multi_crop.MultiCrop`) adds multi-crop views cut
    from the rendered images to every training and validation batch.
    """

    def __init__(
        self,
        image_size: int = 32,
        train_size: int = 20000,
        val_size: int = 1000,
        two_shape_probability: float = 0.5,
        shape_variants: int = 1,
        colour_only_captions: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        all_captions: bool = False,
        multi_crop: dict | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, all_captions=all_captions)
        self.image_size = image_size
        self.multi_crop = multi_crop_from_config(multi_crop, image_size)
        self.train_size = train_size
        self.val_size = val_size
        self.two_shape_probability = two_shape_probability
        if shape_variants < 1:
            raise ConfigError(f"data.shape_variants is {shape_variants}; use 1 (independent scenes) or more (shape variants per layout).")
        self.shape_variants = shape_variants
        self.colour_only_captions = colour_only_captions

    def build(self) -> None:
        images, scenes = generate(self.train_size, self.image_size, self.seed, False, self.two_shape_probability, variants=self.shape_variants)
        self.train_set = ImageCaptionDataset(images, [captions_for(s, self.colour_only_captions) for s in scenes], self.multi_crop)
        val_images, self.val_scenes = generate(self.val_size, self.image_size, self.seed + 1, True, self.two_shape_probability, distinct=True)
        self.val_set = ImageCaptionDataset(val_images, [captions_for(s, self.colour_only_captions) for s in self.val_scenes], self.multi_crop)

    def train_sampler(self, dataset: Dataset, generator: torch.Generator) -> Sampler[int]:
        """With shape variants, each batch holds whole families, so its negatives include the same scene in other shapes."""
        if self.shape_variants == 1:
            return super().train_sampler(dataset, generator)
        return FamilySampler(len(dataset), self.shape_variants, generator)

    def caption_corpus(self) -> list[str]:
        words = [" ".join(SHAPES), " ".join(COLOURS), " ".join(SIZES), " ".join(ROWS + COLUMNS)]
        colour_only = ["shape"] if self.colour_only_captions else []
        return words + ["a at the and"] + colour_only + SHAPE_TEMPLATES + COLOUR_TEMPLATES

    def zero_shot_tasks(self) -> list[ZeroShotTask]:
        single = [i for i, s in enumerate(self.val_scenes) if len(s) == 1]
        held_out = [i for i in single if (self.val_scenes[i][0].colour, self.val_scenes[i][0].shape) in HELD_OUT]
        images = self.val_set.images

        def task(name: str, indices: list[int], classes: list[str], attribute: str, templates: list[str]) -> ZeroShotTask:
            labels = torch.tensor([classes.index(getattr(self.val_scenes[i][0], attribute)) for i in indices])
            return ZeroShotTask(name, classes, templates, images[indices].float() / 255, labels)

        return [
            task("shape", single, list(SHAPES), "shape", SHAPE_TEMPLATES),
            task("colour", single, list(COLOURS), "colour", COLOUR_TEMPLATES),
            task("heldout_shape", held_out, list(SHAPES), "shape", SHAPE_TEMPLATES),
        ]

    def retrieval_sets(self) -> list[RetrievalSet]:
        # Retrieval reads the detailed captions, which name one image each (the validation scenes are
        # drawn distinct); the shorter ones ("a small red circle", "a circle") fit many images.
        specific = ImageCaptionDataset(self.val_set.images, [captions[:1] for captions in self.val_set.captions])
        return [retrieval_set("shapes_val", specific)]

    def linear_probe_sets(self) -> list[LinearProbeSet]:
        """The shape of single-object images: fit on training images, test on validation images."""
        # A single-object image's short caption is exactly one thing's words (two-object ones join with "and").
        shape_of = {Thing(shape, colour, size, 0).words(): shape for shape in SHAPES for colour in COLOURS for size in SIZES}

        def single(dataset: ImageCaptionDataset) -> tuple[torch.Tensor, torch.Tensor]:
            indices = [i for i, captions in enumerate(dataset.captions) if captions[1] in shape_of]
            labels = torch.tensor([SHAPES.index(shape_of[dataset.captions[i][1]]) for i in indices])
            return dataset.images[indices].float() / 255, labels

        return [LinearProbeSet("shape", list(SHAPES), *single(self.train_set), *single(self.val_set))]

