"""Dataset validation: what a designer's folder holds, what is wrong with it, and what training will use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from brandgen.errors import InvalidInput
from brandgen.templates import load_asset_types
from brandgen.training.config import TrainConfig, suggested_lora_settings
from brandgen.training.dataset import (
    import_uploads,
    load_example,
    load_examples,
    template_caption,
    validate_dataset,
    with_trigger,
    write_template_captions,
)
from training_helpers import brand_image, make_dataset

EXAMPLE = Path(__file__).resolve().parent.parent / "assets" / "brand_example" / "icons"


def test_a_messy_folder_is_reported_file_by_file(tmp_path: Path):
    folder = make_dataset(tmp_path / "icons", count=3, size=64)
    (folder / "image_001.txt").unlink()  # missing caption
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4 not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    brand_image(64, 0).save(folder / "image_000_copy.png")  # exact copy of image_000.png
    brand_image(64, 0).save(folder / "resaved.jpg", quality=95)  # near duplicate (re-encoded)
    brand_image(64, 2).save(folder / "anim.gif")  # readable, unsupported format
    Image.new("RGB", (16, 12), "white").save(folder / "tiny.webp")

    report = validate_dataset(folder, "icons", resolution=64, allow_small=True)
    rows = report.table().set_index("file")
    assert rows.loc["notes.pdf", "note"] == "not an image" and rows.loc["notes.pdf", "status"] == "skipped"
    assert rows.loc["broken.png", "note"].startswith("unreadable")
    assert rows.loc["anim.gif", "status"] == "skipped" and "not supported" in rows.loc["anim.gif", "note"]
    assert rows.loc["image_000_copy.png", "status"] == "duplicate"
    assert ("image_000.png", "image_000_copy.png", "exact") in report.duplicates
    assert any(kind == "near" and "resaved.jpg" in (a, b) for a, b, kind in report.duplicates)
    assert rows.loc["tiny.webp", "format"] == "WebP" and "smaller than 64" in rows.loc["tiny.webp", "note"]
    assert report.missing_captions == ["image_001.png", "resaved.jpg", "tiny.webp"]
    assert [p.name for p in report.images] == [
        "image_000.png",
        "image_001.png",
        "image_002.png",
        "resaved.jpg",
        "tiny.webp",
    ]
    assert report.stats == {"count": 5, "min_side": 12, "max_side": 64, "median_side": 64}
    assert report.ok  # small dataset allowed: only warnings
    text = report.summary()
    assert "Ready to train" in text and "no caption" in text and "exact copy" in text and "not supported" in text


def test_counts_follow_the_asset_type(tmp_path: Path):
    folder = make_dataset(tmp_path / "few", count=3)
    report = validate_dataset(folder, "icons", resolution=32)
    assert not report.ok and "at least 25" in report.errors[0]
    assert validate_dataset(folder, "icons", resolution=32, allow_small=True).ok
    assert not validate_dataset(tmp_path / "missing", "icons").ok
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No usable images" in validate_dataset(empty, "icons").errors[0]
    with pytest.raises(InvalidInput, match="Unknown asset type"):
        validate_dataset(folder, "posters")


def test_template_captions_are_offered_and_written_only_on_request(tmp_path: Path):
    folder = make_dataset(tmp_path / "icons", count=2, captions=False)
    Image.new("RGB", (32, 32), (249, 115, 96)).save(folder / "shield_check.png")
    kind = load_asset_types()["icons"]
    assert template_caption(kind, "image_000.png") == (
        "bgicon, flat vector icon of a brand asset, minimal, centered, simple shapes, clean edges, plain background"
    )
    assert "icon of shield check," in template_caption(kind, "shield_check.png")
    validate_dataset(folder, "icons", allow_small=True)
    assert not list(folder.glob("*.txt"))  # validation never writes
    (folder / "image_001.txt").write_text("my own caption")
    written = write_template_captions(folder, "icons", trigger="acme")
    assert sorted(p.name for p in written) == ["image_000.txt", "shield_check.txt"]
    assert (folder / "image_000.txt").read_text().startswith("acme, bgicon, flat vector icon of")
    assert (folder / "image_001.txt").read_text() == "my own caption"
    assert with_trigger("bgicon, a star", "acme") == "acme, bgicon, a star"
    assert with_trigger("acme, a star", "acme") == "acme, a star"


def test_examples_are_cropped_or_bucketed(tmp_path: Path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (200, 100), (15, 118, 110)).save(wide)
    square = load_example(wide, "cap", 64)
    assert square.pixels.shape == (3, 64, 64) and square.original_size == (100, 200)
    assert square.crop_top_left == (0, 32) and -1.0 <= float(square.pixels.min()) <= float(square.pixels.max()) <= 1.0
    bucketed = load_example(wide, "cap", 64, bucketing=True, divisibility=16)
    assert bucketed.bucket[1] > bucketed.bucket[0] and bucketed.pixels.shape[1:] == bucketed.bucket
    folder = make_dataset(tmp_path / "set", count=2, captions=False)
    report = validate_dataset(folder, "icons", resolution=32, allow_small=True)
    examples = load_examples(report, 32, trigger="acme")
    assert examples[0].caption.startswith("acme, bgicon, flat vector icon of")
    assert all(isinstance(e.pixels, torch.Tensor) for e in examples)


def test_the_shipped_example_dataset_is_ready_and_small():
    report = validate_dataset(EXAMPLE, "icons", resolution=128)
    assert report.ok and not report.duplicates, report.summary()
    assert report.stats["count"] >= 25 and report.stats["min_side"] == 128 and not report.missing_captions
    assert sum(p.stat().st_size for p in EXAMPLE.iterdir()) < 1_000_000


def test_train_config_round_trips_json_and_rejects_bad_values(tmp_path: Path):
    config = TrainConfig(name="brand", rank=16, target_modules=["to_q"])
    path = tmp_path / "cfg.json"
    config.save(path)
    assert TrainConfig.from_file(path) == config
    assert json.loads(path.read_text())["alpha"] == 16.0 and TrainConfig(name="x").rank == 32
    path.write_text(json.dumps({"name": "brand", "rnak": 4}))
    with pytest.raises(InvalidInput, match="rnak"):
        TrainConfig.from_file(path)
    path.write_text(json.dumps({"name": "brand", "rank": "4"}))
    with pytest.raises(InvalidInput, match=r"wrong type: rank \(int\)"):
        TrainConfig.from_file(path)
    with pytest.raises(InvalidInput, match="resolution"):
        TrainConfig(name="brand", resolution=100).validated()
    assert TrainConfig(name="brand").validated().resolution == 0  # the model's native resolution
    with pytest.raises(InvalidInput, match="LoRA name"):
        TrainConfig(name="../evil").validated()


def test_suggested_lora_settings_fit_the_model_size_and_validate():
    """What the Train tab fills in when a model is chosen: the tiny model's measured settings (lr 3e-4, 24 epochs
    of 25 icons = the 600 steps of scripts/bench_train_tiny.py), the design defaults for big models."""
    tiny = suggested_lora_settings(256)
    assert tiny == {"resolution": 256, "rank": 16, "alpha": 16, "lr": 3e-4, "epochs": 24, "convs": True,
                    "timesteps": "uniform", "decoder_steps": 0}  # the registry entry adds its own decoder steps
    big = suggested_lora_settings(1024)
    assert (big["resolution"], big["rank"], big["lr"], big["convs"], big["timesteps"]) == (
        1024, 32, 1e-4, False, "uniform")
    for values in (tiny, big):
        settings = {k: v for k, v in values.items() if k != "convs"}
        assert TrainConfig(name="brand", **settings).validated().lr == values["lr"]


def test_a_model_entry_carries_its_own_lora_settings_over_its_sizes():
    """A model whose palette is decided at high noise ships `lora_settings` in presets/models.json; the Train tab
    starts from them. Entries that could not train (a typo, a wrong type, high-noise on a flow model) fail at load."""
    from brandgen.registry import ModelRegistry, _validate

    registry = ModelRegistry.from_file()
    shipped = registry.get("brandgen-tiny")
    assert shipped.suggested_lora_settings() == suggested_lora_settings(256, shipped.lora_settings)
    raw = json.loads((Path(__file__).parents[1] / "presets" / "models.json").read_text())["brandgen-tiny"]
    entry = _validate("tiny-hn", {**raw, "lora_settings": {"timesteps": "high-noise", "lr": 6e-4}})
    values = entry.suggested_lora_settings()
    assert (values["timesteps"], values["lr"], values["rank"], values["epochs"]) == ("high-noise", 6e-4, 16, 24)
    config = TrainConfig(name="brand", **{k: v for k, v in values.items() if k != "convs"}).validated()
    assert config.timesteps == "high-noise"
    flux = json.loads((Path(__file__).parents[1] / "presets" / "models.json").read_text())["flux1-dev"]
    bad = [({"timestep": "uniform"}, "lora_settings.timestep is not a setting"),
           ({"rank": 16.5}, "lora_settings.rank must be int"),
           ({"convs": 1}, "lora_settings.convs must be bool"),
           ({"lr": "3e-4"}, "lora_settings.lr must be a number"),
           ({"timesteps": "late"}, "lora_settings.timesteps must be one of"),
           ([1, 2], "lora_settings must be an object")]
    for settings, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            _validate("tiny-bad", {**raw, "lora_settings": settings})
    with pytest.raises(ValueError, match="for the sd15 and sdxl families"):
        _validate("flux-bad", {**flux, "lora_settings": {"timesteps": "high-noise"}})


def test_uploads_are_copied_with_safe_names_only(tmp_path: Path):
    src = make_dataset(tmp_path / "src", count=1)
    weird = src / "my logo (final).png"
    (src / "image_000.png").rename(weird)
    (src / "notes.exe").write_bytes(b"MZ")
    dest = import_uploads([weird, src / "image_000.txt", src / "notes.exe"], tmp_path / "uploads")
    assert sorted(p.name for p in dest.iterdir()) == ["image_000.txt", "my_logo__final_.png"]
    with pytest.raises(InvalidInput, match="None of the uploaded files"):
        import_uploads([src / "notes.exe"], tmp_path / "other")
