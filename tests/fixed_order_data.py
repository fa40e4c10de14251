"""A plugin datamodule for multi-process tests: the shapes data in file order, one caption per image.

An unshuffled DistributedSampler deals the dataset round-robin, so the two ranks'
batches of size B together hold exactly the samples of a single process's batch of
size 2B, and runs with 1 and 2 processes see the same global batches. (Lightning's own
replacement sampler would shuffle, so this loader brings its own.)
"""

from __future__ import annotations

import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from vlp.data.base import Collate, ImageCaptionDataset
from vlp.data.shapes import ShapesDataModule
from vlp.registry import DATAMODULES


@DATAMODULES.register("fixed_order_shapes")
class FixedOrderShapes(ShapesDataModule):
    def train_dataloader(self) -> DataLoader:
        first_captions = ImageCaptionDataset(self.train_set.images, [captions[:1] for captions in self.train_set.captions])
        sampler = DistributedSampler(first_captions, shuffle=False) if dist.is_initialized() else None
        return DataLoader(first_captions, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=Collate(self.tokenize, sample_caption=False))
