"""Temperature bound, weight-decay groups, atomic checkpoint writes, resume overrides, bad input refused early."""

from __future__ import annotations

import errno
import inspect
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from vlp.checkpointing import AtomicCheckpointIO, CheckpointConfig
from vlp.cli import main
from vlp.config.resume import check_resume_changes
from vlp.encoders.hf_clip import HFCLIPImageEncoder, HFCLIPTextEncoder
from vlp.encoders.open_clip import OpenCLIPImageEncoder, OpenCLIPTextEncoder
from vlp.encoders.timm_image import TimmImageEncoder
from vlp.encoders.transformers_text import TransformersTextEncoder
from vlp.objectives.temperature import LogitScale
from vlp.optim import OptimConfig, build_optimizer, parameter_groups
from vlp.registry import OBJECTIVES, ConfigError
from vlp.run import build_trainer, fit
from vlp.text.word_tokenizer import build_word_tokenizer

from conftest import REPO, TINY_OVERRIDES
from test_pretrained_hf import clip_dir  # noqa: F401  (fixture)
from test_pretrained_open_clip import bpe_tokenizer, save, tiny_open_clip  # noqa: F401  (fixture)

EXPERIMENT = str(REPO / "experiments" / "tiny_vit.yaml")
BOUND = math.log(100.0)
BOUND32 = torch.tensor(BOUND).item()  # the bound as the float32 parameter can hold it


# --- the temperature's bound -------------------------------------------------------------

@pytest.mark.parametrize("above", [0.0, 0.5])
def test_logit_scale_has_its_exp_gradient_at_and_above_the_bound(above: float):
    scale = LogitScale(max_scale=100.0, init_log_value=BOUND + above)
    value = scale()
    value.backward()
    stored = scale.log_value.detach().double()  # float32(log 100) lies just above the float64 bound
    assert value.item() == pytest.approx(math.exp(stored.item()), rel=1e-6)
    assert scale.log_value.grad.double().item() == pytest.approx(math.exp(stored.item()), rel=1e-6)  # d exp(v)/dv
    assert scale.log_value.grad.item() > 99.0


def _objectives_with_a_logit_scale() -> dict[str, torch.nn.Module]:
    """Every registered objective buildable without a model or files (those needing a decoder's sizes or a teacher are not)."""
    built = {}
    for name in OBJECTIVES.names():
        cls = OBJECTIVES.get(name)
        try:
            objective = cls(**({"embed_dim": 32} if "embed_dim" in inspect.signature(cls.__init__).parameters else {}))
        except (TypeError, ConfigError):
            continue
        if any(isinstance(m, LogitScale) for m in objective.modules()):
            built[name] = objective
    return built


def test_every_objectives_logit_scale_is_bounded_after_the_step_and_can_move_back_down():
    objectives = torch.nn.ModuleDict(_objectives_with_a_logit_scale())
    assert {"clip", "filip", "hn_nce", "multi_positive", "long_clip", "mobileclip_distillation"} <= set(objectives)
    scales = [m for m in objectives.modules() if isinstance(m, LogitScale)]
    with torch.no_grad():
        for scale in scales:
            scale.log_value.fill_(BOUND + 0.5)  # e.g. overshot by Adam's momentum
    optimizer = build_optimizer(objectives, OptimConfig(lr=0.01, weight_decay=0.0))
    for _ in range(2):  # a loss that wants a lower scale
        optimizer.zero_grad()
        torch.stack([scale() for scale in scales]).sum().backward()
        optimizer.step()
        assert all(scale.log_value.item() <= BOUND32 for scale in scales)  # clamped in place after the step
    # the gradient still flows at the bound, so the second step moved every scale below it
    assert all(scale.log_value.item() < BOUND - 0.005 for scale in scales)


# --- weight decay by what a parameter is -------------------------------------------------------

def _expected_to_decay(name: str) -> bool:
    """Independent of the implementation: by each family's parameter names, the weight matrices decay
    (attention, MLP, projections and patch-embedding convolutions); biases, norms, embeddings, tokens do not."""
    lowered = name.lower()
    not_decayed = ("bias", "norm", "ln_", "pos_embed", "cls_token", "class_embedding", "position_embedding",
                   "token_embedding", "word_embeddings", "token_type_embeddings")
    return name.endswith("weight") and not any(part in lowered for part in not_decayed)


def _towers(clip_dir: Path, bpe_tokenizer: Path, tmp_path: Path) -> dict[str, torch.nn.Module]:
    words = lambda: build_word_tokenizer(["a red circle", "a blue square"])  # noqa: E731
    open_clip_path = str(save(tiny_open_clip().state_dict(), tmp_path / "open_clip.safetensors"))
    return {
        "timm": TimmImageEncoder(32, "vit_tiny_patch16_224", {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}),
        "transformers": TransformersTextEncoder(32, words, config={"model_type": "bert", "hidden_size": 32, "intermediate_size": 64,
                                                                    "num_hidden_layers": 1, "num_attention_heads": 2}),
        "hf_clip image": HFCLIPImageEncoder(24, str(clip_dir)),
        "hf_clip text": HFCLIPTextEncoder(24, str(clip_dir)),
        "open_clip image": OpenCLIPImageEncoder(24, open_clip_path, num_heads=2),
        "open_clip text": OpenCLIPTextEncoder(24, open_clip_path, str(bpe_tokenizer), num_heads=2),
    }


