"""Gallery store: settings inside PNGs, an index that survives crashes and corruption, search and paging."""

from __future__ import annotations

import dataclasses

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from brandgen import gallery
from brandgen.errors import InvalidInput
from brandgen.gallery import GalleryStore, a1111_parameters, parse_a1111, read_parameters, settings_to_request
from brandgen.generation import GenerationRequest
from brandgen.manager import PipelineManager
from brandgen.ui.gallery_tab import controls_from_settings
from brandgen.ui.generate_tab import request_from_ui

A1111_TEXT = (
    "masterpiece, a fox logo <lora:acme_style:0.7>, orange\n"
    "second line of prompt <lora:flat:1>\n"
    "Negative prompt: blurry, text\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "acme_style: 0a1b, flat: 2c3d", '
    "Version: v1.10.1"
)


def meta(**kw) -> dict:
    base = {"user_prompt": "a red star", "prompt": "bgicon, flat vector icon of a red star, minimal",
            "negative_prompt": "photo, blurry", "asset_type": "icons", "model": "tiny-sd15",
            "model_label": "Tiny SD1.5", "loras": [], "preset": "draft", "steps": 2, "guidance_scale": 7.5,
            "width": 32, "height": 32, "upscale": 1, "upscaler": "lanczos", "seed": 7, "app_version": "0.1.0"}
    return {**base, **kw}


def tiny(color=(200, 30, 30), side: int = 16) -> Image.Image:
    return Image.new("RGB", (side, side), color)


def test_generated_image_round_trips_to_the_same_image(manager: PipelineManager, app_paths):
    store = GalleryStore(app_paths.outputs)
    request = GenerationRequest(prompt="a red star", asset_type="icons", model_id="tiny-sd15", preset="draft",
                                seed=11, count=2, negative_prompt="ugly", steps=2)
    result = manager.generate(request)
    items = [store.add(image, m) for image, m in zip(result.images, result.metadata)]
    assert items[1].path.is_relative_to(app_paths.outputs) and items[1].path.parent.parent == store.root

    settings = read_parameters(items[1].path)
    assert settings["source"] == "brandgen" and settings["seed"] == 12 and settings["negative_prompt"] == "ugly"
    again = settings_to_request(settings)
    assert (again.prompt, again.asset_type, again.model_id, again.preset, again.seed, again.count) == \
        ("a red star", "icons", "tiny-sd15", "draft", 12, 1)
    replay = manager.generate(again)
    stored = np.asarray(Image.open(items[1].path).convert("RGB"), dtype=int)
    assert np.abs(np.asarray(replay.images[0], dtype=int) - stored).max() <= 2  # batch-of-2 vs 1 float noise

    # and through the Generate tab's own widget translation
    values, warnings = controls_from_settings(settings, manager)
    assert warnings == []
    ui_request = request_from_ui(values["prompt"], values["asset_type"], values["model"], values["preset"],
                                 values["seed"], values["count"], values["negative"], values["steps"],
                                 values["guidance"], "(none)", 0.8, "(none)", 0.8, "(none)", 0.8)
    assert ui_request.seed == 12 and ui_request.negative_prompt == "ugly" and ui_request.count == 1


def test_png_carries_a1111_parameters_and_full_json(tmp_path: Path):
    store = GalleryStore(tmp_path / "outputs")
    item = store.add(tiny(), meta(loras=[{"name": "acme", "weight": 0.8}], upscale=2, palette_lock=True,
                                  palette=["#ff0000", "#ffffff"]))
    chunks = Image.open(item.path).text
    assert chunks["parameters"] == a1111_parameters(item.metadata)
    params = parse_a1111(chunks["parameters"])
    assert params["prompt"].endswith("<lora:acme:0.8>")
    assert params["negative_prompt"] == "photo, blurry"
    assert (params["Steps"], params["CFG scale"], params["Seed"], params["Size"]) == ("2", "7.5", "7", "32x32")
    assert params["Model"] == "tiny-sd15" and params["Upscale"] == "2" and params["Palette"] == "#ff0000 #ffffff"
    assert '"gallery_id"' in chunks["brandgen"]


