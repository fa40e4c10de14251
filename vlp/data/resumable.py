"""The training loader that a checkpoint can resume mid-epoch at exactly the next batch.

torchdata's ``StatefulDataLoader`` records the sampler's generator and position (in the
main process and in every worker); Lightning saves that state in each checkpoint and
restores it on ``--resume``. Two kinds of draws are invisible to the loader: the collate
function's caption choice (its own generator) and the augmentations' crop boxes (timm and
torchvision draw from the global ``random`` and torch generators, whose state in a worker
no checkpoint holds). The dataset is wrapped to own both and carry them in its state.
Under DDP each rank reads its share of one order through :class:`RankShare`, whose state
is the order's own.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

__all__ = ["CarriesDraws", "RandomSampler", "RankShare", "StatefulDataLoader"]


class CarriesDraws(Dataset):
    """A dataset unchanged, plus the generators its samples' augmentations and the collate draw from, as its state.

    Each sample swaps this dataset's own ``random`` and torch states in for its draws and the
    caller's back afterwards: the draws follow the loader's saved state, and the rest of the
    program's randomness (dropout, masking) is untouched. The generators are seeded from
    (seed, rank, worker id), a worker's before its first sample: copies of one state would
    repeat each other's draws. A state loaded in the worker is kept. (Rank 0's main process
    keeps the collate's own caption generator as it was seeded.)
    """

    def __init__(self, dataset: Dataset, rng: random.Random, seed: int) -> None:
        self.dataset = dataset
        self.rng = rng  # the collate's caption choice
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.name = f"{seed}/rank{rank}"
        self.worker: int | None = None  # the process the draws were seeded for (None: the main one)
        self.draws = draw_states(f"{self.name}/main")
        if rank:
            self.rng.seed(f"{self.name}/captions/main")

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        self._seed_this_worker()
        with self._own_draws():
            return self.dataset[index]

    def _seed_this_worker(self) -> None:
        info = get_worker_info()
        if info is not None and info.id != self.worker:
            self.worker = info.id
            self.draws = draw_states(f"{self.name}/worker{info.id}")
            self.rng.seed(f"{self.name}/captions/worker{info.id}")

    @contextmanager
    def _own_draws(self) -> Iterator[None]:
        """The global generators hold this dataset's draws inside the block, the caller's outside."""
        outer = random.getstate(), torch.get_rng_state()
        random.setstate(self.draws[0])
        torch.set_rng_state(self.draws[1])
        try:
            yield
        finally:
            self.draws = random.getstate(), torch.get_rng_state()
            random.setstate(outer[0])
            torch.set_rng_state(outer[1])

    def state_dict(self) -> dict[str, Any]:
        python, torch_state = self.draws
        return {"collate_rng": self.rng.getstate(), "sample_rng": python, "sample_torch_rng": torch_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(as_random_state(state["collate_rng"]))
        if "sample_rng" in state:  # checkpoints from before the draws were carried have none
            self.draws = as_random_state(state["sample_rng"]), state["sample_torch_rng"]
        info = get_worker_info()
        self.worker = None if info is None else info.id


def draw_states(name: str) -> tuple[tuple, torch.Tensor]:
    """Fresh ``random`` and torch generator states, both fixed by ``name``."""
    python = random.Random(name)
    return python.getstate(), torch.Generator().manual_seed(python.getrandbits(63)).get_state()


def as_random_state(state: Any) -> tuple:
    """A ``random`` state as ``setstate`` takes it (a checkpoint stores its tuples as lists)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


class RankShare(DistributedSampler):
    """This rank's share of a resumable sampler's order: of each round of ``world_size`` indices, the ``rank``-th.

    Every rank draws the same order (the same seeded generator), so the shares are disjoint
    and equal (an order's tail shorter than a round is dropped). Being a ``DistributedSampler``,
    it is kept by Lightning, whose own wrapper is not resumable: it redraws the order when a
    loader restores its position, so a resumed DDP run read other samples than it would have.
    """

    def __init__(self, sampler: Sampler[int], rank: int, world_size: int) -> None:
        super().__init__(range(len(sampler)), num_replicas=world_size, rank=rank, shuffle=False, drop_last=True)  # type: ignore[arg-type]
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler) // self.num_replicas  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return _ShareOfPass(self)


class _ShareOfPass(Iterator[int]):
    """One epoch of a :class:`RankShare`; its state is the whole order's (generator and position) plus this share's count."""

    def __init__(self, share: RankShare) -> None:
        self.share = share
        self.order = iter(share.sampler)
        self.yielded = 0

    def __next__(self) -> int:
        if self.yielded >= len(self.share):
            raise StopIteration
        round_ = [next(self.order) for _ in range(self.share.num_replicas)]
        self.yielded += 1
        return round_[self.share.rank]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"yielded": self.yielded}
        if hasattr(self.order, "state_dict"):  # an order that cannot save itself is replayed from its start
            state["order"] = self.order.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order = iter(self.share.sampler)
        if "order" in state:
            self.order.load_state_dict(state["order"])  # type: ignore[attr-defined]
            self.yielded = state["yielded"]
            return
        self.yielded = 0
        for _ in range(state["yielded"]):
            next(self)
