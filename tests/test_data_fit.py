"""A file-based dataset trains end to end through ``vlp.run.fit``, its one bad image counted by cause."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

from conftest import REPO, TINY_OVERRIDES
from vlp.data.quality import COUNTING
from vlp.data.shapes import captions_for, generate
from vlp.run import fit

TRAIN, VAL, BATCH = 64, 16, 16


def write_shapes_csv(root: Path) -> tuple[Path, Path]:
    """Rendered shapes as PNGs with their detailed caption; train image 5 is replaced by garbage bytes."""
    images, scenes = generate(TRAIN + VAL, 16, seed=0, allow_held_out=True, two_probability=0.5)
    rows = []
    for i, (image, things) in enumerate(zip(images, scenes)):
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        rows.append((f"images/{i}.png", captions_for(things)[0]))
    (root / "images" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    files = root / "train.csv", root / "val.csv"
    for file, part in zip(files, (rows[:TRAIN], rows[TRAIN:])):
        with file.open("w", newline="") as handle:
            csv.writer(handle).writerows([("filepath", "title"), *part])
    return files


def test_csv_datamodule_trains_through_fit_and_reports_its_bad_image(tmp_path: Path) -> None:
    train, val = write_shapes_csv(tmp_path / "data")
    model_and_trainer = [o for o in TINY_OVERRIDES if o.startswith(("model.", "trainer."))]
    run_dir = fit(
        str(REPO / "experiments" / "tiny_vit.yaml"),
        model_and_trainer
        + [
            f"data={{name: csv, train: {train}, val: {val}, root: {tmp_path / 'data'}, image_size: 16, batch_size: {BATCH}, max_bad_fraction: 0.05}}",
            "trainer.num_sanity_val_steps=0",
            f"run_dir={tmp_path / 'run'}",
        ],
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == TRAIN // BATCH  # the batch that lost image 5 still trains
    assert 0 <= metrics["metrics"]["retrieval/csv_val/per_instance/image_to_text_R@1"] <= 1
    seen = TRAIN + VAL  # each annotation row once, though the epoch and the validation pass load them again
    assert json.loads((run_dir / "data_quality.json").read_text()) == {
        "seen": seen,
        "skipped": {"unreadable_image": 1},
        "bad_fraction": 1 / seen,
        "counting": COUNTING,
    }
