"""Runtime trouble for the core: out of memory, a full disk, and several users at once. The app must say what
happened, free what it held, keep the gallery consistent and go on working (docs/RELIABILITY.md)."""

from __future__ import annotations

import errno
import functools
import gc
import sqlite3
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import brandgen.device
import brandgen.gallery
from brandgen.brandkit import BrandKit, BrandKitStore
from brandgen.errors import OutOfMemory, StorageError
from brandgen.export import export_items
from brandgen.gallery import GalleryStore
from brandgen.manager import PipelineManager
from brandgen.training.config import TrainConfig
from brandgen.training.jobs import TrainingJobs
from robustness_helpers import FullDisk, pixels, tiny_request
from training_helpers import brand_image, make_dataset, one_torch_thread  # noqa: F401 (autouse fixture)


# ----- out of memory ---------------------------------------------------------------------------------
def test_cuda_oom_frees_memory_says_what_to_change_and_the_next_generate_works(
    manager: PipelineManager, monkeypatch: pytest.MonkeyPatch,
):
    before = pixels(manager)
    pipe_class = type(manager.pipeline)
    real_call = pipe_class.__call__
    held: list[weakref.ref] = []

    def out_of_memory(self, *args, **kwargs):
        activations = torch.empty(4_000_000)  # what a real pipeline holds when the allocator gives up
        held.append(weakref.ref(activations))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    freed_at_release: list[bool] = []

    def free_memory() -> None:
        gc.collect()
        freed_at_release.append(all(ref() is None for ref in held))

    monkeypatch.setattr(pipe_class, "__call__", out_of_memory)
    monkeypatch.setattr(brandgen.device, "free_memory", free_memory)
    with pytest.raises(OutOfMemory) as caught:
        manager.generate(tiny_request(count=4))
    message = str(caught.value)
    assert "Out of accelerator memory generating 4 image(s) at 32x32" in message
    assert "Memory was freed" in message and "Lower the count or size" in message and "model_offload" in message
    assert freed_at_release == [True], "the failed call's tensors must be released before memory is freed"
    monkeypatch.setattr(pipe_class, "__call__", real_call)
    np.testing.assert_array_equal(pixels(manager), before)


def test_oom_while_loading_leaves_no_half_loaded_model(manager: PipelineManager, monkeypatch: pytest.MonkeyPatch):
    def no_room(self, pipe, entry):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(PipelineManager, "_place", no_room)
    with pytest.raises(OutOfMemory, match="Not enough accelerator memory to load Tiny SD1.5.*model_offload"):
        manager.generate(tiny_request())
    assert manager.current_model is None
    monkeypatch.undo()
    assert len(manager.generate(tiny_request()).images) == 1


# ----- disk full -------------------------------------------------------------------------------------


def _gallery_with_two(tmp_path: Path) -> tuple[GalleryStore, list[str]]:
    store = GalleryStore(tmp_path / "outputs")
    ids = [store.add(brand_image(32, i), {"user_prompt": f"star {i}", "model": "m", "seed": i}).id for i in range(2)]
    return store, ids


def _assert_intact(store: GalleryStore, ids: list[str]) -> None:
    assert len(store) == 2 and sorted(i.id for i in store.search("").items) == sorted(ids)
    assert not list(store.root.rglob("*.tmp")) and len(list(store.root.glob("*/*.png"))) == 2
    assert GalleryStore(store.root).rebuild_index() == 2  # the index still matches the files exactly


def test_disk_full_while_saving_an_image_keeps_the_gallery_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store, ids = _gallery_with_two(tmp_path)
    monkeypatch.setattr(brandgen.gallery, "open", FullDisk, raising=False)
    with pytest.raises(StorageError, match="Could not save the image in .*outputs: the disk is full"):
        store.add(brand_image(32, 9), {"user_prompt": "star 9", "model": "m", "seed": 9})
    monkeypatch.undo()
    _assert_intact(store, ids)
    assert store.add(brand_image(32, 9), {"user_prompt": "star 9"}).path.is_file()  # space freed: works again


