"""scripts/bench_train_tiny.py: --ceiling-only (the demo set's VAE round trip, the most a brand LoRA can reach) and
the whole demo on a tiny model (guidance and seeds of the after row)."""

from __future__ import annotations

import json

import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_train_tiny")


def test_ceiling_only_reports_the_round_trip_without_training(bench, tiny_dirs, tmp_path):
    out = bench.main(["--model", str(tiny_dirs["sd15"]), "--ceiling-only", "--images", "3", "--resolution", "32",
                      "--out", str(tmp_path / "ceiling.json")])
    assert json.loads((tmp_path / "ceiling.json").read_text()) == out
    assert out["status"] == "ceiling" and out["images"] == 3
    # a random-weight autoencoder returns noise: far below the dataset's own adherence (0.92), but a real number
    assert 0.0 <= out["vae_round_trip_foreground_adherence"] < 0.5
    assert "adherence_after" not in out and "train_seconds" not in out
    kept = out["vae_round_trip_kept_by_colour"]
    assert set(kept) == set(out["palette"]) and all(0.0 <= v <= 1.0 for v in kept.values())


def test_kept_by_colour_counts_what_a_round_trip_keeps_of_each_brand_colour(bench):
    """An exact round trip keeps every colour; one that turns the teal half navy keeps none of the teal."""
    from PIL import Image

    palette = ["#0f766e", "#f97360"]
    image = Image.new("RGB", (8, 8), (0x0F, 0x76, 0x6E))
    image.paste((0xF9, 0x73, 0x60), (0, 4, 8, 8))
    navy = image.copy()
    navy.paste((0x1E, 0x2A, 0x5A), (0, 0, 8, 4))
    assert bench.kept_by_colour([image], [image.copy()], palette, 8) == {"#0f766e": 1.0, "#f97360": 1.0}
    assert bench.kept_by_colour([image], [navy], palette, 8) == {"#0f766e": 0.0, "#f97360": 1.0}


def test_demo_renders_after_training_at_the_asked_guidance_and_seeds(bench, tiny_dirs, tmp_path):
    """The whole demo on a tiny random-weight SD1.5 (a few steps): the after row runs at --lora-guidance, and the
    sweep renders the same LoRA and seeds again, so its entry for that guidance is the after figure itself."""
    out = bench.main(["--model", str(tiny_dirs["sd15"]), "--images", "3", "--resolution", "32", "--steps", "2",
                      "--seeds", "2", "--first-seed", "5", "--sample-steps", "2", "--lora-guidance", "2",
                      "--sweep-lora-guidance", "2,4", "--grid", str(tmp_path / "grid.png"),
                      "--out", str(tmp_path / "demo.json")])
    assert out["status"] == "done" and out["seeds"] == [5, 6] and out["steps"] == 2
    assert out["guidance"] == {"before": 6.0, "after": 2.0}
    sweep = out["foreground_adherence_after_by_guidance"]
    assert set(sweep) == {"2", "4"} and sweep["2"] == out["foreground_adherence_after"]
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "demo.json").is_file()


def test_settings_of_judges_a_folder_as_the_registry_entry_would_run_it(bench, tiny_dirs, tmp_path, monkeypatch):
    """--settings-of brandgen-tiny: a candidate folder is rendered at that entry's guidance (6 on its first half of
    the steps before, its lora_guidance on every step after) and trained with its lora_settings, as the app and the
    Train tab would once it shipped under that id; a folder alone gets neither."""
    import dataclasses

    from brandgen.registry import ModelRegistry

    real = ModelRegistry.from_file()
    entries = {e.id: e for e in real.entries()}
    entries["brandgen-tiny"] = dataclasses.replace(entries["brandgen-tiny"],
                                                   lora_settings={"timesteps": "high-noise", "lr": 6e-4})
    monkeypatch.setattr(ModelRegistry, "from_file", classmethod(lambda cls, path=None: cls(entries)))
    common = ["--model", str(tiny_dirs["sd15"]), "--images", "3", "--resolution", "32", "--steps", "2",
              "--seeds", "1", "--sample-steps", "2", "--grid", str(tmp_path / "grid.png")]
    out = bench.main([*common, "--settings-of", "brandgen-tiny"])
    tiny = entries["brandgen-tiny"]
    assert out["settings_of"] == "brandgen-tiny"
    assert out["guidance"] == {"before": tiny.default_guidance, "after": tiny.lora_guidance}
    assert out["guidance_until"] == {"before": tiny.guidance_until, "after": 1.0}
    assert out["timesteps"] == "high-noise" and out["lr"] == 6e-4
    plain = bench.main(common)
    assert plain["guidance"] == {"before": 6.0, "after": 6.0} and plain["guidance_until"] == {"before": 1.0,
                                                                                                "after": 1.0}
    assert plain["timesteps"] == "uniform" and plain["lr"] == 3e-4
