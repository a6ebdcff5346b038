"""PipelineManager on tiny random-weight pipelines: load, swap, LoRAs, determinism, errors."""

from __future__ import annotations

import functools
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from brandgen.errors import Cancelled, InvalidInput, LoraError, ModelUnavailable, OutOfMemory
from brandgen.generation import GenerationRequest
from brandgen.manager import PipelineManager
from brandgen.registry import ModelRegistry
from conftest import CPU, make_sd15_lora


def _pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) for im in result.images])


def _req(**kw) -> GenerationRequest:
    base = dict(prompt="a red star icon", model_id="tiny-sd15", preset="draft", seed=7, steps=3)
    return GenerationRequest(**{**base, **kw})


def test_default_model_and_generation_metadata(manager: PipelineManager):
    steps_seen = []
    result = manager.generate(_req(count=2), progress=lambda i, n: steps_seen.append((i, n)))
    assert manager.current_model == "tiny-sd15"
    assert [im.size for im in result.images] == [(32, 32), (32, 32)]
    assert steps_seen == [(1, 3), (2, 3), (3, 3)]
    first, second = result.metadata
    assert (first["seed"], second["seed"]) == (7, 8)
    assert first["prompt"].startswith("bgicon, flat vector icon of a red star icon")
    assert "watermark" in first["negative_prompt"]
    assert first["model"] == "tiny-sd15" and first["preset"] == "draft" and first["steps"] == 3
    assert first["device"].startswith("CPU") and first["app_version"]


def test_same_seed_same_images_other_seed_differs(manager: PipelineManager):
    a = _pixels(manager.generate(_req()))
    b = _pixels(manager.generate(_req()))
    c = _pixels(manager.generate(_req(seed=8)))
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0
    # the second image of a count=2 batch is the same as asking for its seed alone
    batch = _pixels(manager.generate(_req(count=2)))
    assert np.abs(batch[1] - c[0]).max() <= 1.0


def test_preset_upscale_applies(manager: PipelineManager):
    result = manager.generate(_req(preset="high"))
    assert result.images[0].size == (64, 64)
    assert result.metadata[0]["upscale"] == 2 and result.metadata[0]["output_width"] == 64


def test_swap_to_transformer_family_frees_previous(manager: PipelineManager):
    manager.load_model("tiny-sd15")
    first_pipe = manager.pipeline
    result = manager.generate(_req(model_id="tiny-flux", steps=2))
    assert manager.current_model == "tiny-flux"
    assert type(manager.pipeline).__name__ == "FluxPipeline" and manager.pipeline is not first_pipe
    assert result.images[0].size == (32, 32)
    assert result.metadata[0]["commercial_use"] is False


def test_unknown_model_and_unavailable_hub_weights(manager: PipelineManager):
    with pytest.raises(ModelUnavailable, match="Unknown model"):
        manager.generate(_req(model_id="nope"))
    with pytest.raises(ModelUnavailable, match="huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0"):
        manager.load_model("sdxl-base")
    assert "Not downloaded yet" in manager.model_summary("sdxl-base")


@pytest.mark.parametrize("field,value,match", [
    ("prompt", "", "prompt is empty"), ("asset_type", "poster", "Unknown asset type"),
    ("count", 0, "Count"), ("count", 99, "Count"), ("steps", 1000, "Steps"), ("width", 33, "Width"),
    ("seed", -5, "Seed"), ("preset", "max", "Unknown quality preset"), ("guidance_scale", -1.0, "Guidance"),
])
def test_bad_requests_get_clear_errors(manager: PipelineManager, field, value, match):
    with pytest.raises(InvalidInput, match=match):
        manager.generate(_req(**{field: value}))