def test_plain_a1111_png_is_read(tmp_path: Path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_TEXT)
    path = tmp_path / "a1111.png"
    tiny().save(path, pnginfo=info)
    settings = read_parameters(path)
    assert settings["source"] == "a1111" and settings["use_template"] is False
    assert settings["prompt"] == "masterpiece, a fox logo, orange second line of prompt"
    assert settings["negative_prompt"] == "blurry, text"
    assert settings["loras"] == [{"name": "acme_style", "weight": 0.7}, {"name": "flat", "weight": 1.0}]
    assert (settings["steps"], settings["guidance_scale"], settings["seed"]) == (30, 6.5, 1234567)
    assert (settings["width"], settings["height"], settings["model"]) == (512, 768, "v1-5-pruned-emaonly")
    assert settings["metadata"]["Lora hashes"] == "acme_style: 0a1b, flat: 2c3d"
    request = settings_to_request(settings)
    assert request.loras == (("acme_style", 0.7), ("flat", 1.0)) and request.use_template is False


def test_a1111_settings_map_to_generate_controls_with_warnings(manager: PipelineManager, tmp_path: Path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_TEXT)
    tiny().save(tmp_path / "a.png", pnginfo=info)
    values, warnings = controls_from_settings(read_parameters(tmp_path / "a.png"), manager)
    assert values["model"] is None and values["asset_type"] is None and values["seed"] == 1234567
    assert values["steps"] == 30 and values["guidance"] == 6.5 and values["loras"] == []
    assert any("v1-5-pruned-emaonly" in w for w in warnings) and any("acme_style" in w for w in warnings)


def test_steps_and_guidance_stay_default_when_they_match_the_preset_and_model(manager: PipelineManager):
    entry = manager.registry.get("tiny-sd15")
    settings = {"prompt": "a leaf", "model": "tiny-sd15", "preset": "draft", "seed": 3, "loras": [],
                "steps": manager.presets["draft"].steps, "guidance_scale": entry.default_guidance}
    values, _ = controls_from_settings(settings, manager)
    assert (values["steps"], values["guidance"], values["count"]) == (0, -1, 1)
    values, _ = controls_from_settings({**settings, "steps": 9, "guidance_scale": 3.5}, manager)
    assert (values["steps"], values["guidance"]) == (9, 3.5)


def test_guidance_stays_default_when_it_matches_the_models_guidance_with_a_lora(manager: PipelineManager):
    """A model with lora_guidance generates at it when a LoRA is on and Guidance is -1: reusing such an image
    keeps -1; its plain default, chosen by hand with a LoRA on, is kept as a number."""
    entry = dataclasses.replace(manager.registry.get("tiny-sd15"), lora_guidance=2.0)
    manager.registry = manager.registry.with_entry(entry)
    settings = {"prompt": "a leaf", "model": "tiny-sd15", "preset": "draft", "seed": 3, "steps": 0,
                "loras": [{"name": "gone", "weight": 0.8}], "guidance_scale": 2.0}
    assert controls_from_settings(settings, manager)[0]["guidance"] == -1
    chosen = {**settings, "guidance_scale": entry.default_guidance}
    assert controls_from_settings(chosen, manager)[0]["guidance"] == entry.default_guidance
    without = {**settings, "loras": [{"name": "gone", "weight": 0}]}  # a slot at weight 0 is off
    assert controls_from_settings(without, manager)[0]["guidance"] == 2.0


def test_settings_are_read_without_decoding_the_pixels(tmp_path: Path, monkeypatch):
    """Listing, selecting and rebuilding read many PNGs: their chunks come first, the pixels are not needed."""
    item = GalleryStore(tmp_path / "outputs").add(tiny(), meta())
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: pytest.fail("decoded the pixels"))
    assert read_parameters(item.path)["seed"] == 7


@pytest.mark.parametrize("content, message", [
    (b"not an image at all", "not an image"),
    (None, "no generation settings"),
])
def test_bad_uploads_get_clear_errors(tmp_path: Path, content, message):
    path = tmp_path / "upload.png"
    if content is None:
        tiny().save(path)  # a real PNG with no parameters, like a screenshot
    else:
        path.write_bytes(content)
    with pytest.raises(InvalidInput, match=message):
        read_parameters(path)


