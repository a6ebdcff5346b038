"""Hard inputs against the core: bad images, prompts and numbers, hostile LoRA files, names that try to leave
the app's folders. Each case must end in a clear BrandGenError (or a listed, skipped file) and leave the app
working. Out-of-memory, a full disk and concurrency are in test_robustness_runtime.py, the UI handlers in
test_robustness_ui.py; docs/RELIABILITY.md lists every case."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from brandgen.brandkit import BrandKit, BrandKitStore
from brandgen.errors import InvalidInput, LoraError
from brandgen.export import export_items
from brandgen.gallery import GalleryStore
from brandgen.manager import PipelineManager
from brandgen.png_settings import read_parameters
from brandgen.templates import MAX_PROMPT_CHARS
from brandgen.training.config import TrainConfig
from brandgen.training.dataset import load_examples, validate_dataset
from brandgen.training.jobs import TrainingJobs
from conftest import make_sd15_lora
from robustness_helpers import files_under, huge_png, pixels, png_bytes, tiny_request
from training_helpers import brand_image, make_dataset, one_torch_thread  # noqa: F401 (autouse fixture)

# PIL warns when it opens a big header; these tests are about what BrandGen then decides
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


# ----- training images ------------------------------------------------------------------------------
def test_bad_files_in_a_training_folder_are_listed_and_skipped(tmp_path: Path):
    folder = make_dataset(tmp_path / "icons", count=3, size=32)
    (folder / "readme.md").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg" * 10)
    good = io.BytesIO()
    brand_image(32, 5).save(good, "PNG")
    (folder / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "huge.png").write_bytes(huge_png(12000))
    (folder / "bomb.png").write_bytes(png_bytes(40000, 40000))  # past PIL's own decompression-bomb limit
    Image.new("RGB", (4, 4), "red").save(folder / "tiny.png")

    report = validate_dataset(folder, "icons", resolution=32, allow_small=True)
    rows = report.table().set_index("file")
    assert [p.name for p in report.images] == ["image_000.png", "image_001.png", "image_002.png"]
    skipped = {"readme.md", "empty.png", "garbage.jpg", "truncated.png", "huge.png", "bomb.png", "tiny.png"}
    assert set(rows.index[rows["status"] == "skipped"]) == skipped
    assert rows.loc["readme.md", "note"] == "not an image"
    assert rows.loc["truncated.png", "note"].startswith("unreadable")
    assert rows.loc["huge.png", "note"].startswith("too large (12000x12000 px")
    assert rows.loc["bomb.png", "note"].startswith("too large to open safely")
    assert rows.loc["tiny.png", "note"].startswith("too small (4x4 px")
    text = report.summary()
    assert all(f"{name}:" in text for name in skipped) and "Ready to train" in text
    examples = load_examples(report, resolution=32)  # training still gets exactly the good images
    assert len(examples) == 3 and all(e.pixels.shape == (3, 32, 32) for e in examples)


def test_only_bad_images_make_a_clear_not_ready_verdict(tmp_path: Path):
    folder = tmp_path / "bad"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "tiny.png")
    (folder / "huge.png").write_bytes(png_bytes(12000, 12000))
    report = validate_dataset(folder, "icons", resolution=32, allow_small=True)
    assert not report.ok and "No usable images" in report.errors[0]
    with pytest.raises(InvalidInput, match="not ready to train"):
        load_examples(report, resolution=32)


def test_settings_upload_refuses_huge_and_bomb_images(tmp_path: Path):
    (tmp_path / "huge.png").write_bytes(huge_png(12000))
    (tmp_path / "bomb.png").write_bytes(png_bytes(40000, 40000))
    (tmp_path / "fake.png").write_bytes(b"GIF89a nope")
    with pytest.raises(InvalidInput, match="12000x12000 px"):
        read_parameters(tmp_path / "huge.png")
    with pytest.raises(InvalidInput, match="too large to open safely"):
        read_parameters(tmp_path / "bomb.png")
    with pytest.raises(InvalidInput, match="not an image"):
        read_parameters(tmp_path / "fake.png")


# ----- prompts and numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["", "   \n\t  ", None])
def test_empty_prompt_is_refused_before_any_model_loads(manager: PipelineManager, prompt):
    with pytest.raises(InvalidInput, match="prompt is empty"):
        manager.generate(tiny_request(prompt=prompt))
    assert manager.current_model is None


def test_a_10000_character_prompt_is_refused_with_the_limit(manager: PipelineManager):
    long = "a teal heart icon " * 556  # 10,008 characters
    for request in (tiny_request(prompt=long), tiny_request(prompt=long, use_template=False)):
        with pytest.raises(InvalidInput, match=f"keep it under {MAX_PROMPT_CHARS}"):
            manager.generate(request)
    with pytest.raises(InvalidInput, match="negative prompt has 10008 characters"):
        manager.generate(tiny_request(negative_prompt=long))
    assert manager.current_model is None


def test_a_prompt_at_the_limit_is_truncated_by_the_tokenizer_and_generates(manager: PipelineManager):
    words = ("blue shield icon " * 200)[: MAX_PROMPT_CHARS - 20].strip()
    result = manager.generate(tiny_request(prompt=words, steps=1))
    assert len(result.images) == 1 and result.metadata[0]["user_prompt"] == words


BAD_NUMBERS = [
    ({"steps": -5}, "Steps must be between 1 and 150"),
    ({"steps": 0}, "Steps must be between 1 and 150"),
    ({"steps": 10**9}, "Steps must be between 1 and 150"),
    ({"steps": float("nan")}, "not a usable number"),
    ({"count": 0}, "Count must be between 1 and 8"),
    ({"count": -3}, "Count must be between 1 and 8"),
    ({"count": 10**6}, "Count must be between 1 and 8"),
    ({"count": 2.5}, "Count must be between 1 and 8"),
    ({"width": -512}, "Width must be a multiple of 8"),
    ({"width": 0}, "Width must be a multiple of 8"),
    ({"width": 100_000}, "Width must be a multiple of 8"),
    ({"height": 70}, "Height must be a multiple of 8"),
    ({"height": "tall"}, "not a usable number"),
    ({"guidance_scale": -1.0}, "Guidance must be between 0 and 30"),
    ({"guidance_scale": 1e9}, "Guidance must be between 0 and 30"),
    ({"guidance_scale": float("nan")}, "Guidance must be between 0 and 30"),
    ({"seed": -2}, "Seed must be -1"),
    ({"seed": 2**40}, "Seed must be -1"),
    ({"seed": float("inf")}, "not a usable number"),
    ({"loras": (("acme", 50.0),)}, "LoRA weight for 'acme' must be between -2 and 2"),
    ({"loras": (("acme", "heavy"),)}, "not a usable number"),
    ({"loras": tuple((f"l{i}", 0.5) for i in range(5))}, "at most 4 LoRAs"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_NUMBERS, ids=[str(f) for f, _ in BAD_NUMBERS])
def test_absurd_numbers_are_refused_with_the_allowed_range(manager: PipelineManager, fields, message):
    with pytest.raises(InvalidInput, match=message):
        manager.generate(tiny_request(**fields))
    assert manager.current_model is None  # refused up front: nothing loaded, nothing ran


# ----- LoRA files ------------------------------------------------------------------------------------
class _TouchOnUnpickle:
    """Unpickling this creates a file: proof that nobody unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_loras_are_refused_and_never_unpickled(manager: PipelineManager, tmp_path: Path):
    marker = tmp_path / "unpickled.txt"
    payload = pickle.dumps({"lora_A.weight": _TouchOnUnpickle(marker)})
    for name in ("evil.ckpt", "evil2.bin", "evil3.pt", "same.ckpt", "same.bin", "same.pt"):
        (manager.paths.loras / name).write_bytes(payload)
    (manager.paths.loras / "renamed.safetensors").write_bytes(payload)  # a pickle wearing the right suffix
    assert manager.list_loras() == []
    problems = manager.lora_library.problems
    assert "pickle file" in problems["evil.ckpt"] and "pickles can run code" in problems["evil2.bin"]
    assert "not a readable safetensors file" in problems["renamed.safetensors"]
    assert [f for f in problems if f.startswith("same.")] == ["same.bin", "same.ckpt", "same.pt"]  # one each
    for name in ("evil", "renamed"):
        with pytest.raises(LoraError, match="cannot be used"):
            manager.generate(tiny_request(loras=((name, 0.8),)))
    assert not marker.exists()
    assert len(manager.generate(tiny_request()).images) == 1  # the app keeps working


