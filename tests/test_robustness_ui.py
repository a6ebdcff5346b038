"""The same hard inputs through the Gradio handlers: each must reach the user as a readable gr.Error (a toast in
the browser, an error message for API clients), never a stack trace, and the app must keep serving. Also: which
files the server hands out, and that its queue runs requests in the order they came (docs/RELIABILITY.md)."""

from __future__ import annotations

import argparse
import os
import pickle
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
import torch
from gradio_client import Client
from gradio_client.utils import Status

import brandgen.gallery
from brandgen.cli import launch_options
from brandgen.gallery import GalleryStore
from brandgen.manager import PipelineManager
from brandgen.paths import AppPaths
from brandgen.ui.app import build_app
from conftest import CPU, free_port
from robustness_helpers import FullDisk, files_under, huge_png
from training_helpers import brand_image, make_dataset, one_torch_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
GOOD = dict(prompt="a red star icon", asset_type="icons", model="tiny-sd15", preset="draft", seed=3, count=2,
            negative="", steps=2, guidance=-1)


def _handler(demo: gr.Blocks, name: str):
    """A wired event handler by its API name (or, for unnamed events, its function name)."""
    for dep in demo.fns.values():
        if dep.fn is not None and name in (dep.api_name, dep.fn.__name__):
            return dep.fn
    raise KeyError(name)


def _generate(demo: gr.Blocks, loras: tuple = (), **changes: Any):
    values = {**GOOD, **changes}
    slots: list[Any] = []
    for i in range(3):
        slots += list(loras[i]) if i < len(loras) else ["(none)", 0.8]
    return _handler(demo, "generate")(None, *values.values(), *slots, None)  # no browser session




def test_generate_handler_turns_hard_inputs_into_readable_errors(manager: PipelineManager):
    (manager.paths.loras / "evil.ckpt").write_bytes(pickle.dumps({"x": 1}))
    demo = build_app(manager)
    cases = [
        (dict(prompt="   "), "The prompt is empty"),
        (dict(prompt="icon " * 2000), "keep it under 2000"),
        (dict(negative="blurry " * 2000), "negative prompt has"),
        (dict(seed=float("nan")), "must be plain numbers"),
        (dict(seed=float("inf")), "must be plain numbers"),
        (dict(count=float("inf")), "must be plain numbers"),
        (dict(seed=-7), "Seed must be -1"),
        (dict(steps=-5), "Steps must be between 1 and 150"),
        (dict(steps=10**6), "Steps must be between 1 and 150"),
        (dict(count=50), "Count must be between 1 and 8"),
        (dict(guidance=1e6), "Guidance must be -1 .the model.s default. or between 0 and 30"),
        (dict(model="../../etc"), "Unknown model"),
        (dict(asset_type="nope"), "Unknown asset type"),
        (dict(loras=(("evil", 0.8),)), "pickle file"),
        (dict(loras=(("../../etc/passwd", 0.8),)), "Invalid LoRA name"),
        (dict(loras=(("acme", 9.0),)), "LoRA weight for 'acme' must be between -2 and 2"),
    ]
    for changes, message in cases:
        with pytest.raises(gr.Error, match=message):
            _generate(demo, **changes)
    items, metadata, status, first = _generate(demo)  # and the app still generates
    assert len(items) == 2 and "2 image(s)" in status and metadata[0]["gallery_id"]


def test_generate_handler_reports_out_of_memory_and_a_full_disk(manager: PipelineManager,
                                                                 monkeypatch: pytest.MonkeyPatch):
    demo = build_app(manager)
    _generate(demo, count=1)
    pipe_class = type(manager.pipeline)

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(pipe_class, "__call__", out_of_memory)
        with pytest.raises(gr.Error, match="Out of accelerator memory .* Memory was freed. Lower the count"):
            _generate(demo)
    with monkeypatch.context() as patch:
        patch.setattr(brandgen.gallery, "open", FullDisk, raising=False)
        with pytest.raises(gr.Error, match="Could not save the image .* the disk is full"):
            _generate(demo)
    items, metadata, _, _ = _generate(demo)
    store = GalleryStore(manager.paths.outputs)
    assert len(items) == 2 and len(store) == 3  # the first image, then these two; nothing half-saved
    assert not list(store.root.rglob("*.tmp"))


