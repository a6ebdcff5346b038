"""The tiny v2 LoRA demo dataset: real icons of one set recoloured into a brand palette, captioned for training."""

from __future__ import annotations

import numpy as np
from PIL import Image

from brandgen.metrics import foreground_palette_adherence, hex_to_rgb
from brandgen.tiny import brand_icons, icon_data, icons
from brandgen.training.dataset import validate_dataset

CONCEPTS = list(icons.load_concepts()["concepts"])


def _duotone_mask(size: int = 64, mark: int = 0) -> np.ndarray:
    """A square outline (line, alpha 255) around a 20%-opacity fill (alpha 51), like Phosphor's duotone; `mark`
    extra line pixels in the corner keep icons apart."""
    mask = np.zeros((size, size), np.uint8)
    mask[12:52, 12:52] = 255
    mask[56:60, 2:2 + mark] = 255
    mask[18:46, 18:46] = icon_data.FILL_LEVEL
    return mask


def _pack(brand: dict) -> tuple[np.ndarray, list[dict]]:
    """Fake pack: the brand's set/style for every concept, a held-out icon, a held subject and another style."""
    meta = [{"set": brand["set"], "style": brand["style"], "name": c.replace(" ", "-"), "phrase": c,
             "concept": c, "heldout": False} for c in reversed(CONCEPTS)]
    meta[0]["heldout"] = True  # never in the demo: the model's own evaluation holds it out
    meta.append({"set": brand["set"], "style": "regular", "name": "bank-r", "phrase": "bank", "concept": "bank",
                 "heldout": False})
    return np.stack([_duotone_mask(mark=i) for i in range(len(meta))]), meta  # no two files alike


def test_demo_icons_are_the_brand_set_in_concept_order_without_held_subjects_or_heldout_icons():
    brand = brand_icons.load_brand()
    _, meta = _pack(brand)
    picked = brand_icons.pick_icons(meta, brand)
    phrases = [meta[i]["phrase"] for i in picked]
    expected = [c for c in CONCEPTS if c not in brand["held_subjects"] and c != CONCEPTS[-1]][: brand["count"]]
    assert phrases == expected and len(picked) == brand["count"] == 25
    assert all(meta[i]["style"] == brand["style"] for i in picked)


def test_duotone_split_gives_line_and_fill_their_own_brand_colours(tmp_path):
    brand = {**brand_icons.load_brand(), "size": 64, "icon_scale": 1.0}
    image = np.asarray(brand_icons.render_icon(_duotone_mask(), brand)).astype(int)
    palette = brand["palette"]
    assert np.abs(image[32, 32] - hex_to_rgb(palette["fill"])).max() <= 2  # inside: solid accent colour
    assert np.abs(image[14, 32] - hex_to_rgb(palette["line"])).max() <= 2  # the outline
    assert np.abs(image[2, 2] - hex_to_rgb(palette["background"])).max() <= 2
    assert foreground_palette_adherence(Image.fromarray(image.astype(np.uint8)), brand_icons.brand_palette(brand)) > 0.9


def test_build_writes_a_deterministic_trainable_dataset(tmp_path):
    brand = {**brand_icons.load_brand(), "size": 64}
    masks, meta = _pack(brand)
    first = brand_icons.build(masks, meta, tmp_path / "a", brand)
    second = brand_icons.build(masks, meta, tmp_path / "b", brand)
    assert [p.name for p in first] == [p.name for p in second] and first[0].name == "01_bank.png"
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    assert first[0].with_suffix(".txt").read_text().startswith("bgicon, flat vector icon of a bank, ")
    report = validate_dataset(tmp_path / "a", brand["asset_type"], resolution=64)
    assert len(report.images) == 25 and not report.errors and not report.missing_captions
