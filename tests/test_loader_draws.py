"""Training loaders own their samples' random draws (the global generators stay the caller's; workers and ranks never repeat each other), and DDP ranks share one resumable order."""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from vlp.data.base import ImageTextDataModule
from vlp.data.resumable import RandomSampler, RankShare


class DrawingSamples(Dataset):
    """Each sample's image holds a draw from ``random`` and one from torch, as augmentations draw their crop boxes."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int):
        draws = torch.tensor([random.random(), torch.rand(()).item()], dtype=torch.float64)
        return draws.view(2, 1, 1), [f"a {index}", f"b {index}", f"c {index}", f"d {index}"], {"index": index}


class Module(ImageTextDataModule):
    def __init__(self, workers: int) -> None:
        super().__init__(batch_size=8, num_workers=workers, seed=3)

    def build(self) -> None:
        self.train_set, self.val_set = DrawingSamples(), DrawingSamples()


def words(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[ord(text[0])] for text in texts])
    return ids, torch.ones_like(ids)


def epoch(workers: int = 0) -> list:
    module = Module(workers)
    module.attach_tokenizer(words)
    module.setup("fit")
    return list(module.train_dataloader())


def test_samples_draw_from_the_datasets_generators_not_the_callers():
    torch.manual_seed(0)
    random.seed(0)
    before = random.getstate(), torch.get_rng_state()
    first = epoch(0)
    assert random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])  # dropout, masking: untouched
    random.seed(99)
    torch.manual_seed(99)
    again = epoch(0)
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, again))  # the same draws whatever the global state


def test_each_worker_draws_its_own_augmentations_and_caption_choices():
    batches = epoch(2)  # worker 0 makes batches 0, 2, 4, ...; worker 1 makes 1, 3, 5, ...
    images = torch.cat([batch.images for batch in batches]).flatten(1)
    assert len(set(images[:, 0].tolist())) == len(images) and len(set(images[:, 1].tolist())) == len(images)
    chosen = [batch.input_ids.flatten().tolist() for batch in batches]
    assert chosen[0] != chosen[1] and chosen[2] != chosen[3]  # copies of one caption generator would choose alike


def test_each_rank_draws_its_own_augmentations_and_caption_choices(monkeypatch):
    on_rank_0 = epoch()
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    on_rank_1 = epoch()
    assert not any(torch.equal(a.images, b.images) for a, b in zip(on_rank_0, on_rank_1))
    assert [b.input_ids.flatten().tolist() for b in on_rank_0] != [b.input_ids.flatten().tolist() for b in on_rank_1]


def shares_of(seed: int, rank: int) -> RankShare:
    return RankShare(RandomSampler(range(10), generator=torch.Generator().manual_seed(seed)), rank, 3)


def test_rank_shares_split_one_order_disjointly_and_resume_mid_epoch_in_a_later_epoch():
    order = list(RandomSampler(range(10), generator=torch.Generator().manual_seed(0)))
    assert [list(shares_of(0, rank)) for rank in range(3)] == [order[0:9:3], order[1:9:3], order[2:9:3]]  # the tail (1) is dropped
    share = shares_of(0, 1)
    first_epoch = list(share)
    second = iter(share)
    next(second)
    state = second.state_dict()
    rest = list(second)
    assert len(rest) == 2 and rest != first_epoch[1:]  # the second epoch has its own order
    resumed = iter(shares_of(0, 1))  # a fresh process: the generator is back at its seed
    resumed.load_state_dict(state)
    assert list(resumed) == rest