def test_index_survives_restart_and_search_filters(tmp_path: Path):
    store = GalleryStore(tmp_path / "outputs")
    store.add(tiny(), meta(user_prompt="blue shield", asset_type="icons", model="tiny-sd15"))
    store.add(tiny(), meta(user_prompt="fox logo", asset_type="logo", model="tiny-flux",
                           loras=[{"name": "acme_style", "weight": 0.7}]))
    newest = store.add(tiny(), meta(user_prompt="red fox 100%", asset_type="icons", model="tiny-flux"))
    store.close()
    store = GalleryStore(tmp_path / "outputs")
    assert len(store) == 3
    assert store.search().items[0].id == newest.id  # newest first
    assert [i.metadata["user_prompt"] for i in store.search("fox").items] == ["red fox 100%", "fox logo"]
    assert store.search("100%").total == 1 and store.search("%").total == 1  # LIKE wildcards are literal
    assert store.search("minimal").total == 0  # template words are not the user's words
    assert store.search(newest.id).items[0].id == newest.id and store.search(newest.id[-6:]).total == 0
    assert store.search(asset_type="logo").items[0].metadata["user_prompt"] == "fox logo"
    assert store.search(model="tiny-flux", lora="acme_style").total == 1
    assert store.search(lora="acme").total == 0  # whole LoRA names only
    assert store.facets() == {"asset_types": ["icons", "logo"], "models": ["tiny-flux", "tiny-sd15"],
                              "loras": ["acme_style"]}
    page = store.search(page=99, page_size=2)
    assert (page.page, page.pages, page.total, len(page.items)) == (2, 2, 3, 1)