def test_truncated_and_wrong_family_loras_are_refused_and_the_model_stays_clean(
    manager: PipelineManager, tiny_dirs: dict,
):
    loras = manager.paths.loras
    good = make_sd15_lora(tiny_dirs["sd15"], loras / "brand.safetensors")
    data = good.read_bytes()
    (loras / "cut.safetensors").write_bytes(data[: len(data) // 2])
    flux_keys = {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
                 "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4)}
    save_file(flux_keys, str(loras / "fluxy.safetensors"))  # no metadata: only loading can tell
    tagged = make_sd15_lora(tiny_dirs["sd15"], loras / "tagged-src" / "t.safetensors")
    save_file(load_file(tagged), str(loras / "tagged.safetensors"), metadata={"brandgen.base_family": "flux"})

    before = pixels(manager)
    weights = _weights(manager)
    with pytest.raises(LoraError, match="truncated or corrupt"):
        manager.generate(tiny_request(loras=(("cut", 0.8),)))
    with pytest.raises(LoraError, match="matched no layer of Tiny SD1.5: it was made for another model"):
        manager.generate(tiny_request(loras=(("fluxy", 0.8),)))
    with pytest.raises(LoraError, match="trained for flux models; Tiny SD1.5 is sd15"):
        manager.generate(tiny_request(loras=(("tagged", 0.8),)))
    _assert_same_weights(_weights(manager), weights)  # nothing half-loaded changes the model
    _assert_same_image(pixels(manager), before)
    styled = pixels(manager, loras=(("brand", 1.0),))
    assert np.abs(styled - before).mean() > 1.0  # and a good LoRA still loads and works
    fused = _weights(manager)
    with pytest.raises(LoraError, match="matched no layer"):  # a bad one after a fused good one
        manager.generate(tiny_request(loras=(("brand", 1.0), ("fluxy", 0.5))))
    _assert_same_weights(_weights(manager), fused)
    _assert_same_image(pixels(manager, loras=(("brand", 1.0),)), styled)
    _assert_same_image(pixels(manager), before)


def _weights(manager: PipelineManager) -> dict[str, torch.Tensor]:
    pipe = manager._loaded.pipe
    return {f"{name}.{key}": value.clone() for name in ("unet", "text_encoder")
            for key, value in getattr(pipe, name).state_dict().items()}


def _assert_same_weights(now: dict[str, torch.Tensor], then: dict[str, torch.Tensor]) -> None:
    assert now.keys() == then.keys()  # no adapter layers left behind
    assert [k for k in then if not torch.equal(now[k], then[k])] == []


def _assert_same_image(now: np.ndarray, then: np.ndarray) -> None:
    """Equal up to float rounding: CPU kernels may round differently as memory layout shifts between calls
    (seen: one channel of one pixel off by 1/255); a half-applied LoRA moves pixels by far more."""
    assert np.abs(now - then).max() <= 2


# ----- names that try to leave the app's folders ----------------------------------------------------------
TRAVERSALS = ["../outside", "../../etc/passwd", "/etc/passwd", "..", "a/b", "loras/../../outside", "./x", "~root",
              "C:\\Windows\\win.ini", "%2e%2e%2fx", "name\x00.safetensors", ""]


def test_lora_names_with_paths_never_reach_outside_files(manager: PipelineManager, tiny_dirs: dict, tmp_path: Path):
    make_sd15_lora(tiny_dirs["sd15"], manager.paths.home / "outside.safetensors")  # a real LoRA next to loras/
    make_sd15_lora(tiny_dirs["sd15"], tmp_path / "outside.safetensors")
    for name in TRAVERSALS:
        with pytest.raises(InvalidInput, match="Invalid LoRA name"):
            manager.lora_library.get(name)
        if name:
            with pytest.raises(InvalidInput, match="Invalid LoRA name"):
                manager.generate(tiny_request(loras=((name, 0.8),)))
    assert manager.current_model is None  # refused before loading anything


def test_gallery_ids_and_export_stay_inside_outputs(tmp_path: Path):
    store = GalleryStore(tmp_path / "home" / "outputs")
    item = store.add(brand_image(32), {"user_prompt": "a star", "model": "m", "seed": 1})
    secret = tmp_path / "home" / "secret.png"
    brand_image(32, 3).save(secret)
    outside_before = files_under(tmp_path) - files_under(store.root)
    for bad in ["../secret", "../../secret.png", "/etc/passwd", item.id + "/../../secret", "", "20261122-101500-zzzz"]:
        with pytest.raises(InvalidInput, match="not a gallery image id"):
            store.get(bad)
        with pytest.raises(InvalidInput, match="not a gallery image id"):
            store.delete(bad)
        with pytest.raises(InvalidInput, match="not a gallery image id"):
            export_items(store, [item.id, bad], ["png"], ["1x"])
    # an index row that points outside (a tampered or foreign gallery.sqlite) is skipped, never served
    with store._conn:
        store._conn.execute("INSERT INTO items (id, created_at, rel_path, asset_type, model, loras, search, metadata) "
                            "VALUES (?,?,?,?,?,?,?,?)",
                            ("20260101-000000-deadbeef", "2026-01-01", "../secret.png", "icons", "m", "", "star", "{}"))
    page = store.search("")
    assert [i.id for i in page.items] == [item.id] and any("points outside" in p for p in store.problems)
    with pytest.raises(InvalidInput, match="No gallery image 20260101-000000-deadbeef"):
        store.get("20260101-000000-deadbeef")
    result = export_items(store, [item.id], ["png"], ["1x"])
    assert result.zip_path.parent == store.root / "exports"
    assert files_under(tmp_path) - files_under(store.root) == outside_before  # nothing written outside
    assert secret.is_file()


def test_brand_kit_names_cannot_escape_brandkits(tmp_path: Path):
    store = BrandKitStore(tmp_path / "home" / "brandkits")
    (tmp_path / "home" / "victim.json").write_text("{}")
    for bad in ["../victim", "../../x", "/tmp/x", "..", "a/b", ""]:
        with pytest.raises(InvalidInput, match="Invalid brand kit name"):
            store.save(BrandKit(bad, ["#ffffff", "#0f766e"]))
        with pytest.raises(InvalidInput, match="Invalid brand kit name"):
            store.get(bad)
        with pytest.raises(InvalidInput, match="Invalid brand kit name"):
            store.delete(bad)
    with pytest.raises(InvalidInput, match="Invalid LoRA name"):
        store.save(BrandKit("acme", ["#ffffff"], loras=[("../../outside", 0.8)]))
    assert (tmp_path / "home" / "victim.json").read_text() == "{}"
    assert store.names() == []


def test_training_run_names_and_resume_paths_stay_in_training_runs(manager: PipelineManager, tmp_path: Path):
    for bad in ["../evil", "/tmp/evil", "..", "a/b"]:
        with pytest.raises(InvalidInput, match="Invalid LoRA name"):
            TrainConfig(name=bad).validated()
    outside = tmp_path / "elsewhere" / "brand-20260101-000000"  # looks exactly like a resumable run
    (outside / "checkpoints" / "step_2").mkdir(parents=True)
    TrainConfig(name="brand", base_model="tiny-sd15", data_dir=str(tmp_path)).save(outside / "config.json")
    before = files_under(tmp_path / "elsewhere")
    jobs = TrainingJobs(manager)
    for run in [str(outside), "../../elsewhere/brand-20260101-000000", "/etc", "../../etc", ".."]:
        with pytest.raises(InvalidInput, match="not in training_runs|Invalid run"):
            jobs.resume(run)
    assert jobs.status() is None and files_under(tmp_path / "elsewhere") == before  # nothing started or written
    inside = manager.paths.training_runs / "brand-20260101-000000"
    (inside / "checkpoints").mkdir(parents=True)
    (inside / "config.json").write_text((outside / "config.json").read_text())
    for run in (inside.name, str(inside)):  # a full path to one of our own runs is still accepted
        with pytest.raises(InvalidInput, match="no checkpoint to resume from"):
            jobs.resume(run)
