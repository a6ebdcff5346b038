"""The Train LoRA tab through gradio_client: validate, start, poll, cancel, and the LoRA showing up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from gradio_client import Client

from brandgen.errors import InvalidInput
from brandgen.manager import PipelineManager
from brandgen.ui.train_tab import config_from_ui, poll_view, status_text
from conftest import CPU
from training_helpers import make_dataset, one_torch_thread  # noqa: F401 (autouse fixture)



def _settings(folder: Path, **kw) -> dict:
    values = dict(
        folder=str(folder),
        asset_type="icons",
        model="tiny-sd15",
        name="ui-brand",
        trigger="acme",
        rank=4,
        alpha=4,
        lr=1e-3,
        epochs=0,
        max_steps=8,
        resolution=32,
        batch_size=1,
        grad_accum=1,
        validate_every=0,
        checkpoint_every=0,
        allow_small=True,
        bucketing=False,
        convs=True,
    )
    values.update(kw)
    return values


def _status(client: Client) -> dict:
    state = client.predict(api_name="/training_status")
    return json.loads(state) if isinstance(state, str) else state


def test_train_tab_end_to_end(client: Client, manager: PipelineManager):
    folder = make_dataset(manager.paths.training_data / "data", count=2)  # the web app reads uploads' folder
    text, table = client.predict(str(folder), "icons", 32, False, api_name="/validate_dataset")
    assert "Not ready" in text and "at least 25" in text
    assert [row[0] for row in table["data"]] == ["image_000.png", "image_001.png"]
    assert _status(client) == {"status": "none"}
    with pytest.raises(Exception, match="(?s)Not ready to train.*at least 25"):  # what Validate said, not "running"
        client.predict(*_settings(folder, allow_small=False).values(), api_name="/start_training")
    assert _status(client) == {"status": "none"} and not manager.paths.training_runs.exists()

    # GPU options off, uniform timesteps, and a 3-step brand decoder: the last stage the tab offers
    state, text = client.predict(*_settings(folder).values(), False, True, False, False, "uniform", 3,
                                 api_name="/start_training")
    assert state["name"] == "ui-brand" and state["status"] in ("queued", "running")
    with pytest.raises(Exception, match="cancel it or wait"):
        client.predict(*_settings(folder, name="second").values(), api_name="/start_training")
    deadline = time.time() + 180
    while _status(client)["status"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.2)
    final = _status(client)
    assert final["status"] == "done", final
    assert final["step"] == 8 and len(final["history"]) == 8 and final["samples"]
    assert "with a brand decoder" in final["message"]
    saved = json.loads((Path(final["run_dir"]) / "config.json").read_text())
    assert saved["decoder_steps"] == 3 and saved["gradient_checkpointing"] is False  # a 32 px model: no recompute
    loras = client.predict(api_name="/list_loras")
    loras = json.loads(loras) if isinstance(loras, str) else loras
    assert [(x["name"], x["format"], x["base_family"], x["trigger"], x["brand_decoder"]) for x in loras] == [
        ("ui-brand", "diffusers", "sd15", "acme", True)
    ]
    state, text = client.predict(api_name="/cancel_training")
    assert state["status"] == "done" and "ready" in text
    with pytest.raises(Exception, match="already exists"):
        client.predict(*_settings(folder).values(), api_name="/start_training")


def test_ui_values_become_a_validated_config(tmp_path: Path):
    config = config_from_ui(*_settings(tmp_path, max_steps=3.0, rank=8.0).values(), family="sd15")
    assert "conv1" in config.target_modules and "to_q" in config.target_modules
    assert config_from_ui(*_settings(tmp_path, convs=False).values(), family="sd15").target_modules == []
    assert config.rank == 8 and config.max_steps == 3 and config.base_model == "tiny-sd15"
    assert config.data_dir == str(tmp_path) and config.allow_small_dataset
    assert not config.compile and config.cudnn_attention  # the GPU checkboxes' defaults
    fast = config_from_ui(*_settings(tmp_path).values(), True, False, family="sd15")
    assert fast.compile and not fast.cudnn_attention and not fast.cuda_graph
    assert config_from_ui(*_settings(tmp_path).values(), False, True, True, family="sd15").cuda_graph
    fp8 = config_from_ui(*_settings(tmp_path).values(), False, True, False, True, family="flux")
    assert fp8.fp8_base and not fp8.cuda_graph
    with pytest.raises(Exception, match="LoRA name"):
        config_from_ui(*_settings(tmp_path, name="a/b").values())
    high = config_from_ui(*_settings(tmp_path).values(), False, True, False, False, "high-noise", family="sd15")
    assert high.timesteps == "high-noise" and config.timesteps == "uniform"
    tuned = config_from_ui(*_settings(tmp_path).values(), False, True, False, False, "uniform", 7.0, family="sd15")
    assert tuned.decoder_steps == 7 and config.decoder_steps == 0
    with pytest.raises(InvalidInput, match="flow model.*use 'uniform'"):  # refused before a job starts
        config_from_ui(*_settings(tmp_path, model="flux1-dev").values(), False, True, False, False, "high-noise",
                       family="flux")
    assert "No training job" in status_text(None)


def test_the_poll_resends_the_loss_curve_and_samples_only_when_they_change():
    from brandgen.training.jobs import JobState

    def is_skip(value) -> bool:
        return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1

    state = JobState(id="run-1", name="acme", run_dir="/tmp/run-1", status="running")
    state.history = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    text, curve, gallery, shown, key, timer = poll_view(state, [], None)
    assert "acme" in text and list(curve["step"]) == [1, 2]
    assert is_skip(gallery) and shown == [] and key == ["run-1", 2, 2] and timer.active
    again = poll_view(state, shown, key)
    assert is_skip(again[1]) and again[4] == key  # nothing new: no 2,000-point frame once a second
    state.history = state.history[1:] + [{"step": 3, "loss": 0.3}]  # capped history: same length, new step
    moved = poll_view(state, shown, key)
    assert list(moved[1]["step"]) == [2, 3] and moved[4] == ["run-1", 2, 3]
    state.status = "done"
    assert poll_view(state, shown, moved[4])[5].active is False  # a finished job stops the timer


def test_picking_a_model_fills_in_its_own_lora_settings(registry, app_paths):
    """The Base model dropdown's change fills rank, lr, ... and the timesteps from the entry's `lora_settings`,
    so a model that needs high-noise timesteps trains with them without the designer knowing why."""
    from dataclasses import replace

    import gradio as gr

    from brandgen.ui.app import build_app

    high = replace(registry.get("tiny-sd15"), id="tiny-hn",
                   lora_settings={"timesteps": "high-noise", "lr": 6e-4, "decoder_steps": 120})
    demo = build_app(PipelineManager(registry=registry.with_entry(high), paths=app_paths, device=CPU))
    on_model = next(d.fn for d in demo.fns.values() if d.fn is not None and d.fn.__name__ == "on_model")
    assert on_model("tiny-hn") == [32, 16, 16, 6e-4, 24, True, "high-noise", 120]
    assert on_model("tiny-sd15")[-2:] == ["uniform", 0] and on_model("flux1-dev")[-2:] == ["uniform", 0]
    assert on_model("brandgen-tiny")[-1] == 150  # the embedded model ships its brand decoder setting
    dropdown = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Training timesteps")
    assert dropdown.value == "uniform"  # the default model's (tiny-sd15 here)
