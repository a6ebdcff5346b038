"""scripts/vae_strokes.py: the stroke-colour measure reads the bar's inner colour and its delta E right."""

from __future__ import annotations

import numpy as np
import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def strokes():
    return load_script("vae_strokes")


def test_a_perfect_autoencoder_keeps_every_stroke(strokes):
    rows = strokes.stroke_errors(lambda img: img, widths=(4, 12))
    assert len(rows) == len(strokes.COLOURS) * len(strokes.BACKGROUNDS) * 2
    assert all(r["delta_e"] == 0.0 for r in rows)
    assert rows[0]["back"] == list(strokes.COLOURS[rows[0]["colour"]])


def test_thin_strokes_that_blur_into_the_background_are_caught(strokes):
    def blur(img: np.ndarray) -> np.ndarray:  # a 9-px box blur along x, as a lossy latent would smear a line
        out = img.astype(np.float64)
        return sum(np.roll(out, k, axis=1) for k in range(-4, 5)) / 9

    rows = strokes.stroke_errors(blur, colours={"red": (220, 38, 38)}, backgrounds={"white": (255, 255, 255)},
                                 widths=(4, 24))
    thin, wide = rows
    assert thin["width"] == 4 and thin["delta_e"] > 30 and thin["back"][1] > 38  # washed towards white
    assert wide["delta_e"] == 0.0  # the inner third of a 24-px bar is untouched by a 9-px blur
