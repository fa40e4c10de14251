"""The run report: ``report.md`` plus matplotlib PNGs, written at the end of ``vlp fit`` and ``vlp eval``.

Plots: training and validation loss per objective, learning rate and temperature (from
the run's CSV logs), a zero-shot confusion matrix per task, and a retrieval example grid
(text query -> its top-5 images, the correct one framed in green).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from vlp.distributed import rank_and_world_size
from vlp.evaluation.base import embed_images, embed_texts
from vlp.evaluation.retrieval import caption_instances, chunked_topk
from vlp.evaluation.zero_shot import ZeroShotClassification

GRID_QUERIES, GRID_TOP = 4, 5


def read_logs(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged series of the run's CSV logs (all versions, so resumed runs too): name -> [(step, value)]."""
    series: dict[str, list[tuple[int, float]]] = {}
    for file in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with file.open() as handle:
            for row in csv.DictReader(handle):
                step = int(float(row.get("step") or 0))
                for name, value in row.items():
                    if name not in ("step", "epoch") and value not in ("", None):
                        series.setdefault(name, []).append((step, float(value)))
    return series


def _line_plot(path: Path, title: str, series: dict[str, list[tuple[int, float]]], ylabel: str, log_y: bool = False) -> Path | None:
    if not series:
        return None
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.add_subplot()
    for name, points in sorted(series.items()):
        steps, values = zip(*sorted(points))
        axes.plot(steps, values, marker="o" if len(points) < 20 else None, label=name)
    axes.set(title=title, xlabel="step", ylabel=ylabel)
    if log_y and all(v > 0 for points in series.values() for _, v in points):
        axes.set_yscale("log")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
    return path


def training_plots(run_dir: Path, out: Path) -> list[tuple[str, Path]]:
    """Loss per objective (train and validation), learning rate and temperature, from the CSV logs."""
    logs = read_logs(run_dir)
    plots = []
    objectives = sorted({name.split("/")[1] for name in logs if name.count("/") == 2 and name.endswith("/loss")})
    for objective in objectives:
        curves = {f"{stage}": logs[f"{stage}/{objective}/loss"] for stage in ("train", "val") if f"{stage}/{objective}/loss" in logs}
        plots.append((f"loss: {objective}", _line_plot(out / f"loss_{objective}.png", f"{objective} loss", curves, "loss")))
    plots.append(("learning rate", _line_plot(out / "learning_rate.png", "learning rate", {k: v for k, v in logs.items() if k.startswith("lr-")}, "lr")))
    scales = {k.removeprefix("train/"): v for k, v in logs.items() if k.startswith("train/") and k.endswith("logit_scale")}
    plots.append(("temperature", _line_plot(out / "temperature.png", "logit scale (1 / temperature)", scales, "scale")))
    return [(title, path) for title, path in plots if path is not None]


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(true, predicted) counts."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)


def confusion_plots(encoder, source, out: Path) -> list[tuple[str, Path]]:
    """A row-normalised confusion matrix of each zero-shot task (plain template average)."""
    plots = []
    evaluation = ZeroShotClassification()
    for task in source.zero_shot_tasks():
        logits = evaluation.logits(encoder, task)[""]
        labels = torch.as_tensor(task.labels).to(logits.device)
        counts = confusion_matrix(logits.argmax(dim=1), labels, len(task.class_names)).cpu()
        rates = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
        size = 2.5 + 0.45 * len(task.class_names)
        figure = Figure(figsize=(size, size), layout="constrained")
        axes = figure.add_subplot()
        axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
        ticks = range(len(task.class_names))
        axes.set_xticks(ticks, task.class_names, rotation=45, ha="right")
        axes.set_yticks(ticks, task.class_names)
        axes.set(title=f"zero-shot {task.name}: top-1 {(rates.diagonal() * counts.sum(1)).sum().item() / max(counts.sum().item(), 1):.2f}",
                 xlabel="predicted", ylabel="true")
        if len(task.class_names) <= 20:
            for i in ticks:
                for j in ticks:
                    if counts[i, j]:
                        axes.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
        path = out / f"confusion_{task.name}.png"
        figure.savefig(path, dpi=100)
        plots.append((f"zero-shot confusion: {task.name}", path))
    return plots