class _FullDatabase:
    """The index connection as SQLite behaves when the disk fills during a transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def execute(self, sql, *args):
        if sql.startswith("INSERT"):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def __enter__(self):
        return self._conn.__enter__()

    def __exit__(self, *exc):
        return self._conn.__exit__(*exc)


def test_disk_full_while_indexing_leaves_no_orphan_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store, ids = _gallery_with_two(tmp_path)
    monkeypatch.setattr(store, "_conn", _FullDatabase(store._conn))
    with pytest.raises(StorageError, match="the disk is full"):
        store.add(brand_image(32, 9), {"user_prompt": "star 9"})
    monkeypatch.undo()
    _assert_intact(store, ids)


def test_disk_full_while_exporting_leaves_no_partial_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store, ids = _gallery_with_two(tmp_path)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("zipfile.ZipFile.writestr", full)
    with pytest.raises(StorageError, match="Could not save the export zip .*the disk is full"):
        export_items(store, ids, ["png"], ["1x"])
    assert not list((store.root / "exports").iterdir())


# ----- several users at once -----------------------------------------------------------------------------
STEPS = 20
def test_two_generations_and_a_training_job_at_once_lose_nothing(manager: PipelineManager, tmp_path: Path):
    """Two users generate while a LoRA trains (CPU policy: the job takes the accelerator lock per step).
    Every image must reach the gallery with its own settings, identical to a run alone, and the job must finish."""
    store = GalleryStore(manager.paths.outputs)
    requests = {"alice": tiny_request(prompt="a red star icon", seed=11, count=2),
                "bob": tiny_request(prompt="a blue circle icon", seed=500, count=3)}
    alone = {who: [np.asarray(im) for im in manager.generate(r).images] for who, r in requests.items()}
    data = make_dataset(tmp_path / "data", count=2)
    jobs = TrainingJobs(manager)
    jobs.start(TrainConfig(name="brand", base_model="tiny-sd15", data_dir=str(data), resolution=32, rank=4,
                           alpha=4, lr=1e-3, max_steps=STEPS, allow_small_dataset=True, validation_images=0,
                           gradient_checkpointing=False, checkpoint_every=0,
                           target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    while (jobs.status().step or 0) < 1:  # the job is training: its steps and the users' calls interleave
        time.sleep(0.02)
    start = threading.Barrier(2)
    steps_seen: list[int] = []

    def user(who: str) -> list[str]:
        start.wait()
        steps_seen.append(jobs.status().step)
        ids = []
        for _ in range(2):  # each user asks twice, as a designer pressing Generate again would
            result = manager.generate(requests[who])
            ids += [store.add(image, meta).id for image, meta in zip(result.images, result.metadata)]
        steps_seen.append(jobs.status().step)
        return ids

    with ThreadPoolExecutor(2) as pool:
        saved = dict(zip(requests, pool.map(user, requests)))
    state = jobs.wait(timeout=300)
    assert state.status == "done", state.error
    assert min(steps_seen) < max(steps_seen), "training must have advanced while the users generated"
    assert state.step == STEPS and "brand" in [info.name for info in manager.list_loras()]
    assert len(store) == 2 * (2 + 3)
    for who, ids in saved.items():
        request = requests[who]
        seeds = [request.seed + i for i in range(request.count)] * 2
        items = [store.get(i) for i in ids]
        assert [item.metadata["seed"] for item in items] == seeds
        assert {item.metadata["user_prompt"] for item in items} == {request.prompt}
        for item, expected in zip(items, alone[who] * 2):  # nothing leaked between users or from training
            with Image.open(item.path) as saved_image:
                np.testing.assert_array_equal(np.asarray(saved_image.convert("RGB")), expected)


def test_the_manager_lock_keeps_generations_in_sequence(manager: PipelineManager, monkeypatch: pytest.MonkeyPatch):
    """Generations never overlap on the accelerator: each denoising loop runs alone, start to end."""
    manager.load_model("tiny-sd15")
    pipe_class = type(manager.pipeline)
    real_call = pipe_class.__call__
    spans: list[tuple[float, float]] = []

    @functools.wraps(real_call)  # the manager passes only the arguments the pipeline's signature names
    def timed(self, *args, **kwargs):
        begin = time.perf_counter()
        try:
            return real_call(self, *args, **kwargs)
        finally:
            spans.append((begin, time.perf_counter()))

    monkeypatch.setattr(pipe_class, "__call__", timed)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda seed: manager.generate(tiny_request(seed=seed)), range(6)))
    assert [r.metadata[0]["seed"] for r in results] == list(range(6))
    spans.sort()
    assert len(spans) == 6 and all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_disk_full_while_saving_a_brand_kit_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = BrandKitStore(tmp_path / "brandkits")
    store.save(BrandKit("acme", ["#ffffff", "#0f766e"]))

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(StorageError, match="Could not save the brand kit .*the disk is full"):
        store.save(BrandKit("acme", ["#000000"]))
    monkeypatch.undo()
    assert store.get("acme").palette == ["#ffffff", "#0f766e"] and not list(store.root.glob(".*.tmp"))
