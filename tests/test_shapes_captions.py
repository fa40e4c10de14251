"""shapes: the caption forms, from specific to generic."""

from __future__ import annotations

from vlp.data.shapes import COLOURS, SHAPES, SIZES, ShapesDataModule, Thing, captions_for


def test_captions_go_from_specific_to_generic_in_reading_order():
    scene = [Thing("cross", "blue", "large", 5), Thing("circle", "red", "small", 0)]
    assert captions_for(scene) == [
        "a small red circle at the top left and a large blue cross at the middle right",
        "a small red circle and a large blue cross",
        "a circle and a cross",
    ]
    assert captions_for(scene, colour_only=True)[3] == "a red shape and a blue shape"


def test_colour_only_captions_join_the_data_and_its_vocabulary_without_changing_the_prompts():
    for colour_only in (True, False):
        dm = ShapesDataModule(image_size=16, train_size=16, val_size=60, colour_only_captions=colour_only)
        dm.setup("fit")
        for captions, scene in zip(dm.val_set.captions, dm.val_scenes):
            assert captions == captions_for(scene, colour_only) and len(captions) == (4 if colour_only else 3)
        assert ("shape" in " ".join(dm.caption_corpus()).split()) == colour_only  # the word tokenizer knows the new word
        colour = next(task for task in dm.zero_shot_tasks() if task.name == "colour")
        assert colour.templates == [f"a {size} {{}} {shape}" for size in SIZES for shape in SHAPES]
        assert colour.class_names == list(COLOURS)