def test_lora_changes_output_fuses_and_unloads(manager: PipelineManager, tiny_dirs):
    make_sd15_lora(tiny_dirs["sd15"], manager.paths.loras / "acme.safetensors", seed=1)
    make_sd15_lora(tiny_dirs["sd15"], manager.paths.loras / "other" / "pytorch_lora_weights.safetensors", seed=2)
    assert [i.name for i in manager.list_loras()] == ["acme", "other"]
    plain = _pixels(manager.generate(_req()))

    unfused_mgr = PipelineManager(registry=manager.registry, paths=manager.paths, device=manager.device,
                                  fuse_single_lora=False)
    with_lora = _pixels(manager.generate(_req(loras=(("acme", 1.0),))))
    assert manager._loaded.fused
    unfused = _pixels(unfused_mgr.generate(_req(loras=(("acme", 1.0),))))
    assert np.abs(with_lora - plain).mean() > 1.0
    assert np.abs(with_lora - unfused).max() <= 2.0, "fusing must not change what the LoRA does"

    half = _pixels(manager.generate(_req(loras=(("acme", 0.5),))))
    both = _pixels(manager.generate(_req(loras=(("acme", 1.0), ("other", 0.7)))))
    assert not manager._loaded.fused
    assert np.abs(half - with_lora).mean() > 0.5 and np.abs(both - with_lora).mean() > 0.5
    back = _pixels(manager.generate(_req(loras=())))
    assert np.abs(back - plain).max() <= 2.0, "switching LoRAs off restores the base model"
    manager.unload_loras()
    assert np.abs(_pixels(manager.generate(_req())) - plain).max() <= 2.0
    manager.generate(_req(loras=(("acme", 1.0),)))
    assert manager._loaded.fused
    manager.unload_loras()  # a fused LoRA is unfused first, not left in the base weights
    assert np.abs(_pixels(manager.generate(_req())) - plain).max() <= 2.0


def test_a_failed_lora_switch_leaves_the_base_model_not_a_stale_state(manager: PipelineManager, tiny_dirs,
                                                                      monkeypatch):
    make_sd15_lora(tiny_dirs["sd15"], manager.paths.loras / "acme.safetensors", seed=1)
    make_sd15_lora(tiny_dirs["sd15"], manager.paths.loras / "other.safetensors", seed=2)
    plain = _pixels(manager.generate(_req()))
    with_acme = _pixels(manager.generate(_req(loras=(("acme", 1.0),))))
    assert manager._loaded.fused
    pipe = manager._loaded.pipe

    def broken(*args, **kwargs):
        raise RuntimeError("adapter switch failed")

    monkeypatch.setattr(pipe, "set_adapters", broken)
    with pytest.raises(RuntimeError, match="adapter switch failed"):
        manager.generate(_req(loras=(("acme", 1.0), ("other", 0.5))))
    assert manager._loaded.active == () and not manager._loaded.fused
    assert np.abs(_pixels(manager.generate(_req())) - plain).max() <= 2.0, "no LoRA left half-applied"
    monkeypatch.undo()
    again = _pixels(manager.generate(_req(loras=(("acme", 1.0),))))  # not skipped as 'already active'
    assert np.abs(again - with_acme).max() <= 2.0


def test_bad_lora_files_are_refused_and_model_keeps_working(manager: PipelineManager, tiny_dirs):
    loras = manager.paths.loras
    (loras / "evil.ckpt").write_bytes(b"\x80\x04pickle")
    good = make_sd15_lora(tiny_dirs["sd15"], loras / "good.safetensors")
    (loras / "cut.safetensors").write_bytes(good.read_bytes()[:200])
    (loras / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    names = [i.name for i in manager.list_loras()]
    assert names == ["good"]
    assert "pickle" in manager.lora_library.problems["evil.ckpt"]
    assert "truncated or corrupt" in manager.lora_library.problems["cut.safetensors"]
    for name, match in [("evil", "pickle"), ("cut", "corrupt"), ("missing", "No LoRA named"),
                        ("../etc/passwd", "Invalid LoRA name")]:
        with pytest.raises((LoraError, InvalidInput), match=match):
            manager.generate(_req(loras=((name, 1.0),)))
    assert manager.generate(_req()).images


def test_lora_for_another_family_is_refused(manager: PipelineManager, tiny_dirs):
    make_sd15_lora(tiny_dirs["sd15"], manager.paths.loras / "sdlora.safetensors")
    manager.load_model("tiny-flux")
    with pytest.raises(LoraError, match="sdlora"):
        manager.generate(_req(model_id="tiny-flux", steps=2, loras=(("sdlora", 1.0),)))
    assert manager.generate(_req(model_id="tiny-flux", steps=2)).images


def test_out_of_memory_is_caught_and_manager_recovers(manager: PipelineManager, monkeypatch):
    manager.load_model("tiny-sd15")
    pipe_cls = type(manager.pipeline)
    original = pipe_cls.__call__
    calls = {"n": 0}

    @functools.wraps(original)
    def oom_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipe_cls, "__call__", oom_once)
    with pytest.raises(OutOfMemory, match="Lower the count"):
        manager.generate(_req())
    assert manager.generate(_req()).images, "the next request works after an OOM"


