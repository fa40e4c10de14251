"""open_clip checkpoints: vlp's embeddings equal open_clip's own on the same images and texts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.encoders.open_clip import OpenCLIPImageEncoder, OpenCLIPTextEncoder
from vlp.encoders.openai_bpe import save_openai_bpe_tokenizer
from vlp.encoders.pretrained_scales import read_scales
from vlp.model import DualEncoder
from vlp.registry import ConfigError

open_clip = pytest.importorskip("open_clip")

REPO = Path(__file__).resolve().parents[1]
VISION = {"layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32, "mlp_ratio": 2.0}
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TEXTS = ["a photo of a cat", "Two dogs playing in the snow, at dusk!", "a very long caption " * 6]
OPENAI_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def tiny_open_clip(quick_gelu: bool = False, **vision) -> torch.nn.Module:
    """A random open_clip CLIP; every weight is perturbed so norms and biases are not trivially 1 and 0."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(embed_dim=24, vision_cfg={**VISION, **vision}, text_cfg=TEXT, quick_gelu=quick_gelu)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    state = {k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    elif path.suffix == ".pt":  # a training checkpoint: nested and DDP-prefixed
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bpe")
    save_openai_bpe_tokenizer(open_clip.tokenizer.default_bpe(), path)
    return path


def test_bpe_tokenizer_gives_open_clip_token_ids(bpe_tokenizer: Path):
    tower_ids, mask = OpenCLIPTextEncoder(24, str(save(tiny_open_clip().state_dict(), bpe_tokenizer / "m.safetensors")),
                                          str(bpe_tokenizer), num_heads=2).tokenize(TEXTS)
    expected = open_clip.tokenize(TEXTS, context_length=16)
    torch.testing.assert_close(tower_ids[mask.bool()], expected[expected != 0])


@pytest.mark.parametrize(("suffix", "quick_gelu"), [(".safetensors", False), (".pt", True), (".bin", False)])
def test_open_clip_embeddings_equal_open_clip(tmp_path: Path, bpe_tokenizer: Path, suffix: str, quick_gelu: bool):
    model = tiny_open_clip(quick_gelu)
    path = str(save(model.state_dict(), tmp_path / f"open_clip{suffix}"))
    encoder = DualEncoder(
        OpenCLIPImageEncoder(24, path, num_heads=2, quick_gelu=quick_gelu),
        OpenCLIPTextEncoder(24, path, str(bpe_tokenizer), num_heads=2, quick_gelu=quick_gelu),
    ).eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected_image = model.encode_image((images - OPENAI_MEAN) / OPENAI_STD, normalize=True)
        expected_text = model.encode_text(open_clip.tokenize(TEXTS, context_length=16), normalize=True)
        torch.testing.assert_close(encoder.encode_image(images), expected_image)
        torch.testing.assert_close(encoder.encode_text(TEXTS), expected_text)
    assert read_scales(path).log_logit_scale == model.logit_scale.item()


def test_open_clip_patch_tokens_equal_open_clip_tokens(tmp_path: Path):
    model = tiny_open_clip()
    model.visual.output_tokens = True
    path = str(save(model.state_dict(), tmp_path / "open_clip.safetensors"))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _, expected_tokens = model.visual((images - OPENAI_MEAN) / OPENAI_STD)
        torch.testing.assert_close(OpenCLIPImageEncoder(24, path, num_heads=2)(images).tokens, expected_tokens)


def test_unknown_open_clip_variants_are_listed(tmp_path: Path):
    path = str(save(tiny_open_clip(ls_init_value=0.1).state_dict(), tmp_path / "layer_scale.safetensors"))
    with pytest.raises(ConfigError, match=r"unexpected: blocks\.0\.ls_1\.gamma"):
        OpenCLIPImageEncoder(24, path, num_heads=2)


def test_missing_text_weights_are_listed(tmp_path: Path, bpe_tokenizer: Path):
    state = tiny_open_clip().state_dict()
    del state["ln_final.weight"]
    path = str(save(state, tmp_path / "incomplete.bin"))
    with pytest.raises(ConfigError, match=r"missing: final_layer_norm\.weight"):
        OpenCLIPTextEncoder(24, path, str(bpe_tokenizer), num_heads=2)


def test_a_checkpoint_without_an_open_clip_vit_is_refused(tmp_path: Path):
    path = str(save({"logit_scale": torch.tensor(2.0)}, tmp_path / "scale_only.safetensors"))
    with pytest.raises(ConfigError, match="holds no open_clip ViT image tower"):
        OpenCLIPImageEncoder(24, path)


def test_example_yaml_builds_towers_equal_to_open_clip(tmp_path: Path, bpe_tokenizer: Path):
    model = tiny_open_clip()
    path = save(model.state_dict(), tmp_path / "open_clip.safetensors")
    overrides = [f"model.image_encoder.checkpoint={path}", f"model.text_encoder.tokenizer={bpe_tokenizer}", "model.embed_dim=24",
                 "model.image_encoder.num_heads=2", "model.text_encoder.num_heads=2",
                 "data.image_size=32", "data.train_size=8", "data.val_size=8", "data.batch_size=4"]
    experiment = load_experiment(REPO / "experiments" / "pretrained" / "open_clip.yaml", overrides)
    encoder = build_module(experiment, build_datamodule(experiment)).encoder.eval()
    with torch.no_grad():
        expected = model.encode_text(open_clip.tokenize(TEXTS, context_length=16), normalize=True)
        torch.testing.assert_close(encoder.encode_text(TEXTS), expected)
