"""brandgen-tiny procedural data and tokenizer: reproducible, varied, captioned like the app's prompts."""

from __future__ import annotations

import random
import string

import numpy as np
import pytest

from brandgen.tiny import data


def test_dataset_is_deterministic_by_seed_and_worker_count():
    a_img, a_cap, a_spec = data.make_dataset(8, seed=3, size=64)
    b_img, b_cap, b_spec = data.make_dataset(8, seed=3, size=64, workers=2)
    c_img, c_cap, _ = data.make_dataset(8, seed=4, size=64)
    assert a_img.shape == (8, 64, 64, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_cap == b_cap and a_spec == b_spec
    assert not np.array_equal(a_img, c_img) and a_cap != c_cap


def test_vocabulary_sizes_and_families():
    assert len(data.SHAPES) >= 12 and len(set(data.SHAPES)) == len(data.SHAPES)
    assert len(data.BASE_COLORS) >= 10
    assert {family for _, family in data.COLORS.values()} == set(data.FAMILIES)
    for name in ("circle", "square", "rounded square", "triangle", "star", "heart", "hexagon", "diamond",
                 "ring", "plus", "arrow", "check"):
        assert name in data.SHAPES


@pytest.mark.parametrize("style", data.STYLES)
def test_every_shape_draws_in_every_style(style):
    for shape in data.SHAPES:
        cover = data.element_mask(data.Element(shape, "red"), style, 64)
        assert 0.03 < cover.mean() < 0.6, (shape, style)


def test_images_differ_and_foreground_contrasts_with_background():
    images, _, specs = data.make_dataset(24, seed=11, size=64)
    flat = images.reshape(len(images), -1)
    assert len({row.tobytes() for row in flat}) == len(images)
    for spec in specs:
        for el in spec.elements:
            assert data.contrast(data.COLORS[el.color][0], spec.bg_rgb) > 40
            if spec.bg_color:
                assert data.COLORS[spec.bg_color][1] != data.COLORS[el.color][1]


def test_captions_name_every_color_and_shape_and_use_the_app_templates():
    captions, forms = [], set()
    for i in range(400):
        spec = data.spec_at(5, i)
        text = data.caption(spec, random.Random(i))
        captions.append(text)
        for el in spec.elements:
            assert el.color in text
            assert any(name in text for name in [el.shape, *data.SYNONYMS.get(el.shape, [])]), (text, el)
    for trigger, prefix, suffix in data.TEMPLATES.values():
        if any(c.startswith(f"{trigger}, {prefix} ") and c.endswith(suffix) for c in captions):
            forms.add("trigger")
        if any(c.startswith(f"{prefix} ") and c.endswith(suffix) for c in captions):
            forms.add("template")
    assert forms == {"trigger", "template"}
    assert any(c.startswith(("a ", "an ")) and len(c.split()) <= 5 for c in captions)  # bare prompts
    assert any("background" in c and "outline" in c for c in captions)  # descriptive ones
    assert any(" and " in c for c in captions)  # two elements


def test_heldout_pairs_are_icon_prompts_with_distinct_seeds():
    pairs = data.heldout_pairs(100)
    assert len(pairs) == 100 and pairs == data.heldout_pairs(100)
    assert len({seed for *_, seed in pairs}) == 100
    for color, shape, prompt, _ in pairs:
        assert color in data.BASE_COLORS and shape in data.SHAPES
        assert prompt in (f"a {color} {shape} icon", f"an {color} {shape} icon")
    assert len({c for c, *_ in pairs}) == len(data.BASE_COLORS)
    assert len({s for _, s, *_ in pairs}) == len(data.SHAPES)


def test_tokenizer_round_trip(tmp_path):
    from transformers import CLIPTokenizer

    from brandgen.tiny import tokenizer as tiny_tokenizer

    tok = tiny_tokenizer.train_tokenizer(1536, tiny_tokenizer.corpus(1000))
    assert 1000 <= len(tok) <= 2000
    tiny_tokenizer.save_tokenizer(tok, tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert loaded.model_max_length == 77
    specials = ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>")
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == specials
    ids = loaded("a red star icon").input_ids
    assert ids == tok("a red star icon").input_ids
    assert loaded.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "red</w>", "star</w>", "icon</w>",
                                                 "<|endoftext|>"]
    for word in ("bank", "payment", "notification", "logo", "fintech", "minimal"):
        assert len(loaded(word).input_ids) == 3, word
    for ch in string.printable.strip() + "é😀":
        inner = loaded(f"x{ch}y {ch}").input_ids[1:-1]
        assert loaded.unk_token_id not in inner, ch
    padded = loaded("a red star icon", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == loaded.pad_token_id


def test_fast_padded_encoding_matches_the_tokenizer():
    from brandgen.tiny import tokenizer as tiny_tokenizer

    tok = tiny_tokenizer.train_tokenizer(1536, tiny_tokenizer.corpus(600))
    texts = ["", "a red star icon", data.caption_at(0, 3), "word " * 100]
    ids = tiny_tokenizer.encode_padded(tok, texts)
    expected = tok(texts, padding="max_length", max_length=77, truncation=True).input_ids
    assert ids.shape == (4, 77) and ids.tolist() == expected
