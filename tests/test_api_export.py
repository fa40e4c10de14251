"""`vlp.load`, `vlp embed`, `vlp classify` and relocatable exports, run as a user runs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vlp
from conftest import REPO, TINY_OVERRIDES, run_vlp
from test_pretrained_hf import MEAN, STD, clip_dir  # noqa: F401  (pytest fixture)
from test_pretrained_open_clip import bpe_tokenizer  # noqa: F401  (pytest fixture)
from vlp.cli import main
from vlp.data.shapes import generate
from vlp.export import restore

SHAPE_CLASSES = "a circle,a square,a triangle,a cross"


def run_in_process(*args: str) -> None:
    """The same command through ``vlp.cli.main`` in this process: for variants of a command already run as a subprocess."""
    assert main(list(args)) == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny_vit-experiment checkpoint trained for one short epoch (tiny towers)."""
    run_dir = tmp_path_factory.mktemp("api") / "run"
    overrides = [*TINY_OVERRIDES, "data.train_size=64", "data.val_size=32", "eval=[]", f"run_dir={run_dir}"]
    run_in_process("fit", str(REPO / "experiments" / "tiny_vit.yaml"), *overrides)
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five rendered shape images as PNG files of another size than the model's (preprocess resizes)."""
    root = tmp_path_factory.mktemp("images")
    images, _ = generate(5, 40, seed=9, allow_held_out=True, two_probability=0.0)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / f"img{i}.png")
    return root


def direct_image_embeddings(path: Path, image_dir: Path) -> torch.Tensor:
    model, preprocess, _ = vlp.load(path, device="cpu")
    with torch.no_grad():
        return torch.cat([model.encode_image(preprocess(Image.open(f))[None]) for f in sorted(image_dir.glob("*.png"))])


def test_load_gives_encoder_preprocess_and_tokenizer(checkpoint: Path, image_dir: Path):
    model, preprocess, tokenizer = vlp.load(checkpoint, device="cpu")
    pixels = preprocess(Image.open(image_dir / "img0.png"))
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32 and 0 <= pixels.min() and pixels.max() <= 1
    with torch.no_grad():
        image, text = model.encode_image(pixels[None]), model.encode_text(["a red circle", "a blue square"])
    assert image.shape == (1, 32) and text.shape == (2, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert tokenizer("a red circle")["input_ids"]  # the text tower's own tokenizer


@pytest.mark.parametrize("fmt", ["safetensors", "directory"])
def test_export_is_relocatable_and_loads_the_same_model(checkpoint: Path, image_dir: Path, tmp_path: Path, fmt: str):
    (run_vlp if fmt == "safetensors" else run_in_process)("export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "export"), "--format", fmt)
    text = (tmp_path / "export" / "experiment.yaml").read_text()
    assert str(tmp_path) not in text and str(checkpoint.parent.parent) not in text  # no absolute paths into either place
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(tmp_path / "export", moved)
    expected = direct_image_embeddings(checkpoint, image_dir)
    torch.testing.assert_close(direct_image_embeddings(moved, image_dir), expected, rtol=1e-5, atol=1e-6)
    model, _, _ = vlp.load(moved, device="cpu")
    reference, _ = restore(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(["a small red circle"]), reference.encoder.encode_text(["a small red circle"]))


def test_embed_writes_image_embeddings_of_a_directory_and_of_shards(checkpoint: Path, image_dir: Path, tmp_path: Path):
    import webdataset as wds

    expected = direct_image_embeddings(checkpoint, image_dir)
    run_vlp("embed", "--ckpt", str(checkpoint), "--images", str(image_dir), "--out", str(tmp_path / "dir.safetensors"), "--batch-size", "2")
    torch.testing.assert_close(load_file(str(tmp_path / "dir.safetensors"))["embeddings"], expected, rtol=1e-5, atol=1e-6)
    names = (tmp_path / "dir.safetensors.names.txt").read_text().split()
    assert names == [str(p) for p in sorted(image_dir.glob("*.png"))]

    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as sink:
        for i, file in enumerate(sorted(image_dir.glob("*.png"))):
            sink.write({"__key__": f"sample{i}", "png": file.read_bytes(), "txt": "a shape"})
    run_in_process("embed", "--ckpt", str(checkpoint), "--images", str(tmp_path / "shard-{000000..000000}.tar"), "--out", str(tmp_path / "shards.npy"))
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "shards.npy")), expected, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "shards.npy.names.txt").read_text().split() == [f"sample{i}" for i in range(5)]