def test_gallery_and_brand_kit_handlers_refuse_paths_and_bad_uploads(manager: PipelineManager, tmp_path: Path):
    demo = build_app(manager)
    _, metadata, _, _ = _generate(demo, count=1)
    good_id = metadata[0]["gallery_id"]
    (tmp_path / "huge.png").write_bytes(huge_png(12000))
    brand_image(32).save(tmp_path / "plain.png")
    home = manager.paths.home
    outside_before = {p for p in files_under(tmp_path) if home not in p.parents}
    for bad in ["../../etc/passwd", "/etc/passwd", f"{good_id}/../../x", "..", ""]:
        with pytest.raises(gr.Error, match="not a gallery image id"):
            _handler(demo, "gallery_item")(bad)
        with pytest.raises(gr.Error, match="not a gallery image id"):
            _handler(demo, "gallery_delete")(bad, True)
        with pytest.raises(gr.Error, match="not a gallery image id"):
            _handler(demo, "gallery_export")([good_id, bad], ["png"], ["1x"])
    with pytest.raises(gr.Error, match="12000x12000 px"):
        _handler(demo, "read_parameters")(str(tmp_path / "huge.png"))
    with pytest.raises(gr.Error, match="no generation settings"):
        _handler(demo, "read_parameters")(str(tmp_path / "plain.png"))
    for bad in ["../evil", "/tmp/evil", ".."]:
        with pytest.raises(gr.Error, match="Invalid brand kit name"):
            _handler(demo, "save_kit")(bad, "#ffffff, #0f766e", "", *["(none)", 0.8] * 3)
        with pytest.raises(gr.Error, match="Invalid brand kit name"):
            _handler(demo, "choose")(bad, False)
    assert {p for p in files_under(tmp_path) if home not in p.parents} == outside_before  # nothing written outside
    assert _handler(demo, "gallery_item")(good_id)["id"] == good_id  # still serving


def test_train_handlers_list_bad_images_and_refuse_bad_names(manager: PipelineManager, tmp_path: Path):
    demo = build_app(manager)
    folder = make_dataset(manager.paths.training_data / "upload-1", count=2)  # where uploads land
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4")
    (folder / "huge.png").write_bytes(huge_png(12000))
    brand_image(4).save(folder / "tiny.png")
    summary, table = _handler(demo, "validate_dataset")(str(folder), "icons", 32, True)
    assert "Ready to train" in summary and "2 usable image(s) of 5 file(s)" in summary
    assert "huge.png: too large" in summary and "tiny.png: too small" in summary
    assert "notes.pdf: not an image" in summary
    assert set(table.loc[table["status"] == "skipped", "file"]) == {"notes.pdf", "huge.png", "tiny.png"}
    settings = [str(folder), "icons", "tiny-sd15", "../evil", "acme", 4, 4, 1e-3, 1, 2, 32, 1, 1, 0, 0, True,
                False, False]
    with pytest.raises(gr.Error, match="Invalid LoRA name"):
        _handler(demo, "start_training")(None, *settings)
    for run in ["/etc", "../../etc", str(tmp_path)]:
        with pytest.raises(gr.Error, match="not in training_runs|Invalid run"):
            _handler(demo, "resume_training")(run)
    with pytest.raises(gr.Error, match="NUL byte"):
        _handler(demo, "validate_dataset")("data\0/etc", "icons", 32, True)