def test_weight_decay_groups_are_the_same_kind_of_parameter_in_every_tower_family(clip_dir, bpe_tokenizer, tmp_path):  # noqa: F811
    patch_embeddings = 0
    for family, tower in _towers(clip_dir, bpe_tokenizer, tmp_path).items():
        decay, no_decay = parameter_groups(tower, 0.1)
        decayed = {id(p) for p in decay["params"]}
        names = dict(tower.named_parameters())
        wrong = [n for n, p in names.items() if (id(p) in decayed) != _expected_to_decay(n)]
        assert not wrong, (family, wrong)
        assert len(decay["params"]) + len(no_decay["params"]) == len(names)
        patch_embeddings += sum(1 for n, p in names.items() if "patch_embed" in n and p.ndim == 4 and id(p) in decayed)
    assert patch_embeddings == 3  # timm, HF CLIP and open_clip image towers alike


# --- atomic checkpoint writes --------------------------------------------------------------

def test_a_checkpoint_write_that_fails_midway_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    """TMPDIR on another filesystem (/dev/shm): a temporary file there could only be copied, not renamed."""
    monkeypatch.setenv("TMPDIR", "/dev/shm")
    monkeypatch.setattr(tempfile, "tempdir", None)
    checkpoint_io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def disk_full(*args, **kwargs):
        if args and isinstance(args[-1], (str, Path)) and str(args[-1]).endswith(".ckpt"):
            open(args[-1], "wb").close()  # a copy starts by truncating its destination
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        checkpoint_io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no partial file left behind


def test_the_trainer_writes_checkpoints_atomically(tmp_path: Path):
    trainer = build_trainer({"accelerator": "cpu", "max_epochs": 1}, tmp_path / "run", CheckpointConfig(every_n_steps=5))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# --- overrides on resume -------------------------------------------------------------------

def test_resume_refuses_a_change_the_checkpoint_would_silently_ignore():
    stored = {"optim": {"lr": 1e-3}, "trainer": {"max_epochs": 1}, "run_dir": "a", "model": {"embed_dim": 32}}
    check_resume_changes(stored, {**stored, "trainer": {"max_epochs": 3}, "run_dir": "b", "checkpoint": {"keep": 2}}, "x.ckpt")
    with pytest.raises(ConfigError, match=r"`optim.lr` is 1e\+30 but the run in x.ckpt used 0.001.*cannot change on resume"):
        check_resume_changes(stored, {**stored, "optim": {"lr": 1e30}}, "x.ckpt")
    with pytest.raises(ConfigError, match="`model.embed_dim`"):
        check_resume_changes(stored, {**stored, "model": {"embed_dim": 64}}, "x.ckpt")
    with pytest.raises(ConfigError, match="`data.num_workers` is 2 but the run in x.ckpt used 0"):  # the loader state is per worker
        check_resume_changes({**stored, "data": {"num_workers": 0}}, {**stored, "data": {"num_workers": 2}}, "x.ckpt")


# --- bad input: one sentence, exit 2, no run directory ---------------------------------------

BAD_INPUT = [
    ("optim.lr=.inf", "`optim.lr` in the command line is inf"),
    ("optim.lr=1e400", "`optim.lr` in the command line is inf"),
    ("model.objectives.0.weight=.nan", "`model.objectives[0].weight` in the command line is nan"),
    ("data.batch_size=0", "`data.batch_size` in the command line is 0 but must be at least 1"),
    ("data.batch_size=-4", "`data.batch_size` in the command line is -4"),
    ("optim.lr=-0.1", "`optim.lr` in the command line is -0.1 but must be at least 0"),
    ("data.num_workers=-1", "`data.num_workers` in the command line is -1"),
    ("model.embed_dim=-8", "`model.embed_dim` in the command line is -8"),
    ("optim.lr=[1,", 'Override "optim.lr=[1," on the command line has a value that cannot be parsed'),
    ("model.image_encoder.name=timmm", 'Unknown image encoder "timmm" at `model.image_encoder.name` in the command line. Did you mean "timm"?'),
    ("model.text_encoder.config.hiden_size=64", 'Unknown key `model.text_encoder.config.hiden_size` in the command line: CLIPTextConfig has no field `hiden_size`. Did you mean "hidden_size"?'),
    ("model.text_encoder.config.model_type=clip_text_modle", '`model.text_encoder.config.model_type` in the command line is "clip_text_modle"'),
    ("model.image_encoder.model_kwargs.depht=1", "Unknown key `model.image_encoder.model_kwargs.depht` in the command line"),
    # tiny_vit.yaml writes data.image_size: ${model.image_encoder.model_kwargs.img_size}; the value came from the command line
    ("model.image_encoder.model_kwargs.img_size=-3", "`data.image_size` in the command line is -3"),
    ("data.train_size=16", "`data` gives 16 training samples, fewer than one batch of data.batch_size=32"),
    ("data.image_size=24", "The training images (24x24) do not fit the image tower"),
    ("trainer.max_epoch=2", "Allowed keys: "),
]


