"""The recipes of docs/objectives.md work as written: a head, a frozen teacher, an EMA teacher.

Each recipe's code becomes a plugin module and its YAML an experiment, trained through
``fit``; the frozen and EMA teachers are also resumed and evaluated from the checkpoint.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from safetensors.torch import save_file

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.optim import build_optimizer
from vlp.run import evaluate, fit, load_vlp_checkpoint

from conftest import REPO, TINY_OVERRIDES

OVERRIDES = [o for o in TINY_OVERRIDES if not o.startswith(("model.image_encoder", "data.train_size"))] + [
    "model.image_encoder.model_kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0}",
    "data.train_size=128",
    "eval=[{name: zero_shot}]",
]
TEACHER_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def recipe(name: str) -> tuple[str, str]:
    text = (REPO / "docs" / "objectives.md").read_text()
    match = re.search(rf"<!-- recipe: {name} -->.*?```python\n(.*?)```.*?```yaml\n(.*?)```", text, flags=re.S)
    assert match, name
    return match.group(1), match.group(2)


@pytest.fixture
def install(tmp_path: Path, monkeypatch):
    """Write a recipe as the plugin my_lab.<module> and its YAML as an experiment; returns the YAML path."""
    for module in [m for m in sys.modules if m == "my_lab" or m.startswith("my_lab.")]:
        sys.modules.pop(module)  # a my_lab package imported by another test lives elsewhere
    package = tmp_path / "my_lab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, module: str, replace: dict[str, str] = {}) -> Path:
        code, yaml_text = recipe(name)
        (package / f"{module}.py").write_text(code)
        yaml_text = yaml_text.replace("base: tiny_vit.yaml", f"base: {REPO / 'experiments' / 'tiny_vit.yaml'}")
        for old, new in replace.items():
            yaml_text = yaml_text.replace(old, new)
        path = tmp_path / f"{module}.yaml"
        path.write_text(yaml_text)
        return path

    yield write
    for module in [m for m in sys.modules if m.startswith("my_lab")]:
        sys.modules.pop(module)


def built(experiment_path: Path, overrides: list[str]):
    """The module ``fit`` builds first: same seed, same order of construction."""
    experiment = load_experiment(experiment_path, overrides)
    L.seed_everything(experiment.run.seed, workers=True, verbose=False)
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    return build_module(experiment, datamodule)


def optimized(module) -> set[int]:
    return {id(p) for group in build_optimizer(module, module.optim_config).param_groups for p in group["params"]}


@pytest.mark.slow
def test_head_recipe_builds_from_injected_sizes_and_trains(install, tmp_path: Path):
    path = install("head", "bag_of_words")
    overrides = OVERRIDES + [f"run_dir={tmp_path / 'run'}"]
    module = built(path, overrides)
    head = module.objectives["bag_of_words"].head
    assert head[1].in_features == module.encoder.image_tower.width
    assert head[3].out_features == len(module.encoder.text_tower.tokenizer)
    assert {id(p) for p in head.parameters()} <= optimized(module)
    run_dir = fit(str(path), overrides)
    state = load_vlp_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    trained = state["objectives.bag_of_words.head.3.weight"]
    assert trained.shape == head[3].weight.shape
    assert not torch.allclose(trained, head[3].weight.detach())  # same seed, same start: it trained


@pytest.mark.slow
def test_frozen_teacher_recipe_stays_frozen_out_of_checkpoints_and_reloads(install, tmp_path: Path):
    torch.manual_seed(1)
    teacher = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TEACHER_KWARGS)
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(weights))
    path = install("frozen_teacher", "frozen_teacher", {"teacher_weights: teacher.safetensors": f"teacher_weights: {weights}"})
    overrides = OVERRIDES + [f"run_dir={tmp_path / 'run'}"]

    module = built(path, overrides)
    objective = module.objectives["frozen_teacher"]
    module.train()
    assert not objective.teacher.training and objective.to_teacher.training
    assert not any(p.requires_grad for p in objective.teacher.parameters())
    assert not {id(p) for p in objective.teacher.parameters()} & optimized(module)
    assert {id(p) for p in objective.to_teacher.parameters()} <= optimized(module)

    run_dir = fit(str(path), overrides)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    keys = load_vlp_checkpoint(checkpoint)["state_dict"]
    assert not any(".teacher." in k for k in keys) and "objectives.frozen_teacher.to_teacher.weight" in keys
    metrics = evaluate(str(checkpoint), output=str(tmp_path / "eval.json"))  # the teacher reloads from its file
    assert metrics and all(name.startswith("zeroshot/") for name in metrics)
    resumed = fit(str(path), overrides + ["trainer.max_epochs=2"], resume="last")
    assert (resumed / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ema_teacher_recipe_is_saved_restored_and_follows_the_student(install, tmp_path: Path):
    path = install("ema_teacher", "ema_teacher")
    overrides = OVERRIDES + [f"run_dir={tmp_path / 'run'}"]
    module = built(path, overrides)
    objective = module.objectives["ema_teacher"]
    assert not {id(p) for p in objective.teacher.parameters()} & optimized(module)
    before = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    with torch.no_grad():
        for p in module.encoder.image_tower.parameters():
            p.add_(1.0)
    objective.after_optimizer_step(module.encoder)
    student = module.encoder.image_tower.state_dict()
    for name, value in objective.teacher.state_dict().items():  # teacher <- 0.99 teacher + 0.01 student
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.99 * before[name] + 0.01 * student[name])

    run_dir = fit(str(path), overrides)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    state = load_vlp_checkpoint(checkpoint)["state_dict"]
    teacher_key = "objectives.ema_teacher.teacher.projection.weight"
    assert teacher_key in state
    assert not torch.equal(state[teacher_key], state["encoder.image_tower.projection.weight"])
    metrics = evaluate(str(checkpoint), output=str(tmp_path / "eval.json"))
    assert metrics
    resumed = fit(str(path), overrides + ["trainer.max_epochs=2"], resume="last")
    assert (resumed / "checkpoints" / "last.ckpt").is_file()
