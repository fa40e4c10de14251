"""The objective guide works as written: its code and YAML, run through `vlp fit`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import csv

from vlp.run import fit

from conftest import REPO


def blocks(language: str) -> list[str]:
    text = (REPO / "docs" / "objectives.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_guide_example_objective_trains_and_logs(tmp_path: Path, tiny_overrides, monkeypatch):
    package = tmp_path / "my_lab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "uniformity.py").write_text(blocks("python")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    yaml_text = blocks("yaml")[0].replace("base: tiny_vit.yaml", f"base: {REPO / 'experiments' / 'tiny_vit.yaml'}")
    experiment = tmp_path / "uniformity.yaml"
    experiment.write_text(yaml_text)
    run_dir = fit(str(experiment), tiny_overrides)
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for column in ("train/uniformity/loss", "train/uniformity/image", "train/uniformity/text", "train/clip/loss"):
        assert any(row[column] for row in rows), column
    # The uniformity of unit vectors lies in [-4t, 0]: the log of a mean of exp(-t d^2), d^2 in [0, 4].
    values = [float(row["train/uniformity/loss"]) for row in rows if row["train/uniformity/loss"]]
    assert values and all(-8.0 <= v <= 0.0 for v in values)
    for module in [m for m in sys.modules if m == "my_lab" or m.startswith("my_lab.")]:
        sys.modules.pop(module)  # the next test's my_lab package lives in another directory
