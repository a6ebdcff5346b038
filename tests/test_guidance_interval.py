"""Classifier-free guidance for a share of the steps only (pipeline_call.guidance_until, a registry setting):
the guided steps are exactly those of a fully guided call, the rest run the prompt alone at half the batch, and
pipelines or presets it cannot serve keep guidance on every step."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

import tiny_pipelines
from brandgen.generation import GenerationRequest
from brandgen.manager import PipelineManager
from brandgen.paths import AppPaths
from brandgen.pipeline_call import call_kwargs, guidance_interval_kwargs, guided_steps, supports_guidance_interval
from brandgen.registry import ModelRegistry, _validate
from conftest import make_sd15_lora


def _load(builder, tmp_path_factory) -> DiffusionPipeline:
    pipe = DiffusionPipeline.from_pretrained(builder(tmp_path_factory.mktemp("p") / "p"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return _load(tiny_pipelines.build_sd15, tmp_path_factory)


@contextlib.contextmanager
def unet_batches(unet: torch.nn.Module) -> Iterator[list[int]]:
    """The batch size of every UNet call inside the block (2 per image while guided, 1 after)."""
    batches: list[int] = []
    hook = unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        yield batches
    finally:
        hook.remove()


def run(pipe, guidance_until: float | None, steps: int = 6) -> tuple[list[int], list[torch.Tensor], np.ndarray]:
    """UNet batch sizes per step, latents after every step, images."""
    latents = []
    extra = {} if guidance_until is None else {"guidance_until": guidance_until}
    kwargs = call_kwargs(pipe, "a red star icon", "blurry", steps, 5.0, 32, 32, [3, 4], **extra)
    inner = kwargs["callback_on_step_end"]

    def spy(pipeline, step, timestep, callback_kwargs):
        out = inner(pipeline, step, timestep, callback_kwargs)
        latents.append(callback_kwargs["latents"].clone())
        return out

    kwargs.update(callback_on_step_end=spy, output_type="np")
    with unet_batches(pipe.unet) as batches, torch.inference_mode():
        images = pipe(**kwargs).images
    return batches, latents, images


def test_guidance_stops_after_its_share_and_the_guided_steps_match_a_fully_guided_call(sd15):
    full_batches, full_latents, full_images = run(sd15, 1.0)
    batches, latents, images = run(sd15, 0.5)
    assert full_batches == [4] * 6  # 2 images x (negative, prompt)
    assert batches == [4, 4, 4, 2, 2, 2]
    for a, b in zip(full_latents[:3], latents[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (full_latents[-1] - latents[-1]).abs().max() > 1e-3  # the unguided steps denoise differently
    assert not np.array_equal(full_images, images)
    again = run(sd15, 0.5)[2]
    np.testing.assert_array_equal(again, images)


def test_a_direct_pipeline_call_stops_guidance_as_the_app_does(sd15):
    """The eval and the LoRA demo call the pipeline themselves, with guidance_interval_kwargs."""
    assert guidance_interval_kwargs(sd15, 6, 1.0) == {}
    with unet_batches(sd15.unet) as batches, torch.inference_mode():
        images = sd15("a red star icon", negative_prompt="blurry", num_inference_steps=6, guidance_scale=5.0,
                      height=32, width=32, num_images_per_prompt=2, output_type="np",
                      generator=[torch.Generator("cpu").manual_seed(s) for s in (3, 4)],
                      **guidance_interval_kwargs(sd15, 6, 0.5)).images
    assert batches == [4, 4, 4, 2, 2, 2]
    np.testing.assert_allclose(images, run(sd15, 0.5)[2], atol=1e-6)


def test_full_share_or_none_is_the_plain_call(sd15):
    default = run(sd15, None)
    full = run(sd15, 1.0)
    assert default[0] == full[0] == [4] * 6
    np.testing.assert_array_equal(default[2], full[2])


def test_guided_steps_rounds_and_keeps_at_least_one():
    assert guided_steps(15, 0.5) == 8
    assert guided_steps(28, 0.5) == 14
    assert guided_steps(4, 0.01) == 1
    assert guided_steps(10, 1.0) == 10


def test_pipelines_with_pooled_embeddings_keep_guidance_on_every_step(tmp_path_factory):
    sdxl = _load(tiny_pipelines.build_sdxl, tmp_path_factory)
    assert not supports_guidance_interval(sdxl)
    assert guidance_interval_kwargs(sdxl, 4, 0.5) == {}
    kwargs = call_kwargs(sdxl, "a red star icon", "blurry", 4, 5.0, 32, 32, [1], guidance_until=0.5)
    assert "callback_on_step_end_tensor_inputs" not in kwargs
    with unet_batches(sdxl.unet) as batches, torch.inference_mode():
        sdxl(**kwargs)
    assert batches == [2] * 4


def _required_fields() -> dict:
    """The shipped default model's required models.json fields: a valid entry to vary one setting of."""
    tiny = ModelRegistry.from_file().get("brandgen-tiny")
    base = {k: getattr(tiny, k) for k in ("label", "family", "source_type", "source", "pipeline_class",
                                          "default_steps", "default_guidance", "distilled", "vram_gb", "license",
                                          "commercial_use")}
    return {**base, "native_resolution": list(tiny.native_resolution)}


