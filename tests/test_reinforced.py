"""MobileCLIP reinforcement end to end: tools/reinforce.py, the replaying datamodule, stored == online teacher loss.

Synthetic captions: an untrained tiny CoCa checkpoint is enough, the tests compare paths, not quality.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from vlp.build import build_datamodule, build_module
from vlp.config.experiment import load_experiment
from vlp.data.replay import Crop, apply_crop
from vlp.functional_distillation import affinity_kl
from vlp.functional import infonce_loss
from vlp.registry import ConfigError
from vlp.run import fit
from vlp.step import Step
from vlp.teachers import build_teacher
from vlp.text.word_tokenizer import build_word_tokenizer

from conftest import REPO, TINY_OVERRIDES, run_vlp

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reinforce")
    tokenizer = build_word_tokenizer([f"a {c} square on grey" for c in COLOURS])
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**tower, "vocab_size": len(tokenizer), "max_position_embeddings": 16, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config={**tower, "image_size": 24, "patch_size": 8}, projection_dim=16)).save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    teacher = {"name": "hf_clip", "pretrained": str(root / "teacher")}
    (root / "teachers.yaml").write_text(json.dumps([{"image_encoder": teacher, "text_encoder": teacher, "embed_dim": 16, "logit_scale": 30.0}]))
    (root / "shards").mkdir()
    counts = {}
    for shard in range(2):
        name = f"shard-{shard:06d}.tar"
        with wds.TarWriter(str(root / "shards" / name)) as sink:
            for i in range(8):
                colour = list(COLOURS)[(i + shard) % 4]
                image = Image.new("RGB", (48, 40), (128, 128, 128))
                image.paste(COLOURS[colour], (8 + i, 6, 30 + i, 28))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                sink.write({"__key__": f"{shard}{i:08d}", "png": buffer.getvalue(), "txt": f"a {colour} square on grey"})
        counts[name] = 8
    (root / "shards" / "shards.json").write_text(json.dumps({"shards": counts, "samples": 16}))
    result = run_tool(root, "out")
    assert result.returncode == 0, result.stderr[-2000:]
    return {"root": root, "teacher": root / "teacher"}


def run_tool(root: Path, output: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO / "tools" / "reinforce.py"), "--shards", str(root / "shards" / "shard-{000000..000001}.tar"),
               "--teachers", str(root / "teachers.yaml"), "--output", str(root / output), "--augmentations", "3", "--quiet", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def samples(folder: Path) -> dict[str, dict]:
    return {s["__key__"]: s for url in sorted(folder.glob("*.tar"))
            for s in wds.DataPipeline(wds.SimpleShardList([str(url)]), wds.tarfile_to_samples())}


def tiny_checkpoint(experiment: str, run_dir: Path) -> Path:
    """One optimizer step of a tiny model: its weights do not matter, only that vlp wrote the checkpoint."""
    fit(str(REPO / "experiments" / experiment), TINY_OVERRIDES[:3] + [
        "data.train_size=32", "data.val_size=8", "data.batch_size=32", "trainer.max_steps=1", "trainer.limit_val_batches=0",
        "eval=[]", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"run_dir={run_dir}"])
    return run_dir / "checkpoints" / "last.ckpt"


SYNTHETIC = 2


@pytest.fixture(scope="module")
def synthetic(reinforced) -> dict[str, Path]:
    """The same shards reinforced again with SYNTHETIC captions per image from a tiny CoCa checkpoint."""
    root = reinforced["root"]
    captioner = tiny_checkpoint("coca.yaml", root / "coca")
    result = run_tool(root, "out_syn", "--captioner", str(captioner), "--synthetic-captions", str(SYNTHETIC))
    assert result.returncode == 0, result.stderr[-2000:]
    return {**reinforced, "captioner": captioner}


def overrides(root: Path, output: str = "out", synthetic_probability: float = 0.0) -> list[str]:
    pattern = str(root / output / "shard-{000000..000001}.tar")
    return TINY_OVERRIDES[:3] + [
        f"data={{name: reinforced, train: ['{pattern}'], val: '{root / 'shards' / 'shard-000000.tar'}', image_size: 16, batch_size: 8, "
        f"synthetic_caption_probability: {synthetic_probability}}}",
        "model.objectives=[{name: mobileclip_distillation, distill_weight: 0.7}]",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    ]


def test_tool_writes_every_shard_with_its_members(reinforced):
    out = reinforced["root"] / "out"
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert json.loads((out / "shards.json").read_text())["samples"] == 16
    sample = next(iter(wds.DataPipeline(wds.SimpleShardList([str(out / "shard-000000.tar")]), wds.tarfile_to_samples())))
    assert {"png", "txt", "aug.json", "teacher_image.npy", "teacher_text.npy", "teacher.json"} <= set(sample)
    assert len(json.loads(sample["aug.json"])["crops"]) == 3
    assert "syn.json" not in sample and "teacher_syn_text.npy" not in sample  # no --captioner, no synthetic captions


def online_teacher(path: Path):
    return build_teacher({"name": "hf_clip", "pretrained": str(path)}, {"name": "hf_clip", "pretrained": str(path)}, 16, "teacher").eval()


def assert_stored_loss_equals_online_teacher(reinforced: dict, output: str, synthetic_probability: float) -> list[int]:
    """The objective's loss on a replayed batch equals the loss with the teacher run online on that batch's
    crops and captions (the synthetic caption where the batch used one); returns the synthetic caption indices."""
    root = reinforced["root"]
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", overrides(root, output, synthetic_probability))
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    module = build_module(experiment, datamodule)
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    originals, reinforced_samples = samples(root / "shards"), samples(root / output)
    teacher = online_teacher(reinforced["teacher"])
    online_images, online_texts, captions = [], [], []
    synthetic = batch.extras["synthetic_caption_index"].tolist()
    for row, (key, k) in enumerate(zip(batch.extras["key"], batch.extras["crop_index"].tolist())):
        crop = Crop(**json.loads(reinforced_samples[key]["aug.json"])["crops"][k])
        image = Image.open(io.BytesIO(originals[key]["png"])).convert("RGB")
        assert torch.equal(batch.images[row], apply_crop(image, crop, 16).float() / 255)  # replay == online crop
        caption = originals[key]["txt"].decode()
        if synthetic[row] >= 0:
            caption = json.loads(reinforced_samples[key]["syn.json"])["captions"][synthetic[row]]
        captions.append(caption)
        with torch.no_grad():
            online_images.append(teacher.image_tower(apply_crop(image, crop, 24)[None].float() / 255).embedding[0])
            ids, mask = teacher.text_tower.tokenize([caption])
            online_texts.append(teacher.text_tower(ids, mask).embedding[0])
    ids, mask = module.encoder.text_tower.tokenize(captions)  # the student reads the same captions
    assert torch.equal(batch.input_ids, ids) and torch.equal(batch.attention_mask, mask)
    objective = module.objectives["mobileclip_distillation"]
    step = Step(batch, module.encoder, module.image_views, module.text_views)
    got = objective(step)
    scale = objective.logit_scale()
    images, texts = step.gathered("image"), step.gathered("text")
    distill = sum(affinity_kl(images, texts, scale, torch.stack(online_images), torch.stack(online_texts), 30.0)) / 2
    expected = 0.3 * infonce_loss(images, texts, scale) + 0.7 * distill
    torch.testing.assert_close(got["loss"], expected)
    return synthetic


def test_replayed_batch_and_stored_loss_equal_the_online_teacher(reinforced):
    assert assert_stored_loss_equals_online_teacher(reinforced, "out", 0.0) == [-1] * 8  # default: ground truth only


def test_synthetic_captions_are_those_vlp_caption_prints_for_the_stored_image(synthetic, tmp_path: Path):
    """The tool captions the whole stored image file as `vlp caption --beam N --captions N` does (not a crop)."""
    root = synthetic["root"]
    stored = samples(root / "out_syn")
    keys = sorted(stored)[:3]
    paths = []
    for key in keys:
        paths.append(str(tmp_path / f"{key}.png"))
        Path(paths[-1]).write_bytes(stored[key]["png"])
    printed = run_vlp("caption", "--ckpt", str(synthetic["captioner"]), "--beam", str(SYNTHETIC), "--captions", str(SYNTHETIC), *paths)
    expected = [f"{path}\t{caption}" for path, key in zip(paths, keys) for caption in json.loads(stored[key]["syn.json"])["captions"]]
    assert printed.stdout.splitlines() == expected
    assert all(len(json.loads(s["syn.json"])["captions"]) == SYNTHETIC for s in stored.values())


def test_stored_synthetic_caption_embeddings_equal_the_online_teacher(synthetic):
    teacher = online_teacher(synthetic["teacher"])
    for key, sample in samples(synthetic["root"] / "out_syn").items():
        captions = json.loads(sample["syn.json"])["captions"]
        with torch.no_grad():
            ids, mask = teacher.text_tower.tokenize(captions)
            online = torch.nn.functional.normalize(teacher.text_tower(ids, mask).embedding, dim=-1)
        stored = torch.from_numpy(np.load(io.BytesIO(sample["teacher_syn_text.npy"])))
        assert stored.shape == (1, SYNTHETIC, 16)
        torch.testing.assert_close(stored[0], online)


def test_synthetic_caption_batch_carries_the_teacher_embeddings_of_that_caption(synthetic):
    used = assert_stored_loss_equals_online_teacher(synthetic, "out_syn", 1.0)
    assert all(index in range(SYNTHETIC) for index in used) and len(set(used)) == SYNTHETIC, used


def test_synthetic_captions_asked_of_shards_without_them_say_how_to_write_them(reinforced):
    experiment = load_experiment(REPO / "experiments" / "tiny_vit.yaml", overrides(reinforced["root"], "out", 0.5))
    datamodule = build_datamodule(experiment)
    datamodule.setup("fit")
    build_module(experiment, datamodule)
    with pytest.raises(ConfigError, match=r"no synthetic captions \(syn.json\); reinforce the shards with tools/reinforce.py --captioner"):
        next(iter(datamodule.train_dataloader()))
    with pytest.raises(ConfigError, match=r"synthetic_caption_probability must be in \[0, 1\], got 1.5"):
        build_datamodule(load_experiment(REPO / "experiments" / "tiny_vit.yaml", overrides(reinforced["root"], "out", 1.5)))


def test_tool_refuses_a_captioner_without_a_caption_decoder(synthetic):
    root = synthetic["root"]
    clip = tiny_checkpoint("tiny_vit.yaml", root / "clip")
    result = run_tool(root, "out_clip", "--captioner", str(clip), "--synthetic-captions", "2")
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and "--captioner" in message[0] and "caption decoder" in message[0] and "coca" in message[0], repr(result.stderr)
    assert not list((root / "out_clip").glob("*.tar"))


@pytest.mark.slow
def test_example_experiment_fits_on_reinforced_shards(reinforced, tmp_path: Path):
    root = reinforced["root"]
    run_dir = tmp_path / "run"
    run_vlp("fit", str(REPO / "experiments" / "mobileclip.yaml"), *TINY_OVERRIDES[:3],
        f"vars.train={root / 'out' / 'shard-{000000..000001}.tar'}", f"vars.val={root / 'shards' / 'shard-000000.tar'}",
        "model.image_encoder.model_kwargs.img_size=16", "data.batch_size=8", "trainer.max_epochs=1", "eval=[]",
        "trainer.enable_progress_bar=false", f"run_dir={run_dir}")
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 2
