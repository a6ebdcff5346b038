"""The app as users and API clients meet it: launched on 127.0.0.1, driven through gradio_client."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client




def _generate(client: Client, **kw):
    args = dict(prompt="a red star icon", asset_type="icons", model_id="tiny-sd15", preset="draft", seed=3,
                count=2, negative="", steps=2, guidance=-1)
    args.update(kw)
    slots = ["(none)", 0.8] * 3
    return client.predict(*args.values(), *slots, api_name="/generate")


def test_generate_endpoint_returns_images_with_metadata(client: Client):
    gallery, metadata, status, selected = _generate(client)
    assert len(gallery) == 2
    assert all(item["image"].endswith(".png") for item in gallery)
    assert "seed 3" in gallery[0]["caption"]
    assert [m["seed"] for m in metadata] == [3, 4]
    assert metadata[0]["model"] == "tiny-sd15" and metadata[0]["asset_type"] == "icons"
    assert "2 image(s)" in status and selected["seed"] == 3


def test_bad_input_comes_back_as_a_readable_error(client: Client):
    with pytest.raises(Exception, match="prompt is empty"):
        _generate(client, prompt="   ")
    with pytest.raises(Exception, match="nope is not in the list of choices"):
        _generate(client, model_id="nope")
    # the app keeps serving after errors
    assert len(_generate(client, count=1)[0]) == 1


def test_listing_endpoints(client: Client):
    models = client.predict(api_name="/list_models")
    models = json.loads(models) if isinstance(models, str) else models
    assert models[0]["id"] == "tiny-sd15"
    assert any(m["id"] == "flux1-dev" and m["commercial_use"] is False for m in models)
    flux = next(m for m in models if m["id"] == "flux1-dev")  # what the Train tab would start a LoRA from
    assert (flux["lora_settings"]["resolution"], flux["lora_settings"]["timesteps"]) == (1024, "uniform")
    presets = client.predict(api_name="/list_presets")
    presets = json.loads(presets) if isinstance(presets, str) else presets
    assert presets["quality"]["ultra"] == {"label": "Ultra", "steps": 50, "upscale": 4, "step_cache": 1}
    assert presets["quality"]["fast"]["step_cache"] == 2
    assert client.predict(api_name="/list_loras") in ([], "[]")