def test_registry_validates_the_share():
    base = _required_fields()
    assert _validate("m", {**base, "guidance_until": 0.4}).guidance_until == 0.4
    assert _validate("m", base).guidance_until == 1.0
    for bad in (0, -0.5, 1.5, "half", True):
        with pytest.raises(ValueError, match="guidance_until must be a number"):
            _validate("m", {**base, "guidance_until": bad})
    with pytest.raises(ValueError, match="only supported for the sd15 family"):
        _validate("m", {**base, "family": "sdxl", "guidance_until": 0.5})
    assert "first 40% of the steps" in _validate("m", {**base, "guidance_until": 0.4}).summary()
    entry = _validate("m", {**base, "guidance_until": 0.4})
    assert entry.guided_share(with_lora=False) == 0.4 and entry.guided_share(with_lora=True) == 1.0


def test_registry_validates_the_guidance_with_a_lora():
    base = _required_fields()
    plain = _validate("m", base)
    assert plain.lora_guidance is None and plain.default_guidance_for(True) == plain.default_guidance
    gentle = _validate("m", {**base, "lora_guidance": 2})
    assert (gentle.default_guidance_for(False), gentle.default_guidance_for(True)) == (base["default_guidance"], 2)
    assert "guidance defaults to 2 instead of" in gentle.summary() and "instead of" not in plain.summary()
    for bad in (0.5, 0, 31, "low", True):
        with pytest.raises(ValueError, match="lora_guidance must be a number in"):
            _validate("m", {**base, "lora_guidance": bad})


def test_a_lora_runs_at_the_models_lora_guidance_unless_the_designer_sets_one(registry, app_paths, tiny_dirs):
    entry = dataclasses.replace(registry.get("tiny-sd15"), lora_guidance=2.0)
    manager = PipelineManager(registry=registry.with_entry(entry), paths=app_paths)
    make_sd15_lora(tiny_dirs["sd15"], app_paths.loras / "palette.safetensors", seed=3)
    seen = {}
    for loras, guidance in (((), None), ((("palette", 0.8),), None), ((("palette", 0.8),), 4.0),
                            ((("palette", 0.0),), None)):
        seen[loras, guidance] = manager.generate(GenerationRequest(
            prompt="a bell icon", model_id=entry.id, seed=1, preset="draft", loras=loras, guidance_scale=guidance))
    scale = {key: result.metadata[0]["guidance_scale"] for key, result in seen.items()}
    assert scale[(), None] == scale[(("palette", 0.0),), None] == entry.default_guidance
    assert scale[(("palette", 0.8),), None] == 2.0 and scale[(("palette", 0.8),), 4.0] == 4.0
    assert any("Guidance 2 with a LoRA" in n for n in seen[(("palette", 0.8),), None].notes)
    assert not any("with a LoRA" in n for n in seen[(("palette", 0.8),), 4.0].notes)
    # the pipeline ran at it: the same LoRA and seed at 2.0 and at 4.0 give different images
    low, high = (np.asarray(seen[(("palette", 0.8),), g].images[0], dtype=int) for g in (None, 4.0))
    assert np.abs(low - high).max() > 0