def test_crash_between_temp_write_and_replace_leaves_index_consistent(tmp_path: Path, monkeypatch):
    store = GalleryStore(tmp_path / "outputs")
    kept = store.add(tiny(), meta())

    def killed(*args):
        raise KeyboardInterrupt("killed between temp write and replace")

    monkeypatch.setattr(gallery.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.add(tiny(), meta(seed=8))
    monkeypatch.undo()
    day = kept.path.parent
    assert sorted(p.name for p in day.glob("*.png")) == [kept.path.name]
    assert not list(day.glob(".*.tmp")) and len(store) == 1
    # a process killed outright leaves its temp file behind: it is ignored, then swept by a rebuild
    (day / ".20261122-101500-deadbeef.png.tmp").write_bytes(b"\x89PNG half")
    assert [i.id for i in store.search().items] == [kept.id]
    assert store.add(tiny(), meta(seed=9)) and len(store) == 2
    assert store.rebuild_index() == 2 and not list(day.glob(".*.tmp"))


def test_png_written_but_not_indexed_comes_back_with_rebuild(tmp_path: Path):
    store = GalleryStore(tmp_path / "outputs")
    items = [store.add(tiny(), meta(seed=s)) for s in range(3)]
    with sqlite3.connect(store.index_path) as conn:  # as if killed after the PNG, before the INSERT
        conn.execute("DELETE FROM items WHERE id = ?", (items[1].id,))
    assert len(store) == 2
    assert store.rebuild_index() == 3
    restored = store.get(items[1].id)
    assert restored.metadata["seed"] == 1 and restored.created_at == items[1].created_at
    assert [i.id for i in store.search().items] == [i.id for i in reversed(items)]


def test_corrupt_rows_never_hide_the_rest(tmp_path: Path):
    store = GalleryStore(tmp_path / "outputs")
    items = [store.add(tiny(), meta(seed=s)) for s in range(4)]
    with sqlite3.connect(store.index_path) as conn:
        conn.execute("UPDATE items SET metadata = '{\"seed\": 1, \"trunc' WHERE id = ?", (items[1].id,))
        conn.execute("UPDATE items SET metadata = 'null' WHERE id = ?", (items[2].id,))
    items[2].path.unlink()  # unreadable row and no PNG to repair it from
    listed = store.search().items
    assert [i.id for i in listed] == [items[3].id, items[1].id, items[0].id]
    assert store.get(items[1].id).metadata["seed"] == 1  # repaired from the PNG's own chunk
    assert any("repaired" in p for p in store.problems) and any("skipped" in p for p in store.problems)


def test_unreadable_index_file_is_set_aside_and_rebuilt(tmp_path: Path):
    store = GalleryStore(tmp_path / "outputs")
    items = [store.add(tiny(), meta(seed=s)) for s in range(3)]
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{store.index_path}{suffix}").unlink(missing_ok=True)
    store.index_path.write_bytes(b"this is not a database" * 100)
    reopened = GalleryStore(tmp_path / "outputs")
    assert {i.id for i in reopened.search().items} == {i.id for i in items}
    # set aside outside outputs/ (which is served over HTTP): the damaged copy still holds every prompt
    assert reopened.problems and list((tmp_path / "quarantine").glob("gallery.sqlite.corrupt-*"))
    assert not list(store.root.rglob("*corrupt*"))
    reopened.close()
    (store.root / "gallery.sqlite.corrupt-20261101-120000").write_bytes(b"set aside by an older version")
    GalleryStore(tmp_path / "outputs").close()  # such copies are moved out of outputs/ on the next start
    assert (tmp_path / "quarantine" / "gallery.sqlite.corrupt-20261101-120000").is_file()
    assert not list(store.root.rglob("*corrupt*"))


def test_path_traversal_ids_are_refused(tmp_path: Path):
    store = GalleryStore(tmp_path / "outputs")
    item = store.add(tiny(), meta())
    secret = tmp_path / "secret.png"
    tiny().save(secret)
    for bad in ("../secret", "/etc/passwd", f"{item.id}/../../secret", "..", "", f"{item.id}.png"):
        with pytest.raises(InvalidInput):
            store.get(bad)
        with pytest.raises(InvalidInput):
            store.delete(bad)
    with sqlite3.connect(store.index_path) as conn:  # a tampered index row pointing outside outputs/
        conn.execute("INSERT INTO items (id, created_at, rel_path, asset_type, model, loras, search, metadata) "
                     "VALUES ('20260101-000000-00000000', '2027', '../secret.png', 'icons', 'm', '', 'x', '{}')")
    assert [i.id for i in store.search().items] == [item.id]
    with pytest.raises(InvalidInput):
        store.delete("20260101-000000-00000000")
    assert secret.exists()


def test_delete_removes_file_thumbnail_and_row(tmp_path: Path):
    store = GalleryStore(tmp_path / "outputs")
    item = store.add(tiny(), meta())
    thumb = store.thumbnail(item)
    assert thumb.exists()
    store.delete(item.id)
    assert not item.path.exists() and not thumb.exists() and len(store) == 0
    with pytest.raises(InvalidInput, match="No gallery image"):
        store.get(item.id)


def test_paging_1000_images_under_one_second(tmp_path: Path):
    """Speed target (see scripts/bench_gallery.py for the figure): a page of 48 out of 1,000 in < 1 s."""
    store = GalleryStore(tmp_path / "outputs")
    for i in range(1000):
        store.add(tiny((i % 256, 40, 90), side=8), meta(seed=i, user_prompt=f"icon number {i}",
                                                        asset_type=("icons", "logo")[i % 2]))
    start = time.perf_counter()
    first = store.search(page=1)
    middle = store.search("icon", asset_type="logo", page=5)
    last = store.search(page=21)
    thumbs = [store.thumbnail(i) for i in first.items]
    seconds = time.perf_counter() - start
    assert (first.total, first.pages, len(first.items)) == (1000, 21, 48)
    assert middle.total == 500 and len(middle.items) == 48 and len(last.items) == 1000 - 20 * 48
    assert first.items[0].metadata["seed"] == 999 and all(t.exists() for t in thumbs)
    assert seconds < 1.0, f"3 pages + thumbnails took {seconds:.3f} s"
    print(f"3 pages of 48 from 1,000 images + 48 thumbnails: {seconds * 1000:.1f} ms")  # shown with -s
