"""shapes: shape-variant families in training batches, and distinct validation scenes for retrieval."""

from __future__ import annotations

from dataclasses import replace

import torch

from vlp.data.shapes import HELD_OUT, FamilySampler, ShapesDataModule, captions_for, generate


def test_variants_differ_from_their_first_scene_in_one_objects_shape_only():
    _, scenes = generate(400, 16, seed=1, allow_held_out=False, two_probability=0.5, variants=4)
    for start in range(0, 400, 4):
        first = scenes[start]
        for variant in scenes[start + 1 : start + 4]:
            changed = [i for i, (a, b) in enumerate(zip(first, variant)) if a != b]
            assert len(changed) == 1 and variant[changed[0]] == replace(first[changed[0]], shape=variant[changed[0]].shape)
        assert not any((t.colour, t.shape) in HELD_OUT for scene in scenes[start : start + 4] for t in scene)
        if len(first) == 1 and all((first[0].colour, s) not in HELD_OUT for s in ("circle", "square", "triangle", "cross")):
            assert len({scene[0].shape for scene in scenes[start : start + 4]}) == 4  # all four shapes


def test_family_sampler_keeps_families_together_in_a_fresh_order_each_epoch():
    sampler = FamilySampler(22, 4, torch.Generator().manual_seed(0))
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(22)) and first != second
    for order in (first, second):
        starts = [i for i in order if i % 4 == 0]
        for start in starts:
            position = order.index(start)
            assert order[position : position + min(4, 22 - start)] == list(range(start, min(start + 4, 22)))


def test_training_batches_hold_whole_families_and_validation_captions_are_distinct():
    dm = ShapesDataModule(image_size=16, train_size=64, val_size=200, shape_variants=4, batch_size=16)
    dm.setup("fit")
    dm.attach_tokenizer(lambda texts: (torch.zeros(len(texts), 1, dtype=torch.long), torch.ones(len(texts), 1, dtype=torch.long)))
    loader = dm.train_dataloader()
    indices = list(loader.sampler)
    for batch_start in range(0, 64, 16):
        families = {i // 4 for i in indices[batch_start : batch_start + 16]}
        assert len(families) == 4  # four whole families per batch of 16
    assert len(list(loader)) == 4
    detailed = [captions_for(scene)[0] for scene in dm.val_scenes]
    assert len(set(detailed)) == len(detailed)
    (retrieval,) = dm.retrieval_sets()
    assert retrieval.texts == detailed and retrieval.image_to_texts == [[i] for i in range(200)]


def test_family_batches_resume_mid_epoch_at_exactly_the_next_batch():
    """The loader's saved state (what a checkpoint holds) resumes the family order, in the second epoch too."""

    def module() -> ShapesDataModule:
        dm = ShapesDataModule(image_size=8, train_size=64, val_size=16, shape_variants=4, batch_size=8)
        dm.setup("fit")
        dm.attach_tokenizer(lambda texts: (torch.zeros(len(texts), 1, dtype=torch.long), torch.ones(len(texts), 1, dtype=torch.long)))
        return dm

    loader = module().train_dataloader()
    list(loader)  # the first epoch
    epoch = iter(loader)
    seen = [next(epoch).images for _ in range(3)]
    state = loader.state_dict()
    rest = [batch.images for batch in epoch]

    resumed = module().train_dataloader()
    resumed.load_state_dict(state)
    assert len(seen) + len(rest) == 8
    got = [batch.images for batch in resumed]
    assert len(got) == len(rest) and all(torch.equal(a, b) for a, b in zip(got, rest))
