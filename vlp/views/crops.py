"""The image tower on the datamodule's multi-crop views (DINO / SILC), which travel in ``batch.extras``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from vlp.batch import Batch
from vlp.data.multi_crop import GLOBAL_CROPS, LOCAL_CROPS
from vlp.encoders.features import Features
from vlp.registry import VIEWS, ConfigError


def crop_major(batch: Batch, key: str) -> Tensor:
    """``batch.extras[key]`` (B, K, C, H, W) as (K·B, C, H, W): rows ``[k·B, (k+1)·B)`` are crop ``k`` of every image."""
    if key not in batch.extras:
        raise ConfigError(
            f'This batch has no multi-crop views ("{key}"); set data.multi_crop (e.g. {{global_crops: 2, local_crops: 4}}) '
            f"on a datamodule that cuts them (shapes, an image-file or a webdataset datamodule)."
        )
    crops = batch.extras[key]
    return crops.transpose(0, 1).flatten(0, 1)


@VIEWS.register("crops")
@dataclass(frozen=True)
class Crops:
    """The image tower on every crop of ``key`` (``local_crops`` or ``global_crops``), at the crops' own size.

    ``one_per_sample`` is False: the view has K·B rows, crop-major.
    """

    tower: ClassVar[str] = "image"
    one_per_sample: ClassVar[bool] = False
    key: str = LOCAL_CROPS

    def __post_init__(self) -> None:
        if self.key not in (GLOBAL_CROPS, LOCAL_CROPS):
            raise ConfigError(f'crops view key is "{self.key}"; use "{LOCAL_CROPS}" or "{GLOBAL_CROPS}".')

    def __call__(self, encoder, batch: Batch) -> Features:
        return encoder.image_tower(crop_major(batch, self.key))