def test_embed_texts_and_classify(checkpoint: Path, image_dir: Path, tmp_path: Path):
    texts = ["a circle", "a small red square", "a cross"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    run_in_process("embed", "--ckpt", str(checkpoint), "--texts", str(tmp_path / "texts.txt"), "--out", str(tmp_path / "t.npy"))
    model, preprocess, _ = vlp.load(checkpoint, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "t.npy")), model.encode_text(texts), rtol=1e-5, atol=1e-6)

    files = [str(p) for p in sorted(image_dir.glob("*.png"))[:2]]
    output = run_vlp("classify", "--ckpt", str(checkpoint), "--classes", SHAPE_CLASSES, *files).stdout.strip().splitlines()
    classes = SHAPE_CLASSES.split(",")
    with torch.no_grad():
        prompts = model.encode_text(classes)
        for line, file in zip(output, files):
            scores = (model.encode_image(preprocess(Image.open(file))[None]) @ prompts.T)[0]
            assert line.startswith(f"{file}: {classes[int(scores.argmax())]} {scores.max().item():.3f}")


def test_export_of_a_lora_run_on_hf_clip_loads_without_the_base_and_in_transformers(clip_dir: Path, tmp_path: Path):  # noqa: F811
    from transformers import CLIPModel

    base = tmp_path / "base"
    shutil.copytree(clip_dir, base)
    overrides = [f"vars.clip={base}", "model.embed_dim=24", "data={name: shapes, image_size: 32, train_size: 8, val_size: 8}"]
    checkpoint = lora_checkpoint(REPO / "experiments" / "lora" / "remoteclip.yaml", overrides, tmp_path)
    run_vlp("export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "export"), "--format", "directory")
    images = torch.rand(2, 3, 32, 32)
    trained, _ = restore(checkpoint)
    with torch.no_grad():
        expected_image, expected_text = trained.encoder.encode_image(images), trained.encoder.encode_text(["a red circle"])
    shutil.rmtree(base)
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "export", moved)
    model, _, tokenizer = vlp.load(moved, device="cpu")
    reference = CLIPModel.from_pretrained(moved / "clip", local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), expected_image, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.encode_text(["a red circle"]), expected_text, rtol=1e-5, atol=1e-6)
        pixels = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        features = reference.get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(torch.nn.functional.normalize(features, dim=-1), expected_image, rtol=1e-5, atol=1e-6)
        assert reference.logit_scale.item() == pytest.approx(trained.objectives["clip"].logit_scale.log_value.item())


def lora_checkpoint(experiment_path: Path, overrides: list[str], tmp_path: Path) -> Path:
    """A vlp checkpoint of a LoRA experiment with non-zero adapters (as after training), written without training."""
    from vlp.build import build_datamodule, build_module
    from vlp.config.experiment import load_experiment

    experiment = load_experiment(experiment_path, overrides)
    module = build_module(experiment, build_datamodule(experiment))
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    state = {k: v for k, v in module.state_dict().items() if k not in module.reloadable_keys()}
    path = tmp_path / "lora.ckpt"
    torch.save({"state_dict": state, "vlp": module.vlp_state}, path)
    return path


def test_export_of_a_lora_run_on_open_clip_loads_without_the_base_checkpoint(bpe_tokenizer: Path, tmp_path: Path):  # noqa: F811
    from test_pretrained_open_clip import save, tiny_open_clip

    shutil.copytree(bpe_tokenizer, tmp_path / "base" / "bpe")
    base = save(tiny_open_clip().state_dict(), tmp_path / "base" / "open_clip.safetensors")
    overrides = [
        f"model.image_encoder.checkpoint={base}", f"model.text_encoder.tokenizer={tmp_path / 'base' / 'bpe'}", "model.embed_dim=24",
        "model.image_encoder.num_heads=2", "model.text_encoder.num_heads=2",
        "model.tuning={image: {mode: lora, lora: {r: 4}}, text: {mode: lora, lora: {r: 4}}}",
        "data={name: shapes, image_size: 32, train_size: 8, val_size: 8}",
    ]
    checkpoint = lora_checkpoint(REPO / "experiments" / "pretrained" / "open_clip.yaml", overrides, tmp_path)
    run_in_process("export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "export"), "--format", "safetensors")
    images, texts = torch.rand(2, 3, 32, 32), ["a photo of a cat", "two dogs"]
    trained, _ = restore(checkpoint)
    with torch.no_grad():
        expected_image, expected_text = trained.encoder.encode_image(images), trained.encoder.encode_text(texts)
    shutil.rmtree(tmp_path / "base")
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "export", moved)
    model, _, _ = vlp.load(moved, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), expected_image, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.encode_text(texts), expected_text, rtol=1e-5, atol=1e-6)
