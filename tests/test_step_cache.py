"""The Fast preset's step cache (brandgen.step_cache) on tiny random-weight UNets and DiTs of the real diffusers
classes, and on the embedded model's trained weights through the manager."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tiny_pipelines
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from brandgen.acceleration import compile_full, compile_regions, find_denoiser
from brandgen.generation import GenerationRequest
from brandgen.manager import PipelineManager
from brandgen.paths import AppPaths
from brandgen.registry import ModelRegistry
from brandgen.step_cache import TAPS, StepCacheUnsupported, for_preset, step_cache, tap_whole_unet
from brandgen.warmup import warm_up

BUILDERS = {"sd15": tiny_pipelines.build_sd15, "sdxl": tiny_pipelines.build_sdxl,
            "flux": tiny_pipelines.build_flux, "sd3": tiny_pipelines.build_sd3}


def deep_modules(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """Blocks a cached step must not run."""
    name = type(denoiser).__name__
    if name == "UNet2DConditionModel":
        return [denoiser.mid_block, denoiser.up_blocks[0], denoiser.down_blocks[-1]]
    if name == "FluxTransformer2DModel":
        return [denoiser.single_transformer_blocks[0]]
    return list(denoiser.transformer_blocks[1:])


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def pipe(request, tmp_path_factory: pytest.TempPathFactory):
    folder = BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / "pipe")
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, steps: int = 5, seed: int = 0) -> np.ndarray:
    with torch.inference_mode():
        return pipe(prompt="a red star icon", num_inference_steps=steps, guidance_scale=4.0, width=32, height=32,
                    generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def denoiser_inputs(pipe) -> tuple[tuple, dict]:
    """The arguments of the denoiser's first call in a real pipeline run."""
    seen: list[tuple[tuple, dict]] = []
    denoiser = find_denoiser(pipe)[1]
    handle = denoiser.register_forward_pre_hook(lambda m, a, k: seen.append((a, dict(k))) if not seen else None,
                                                with_kwargs=True)
    try:
        run(pipe, steps=1)
    finally:
        handle.remove()
    return seen[0]


def first_tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out.sample


def calls_to(modules: list[torch.nn.Module]) -> tuple[list[int], list]:
    count = [0]
    handles = [m.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1)) for m in modules]
    return count, handles


def test_a_cached_step_skips_the_deep_blocks_and_reproduces_a_full_step_on_the_same_input(pipe):
    denoiser = find_denoiser(pipe)[1]
    args, kwargs = denoiser_inputs(pipe)
    if args:  # UNet pipelines pass the latents positionally
        moved_args, moved = (args[0] + 0.5 * torch.randn_like(args[0]), *args[1:]), kwargs
    else:
        moved_args, moved = args, {**kwargs, "hidden_states": kwargs["hidden_states"] + 0.5 * torch.randn_like(
            kwargs["hidden_states"])}
    count, handles = calls_to(deep_modules(denoiser))
    try:
        with torch.inference_mode(), step_cache(denoiser, interval=10) as stats:
            full = first_tensor(denoiser(*args, **kwargs))
            deep_after_full = count[0]
            cached = first_tensor(denoiser(*args, **kwargs))
            cached_moved = first_tensor(denoiser(*moved_args, **moved))
        with torch.inference_mode():
            exact_moved = first_tensor(denoiser(*moved_args, **moved))
    finally:
        for handle in handles:
            handle.remove()
    assert deep_after_full > 0 and count[0] == deep_after_full + len(deep_modules(denoiser))  # the uncached call
    assert stats.to_dict() == {"interval": 10, "full_steps": 1, "cached_steps": 2}
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
    # the shallow part is recomputed: a new input changes the output, towards the exact one
    assert not torch.allclose(cached_moved, cached, atol=1e-4)
    assert (cached_moved - exact_moved).abs().mean() < (cached - exact_moved).abs().mean()