def test_the_dataset_box_reads_only_uploads_examples_and_listed_roots(manager: PipelineManager, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """By default, not only on a Space: `/validate_dataset` listed /etc and wrote captions anywhere."""
    monkeypatch.delenv("BRANDGEN_DATA_ROOTS", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    demo = build_app(manager)
    elsewhere = make_dataset(tmp_path / "elsewhere", count=2)
    brand_image(32, 7).save(elsewhere / "logo_mark.png")  # no caption: 'Write template captions' would add one
    settings = [str(elsewhere), "icons", "tiny-sd15", "brand", "acme", 4, 4, 1e-3, 1, 2, 32, 1, 1, 0, 0, True,
                False, False]
    upload_parent = str(manager.paths.training_data / "..")  # a way out of uploads: resolved, then refused
    for outside in ["/etc", str(elsewhere), upload_parent, "assets/../brandgen"]:
        with pytest.raises(gr.Error, match="outside the folders this server may read"):
            _handler(demo, "validate_dataset")(outside, "icons", 32, True)
        with pytest.raises(gr.Error, match="outside the folders this server may write captions into"):
            _handler(demo, "write_template_captions")(outside, "icons", "acme", 32, True)
        settings[0] = outside
        with pytest.raises(gr.Error, match="outside the folders this server may read"):
            _handler(demo, "start_training")(None, *settings)
    assert not (elsewhere / "logo_mark.txt").exists()  # nothing was written into the refused folder
    assert manager.training_jobs.status() is None  # and no job started
    summary, _ = _handler(demo, "validate_dataset")("assets/brand_example/icons", "icons", 128, False)
    assert "Ready to train" in summary  # the shipped example (the README's API example) stays usable...
    with pytest.raises(gr.Error, match="may write captions into"):  # ...but read-only
        _handler(demo, "write_template_captions")("assets/brand_example/icons", "icons", "acme", 128, False)
    uploaded = make_dataset(manager.paths.training_data / "upload-2", count=2, captions=False)
    assert "2 usable image(s)" in _handler(demo, "validate_dataset")(str(uploaded), "icons", 32, True)[0]
    _handler(demo, "write_template_captions")(str(uploaded), "icons", "acme", 32, True)
    assert len(list(uploaded.glob("*.txt"))) == 2  # uploads may be captioned
    monkeypatch.setenv("BRANDGEN_DATA_ROOTS", f"/nonexistent{os.pathsep}{tmp_path / 'elsewhere'}")
    assert "3 usable image(s)" in _handler(demo, "validate_dataset")(str(elsewhere), "icons", 32, True)[0]
    _handler(demo, "write_template_captions")(str(elsewhere), "icons", "acme", 32, True)
    assert (elsewhere / "logo_mark.txt").is_file()  # a listed root is the operator's choice: read and write


# ----- the served app --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(registry, tmp_path_factory: pytest.TempPathFactory):
    """The app launched with exactly the options `brandgen serve` passes to launch (cli.launch_options)."""
    paths = AppPaths(tmp_path_factory.mktemp("served") / "home")
    paths.loras.mkdir(parents=True)
    manager = PipelineManager(registry=registry, paths=paths, device=CPU)
    args = argparse.Namespace(host="127.0.0.1", port=free_port(), share=False, auth=None)
    options = launch_options(args, paths)
    demo = build_app(manager)
    demo.queue(default_concurrency_limit=1).launch(**options, prevent_thread_lock=True, quiet=True)
    try:
        yield demo, manager, options
    finally:
        demo.close()


def store_index(manager: PipelineManager) -> Path:
    return manager.paths.outputs / brandgen.gallery.INDEX_NAME


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_outputs_and_benchmarks_are_served_as_files(served):
    demo, manager, options = served
    home = manager.paths.home
    assert sorted(options["allowed_paths"]) == sorted([str(home / "outputs"), str(home / "benchmarks")])
    wal = Path(f"{store_index(manager)}-wal")
    store = GalleryStore(manager.paths.outputs)
    item = store.add(brand_image(32), {"user_prompt": "a star", "model": "tiny-sd15", "seed": 1})
    (manager.paths.loras / "private.safetensors").write_bytes(b"weights")
    (home / "brandkits").mkdir(exist_ok=True)
    (home / "brandkits" / "acme.json").write_text("{}")
    (home / "training_runs").mkdir(exist_ok=True)
    (home / "training_runs" / "config.json").write_text("{}")
    manager.paths.quarantine.mkdir(exist_ok=True)  # where an unreadable index is set aside (every prompt in it)
    (manager.paths.quarantine / "gallery.sqlite.corrupt-20261122-101500").write_text("prompts")
    base = f"{demo.local_url}gradio_api/file="
    assert _status(base + str(item.path)) == 200
    for secret in [manager.paths.loras / "private.safetensors", home / "brandkits" / "acme.json",
                   home / "training_runs" / "config.json", store.index_path, wal, Path("/etc/passwd"),
                   manager.paths.quarantine / "gallery.sqlite.corrupt-20261122-101500",
                   Path(__file__).resolve().parent.parent / "pyproject.toml",
                   f"{manager.paths.outputs}/../loras/private.safetensors"]:
        assert _status(base + str(secret)) == 403, secret


def test_the_queue_runs_requests_in_arrival_order(served):
    demo, manager, _ = served
    client = Client(demo.local_url, verbose=False)
    jobs = []
    for seed, steps in ((100, 12), (200, 2), (300, 2)):  # the first is slow, so the others wait behind it
        job = client.submit("a blue circle icon", "icons", "tiny-sd15", "draft", seed, 2, "", steps, -1,
                            *["(none)", 0.8] * 3, api_name="/generate")
        deadline = time.monotonic() + 30
        while job.status().code in (Status.STARTING, Status.JOINING_QUEUE) and time.monotonic() < deadline:
            time.sleep(0.02)  # arrival order is submission order: the next waits until this one is queued
        jobs.append(job)
    results = [job.result(timeout=120) for job in jobs]
    stored = [[GalleryStore(manager.paths.outputs).get(m["gallery_id"]).created_at for m in r[1]] for r in results]
    assert [r[1][0]["seed"] for r in results] == [100, 200, 300]
    assert max(stored[0]) < min(stored[1]) and max(stored[1]) < min(stored[2])
    assert len(GalleryStore(manager.paths.outputs).search("blue circle").items) == 6  # nothing lost


def _slow_steps(manager: PipelineManager, monkeypatch, seconds: float) -> threading.Event:
    """Load tiny-sd15 with every denoising step slowed, so a Cancel can arrive mid-run; the event marks a step."""
    manager.load_model("tiny-sd15")
    unet = manager.pipeline.unet
    forward, stepping = unet.forward, threading.Event()

    def slowly(*args, **kwargs):
        stepping.set()
        time.sleep(seconds)
        return forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", slowly)
    return stepping


def _start_as(session: str, handler, args: tuple, stepping: threading.Event) -> tuple[threading.Thread, list]:
    """Run a wired handler for one browser session in a thread; return once its first denoising step runs."""
    out: list = []
    stepping.clear()
    thread = threading.Thread(target=lambda: out.append(handler(SimpleNamespace(session_hash=session), *args)))
    thread.start()
    assert stepping.wait(30), "the run did not start"
    return thread, out


def test_cancel_in_one_browser_session_leaves_another_sessions_generation_running(manager: PipelineManager,
                                                                                  monkeypatch):
    stepping = _slow_steps(manager, monkeypatch, 0.05)
    demo = build_app(manager)
    generate, cancel = _handler(demo, "generate"), _handler(demo, "cancel_generation")
    args = (*{**GOOD, "count": 1, "preset": "standard"}.values(), *["(none)", 0.8] * 3, None)

    thread, first = _start_as("alice", generate, args, stepping)
    cancel(SimpleNamespace(session_hash="bob"))  # Bob's Cancel button
    thread.join(60)
    assert len(first[0][0]) == 1 and first[0][2] != "Cancelled.", "Bob's Cancel stopped Alice's image"

    thread, second = _start_as("alice", generate, args, stepping)
    cancel(SimpleNamespace(session_hash="alice"))
    thread.join(60)
    assert second[0][0] == [] and second[0][2] == "Cancelled."


def test_cancel_in_one_browser_session_leaves_another_sessions_benchmark_running(manager: PipelineManager,
                                                                                 monkeypatch):
    stepping = _slow_steps(manager, monkeypatch, 0.02)
    monkeypatch.setattr(type(manager), "unload", lambda self: None)  # keep the slowed UNet for the whole test
    demo = build_app(manager)
    run_grid, cancel = _handler(demo, "benchmark"), _handler(demo, "cancel_benchmark")
    args = (["tiny-sd15"], "a red star icon\na blue ring icon", ["draft"], "icons", "#ff0000", 1, 3, "(none)", 0.8)

    thread, out = _start_as("alice", run_grid, args, stepping)
    cancel(SimpleNamespace(session_hash="bob"))
    thread.join(120)
    assert [row["status"] for row in out[0][0]] == ["ok", "ok"], "Bob's Cancel stopped Alice's benchmark"

    thread, out = _start_as("alice", run_grid, args, stepping)
    cancel(SimpleNamespace(session_hash="alice"))
    thread.join(120)
    assert [row["status"] for row in out[0][0]] == ["cancelled"]