def test_out_of_memory_while_loading_a_lora_says_memory_not_a_bad_file(manager: PipelineManager, tiny_dirs,
                                                                        monkeypatch):
    make_sd15_lora(tiny_dirs["sd15"], manager.paths.loras / "acme.safetensors")
    manager.load_model("tiny-sd15")
    pipe_cls = type(manager.pipeline)
    original = pipe_cls.load_lora_weights

    def no_room(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipe_cls, "load_lora_weights", no_room)
    with pytest.raises(OutOfMemory, match="load LoRA 'acme'.*model_offload"):
        manager.generate(_req(loras=(("acme", 1.0),)))
    monkeypatch.setattr(pipe_cls, "load_lora_weights", original)
    assert manager.generate(_req(loras=(("acme", 1.0),))).metadata[0]["loras"] == [{"name": "acme", "weight": 1.0}]


def test_cancel_stops_generation(manager: PipelineManager):
    def cancel_at_first_step(i: int, n: int) -> None:
        manager.cancel()

    with pytest.raises(Cancelled):
        manager.generate(_req(steps=10), progress=cancel_at_first_step)
    assert manager.generate(_req()).images, "a cancel does not stick to the next request"


def test_a_session_cancels_only_its_own_generation(manager: PipelineManager):
    asked: list[bool] = []

    def others_cancel(i: int, n: int) -> None:
        asked.append(manager.cancel(owner="session-b"))

    result = manager.generate(_req(steps=4), progress=others_cancel, owner="session-a")
    assert result.images and asked and not any(asked), "another session's Cancel must not stop this one"

    def own_cancel(i: int, n: int) -> None:
        asked.append(manager.cancel(owner="session-a"))

    with pytest.raises(Cancelled):
        manager.generate(_req(steps=10), progress=own_cancel, owner="session-a")
    assert asked[-1] is True
    assert not manager.cancel(owner="session-a"), "nothing runs now: there is nothing of theirs to stop"


def test_concurrent_requests_are_serialised(manager: PipelineManager):
    results, errors = [], []

    def worker(seed: int) -> None:
        try:
            results.append((seed, _pixels(manager.generate(_req(seed=seed)))))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(results) == 3
    ones = [px for seed, px in results if seed == 1]
    assert np.array_equal(ones[0], ones[1])


def test_memory_mode_validation(manager: PipelineManager):
    with pytest.raises(InvalidInput, match="Memory mode"):
        manager.set_memory_mode("turbo")
    manager.load_model("tiny-sd15")
    manager.set_memory_mode("model_offload", vae_tiling=True)
    assert manager.current_model is None, "changing memory mode reloads the model"
    assert manager.generate(_req()).images
    assert manager.pipeline.vae.use_tiling


def test_a_cpu_load_primes_the_model_once_and_keeps_nothing(registry, app_paths, monkeypatch):
    """Loading on the CPU runs one real 1-step image at the model's size and guidance (so the first click costs
    what the next do); it writes nothing to the gallery, and prime_on_load=False skips it."""
    from conftest import CPU

    import brandgen.manager as manager_module
    from brandgen.warmup import prime

    calls = []

    def counting(pipe, width, height, guidance):
        calls.append((width, height, guidance))
        return prime(pipe, width, height, guidance)

    monkeypatch.setattr(manager_module, "prime", counting)
    manager = PipelineManager(registry=registry, paths=app_paths, device=CPU)
    entry = manager.load_model()
    assert calls == [(*entry.native_resolution, entry.default_guidance)]
    assert manager.load_model() and len(calls) == 1  # the same model again: no reload, no second prime
    assert not any(app_paths.home.rglob("*.png"))  # the priming image is not kept anywhere
    assert manager.generate(GenerationRequest(prompt="a red star", seed=1)).images
    PipelineManager(registry=registry, paths=app_paths, device=CPU, prime_on_load=False).load_model()
    assert len(calls) == 1


def test_a_models_prompt_hints_come_back_as_notes_for_the_prompt_typed(registry, app_paths):
    """The hint is matched on what the designer typed (not the template's words) and said next to the images."""
    hinted = replace(registry.get("tiny-sd15"), prompt_hints=[{"pattern": r"\bfor an? \w+", "message": "Place!"}])
    manager = PipelineManager(registry=ModelRegistry({hinted.id: hinted}), paths=app_paths, device=CPU)
    assert manager.generate(_req(prompt="a bell icon for a tablet kiosk")).notes == ["Place!"]
    assert manager.generate(_req(prompt="a bell icon")).notes == []  # the template's own words match nothing


def test_a_prompt_longer_than_the_text_encoder_reads_says_what_was_ignored(manager: PipelineManager):
    long = manager.generate(_req(prompt="a red star " + "next to a blue circle " * 12))
    assert len(long.notes) == 1 and "ignored" in long.notes[0] and "plain background" in long.notes[0]
    assert manager.generate(_req(prompt="a red star next to a blue circle")).notes == []