def conditional_half(value):
    """The trailing (prompt) rows of a CFG batch, as the pipeline keeps them once guidance stops."""
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == 2:
        return value[1:]
    if isinstance(value, dict):
        return {k: conditional_half(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("pipe", ["sd15", "sdxl"], indirect=True)
def test_a_cached_step_after_guidance_stops_runs_the_conditional_half_of_the_cache(pipe):
    """A model with guidance_until < 1 (the embedded one) halves the batch mid-call: a cached step at batch 1
    must give what the same cached step gives the prompt's row at batch 2 (the Fast preset keeps the cut)."""
    denoiser = find_denoiser(pipe)[1]
    args, kwargs = denoiser_inputs(pipe)
    assert args[0].shape[0] == 2  # CFG: [negative, prompt]
    moved = (args[0] + 0.3 * torch.randn_like(args[0]), *args[1:])
    half_args = tuple(conditional_half(a) for a in moved)
    half_kwargs = {k: conditional_half(v) for k, v in kwargs.items()}
    with torch.inference_mode(), step_cache(denoiser, interval=10) as stats:
        denoiser(*args, **kwargs)  # the full step fills the cache at batch 2
        both = first_tensor(denoiser(*moved, **kwargs))
        alone = first_tensor(denoiser(*half_args, **half_kwargs))
    assert stats.to_dict() == {"interval": 10, "full_steps": 1, "cached_steps": 2}
    assert alone.shape[0] == 1
    torch.testing.assert_close(alone, both[1:], rtol=1e-4, atol=1e-5)


def test_the_schedule_and_a_clean_model_afterwards(pipe):
    denoiser = find_denoiser(pipe)[1]
    before_keys = list(denoiser.state_dict())
    lists = {name: module for name, module in denoiser.named_children() if isinstance(module, torch.nn.ModuleList)}
    reference = run(pipe)
    with step_cache(denoiser, interval=2) as stats:
        cached = run(pipe)
    assert stats.to_dict() == {"interval": 2, "full_steps": 3, "cached_steps": 2}  # steps 0, 2, 4 in full
    assert np.isfinite(cached).all() and not np.array_equal(cached, reference)
    assert list(denoiser.state_dict()) == before_keys
    assert all(getattr(denoiser, name) is module and type(module) is torch.nn.ModuleList
               for name, module in lists.items())
    assert getattr(denoiser, "mid_block", 1) is not None
    np.testing.assert_array_equal(run(pipe), reference)  # nothing left behind


def test_regionally_compiled_blocks_do_not_recompile_for_cached_steps(pipe):
    denoiser = find_denoiser(pipe)[1]
    eager = None
    with step_cache(denoiser, interval=2):
        eager = run(pipe, steps=4)
    torch._dynamo.reset()
    compile_regions(denoiser, backend="eager")
    try:
        run(pipe, steps=2)  # the warm-up the app runs at load: Standard steps only
        with torch._dynamo.config.patch(error_on_recompile=True), step_cache(denoiser, interval=2):
            compiled = run(pipe, steps=4)
    finally:
        for module in denoiser.modules():
            module._compiled_call_impl = None
        torch._dynamo.reset()
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


@pytest.mark.parametrize("pipe", ["sd15", "sdxl"], indirect=True)
def test_a_unet_compiled_whole_caches_steps_like_the_eager_unet_without_recompiling(pipe):
    """Performance mode compiles a UNet whole: the taps traced into its graph let the Fast preset cache steps with
    the same result as the eager step cache, after a warm-up of Standard calls only; Standard is unchanged."""
    denoiser = find_denoiser(pipe)[1]
    standard = run(pipe, steps=4)
    with step_cache(denoiser, interval=2) as eager_stats:
        eager = run(pipe, steps=4)
    torch._dynamo.reset()
    assert tap_whole_unet(denoiser) and not tap_whole_unet(denoiser)  # once
    compile_full(denoiser, backend="eager")
    notes: list[str] = []
    try:
        warm_up(pipe, 32, 32, 4.0)  # the load-time warm-up: Standard steps only
        assert all(v is None for v in denoiser.__dict__[TAPS].values())  # it leaves no activations behind
        with torch._dynamo.config.patch(error_on_recompile=True):
            with for_preset(pipe, 2, notes) as stats:
                compiled = run(pipe, steps=4)
            assert not any(v is not None for v in denoiser.__dict__[TAPS].values())  # no activations kept
            again = run(pipe, steps=4)
    finally:
        denoiser._compiled_call_impl = None
        torch._dynamo.reset()
        for block in [*denoiser.down_blocks, *denoiser.up_blocks]:
            block._forward_hooks.clear()
        del denoiser.__dict__[TAPS]
    assert notes == [] and stats.to_dict() == eager_stats.to_dict() == {"interval": 2, "full_steps": 2,
                                                                       "cached_steps": 2}
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    np.testing.assert_allclose(again, standard, atol=1e-5)
    assert not np.allclose(compiled, standard, atol=1e-3)


def test_what_cannot_be_cached_says_why():
    class Other(torch.nn.Module):
        pass

    class Pipe:
        transformer = Other()

    notes: list[str] = []
    with for_preset(Pipe(), 2, notes) as stats:
        assert stats is None
    assert notes and "Other has no step cache yet" in notes[0]
    with pytest.raises(StepCacheUnsupported, match="every step"):
        unet = UNet2DConditionModel(block_out_channels=(32, 64), down_block_types=("DownBlock2D",) * 2,
                                    up_block_types=("UpBlock2D",) * 2, norm_num_groups=8, cross_attention_dim=32)
        with step_cache(unet, 1):
            pass
    with for_preset(Pipe(), 1, notes) as stats:  # Standard: no caching, no note
        assert stats is None and len(notes) == 1


def psnr(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255.0**2 / max(((a - b) ** 2).mean(), 1e-12)))


def test_fast_preset_on_the_embedded_model_halves_the_full_steps_and_stays_close(tmp_path: Path):
    manager = PipelineManager(paths=AppPaths(tmp_path))
    request = GenerationRequest(prompt="a red heart icon", seed=7)
    standard = manager.generate(request)
    fast = manager.generate(GenerationRequest(prompt="a red heart icon", seed=7, preset="fast"))
    assert standard.metadata[0]["step_cache"] is None
    assert fast.metadata[0]["step_cache"] == {"interval": 2, "full_steps": 14, "cached_steps": 14}
    assert fast.metadata[0]["steps"] == standard.metadata[0]["steps"] == 28 and not fast.notes
    assert fast.metadata[0]["guidance_until"] == standard.metadata[0]["guidance_until"] < 1  # the model's cut
    assert 25.0 < psnr(fast.images[0], standard.images[0]) < 80.0  # near the Standard image, yet not it


def test_fast_preset_batches_keep_each_image_after_the_guidance_cut(tmp_path: Path):
    """Several images at once, and a cut (40% of 28 steps: after step 11) that lands before a cached step, so it
    runs at half the batch of the full step that filled the cache: each image must take its own prompt rows of
    the cache, in order, and equal the image made alone with its seed."""
    registry = ModelRegistry.from_file()
    entry = dataclasses.replace(registry.get(registry.default_id), guidance_until=0.4)
    manager = PipelineManager(registry=registry.with_entry(entry), paths=AppPaths(tmp_path))
    both = manager.generate(GenerationRequest(prompt="a blue bell icon", seed=11, count=2, preset="fast"))
    alone = [manager.generate(GenerationRequest(prompt="a blue bell icon", seed=s, preset="fast")).images[0]
             for s in (both.metadata[0]["seed"], both.metadata[1]["seed"])]
    assert both.metadata[0]["guidance_until"] == 0.4 and both.metadata[0]["seed"] != both.metadata[1]["seed"]
    for batched, single in zip(both.images, alone):
        assert psnr(batched, single) > 40.0  # the same image, up to batched-matmul rounding
    assert psnr(both.images[0], both.images[1]) < 30.0  # and the two are different images