@pytest.mark.parametrize(("override", "message"), BAD_INPUT, ids=[o for o, _ in BAD_INPUT])
def test_bad_input_is_one_sentence_exit_2_and_no_run_directory(override: str, message: str, tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    assert main(["fit", EXPERIMENT, *TINY_OVERRIDES, f"run_dir={run_dir}", override]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("vlp: error: ") and message in error, error
    assert len(error.splitlines()) == 1 and len(error) < 700, error
    assert not run_dir.exists()


def test_a_data_error_in_a_loader_worker_is_one_sentence(tmp_path: Path, capsys):
    from vlp.cli import _one_sentence

    wrapped = ConfigError("Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                          '  File "x.py", line 1, in f\n    raise ConfigError("Every sample was bad.")\n'
                          "vlp.registry.ConfigError: Every sample was bad; check data.root.")
    assert _one_sentence(wrapped) == "Every sample was bad; check data.root."


# --- reporting ------------------------------------------------------------------------------

@pytest.mark.slow
def test_metrics_json_reports_the_steps_that_ran_under_ddp_spawn(tmp_path: Path):
    run_dir = fit(EXPERIMENT, TINY_OVERRIDES + [f"run_dir={tmp_path / 'run'}", "eval=[]", "trainer.accelerator=cpu",
                                                "trainer.devices=2", "trainer.strategy=ddp_spawn"])
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 256 // (32 * 2)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["strategy"] == "ddp_spawn"


# --- pretrained directories and their tokenizers -------------------------------------------

def test_a_clip_directory_without_tokenizer_files_is_refused_even_with_the_legacy_eos_id(clip_dir, tmp_path):  # noqa: F811
    bare = tmp_path / "clip_without_tokenizer"
    bare.mkdir()
    config = json.loads((clip_dir / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 2  # legacy CLIP configs: transformers then pools the highest id
    (bare / "config.json").write_text(json.dumps(config))
    for weights in clip_dir.glob("*.safetensors"):
        shutil.copy(weights, bare / weights.name)
    with pytest.raises(ConfigError, match="holds no tokenizer files"):
        HFCLIPTextEncoder(24, str(bare))


def test_a_siglip_directory_with_a_sentencepiece_tokenizer_loads(tmp_path: Path):
    import io

    import sentencepiece
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    from vlp.encoders.hf_siglip import HFSiglipTextEncoder

    texts = ["a photo of a cat", "a red circle", "two dogs in the snow", "a blue square"]
    model_file = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 20), model_writer=model_file, vocab_size=40, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    (tmp_path / "spiece.model").write_bytes(model_file.getvalue())
    tokenizer = SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model"))
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**tower, "vocab_size": len(tokenizer), "max_position_embeddings": 32, "pad_token_id": 0, "eos_token_id": 1}
    SiglipModel(SiglipConfig(text_config=text, vision_config={**tower, "image_size": 32, "patch_size": 8})).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    encoder = HFSiglipTextEncoder(32, str(tmp_path))
    ids, mask = encoder.tokenize(["a photo of a cat"])
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model")).encode("a photo of a cat")
    expected = pieces + [1]  # SigLIP appends end-of-text
    assert ids[0, : len(expected)].tolist() == expected and ids.shape == (1, 32)


def test_a_wrong_data_root_with_loader_workers_is_one_sentence_before_the_run_directory(tmp_path: Path, capsys):
    from test_data_fixtures import write_image

    for i in range(8):
        write_image(tmp_path / "data" / "img" / f"{i}.png", i)
    table = tmp_path / "data" / "train.csv"
    table.write_text("filepath,title\n" + "".join(f"img/{i}.png,caption {i}\n" for i in range(8)))
    run_dir = tmp_path / "run"
    overrides = [f"data.train={table}", f"data.val={table}", f"data.root={tmp_path / 'wrong'}", "data.num_workers=2",
                 "data.batch_size=4", "model.image_encoder.model_kwargs={img_size: 16, patch_size: 8, depth: 1}", f"run_dir={run_dir}"]
    assert main(["fit", str(REPO / "experiments" / "data" / "csv.yaml"), *overrides]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("vlp: error: ") and "root" in error, error
    assert not run_dir.exists()
