"""The brandgen-tiny evaluator must be right on ground truth and must be able to say "no"."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from brandgen.tiny import data
from brandgen.tiny import eval as tiny_eval


def _ground_truth(n: int, seed: int = 2024):
    """Single-element icons over every color, shape, style and background kind, with jitter and rotation."""
    rng = random.Random(seed)
    for i in range(n):
        color, shape = data.BASE_COLORS[i % len(data.BASE_COLORS)], rng.choice(data.SHAPES)
        style = data.STYLES[i % len(data.STYLES)]
        rot = rng.uniform(-12, 12) if shape in data.ROTATABLE and rng.random() < 0.5 else 0.0
        el = data.Element(shape, color, 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05),
                          rng.uniform(0.5, 0.72), rot)
        kind, bg, bg_name = data._pick_background(rng, [color])
        spec = data.AssetSpec((el,), style, kind, bg, bg_name, rng.uniform(0.12, 0.2), rng.uniform(0, 360))
        yield color, shape, style, kind, data.render(spec)


def test_evaluator_accuracy_on_ground_truth():
    n, color_ok, shape_ok, kinds, misses = 240, 0, 0, set(), []
    for color, shape, style, kind, image in _ground_truth(n):
        got_color, got_shape = tiny_eval.classify(image)
        color_ok += got_color == data.COLORS[color][1]
        shape_ok += got_shape == shape
        kinds.add((style, kind))
        if got_shape != shape or got_color != data.COLORS[color][1]:
            misses.append((color, shape, style, kind, got_color, got_shape))
    assert {k for _, k in kinds} >= {"light", "dark"} and {s for s, _ in kinds} == set(data.STYLES)
    assert color_ok / n >= 0.95, misses
    assert shape_ok / n >= 0.90, misses


def test_evaluator_tolerates_blur_and_noise():
    rng = np.random.default_rng(0)
    ok = 0
    for color, shape, _, _, image in _ground_truth(40, seed=7):
        arr = np.asarray(image.resize((96, 96), Image.BILINEAR).resize((128, 128), Image.BILINEAR), np.float64)
        noisy = Image.fromarray(np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8))
        ok += tiny_eval.classify(noisy) == (data.COLORS[color][1], shape)
    assert ok >= 36


@pytest.mark.parametrize("kind", ["noise", "noise_patch", "blank"])
def test_evaluator_does_not_claim_a_shape_in_noise(kind):
    rng = np.random.default_rng(1)
    arr = np.full((128, 128, 3), 250, np.uint8)
    if kind == "noise":
        arr = rng.integers(0, 256, arr.shape, dtype=np.uint8)
    elif kind == "noise_patch":
        arr[24:104, 24:104] = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    found = tiny_eval.analyze(Image.fromarray(arr))
    assert found["shape"] is None and found["color"] is None


def test_ring_and_circle_are_told_apart():
    for shape, style in (("ring", "flat"), ("circle", "flat"), ("circle", "outline")):
        spec = data.AssetSpec((data.Element(shape, "blue"),), style)
        assert tiny_eval.classify(data.render(spec)) == ("blue", shape)


def test_label_components_and_fill_holes():
    mask = np.zeros((9, 9), bool)
    mask[1:4, 1:4] = True
    mask[5:8, 5:8] = True
    mask[6, 6] = False
    labels, sizes = tiny_eval.label_components(mask)
    assert sorted(sizes[1:].tolist()) == [8, 9]
    assert tiny_eval.fill_holes(mask)[6, 6]


def test_evaluate_pipeline_scores_a_pipeline():
    class Renderer:
        """Stands in for a diffusers pipeline: draws the prompt's (color, shape) exactly."""

        def __call__(self, prompts, num_inference_steps, guidance_scale, generator):
            out = []
            for prompt in prompts:
                words = prompt.split(" ", 1)[1].removesuffix(" icon")
                color = max((c for c in data.COLORS if words.startswith(c + " ")), key=len)
                shape = words[len(color) + 1:]
                bg = (18, 18, 18) if color == "white" else (255, 255, 255)
                out.append(data.render(data.AssetSpec((data.Element(shape, color),), bg_rgb=bg)))
            return type("Out", (), {"images": out})()

    summary = tiny_eval.evaluate_pipeline(Renderer(), data.heldout_pairs(12), steps=2, batch=5)
    assert summary["n"] == 12 and summary["color_accuracy"] == summary["shape_accuracy"] == 1.0
    assert all(r["both_ok"] for r in summary["results"])


def test_the_module_command_evaluates_the_shipped_icon_model_and_v1_shapes_on_request(monkeypatch, tmp_path):
    """`python -m brandgen.tiny.eval` scores the shipped model (icon_eval); `--shapes` keeps v1's shape eval."""
    from brandgen.tiny import icon_eval

    calls = {}
    monkeypatch.setattr(icon_eval, "main", lambda argv: calls.setdefault("icons", argv))
    assert tiny_eval.main(["--per-concept", "1"]) == ["--per-concept", "1"]
    monkeypatch.setattr(tiny_eval, "load_pipeline", lambda model, device: calls.setdefault("v1", model))
    monkeypatch.setattr(tiny_eval, "evaluate_pipeline", lambda pipe, pairs, *a, **k: {"n": len(pairs), "results": []})
    summary = tiny_eval.main(["--shapes", "--model", "old", "--n", "7", "--out", str(tmp_path / "r.json")])
    assert calls == {"icons": ["--per-concept", "1"], "v1": "old"} and summary["n"] == 7
    assert (tmp_path / "r.json").exists()
