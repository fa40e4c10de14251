"""The training loader that a checkpoint can resume mid-epoch at exactly the next batch.

torchdata's ``StatefulDataLoader`` records the sampler's generator and position (in the
main process and in every worker); Lightning saves that state in each checkpoint and
restores it on ``--resume``. The collate function's caption choice draws from its own
generator, which the loader does not know about, so the dataset is wrapped to carry
that generator's state with it.
"""

from __future__ import annotations

import random
from typing import Any

from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

__all__ = ["CarriesDraws", "RandomSampler", "StatefulDataLoader"]


class CarriesDraws(Dataset):
    """A dataset unchanged, plus ``state_dict`` / ``load_state_dict`` of a generator the collate uses."""

    def __init__(self, dataset: Dataset, rng: random.Random) -> None:
        self.dataset = dataset
        self.rng = rng

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def state_dict(self) -> dict[str, Any]:
        return {"collate_rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["collate_rng"]
        self.rng.setstate((version, tuple(internal), gauss))
