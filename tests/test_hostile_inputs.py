"""Inputs a hostile tester sent to the running app that were accepted silently or answered with a developer's
message: half numbers, negative guidance, text in number fields, same-stem pickles (docs/RELIABILITY.md)."""

from __future__ import annotations

import pickle
from typing import Any

import gradio as gr
import pytest
from gradio_client import Client

from brandgen.errors import InvalidInput
from brandgen.generation import model_guidance
from brandgen.manager import PipelineManager
from brandgen.ui.app import build_app
from robustness_helpers import tiny_request
from test_robustness_ui import GOOD, _generate, _handler

SLOTS = ["(none)", 0.8] * 3


def _predict(client: Client, **changes: Any):
    values = {**GOOD, "count": 1, **changes}
    return client.predict(*values.values(), *SLOTS, api_name="/generate")


def test_half_numbers_negative_guidance_and_text_get_a_message_naming_the_field(client: Client):
    cases = [
        (dict(seed=1.5), r"Seed \(-1 = random\) must be a whole number, got 1\.5"),  # Gradio rounded it to 2
        (dict(steps=2.5), r"Steps \(0 = preset\) must be a whole number, got 2\.5"),
        (dict(count=2.5), r"Count must be a whole number, got 2\.5"),
        (dict(seed="abc"), r"Seed \(-1 = random\): 'abc' is not a value this field accepts"),
        (dict(guidance=-5), r"Guidance must be -1 \(the model's default\) or between 0 and 30, got -5"),
        (dict(guidance=0), r"Guidance 0 turns guidance off for Tiny SD1\.5: the negative prompt"),
        (dict(guidance=0.5), r"Guidance 0\.5 turns guidance off"),
    ]
    for changes, message in cases:
        with pytest.raises(Exception, match=message) as caught:
            _predict(client, **changes)
        assert "Could not preprocess" not in str(caught.value) and "index" not in str(caught.value)
    _, metadata, status, _ = _predict(client, seed=5, guidance=-1)  # -1 is still "the model's default"
    assert metadata[0]["seed"] == 5 and metadata[0]["guidance_scale"] == 7.0 and "1 image(s)" in status
    _, metadata, _, _ = _predict(client, seed=6.0, guidance=1)  # whole floats and guidance 1 are fine
    assert metadata[0]["seed"] == 6 and metadata[0]["guidance_scale"] == 1.0


def test_the_generate_handler_refuses_infinite_and_fractional_values(manager: PipelineManager):
    demo = build_app(manager)
    for changes, message in [
        (dict(guidance=float("-inf")), "Guidance must be -1"),  # was taken as "default"
        (dict(guidance=float("nan")), "Guidance must be -1"),
        (dict(guidance=-0.5), "Guidance must be -1"),
        (dict(seed=1.5), "Seed must be a whole number, got 1.5"),
        (dict(count=2.5), "Count must be a whole number, got 2.5"),
        (dict(steps=3.25), "Steps must be a whole number, got 3.25"),
    ]:
        with pytest.raises(gr.Error, match=message):
            _generate(demo, **changes)
    with pytest.raises(InvalidInput, match="Seed must be a whole number"):  # the core says the same
        manager.generate(tiny_request(seed=1.5))


def test_guidance_zero_stays_allowed_where_the_model_runs_without_guidance():
    assert model_guidance(0, 0.0, "FLUX.1 [schnell]") == 0.0  # distilled: 0 is its own default
    assert model_guidance(None, 7.0, "SD") == 7.0 and model_guidance(1.0, 7.0, "SD") == 1.0
    with pytest.raises(InvalidInput, match="turns guidance off for SD"):
        model_guidance(0.0, 7.0, "SD")


def test_three_same_stem_pickles_are_three_warnings(manager: PipelineManager):
    for suffix in (".ckpt", ".bin", ".pt"):
        (manager.paths.loras / f"evil{suffix}").write_bytes(pickle.dumps({"x": 1}))
    demo = build_app(manager)
    *_, text = _handler(demo, "refresh_loras")()
    assert "0 LoRA(s) found." in text
    assert [line.split(":")[0] for line in text.splitlines()[1:]] == ["- ⚠️ evil.bin", "- ⚠️ evil.ckpt",
                                                                      "- ⚠️ evil.pt"]
