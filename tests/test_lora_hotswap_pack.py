"""The hotswapper's cache holds each LoRA as one flat buffer and hands out views of one copy of it per switch
(one host-to-device transfer instead of one per tensor); the factors must come back exactly."""

from __future__ import annotations

import threading

import torch

import brandgen.lora_hotswap as hot
from brandgen.lora_hotswap import CACHED_LORAS, LoraCache, PackedLora
from brandgen.loras import LoraFactors


def test_packed_lora_round_trips_every_factor_as_views_of_one_buffer():
    generator = torch.Generator().manual_seed(0)
    shapes = {"unet": {"a.to_q": ((4, 16), (32, 4)), "b.conv": ((2, 8, 1, 1), (8, 2, 1, 1))},
              "text_encoder": {"layers.0.q_proj": ((3, 12), (12, 3))}}
    lora = LoraFactors("brand", {c: {m: (torch.randn(*a, generator=generator), torch.randn(*b, generator=generator))
                                     for m, (a, b) in layers.items()} for c, layers in shapes.items()})
    packed = PackedLora.of(lora, torch.bfloat16, None)
    assert packed.flat is not None and packed.flat.numel() == sum(
        a.numel() + b.numel() for layers in lora.factors.values() for a, b in layers.values())
    got = packed.to(torch.device("cpu"))
    assert got.name == "brand" and got.rank == 4
    storages = set()
    for component, layers in lora.factors.items():
        assert got.factors[component].keys() == layers.keys()
        for module, (a, b) in layers.items():
            ga, gb = got.factors[component][module]
            assert ga.shape == a.shape and gb.shape == b.shape and ga.dtype == torch.bfloat16
            assert torch.equal(ga, a.to(torch.bfloat16)) and torch.equal(gb, b.to(torch.bfloat16))
            storages |= {ga.untyped_storage().data_ptr(), gb.untyped_storage().data_ptr()}
    assert len(storages) == 1  # one buffer, so a switch moves it with one copy


def test_an_empty_lora_packs_to_nothing():
    packed = PackedLora.of(LoraFactors("empty", {}), torch.float32, None)
    assert packed.flat is None and packed.to(torch.device("cpu")).factors == {}


def _recording_reader(monkeypatch) -> list[str]:
    """Replace the file read with one 4-float LoRA per name; returns the names read, in order."""
    reads: list[str] = []

    def read(pipe, path, name, *args):
        reads.append(name)
        return LoraFactors(name, {"unet": {"lin": (torch.ones(1, 2), torch.ones(2, 1))}})

    monkeypatch.setattr(hot, "read_lora_factors", read)
    return reads


def test_read_ahead_fills_free_places_only_and_never_evicts_a_lora_in_use(tmp_path, monkeypatch):
    reads = _recording_reader(monkeypatch)
    files = []
    for i in range(CACHED_LORAS + 2):
        files.append(tmp_path / f"l{i}.safetensors")
        files[-1].write_bytes(b"x" * (i + 1))
    cache = LoraCache(None, torch.nn.Linear(2, 2))
    cache.get(files[0], "l0")  # the LoRA in use
    assert cache.read_ahead([(f, f.stem) for f in files[1:]]) == CACHED_LORAS - 1
    assert reads == [f"l{i}" for i in range(CACHED_LORAS)]
    cache.get(files[1], "l1")  # read ahead: no second read
    cache.get(files[-1], files[-1].stem)  # a new one evicts the least recent read-ahead, not the one in use
    assert len(reads) == CACHED_LORAS + 1
    cache.get(files[0], "l0")
    cache.get(files[1], "l1")
    assert len(reads) == CACHED_LORAS + 1, "the LoRAs in use stayed cached"


def test_the_cache_keeps_to_its_memory_budget_without_dropping_the_lora_in_use(tmp_path, monkeypatch):
    """A library of large LoRAs (FLUX: ~0.5 GB each) is read ahead only up to the host-memory budget, and a switch
    to a new LoRA evicts the least recent ones until the cache fits again, never the LoRA just asked for."""
    reads: list[str] = []

    def read(pipe, path, name, *args):
        reads.append(name)
        width = int(name[1:]) + 1  # l0: 4 floats ... l3: 16 floats
        return LoraFactors(name, {"unet": {"lin": (torch.ones(1, 2 * width), torch.ones(2 * width, 1))}})

    monkeypatch.setattr(hot, "read_lora_factors", read)
    files = []
    for i in range(4):
        files.append(tmp_path / f"l{i}.safetensors")
        files[-1].write_bytes(b"x" * (i + 1))
    cache = LoraCache(None, torch.nn.Linear(2, 2), max_bytes=4 * (4 + 8))  # float32: l0 and l1 fit, not l2
    cache.get(files[0], "l0")
    assert cache.read_ahead([(f, f.stem) for f in files[1:]]) == 1 and cache.nbytes() == 48
    assert reads == ["l0", "l1"]  # the budget was full after l1: l2 was not even read
    cache.get(files[3], "l3")  # 64 bytes alone: bigger than the budget, still served and kept
    assert cache.nbytes() == 64 and cache.get(files[3], "l3").factors["unet"]["lin"][0].shape == (1, 8)
    assert reads == ["l0", "l1", "l3"]
    cache.get(files[0], "l0")  # back under budget: l3 makes way
    assert cache.nbytes() == 16 and reads[-1] == "l0"


def test_a_switch_does_not_wait_for_a_read_ahead_file_read(tmp_path, monkeypatch):
    """The read-ahead thread reads a slow file; a designer's switch to another LoRA meanwhile is served at once."""
    release, reading = threading.Event(), threading.Event()

    def read(pipe, path, name, *args):
        if name == "slow":
            reading.set()
            assert release.wait(30), "the test never released the slow read"
        return LoraFactors(name, {"unet": {"lin": (torch.ones(1, 2), torch.ones(2, 1))}})

    monkeypatch.setattr(hot, "read_lora_factors", read)
    slow, quick = tmp_path / "slow.safetensors", tmp_path / "quick.safetensors"
    slow.write_bytes(b"x")
    quick.write_bytes(b"xx")
    cache = LoraCache(None, torch.nn.Linear(2, 2))
    ahead = threading.Thread(target=cache.read_ahead, args=([(slow, "slow")],), daemon=True)
    ahead.start()
    assert reading.wait(30)
    served = threading.Event()
    switch = threading.Thread(target=lambda: (cache.get(quick, "quick"), served.set()), daemon=True)
    switch.start()
    try:
        assert served.wait(10), "the switch waited for the read-ahead's file read"
    finally:
        release.set()
        ahead.join(30)
        switch.join(30)
    assert cache.get(slow, "slow").name == "slow" and cache.get(quick, "quick").name == "quick"


def test_read_ahead_reads_nothing_once_the_budget_is_full(tmp_path, monkeypatch):
    reads = _recording_reader(monkeypatch)
    files = [tmp_path / f"l{i}.safetensors" for i in range(3)]
    for f in files:
        f.write_bytes(b"x")
    cache = LoraCache(None, torch.nn.Linear(2, 2), max_bytes=16)  # exactly one 4-float LoRA
    cache.get(files[0], "l0")
    assert cache.read_ahead([(f, f.stem) for f in files[1:]]) == 0
    assert reads == ["l0"]  # the full budget stopped it before any file was read
