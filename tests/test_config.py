"""Config loading and validation: inheritance, overrides, interpolation, and one-sentence errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.registry import ConfigError

from conftest import REPO, TINY_OVERRIDES


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def child(tmp_path: Path, body: str) -> Path:
    return write(tmp_path / "child.yaml", f"base: {REPO / 'experiments' / 'tiny_vit.yaml'}\n{body}")


def test_inheritance_overrides_and_interpolation(tmp_path: Path):
    path = child(tmp_path, "optim:\n  lr: 0.002\nmodel:\n  image_encoder:\n    model_kwargs: {img_size: 48, patch_size: 8}\n")
    experiment = load_experiment(path, ["optim.warmup_steps=7", "model.objectives.0.weight=2.5"])
    assert experiment.optim.lr == 0.002
    assert experiment.optim.warmup_steps == 7
    assert experiment.objectives[0].weight == 2.5
    assert experiment.data.params["image_size"] == 48  # ${model.image_encoder.model_kwargs.img_size}
    assert experiment.optim.weight_decay == 0.1  # inherited from the parent


@pytest.mark.parametrize(
    ("body", "overrides", "expected"),
    [
        ("optim:\n  lrr: 0.1\n", [], ['Unknown key `optim.lrr`', "child.yaml", 'Did you mean "lr"?']),
        ("", ["trainer.max_epoch=2"], ["Unknown key `trainer.max_epoch`", "the command line", 'Did you mean "max_epochs"?']),
        ("optim:\n  lr: fast\n", [], ["`optim.lr`", "child.yaml", "must be float"]),
        ("", ["model.objectives.0.name=clipp"], ['Unknown objective "clipp"', "model.objectives[0].name", 'Did you mean "clip"?']),
        ("", ["model.objectives.0.init_temprature=0.1"], ["Unknown key `model.objectives[0].init_temprature`", 'Did you mean "init_temperature"?']),
        ("", ["data.name=shapez"], ['Unknown datamodule "shapez"', 'Did you mean "shapes"?']),
        ("", ["model.embed_dim=null"], ["`model.embed_dim`", "must be int"]),
        ("", ["trainer.default_root_dir=/tmp/x"], ["`trainer.default_root_dir`", "cannot be set here"]),
        ("", ["trainer.logger=true"], ["`trainer.logger`", "must be a list of entries"]),
        ("plugins: [no_such_lab.objectives]\n", [], ['Plugin module "no_such_lab.objectives"', "PYTHONPATH"]),
    ],
)
def test_bad_config_fails_with_one_sentence_naming_key_file_and_fix(tmp_path, body, overrides, expected):
    with pytest.raises(ConfigError) as error:
        load_experiment(child(tmp_path, body), overrides)
    message = str(error.value)
    for fragment in expected:
        assert fragment in message
    assert "\n" not in message


def test_missing_required_key_is_named(tmp_path: Path):
    path = write(tmp_path / "x.yaml", "model:\n  image_encoder: {name: timm, model_name: vit_tiny_patch16_224}\n  text_encoder: {name: transformers}\n  objectives: [{name: clip}]\ndata: {name: shapes}\n")
    with pytest.raises(ConfigError, match=r"Missing required key `model.embed_dim` in .*x.yaml"):
        load_experiment(path)


def test_missing_file_and_base_cycle(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    loop = write(tmp_path / "loop.yaml", "base: loop.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_experiment(loop)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.image_encoder.model_kwargs.img_size=18"], "not a multiple of its patch size 4"),
        (["model.image_encoder.model_name=vit_tiny_patch16_2244"], 'timm has no model "vit_tiny_patch16_2244"'),
        (["model.image_encoder.checkpoint=/nonexistent/weights.safetensors"], "does not exist"),
        (["model.text_encoder.pretrained=/nonexistent/bert", "model.text_encoder.config=null"], "does not exist"),
        (["model.text_encoder.config.vocab_size=5"], "tokenizer has"),
    ],
)
def test_bad_components_fail_at_build_time_with_a_clear_message(overrides, expected):
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", TINY_OVERRIDES[:1] + overrides)
    datamodule = build_datamodule(experiment)
    with pytest.raises(ConfigError, match=expected):
        build_module(experiment, datamodule)


def test_forwarded_constructor_arguments_are_part_of_the_schema():
    from vlp.config.schema import check_values, declared_parameters

    class Base:
        def __init__(self, size: int, name: str = "x") -> None: ...

    class Child(Base):
        def __init__(self, extra: float = 1.0, **common) -> None:
            super().__init__(**common)

    assert declared_parameters(Child) == {"extra": (float, False), "size": (int, True), "name": (str, False)}
    check_values({"extra": 2.0, "size": 3}, Child, "data", lambda path: "x.yaml")
    with pytest.raises(ConfigError, match=r"`data.size` in x.yaml is 'big'"):
        check_values({"size": "big"}, Child, "data", lambda path: "x.yaml")
    with pytest.raises(ConfigError, match="Missing required key `data.size`"):
        check_values({}, Child, "data", lambda path: "x.yaml")
