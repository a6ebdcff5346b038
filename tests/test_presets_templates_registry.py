"""The data files under presets/ and the small modules that read them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from brandgen.errors import InvalidInput, ModelUnavailable
from brandgen.paths import PRESETS_DIR
from brandgen.presets import LanczosUpscaler, get_preset, load_quality_presets
from brandgen.registry import ModelRegistry
from brandgen.templates import MAX_PROMPT_CHARS, build_prompt, load_asset_types


def test_quality_presets_match_the_product_definition():
    presets = load_quality_presets()
    assert [(p.id, p.steps, p.upscale, p.step_cache) for p in presets.values()] == [
        ("draft", 15, 1, 1), ("standard", 28, 1, 1), ("fast", 28, 1, 2), ("high", 40, 2, 1), ("ultra", 50, 4, 1)]
    assert presets["fast"].choice_label == "Fast · 28 steps, 1 in 2 computed in full"
    assert presets["ultra"].choice_label == "Ultra · 50 steps + 4x"
    with pytest.raises(InvalidInput, match="Unknown quality preset"):
        get_preset("insane")


def test_asset_types_and_dataset_sizes():
    types = load_asset_types()
    assert set(types) == {"icons", "product", "logo", "premium"}
    sizes = {k: (t.min_images, t.recommended_images) for k, t in types.items()}
    assert sizes == {"icons": (25, (40, 60)), "product": (20, (30, 50)),
                     "logo": (15, (25, 40)), "premium": (30, (50, 80))}


def test_prompt_examples_are_valid_prompts_and_reach_the_generate_tab(manager):
    """presets' examples (what the embedded model draws well) show in the Generate tab with their asset type."""
    import gradio as gr

    from brandgen.templates import clean_prompt
    from brandgen.ui.app import build_app

    types = load_asset_types()
    assert len(types["icons"].examples) >= 4
    wanted = [[text, t.id] for t in types.values() for text in t.examples]
    assert all(clean_prompt(text) == text for text, _ in wanted)
    demo = build_app(manager)
    datasets = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    assert any([list(row) for row in d.raw_samples] == wanted for d in datasets)


def test_build_prompt_adds_trigger_prefix_suffix_and_negative():
    icons = load_asset_types()["icons"]
    pair = build_prompt("  a   bank transfer\n icon ", "icons", extra_negative="purple")
    assert pair.prompt == f"{icons.trigger}, {icons.prefix} a bank transfer icon, {icons.suffix}"
    assert pair.negative == f"{icons.negative}, purple"
    with_lora = build_prompt("bell", "logo", extra_triggers=("acme_style",))
    assert with_lora.prompt.startswith("acme_style, bglogo, simple logo mark of bell")


@pytest.mark.parametrize("prompt", ["", "   ", None, "x" * (MAX_PROMPT_CHARS + 1)])
def test_bad_prompts_are_refused_with_a_message(prompt):
    with pytest.raises(InvalidInput, match="prompt"):
        build_prompt(prompt, "icons")


def test_unknown_asset_type_names_the_choices():
    with pytest.raises(InvalidInput, match="icons, product, logo, premium"):
        build_prompt("bell", "poster")


def test_upscaler_sizes_and_refuses_other_factors():
    image = Image.new("RGB", (32, 24), "red")
    up = LanczosUpscaler()
    assert up(image, 1) is image
    assert up(image, 2).size == (64, 48)
    assert up(image, 4).size == (128, 96)
    assert up(image, 4).getpixel((60, 40)) == (255, 0, 0)
    with pytest.raises(InvalidInput):
        up(image, 3)


def test_shipped_registry_has_every_required_model():
    registry = ModelRegistry.from_file()
    assert registry.default_id == "brandgen-tiny"
    sources = {e.source for e in registry.entries()}
    for repo in ("HiDream-ai/HiDream-I1-Full", "HiDream-ai/HiDream-I1-Dev", "HiDream-ai/HiDream-I1-Fast",
                 "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-dev",
                 "stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-xl-base-1.0",
                 "milyiyo/flat-design-icons", "nicky007/stable-diffusion-logo-fine-tuned",
                 "proximasanfinetuning/fantassified-icons-v2"):
        assert repo in sources
    assert not registry.get("flux1-dev").commercial_use
    assert "Not cleared for commercial use" in registry.get("flux1-dev").summary()
    assert registry.get("hidream-i1-full").extra_components["text_encoder_4"]["class"] == "LlamaForCausalLM"
    with pytest.raises(ModelUnavailable, match="Unknown model"):
        registry.get("dall-e")


def test_registry_validation_reports_bad_entries(tmp_path: Path):
    raw = json.loads((PRESETS_DIR / "models.json").read_text())
    entry = raw["sdxl-base"]
    bad = {**entry, "family": "gan", "native_resolution": [1000, 7], "default_steps": 0}
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"bad": bad}))
    with pytest.raises(ValueError) as info:
        ModelRegistry.from_file(path)
    message = str(info.value)
    assert "family" in message and "native_resolution" in message and "default_steps" in message


def test_prompt_hints_are_validated_when_the_registry_loads(tmp_path: Path):
    entry = json.loads((PRESETS_DIR / "models.json").read_text())["sdxl-base"]
    path = tmp_path / "models.json"
    for hints, expected in [("for a", "must be a list"), ([{"pattern": "x"}], r"prompt_hints\[0\] must be"),
                            ([{"pattern": "(", "message": "m"}], "not a regular expression"),
                            ([{"pattern": "x", "message": " "}], "non-empty")]:
        path.write_text(json.dumps({"bad": {**entry, "prompt_hints": hints}}))
        with pytest.raises(ValueError, match=expected):
            ModelRegistry.from_file(path)
    path.write_text(json.dumps({"ok": {**entry, "prompt_hints": [{"pattern": r"\bneon\b", "message": "No neon."}]}}))
    ok = ModelRegistry.from_file(path).get("ok")
    assert ok.prompt_hints_for("NEON bell") == ["No neon."] and ok.prompt_hints_for("neonate bell") == []


def test_truncation_note_names_what_no_text_encoder_reads():
    """CLIP reads 75 tokens between its begin and end tokens; a longer templated prompt loses its end (the style
    suffix first) without a word from diffusers but a log line. A pipeline with a longer reader (T5) reads on."""
    from types import SimpleNamespace

    from tiny_pipelines import tiny_tokenizer

    from brandgen.templates import truncation_note

    clip = tiny_tokenizer()
    short = build_prompt("a red star", "icons").prompt
    assert truncation_note(SimpleNamespace(tokenizer=clip), short) is None
    long = build_prompt("a red star " + "next to a blue circle " * 12, "icons").prompt
    note = truncation_note(SimpleNamespace(tokenizer=clip), long)
    assert note and "it reads 75" in note and "plain background" in note and "bgicon" not in note
    assert truncation_note(SimpleNamespace(tokenizer=clip, tokenizer_2=tiny_tokenizer(512)), long) is None
    assert truncation_note(SimpleNamespace(), long) is None  # no tokenizer (a custom pipeline): nothing to say
