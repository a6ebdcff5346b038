"""Brand kits: CRUD on disk, palette lock (recolour to the palette in Lab) and its use during generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from brandgen.brandkit import BrandKit, BrandKitStore, apply_brand_kit, kit_state, recolor_to_palette
from brandgen.errors import InvalidInput
from brandgen.gallery import GalleryStore, read_parameters
from brandgen.manager import PipelineManager
from brandgen.metrics import palette_adherence
from brandgen.ui.app import build_app
from brandgen.ui.brandkit_panel import swatches, with_triggers

PALETTE = ["#ffffff", "#1a73e8", "#fbbc04"]


def off_brand_icon(side: int = 96, noise: float = 10.0) -> Image.Image:
    """Colours near, but not on, the palette, with antialiased edges and sensor-like noise."""
    big = Image.new("RGB", (side * 4, side * 4), (222, 210, 192))
    draw = ImageDraw.Draw(big)
    draw.ellipse((side * 0.5, side * 0.5, side * 3.5, side * 3.5), fill=(80, 80, 170))
    draw.rectangle((side * 1.5, side * 1.5, side * 2.5, side * 2.5), fill=(205, 140, 60))
    small = np.asarray(big.resize((side, side), Image.Resampling.LANCZOS), dtype=float)
    small += np.random.default_rng(0).normal(0, noise, small.shape)
    return Image.fromarray(np.clip(small, 0, 255).astype(np.uint8))


def test_brand_kit_crud(tmp_path: Path):
    store = BrandKitStore(tmp_path / "brandkits")
    assert store.names() == []
    saved = store.save(BrandKit("acme", ["#1A73E8", "fbbc04"], ["acme style", " blue  accent "],
                                [("acme-icons", 0.8)]))
    assert saved.palette == ["#1a73e8", "#fbbc04"] and saved.trigger_words == ["acme style", "blue accent"]
    assert store.names() == ["acme"] and store.get("acme") == saved
    store.save(BrandKit("acme", ["#000000"]))  # update replaces
    assert store.get("acme").palette == ["#000000"] and store.get("acme").loras == []
    store.save(BrandKit("beta-2", ["#123456"]))
    assert store.names() == ["acme", "beta-2"]
    store.delete("acme")
    assert store.names() == ["beta-2"]
    with pytest.raises(InvalidInput, match="No brand kit"):
        store.get("acme")
    assert not list((tmp_path / "brandkits").glob(".*.tmp"))


@pytest.mark.parametrize("kit, message", [
    (BrandKit("../evil", ["#ffffff"]), "Invalid brand kit name"),
    (BrandKit("a/b", ["#ffffff"]), "Invalid brand kit name"),
    (BrandKit("ok", ["not-a-colour"]), "not a hex colour"),
    (BrandKit("ok", []), "palette is empty"),
    (BrandKit("ok", ["#ffffff"], loras=[("x", 5.0)]), "between -2 and 2"),
    (BrandKit("ok", ["#ffffff"], loras=[("../x.safetensors", 1.0)]), "Invalid LoRA name"),
])
def test_bad_kits_are_refused(tmp_path: Path, kit, message):
    store = BrandKitStore(tmp_path / "brandkits")
    with pytest.raises(InvalidInput, match=message):
        store.save(kit)
    assert store.names() == [] and not (tmp_path / "evil.json").exists()


def test_corrupt_kit_file_gives_a_clear_error(tmp_path: Path):
    store = BrandKitStore(tmp_path / "brandkits")
    (store.root / "broken.json").write_text("{ half", encoding="utf-8")
    with pytest.raises(InvalidInput, match="unreadable"):
        store.get("broken")
    with pytest.raises(InvalidInput):
        store.get("../../etc/passwd")


def test_palette_lock_raises_adherence_to_about_one_and_keeps_edges_soft():
    image = off_brand_icon()
    before = palette_adherence(image, PALETTE)
    locked = recolor_to_palette(image, PALETTE)
    after = palette_adherence(locked, PALETTE)
    assert before < 0.3 and after >= 0.97, (before, after)
    hard = np.asarray(recolor_to_palette(image, PALETTE, blend_edges=False))
    assert len(np.unique(hard.reshape(-1, 3), axis=0)) == 3  # only brand colours
    soft = np.asarray(locked)
    blended = (soft != hard).any(-1)
    assert 0 < blended.mean() < 0.15  # a thin antialiased band, not a wash
    assert locked.size == image.size and locked.mode == "RGB"


def test_palette_lock_keeps_alpha():
    image = off_brand_icon(32).convert("RGBA")
    image.putalpha(Image.new("L", image.size, 128))
    out = recolor_to_palette(image, PALETTE)
    assert out.mode == "RGBA" and np.asarray(out)[..., 3].max() == 128


def test_apply_brand_kit_records_palette_in_metadata():
    images, metadata = [off_brand_icon(32)], [{"seed": 1}]
    kit = BrandKit("acme", PALETTE).validated()
    out = apply_brand_kit(images, metadata, kit_state(kit, palette_lock=True))
    assert metadata[0]["palette_lock"] is True and metadata[0]["palette"] == PALETTE
    assert metadata[0]["brand_kit"] == "acme" and metadata[0]["palette_adherence"] >= 0.97
    assert out[0] is not images[0]
    unlocked = [{"seed": 2}]
    assert apply_brand_kit(images, unlocked, kit_state(kit, False))[0] is images[0]
    assert unlocked[0]["palette_lock"] is False and unlocked[0]["palette_adherence"] < 0.5
    assert apply_brand_kit(images, [{}], None) == images


def test_generate_tab_applies_the_active_kit_and_stores_it(manager: PipelineManager):
    demo = build_app(manager)
    generate = next(f.fn for f in demo.fns.values() if f.api_name == "generate")
    values = ["a red star", "icons", "tiny-sd15", "draft", 3, 1, "", 2, -1, *["(none)", 0.8] * 3]
    kit = {"name": "acme", "palette": PALETTE, "palette_lock": True}
    items, metadata, status, first = generate(None, *values, kit)  # None: no browser session
    assert metadata[0]["palette_lock"] is True and metadata[0]["palette_adherence"] >= 0.97
    assert "palette" in items[0][1]  # adherence shown in the caption
    stored = GalleryStore(manager.paths.outputs).get(metadata[0]["gallery_id"])
    assert read_parameters(stored.path)["metadata"]["palette"] == PALETTE
    assert palette_adherence(Image.open(stored.path), PALETTE) >= 0.97
    _, plain, _, _ = generate(None, *values, None)
    assert "palette_lock" not in plain[0]


def test_panel_helpers():
    assert with_triggers("a fox", ["acme style", "A Fox"]) == "acme style, a fox"
    assert with_triggers("", ["acme style"]) == "acme style"
    assert with_triggers("acme style, fox", ["acme style"]) == "acme style, fox"
    assert swatches("#ff0000, #00ff00").count("<span") == 2
    assert "not a hex colour" in swatches("#ff00")


def _fns(demo) -> dict:
    return {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn is not None}


def test_panel_saves_applies_and_deletes_a_kit(manager: PipelineManager, tiny_dirs: dict[str, Path]):
    from conftest import make_sd15_lora

    make_sd15_lora(tiny_dirs["sd15"], manager.paths.loras / "acme.safetensors")
    fns = _fns(build_app(manager))
    slots = ["acme", 0.6, "(none)", 0.8, "(none)", 0.8]
    saved = fns["save_kit"]("acme", "#FFFFFF, #1a73e8", "acme style", *slots)
    assert saved.value == "acme" and "acme" in [c[0] for c in saved.choices]
    assert BrandKitStore(manager.paths.home / "brandkits").get("acme").loras == [("acme", 0.6)]

    name, palette, _, words, state, status = fns["choose"]("acme", True)
    assert (name, palette, words) == ("acme", "#ffffff, #1a73e8", "acme style")
    assert state == {"name": "acme", "palette": ["#ffffff", "#1a73e8"], "palette_lock": True}

    prompt, *filled, state, status = fns["apply_kit"]("acme", "acme", palette, words, False, "a fox",
                                                      "(none)", 0.8, "(none)", 0.8, "(none)", 0.8)
    assert prompt == "acme style, a fox" and filled[:2] == ["acme", 0.6] and filled[2] == "(none)"
    assert state["palette_lock"] is False and "Active kit **acme**" in status

    with pytest.raises(Exception, match="I'm sure"):
        fns["delete_kit"]("acme", False)
    dropdown, sure = fns["delete_kit"]("acme", True)
    assert dropdown.value == "(no kit)" and sure is False
    assert BrandKitStore(manager.paths.home / "brandkits").names() == []