def test_manager_uses_the_models_share_under_draft_and_the_step_cached_fast_preset(tmp_path: Path):
    manager = PipelineManager(paths=AppPaths(tmp_path))
    entry = manager.registry.get(manager.registry.default_id)
    assert entry.guidance_until < 1  # the embedded model turns it on (docs/PERFORMANCE.md)
    manager.load_model(entry.id)
    with unet_batches(manager.pipeline.unet) as draft:
        first = manager.generate(GenerationRequest(prompt="a bell icon", seed=1, preset="draft"))
    with unet_batches(manager.pipeline.unet) as fast:
        second = manager.generate(GenerationRequest(prompt="a bell icon", seed=1, preset="fast"))
    cut = guided_steps(15, entry.guidance_until)
    assert draft == [2] * cut + [1] * (15 - cut)
    cut = guided_steps(28, entry.guidance_until)  # cached steps follow the batch down to its prompt half
    assert fast == [2] * cut + [1] * (28 - cut)
    assert second.metadata[0]["step_cache"] == {"interval": 2, "full_steps": 14, "cached_steps": 14}
    assert first.metadata[0]["guidance_until"] == second.metadata[0]["guidance_until"] == entry.guidance_until


def test_a_brand_lora_keeps_guidance_on_every_step(registry, app_paths, tiny_dirs):
    entry = dataclasses.replace(registry.get("tiny-sd15"), guidance_until=0.5)
    manager = PipelineManager(registry=registry.with_entry(entry), paths=app_paths)
    make_sd15_lora(tiny_dirs["sd15"], app_paths.loras / "palette.safetensors", seed=3)
    manager.load_model(entry.id)
    seen = {}
    for loras in ((), (("palette", 0.8),), (("palette", 0.0),)):
        with unet_batches(manager.pipeline.unet) as seen[loras]:
            manager.generate(GenerationRequest(prompt="a bell icon", model_id=entry.id, seed=1, preset="draft",
                                               loras=loras))
    cut = guided_steps(15, 0.5)
    assert seen[()] == [2] * cut + [1] * (15 - cut)
    assert seen[(("palette", 0.8),)] == [2] * 15
    assert seen[(("palette", 0.0),)] == seen[()]  # a LoRA at weight 0 is off


def test_train_tab_samples_use_the_guidance_a_lora_will_generate_at(registry, monkeypatch):
    """The samples a training run shows are the LoRA as Generate will run it: at the model's lora_guidance."""
    from types import SimpleNamespace

    from brandgen.training import trainer as trainer_module

    seen = []
    monkeypatch.setattr(trainer_module, "render_images", lambda *a, **kw: seen.append(kw["guidance"]) or [])
    config = SimpleNamespace(seed=1, validation_images=1, validation_steps=2, resolution=32)
    run = trainer_module.LoraTrainer.__new__(trainer_module.LoraTrainer)
    run.config, run.family, run.pipe, run.val_cond, run.val_uncond, run.dtype = config, None, None, {}, {}, None
    run.accelerator = SimpleNamespace(device="cpu", autocast=None)
    plain = registry.get("tiny-sd15")
    for entry in (plain, dataclasses.replace(plain, lora_guidance=2.5)):
        run.entry = entry
        run.render()
    assert seen == [plain.default_guidance, 2.5]
