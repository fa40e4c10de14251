"""Long-CLIP stretching: the official recipe's table, short texts unchanged, long texts not truncated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

from vlp.encoders.hf_clip import HFCLIPTextEncoder
from vlp.encoders.long_text import stretch_positions
from vlp.encoders.open_clip import OpenCLIPTextEncoder
from vlp.encoders.openai_bpe import save_openai_bpe_tokenizer
from vlp.text.word_tokenizer import build_word_tokenizer

WORDS = [f"w{i}" for i in range(40)]
SHORT = ["w1 w2 w3", " ".join(WORDS[:18])]  # 18 words + bos + eos = 20 tokens: all within the kept positions
LONG = " ".join(WORDS[i % 40] for i in range(200))


def official_stretch(table: torch.Tensor, keep: int = 20) -> torch.Tensor:
    """Long-CLIP's loop (beichenzbc/Long-CLIP, model/longclip.py ``load_from_clip``), written out row by row."""
    length = table.shape[0]
    new = torch.zeros(4 * length - 3 * keep, table.shape[1], dtype=table.dtype)
    new[:keep] = table[:keep]
    for i in range(length - 1 - keep):
        for j in range(4):
            new[4 * i + j + keep] = (4 - j) * table[i + keep] / 4 + j * table[i + 1 + keep] / 4
    for j in range(4):
        new[4 * length - 3 * keep - 4 + j] = table[length - 1] + j * (table[length - 1] - table[length - 2]) / 4
    return new


def test_stretched_table_equals_the_official_loop():
    table = torch.randn(77, 16, dtype=torch.float64)
    stretched = stretch_positions(table)
    assert stretched.shape == (248, 16)
    torch.testing.assert_close(stretched, official_stretch(table), rtol=0, atol=1e-15)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip77")
    tokenizer = build_word_tokenizer([" ".join(WORDS)])
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "vocab_size": len(tokenizer), "max_position_embeddings": 77, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                                                  "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
                                 projection_dim=24))
    with torch.no_grad():  # a random table far from zero, so every position matters
        model.text_model.embeddings.position_embedding.weight.normal_(0, 1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_clip_short_texts_unchanged_and_long_texts_whole(clip_dir: Path):
    plain = HFCLIPTextEncoder(24, str(clip_dir)).eval()
    long = HFCLIPTextEncoder(24, str(clip_dir), long_text=True).eval()
    assert long.max_length == 248
    ids, _ = long.tokenize(SHORT)
    assert ids.shape[1] == 20
    with torch.no_grad():
        torch.testing.assert_close(long(*long.tokenize(SHORT)).embedding, plain(*plain.tokenize(SHORT)).embedding, rtol=0, atol=0)
        long_ids, long_mask = long.tokenize([LONG])
        assert int(long_mask.sum()) == 202  # 200 words + bos + eos, nothing truncated
        truncated = plain(*plain.tokenize([LONG])).embedding
        whole = long(long_ids, long_mask).embedding
    assert not torch.allclose(whole, truncated)


def test_only_the_stretched_positions_train(clip_dir: Path):
    tower = HFCLIPTextEncoder(24, str(clip_dir), long_text=True)
    positions = tower.backbone.embeddings.position_embedding
    assert not any(p is positions.kept for p in tower.parameters())
    tower(*tower.tokenize([LONG])).embedding.sum().backward()
    assert positions.stretched.grad is not None and positions.stretched.grad[: 202 - 20].abs().sum() > 0
    assert positions.stretched.grad[202 - 20 :].abs().sum() == 0  # positions past the text get nothing


def test_open_clip_tower_stretches_the_same_way(tmp_path: Path):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(embed_dim=24, vision_cfg={"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 16},
                                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1})
    with torch.no_grad():
        model.positional_embedding.normal_(0, 1)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    save_openai_bpe_tokenizer(open_clip.tokenizer.default_bpe(), tmp_path / "bpe")
    plain = OpenCLIPTextEncoder(24, str(path), str(tmp_path / "bpe"), num_heads=2).eval()
    long = OpenCLIPTextEncoder(24, str(path), str(tmp_path / "bpe"), num_heads=2, long_text=True).eval()
    texts = ["a photo of a cat", "two dogs playing in the snow"]
    with torch.no_grad():
        torch.testing.assert_close(long(*long.tokenize(texts)).embedding, plain(*plain.tokenize(texts)).embedding, rtol=0, atol=0)
        ids, mask = long.tokenize(["a very long caption " * 50])
    assert ids.shape[1] == 202 and int(mask.sum()) == 202
