"""brandgen-tiny's contrastive text pretraining: it learns, evaluates on held-out icons, saves what the
recipe's "text_init" loads, resumes, and the UNet stage starts from (and keeps) those weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextModel

from brandgen.tiny import icon_data, model, text_pretrain, train
from brandgen.tiny import tokenizer as tiny_tokenizer

RECIPE = Path(train.__file__).with_name("recipe.json")
CONCEPTS = list(icon_data.CONCEPTS["concepts"])[:5]


def concept_pack(size: int = 64) -> tuple[np.ndarray, list[dict]]:
    """The synthetic shapes, five of them standing for evaluated concepts; their outline icon is held out."""
    masks, meta = icon_data.synthetic_pack(30, size, seed=0)
    for i, m in enumerate(meta):
        if i % 15 < len(CONCEPTS):
            m["concept"] = CONCEPTS[i % 15]
            m["heldout"] = m["style"] == "outline"
    return masks, meta


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, dict, dict]:
    tmp = tmp_path_factory.mktemp("text")
    cfg = train.load_config(RECIPE, smoke=True)
    masks, meta = concept_pack()
    tok = text_pretrain.recipe_tokenizer(cfg, meta, tmp / "tokenizer")
    info = text_pretrain.pretrain(cfg, masks, meta, tok, tmp / "init", tmp / "ckpt.pt", seconds=300,
                                  max_steps=150, batch=16, lr=3e-3, eval_every=75, log=lambda _: None)
    return tmp, cfg, info


def test_pretraining_lowers_the_contrastive_loss_and_reports_held_out_retrieval(pretrained):
    _, _, info = pretrained
    assert info["steps"] == 150
    assert info["loss_last_50"] < 0.8 * info["loss_first_50"]
    final = info["final"]
    assert final["concepts"] == len(CONCEPTS) and final["n"] == 4 * len(CONCEPTS)
    assert 0.0 <= final["top1"] <= final["top5"] <= 1.0 and 0.0 <= final["colour"] <= 1.0
    assert [h["step"] for h in info["history"]] == [75, 150]


def test_saved_folder_holds_a_half_precision_encoder_and_its_tokenizer(pretrained):
    tmp, cfg, info = pretrained
    text, tok = text_pretrain.load(tmp / "init")
    assert next(iter(load_file(tmp / "init" / "text_encoder" / "model.safetensors").values())).dtype == torch.float16
    assert json.loads((tmp / "init" / "pretrain.json").read_text())["steps"] == info["steps"]
    ids = torch.from_numpy(tiny_tokenizer.encode_padded(tok, ["a red notification bell icon", "qzx flurbo"])).long()
    assert torch.isfinite(text(ids)[0]).all()
    fresh = model.build_components(cfg, tokenizer=tok)["text_encoder"]
    text_pretrain.load_into(fresh, tmp / "init")
    assert torch.equal(fresh(ids)[0], text(ids)[0])


def test_load_into_refuses_an_encoder_of_another_shape(pretrained):
    tmp, cfg, _ = pretrained
    _, tok = text_pretrain.load(tmp / "init")
    other = CLIPTextModel(model.text_config_for({"text_encoder": {**cfg["text_encoder"], "hidden_size": 48,
                                                                   "num_attention_heads": 2}}, tok))
    with pytest.raises(ValueError, match="hidden_size: 32 vs 48"):
        text_pretrain.load_into(other, tmp / "init")


def test_trimmed_padding_gives_the_same_embedding():
    cfg = train.load_config(RECIPE, smoke=True)
    tok = tiny_tokenizer.train_tokenizer(512, ["a blue bell icon", "a green shopping cart, outline"])
    text = CLIPTextModel(model.text_config_for(cfg, tok)).eval()
    ids = torch.from_numpy(tiny_tokenizer.encode_padded(tok, ["a blue bell icon", "a green shopping cart"])).long()
    short = text_pretrain.trim(ids, tok.eos_token_id)
    assert short.shape[1] < ids.shape[1]
    with torch.no_grad():
        full = text_pretrain.text_embedding(text, ids, tok.eos_token_id)
        cut = text_pretrain.text_embedding(text, short, tok.eos_token_id)
    torch.testing.assert_close(full, cut, atol=1e-5, rtol=1e-5)


def test_resume_continues_from_the_checkpoint(tmp_path):
    cfg = train.load_config(RECIPE, smoke=True)
    masks, meta = concept_pack()
    tok = text_pretrain.recipe_tokenizer(cfg, meta, tmp_path / "tokenizer")
    args = {"seconds": 300, "batch": 8, "eval_every": 1000, "ckpt_seconds": 0, "log": lambda _: None}
    first = text_pretrain.pretrain(cfg, masks, meta, tok, tmp_path / "a", tmp_path / "ckpt.pt", max_steps=6, **args)
    lines: list[str] = []
    again = text_pretrain.pretrain(cfg, masks, meta, tok, tmp_path / "b", tmp_path / "ckpt.pt", max_steps=10,
                                   resume=True, **{**args, "log": lines.append})
    assert first["steps"] == 6 and again["steps"] == 10
    assert "[text] resumed at step 6" in lines


def test_recipe_starts_the_unet_from_text_init_and_keeps_it_frozen(pretrained, tmp_path):
    tmp, _, _ = pretrained
    summary = train.main(["--config", str(RECIPE), "--smoke", "--device", "cpu", "--work-dir", str(tmp_path / "w"),
                          "--out", str(tmp_path / "model"), "--text-init", str(tmp / "init")])
    assert "text" not in summary["timings"]  # the given folder replaces the text stage
    shipped = load_file(tmp_path / "model" / "text_encoder" / "model.safetensors")
    init = load_file(tmp / "init" / "text_encoder" / "model.safetensors")
    assert shipped.keys() == init.keys() and all(torch.equal(shipped[k], init[k]) for k in init)
    vocab = json.loads((tmp_path / "model" / "tokenizer" / "vocab.json").read_text())
    assert vocab == json.loads((tmp / "init" / "tokenizer" / "vocab.json").read_text())


def test_recipe_text_stage_trains_inside_the_run_and_the_unet_adapts_it_when_asked(tmp_path):
    cfg = train.load_config(RECIPE, smoke=True)
    cfg["train_unet"]["text_lr_scale"] = 0.5
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    summary = train.main(["--config", str(tmp_path / "cfg.json"), "--device", "cpu", "--work-dir", str(tmp_path / "w"),
                          "--out", str(tmp_path / "model")])
    assert summary["text_steps"] == cfg["text_pretrain"]["max_steps"]
    shipped = load_file(tmp_path / "model" / "text_encoder" / "model.safetensors")
    init = load_file(tmp_path / "w" / "text_init" / "text_encoder" / "model.safetensors")
    assert any(not torch.equal(shipped[k], init[k]) for k in init)  # trained on at half the UNet's LR


def test_text_pretraining_reads_the_same_variants_as_the_unet_stage(monkeypatch, tmp_path):
    """Both stages take the data section whole: two-tone, context and free-colour captions reach the text
    encoder too (it once left out two_tone, so "teal and orange" was never in its training captions)."""
    cfg = train.load_config(RECIPE, smoke=True)
    masks, meta = concept_pack()
    for m in meta:
        m.update(set="phosphor", style="duotone")
    cfg["data"].update(two_tone=0.5, context=0.3, any_colour=0.2)
    seen: list[list[str]] = []

    def stop(_tokenizer, captions):
        seen.append(list(captions))
        raise InterruptedError

    monkeypatch.setattr(text_pretrain.tiny_tokenizer, "encode_padded", stop)
    tok = text_pretrain.recipe_tokenizer(cfg, meta, tmp_path / "tokenizer")
    with pytest.raises(InterruptedError):
        text_pretrain.pretrain(cfg, masks, meta, tok, tmp_path / "init", tmp_path / "ckpt.pt", seconds=1,
                               max_steps=1, log=lambda _: None)
    expected = [c for v in icon_data.variants_for(meta, cfg["data"]) for c in v.captions]
    assert seen == [expected]
    plain = dict(cfg["data"], two_tone=0.0)
    assert expected != [c for v in icon_data.variants_for(meta, plain) for c in v.captions]
    assert any(" and " in c for c in expected)
