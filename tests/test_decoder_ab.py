"""scripts/decoder_ab.py: the same latents through several autoencoders; speckle on a flat canvas is measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny_pipelines
from diffusers import AutoencoderKL
from PIL import Image
from script_loader import load_script


@pytest.fixture(scope="module")
def ab():
    return load_script("decoder_ab")


def test_roughness_is_zero_on_a_flat_canvas_and_grows_with_speckle(ab):
    canvas = np.full((64, 64, 3), (253, 246, 227), dtype=np.uint8)
    assert ab.roughness(canvas) == 0.0
    rng = np.random.default_rng(0)
    speckled = [np.clip(canvas + rng.normal(0, s, canvas.shape), 0, 255).astype(np.uint8) for s in (2, 6)]
    light, heavy = (ab.roughness(c) for c in speckled)
    assert 0 < light < heavy
    canvas[24:40, 24:40] = (15, 118, 110)  # a glyph in the middle is not the canvas
    assert ab.roughness(canvas) == 0.0


def test_the_same_latents_decode_alike_through_equal_autoencoders_and_another_space_is_refused(ab, tmp_path: Path):
    model = tiny_pipelines.build_sd15(tmp_path / "pipe")
    AutoencoderKL.from_pretrained(model / "vae").save_pretrained(tmp_path / "copy")
    other = AutoencoderKL.from_pretrained(model / "vae")
    other.register_to_config(scaling_factor=0.5)
    other.save_pretrained(tmp_path / "other")
    out = tmp_path / "ab.json"
    ab.main(["--model", str(model), "--vae", str(model / "vae"), str(tmp_path / "copy"), "--seeds", "1",
             "--steps", "2", "--out", str(out), "--sheet", str(tmp_path / "ab.png")])
    saved = json.loads(out.read_text())
    first, copy = saved["vaes"][str(model / "vae")], saved["vaes"][str(tmp_path / "copy")]
    assert saved["images"] == len(first["roughness"]) == 10 and first["roughness"] == copy["roughness"]
    assert first["psnr_vs_first_median"] is None and copy["psnr_vs_first_median"] > 60  # same weights: same images
    with Image.open(tmp_path / "ab.png") as sheet:
        assert sheet.size == (10 * 32, 2 * 32)  # a row per autoencoder, a column per image
    with pytest.raises(SystemExit):  # another scaling factor: another latent space
        ab.main(["--model", str(model), "--vae", str(tmp_path / "other"), "--seeds", "1", "--steps", "2"])
