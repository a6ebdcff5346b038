"""Palette adherence and background cleanliness must separate on-brand from off-brand images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from brandgen.errors import InvalidInput
from brandgen.metrics import background_cleanliness, clip_score, palette_adherence, parse_palette


def _icon(fg: str, bg: str = "white") -> Image.Image:
    image = Image.new("RGB", (128, 128), bg)
    ImageDraw.Draw(image).ellipse((32, 32, 96, 96), fill=fg)
    return image


def test_parse_palette_accepts_hex_and_refuses_junk():
    assert parse_palette("#1A73E8, fbbc04;#FFFFFF") == ["#1a73e8", "#fbbc04", "#ffffff"]
    for bad in ("", "blue", "#12345", ["#zzzzzz"]):
        with pytest.raises(InvalidInput):
            parse_palette(bad)


def test_palette_adherence_ranks_on_brand_higher():
    palette = ["#1a73e8", "#ffffff"]
    on_brand = palette_adherence(_icon("#1a73e8"), palette)
    near = palette_adherence(_icon("#2079ee"), palette)
    off_brand = palette_adherence(_icon("#e8731a"), palette)
    assert on_brand > 0.99 and near > 0.99
    assert off_brand < 0.8 and off_brand > 0.5  # the white background still matches


def test_background_cleanliness_separates_flat_from_noisy():
    flat = background_cleanliness(_icon("red"))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    assert flat == 1.0
    assert background_cleanliness(noise) < 0.1
    cut_off = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(cut_off).rectangle((0, 0, 127, 40), fill="black")
    assert background_cleanliness(cut_off) < 0.8


def test_clip_score_is_none_without_a_local_model(tmp_path):
    assert clip_score(_icon("red"), "a red circle", model_dir=tmp_path / "missing") is None
