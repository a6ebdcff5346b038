"""The gallery through the launched app, as a gradio_client user meets it: generate -> search -> settings."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from brandgen.manager import PipelineManager
from brandgen.ui.app import build_app



def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def test_generated_image_is_listed_and_its_settings_come_back(client: Client, manager: PipelineManager,
                                                              tmp_path: Path):
    _, metadata, _, _ = client.predict("a blue shield", "logo", "tiny-sd15", "draft", 41, 1, "", 2, -1,
                                       *["(none)", 0.8] * 3, api_name="/generate")
    gallery_id = metadata[0]["gallery_id"]

    page = _json(client.predict("shield", "logo", "tiny-sd15", None, 1, 48, api_name="/gallery_search"))
    assert page["total"] == 1 and page["items"][0]["id"] == gallery_id and page["items"][0]["seed"] == 41
    assert (manager.paths.outputs / page["items"][0]["file"]).is_file()
    assert _json(client.predict("no such words", None, None, None, 1, 48, api_name="/gallery_search"))["total"] == 0

    settings = _json(client.predict(gallery_id, api_name="/gallery_item"))
    assert settings["seed"] == 41 and settings["prompt"] == "a blue shield" and settings["asset_type"] == "logo"

    zip_path = client.predict([gallery_id], ["png", "svg"], ["1x", "2x"], api_name="/gallery_export")
    with zipfile.ZipFile(zip_path) as archive:
        assert f"{gallery_id}/{gallery_id}@2x.svg" in archive.namelist() and "manifest.csv" in archive.namelist()

    stored = manager.paths.outputs / page["items"][0]["file"]
    read_back = _json(client.predict(handle_file(str(stored)), api_name="/read_parameters")[0])
    assert read_back["seed"] == 41 and read_back["source"] == "brandgen"

    with pytest.raises(Exception, match="I'm sure"):
        client.predict(gallery_id, False, api_name="/gallery_delete")
    assert "Deleted" in client.predict(gallery_id, True, api_name="/gallery_delete")
    assert _json(client.predict("", None, None, None, 1, 48, api_name="/gallery_search"))["total"] == 0


def test_bad_requests_come_back_as_readable_errors(client: Client, tmp_path: Path):
    with pytest.raises(Exception, match="not a gallery image id"):
        client.predict("../../etc/passwd", api_name="/gallery_item")
    text_file = tmp_path / "notes.png"
    text_file.write_text("hello")
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(str(text_file)), api_name="/read_parameters")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(Exception, match="no generation settings"):
        client.predict(handle_file(str(plain)), api_name="/read_parameters")
    with pytest.raises(Exception, match="at least one image"):
        client.predict([], ["png"], ["1x"], api_name="/gallery_export")


def test_use_these_settings_fills_generate_and_switches_tab(manager: PipelineManager):
    demo = build_app(manager)
    fns = {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn is not None}
    generate = next(f.fn for f in demo.fns.values() if f.api_name == "generate")
    _, metadata, _, _ = generate(None, "a green leaf", "icons", "tiny-sd15", "draft", 77, 2, "grainy", 2, -1,
                                 *["(none)", 0.8] * 3, None)
    grid, page, info, ids = fns["show_page"]("leaf", "(all)", "(all)", "(all)", 1)
    assert len(grid) == 2 and page == 1 and "2 image(s)" in info and ids[0] == metadata[1]["gallery_id"]
    assert all(Path(thumb).suffix == ".webp" and Path(thumb).is_file() for thumb, _ in grid)
    settings = next(f.fn for f in demo.fns.values() if f.api_name == "gallery_item")(ids[0])
    out = fns["use_settings"](settings)
    prompt, asset_type, model, preset, seed, count, negative, steps, guidance, *slots, tabs = out
    assert (prompt, asset_type, model, preset, seed, count, negative) == \
        ("a green leaf", "icons", "tiny-sd15", "draft", 78, 1, "grainy")
    assert steps == 2 and guidance == -1  # custom steps are kept; the model's default guidance stays default
    assert slots[0] == "(none)" and tabs.selected == "generate"
    with pytest.raises(Exception, match="Select an image"):
        fns["use_settings"](None)
