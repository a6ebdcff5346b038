"""Palette adherence and background cleanliness must separate on-brand from off-brand images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from brandgen.errors import InvalidInput
from brandgen.metrics import background_cleanliness, clip_score, image_psnr, palette_adherence, parse_palette


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


def test_foreground_adherence_judges_the_glyph_not_the_background():
    from brandgen.metrics import foreground_palette_adherence

    brand = ["#0f766e", "#f97360", "#fdf6e3"]  # teal and coral on cream
    off_glyph = _icon("#d62828", bg="#fdf6e3")  # a red glyph on the brand's cream
    assert palette_adherence(off_glyph, brand) > 0.6  # the whole-image measure is fooled by the canvas
    assert foreground_palette_adherence(off_glyph, brand) == 0.0
    assert foreground_palette_adherence(_icon("#0f766e", bg="#fdf6e3"), brand) > 0.99
    assert foreground_palette_adherence(_icon("#0f766e", bg="white"), brand) > 0.99  # any background


def test_foreground_adherence_counts_the_share_of_the_glyph_in_brand_colours():
    from brandgen.metrics import foreground_palette_adherence, foreground_mask

    image = Image.new("RGB", (128, 128), "#fdf6e3")
    draw = ImageDraw.Draw(image)
    draw.rectangle((32, 32, 63, 95), fill="#0f766e")  # left half teal
    draw.rectangle((64, 32, 95, 95), fill="#7c3aed")  # right half violet, off-brand
    assert foreground_mask(image).mean() == pytest.approx(64 * 64 / 128**2)
    assert foreground_palette_adherence(image, ["#0f766e", "#f97360"]) == pytest.approx(0.5)
    assert foreground_palette_adherence(Image.new("RGB", (128, 128), "#fdf6e3"), ["#0f766e"]) == 0.0


def test_image_psnr_of_identical_and_off_by_one_images():
    a = np.full((8, 8, 3), 100, dtype=np.uint8)
    assert image_psnr(a, a) == 99.0
    assert abs(image_psnr(a, a + 1) - 10 * np.log10(255.0**2)) < 1e-9  # every level off by one: MSE 1
    assert image_psnr(Image.fromarray(a), Image.fromarray(a + 16)) < image_psnr(a, a + 1)