def _image_of(images, index: int) -> Tensor:
    item = images[index]
    item = item[0] if isinstance(item, (tuple, list)) else item
    item = item.float() / 255 if item.dtype == torch.uint8 else item.float()
    return item.clamp(0, 1)


def retrieval_grid(encoder, source, out: Path, batch_size: int = 256) -> list[tuple[str, Path]]:
    """Text queries (caption instances spread over the first retrieval set) and their top-5 images."""
    sets = source.retrieval_sets()
    if not sets:
        return []
    retrieval_set = sets[0]
    image_of, text_of = caption_instances(retrieval_set)
    queries = torch.linspace(0, len(image_of) - 1, min(GRID_QUERIES, len(image_of))).round().long()
    images = embed_images(encoder, retrieval_set.images, batch_size)
    texts = embed_texts(encoder, [retrieval_set.texts[t] for t in text_of[queries].tolist()], batch_size).to(images.device)
    top = chunked_topk(texts, images, GRID_TOP).cpu()
    figure = Figure(figsize=(2 * GRID_TOP, 2.3 * len(queries)), layout="constrained")
    grid = figure.subplots(len(queries), top.shape[1], squeeze=False)
    for row, query in enumerate(queries.tolist()):
        for column, image_index in enumerate(top[row].tolist()):
            axes = grid[row, column]
            axes.imshow(_image_of(retrieval_set.images, image_index).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            axes.set_xticks([]), axes.set_yticks([])
            correct = image_index == int(image_of[query])
            for spine in axes.spines.values():
                spine.set(edgecolor="limegreen" if correct else "lightgrey", linewidth=5 if correct else 1)
            axes.set_title(f"#{column + 1}" + (" (correct)" if correct else ""), fontsize=8)
        grid[row, 0].set_ylabel(_wrap(retrieval_set.texts[int(text_of[query])]), fontsize=8, rotation=0, ha="right", va="center")
    path = out / "retrieval_examples.png"
    figure.savefig(path, dpi=100)
    return [(f"retrieval examples: {retrieval_set.name} (text -> top-{GRID_TOP} images, correct framed in green)", path)]


def _wrap(text: str, width: int = 28) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def metrics_table(metrics: dict[str, float], before: dict[str, float] | None = None) -> str:
    header = "| metric | value |\n| --- | --- |" if before is None else "| metric | before | after | change |\n| --- | --- | --- | --- |"
    rows = []
    for name, value in sorted(metrics.items()):
        if before is None:
            rows.append(f"| `{name}` | {value:.4f} |")
        else:
            old = before.get(name, math.nan)
            rows.append(f"| `{name}` | {old:.4f} | {value:.4f} | {value - old:+.4f} |")
    return "\n".join([header, *rows])


@torch.no_grad()
def write_report(out: Path, module, datamodule, metrics: dict[str, float], extra: dict[str, Any], run_dir: Path | None = None) -> Path:
    """``out/report.md`` with the metrics, run facts and every plot; ``run_dir`` holds the training logs.

    After a multi-process fit only rank 0 writes the report, and a model sharded or split
    across ranks cannot embed alone: the report then holds the training curves, and
    ``vlp eval`` (one process) draws the confusion matrices and the retrieval grid.
    """
    out.mkdir(parents=True, exist_ok=True)
    encoder = module.encoder
    was_training = encoder.training
    encoder.eval()
    plots = training_plots(run_dir, out) if run_dir is not None else []
    if rank_and_world_size()[1] == 1:
        plots += confusion_plots(encoder, datamodule, out) + retrieval_grid(encoder, datamodule, out)
    encoder.train(was_training)
    facts = [f"- {key.replace('_', ' ')}: {value}" for key, value in extra.items() if not isinstance(value, dict)]
    lines = [f"# Run report: {extra.get('experiment', '')}", "", *facts, "", "## Metrics", "", metrics_table(metrics, extra.get("before")), ""]
    for title, path in plots:
        lines += [f"## {title[0].upper()}{title[1:]}", "", f"![{title}]({path.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
