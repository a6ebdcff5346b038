"""Text embeddings reused across calls (brandgen.prompt_cache) give the images an uncached call gives, without
running the text encoders again; tiny random-weight pipelines of the real classes, and the manager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

import tiny_pipelines
from brandgen.generation import GenerationRequest
from brandgen.manager import PipelineManager
from brandgen.paths import AppPaths
from brandgen.pipeline_call import call_kwargs
from brandgen.prompt_cache import PromptCache

BUILDERS = {"sd15": tiny_pipelines.build_sd15, "sdxl": tiny_pipelines.build_sdxl,
            "flux": tiny_pipelines.build_flux, "sd3": tiny_pipelines.build_sd3}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def pipe(request, tmp_path_factory: pytest.TempPathFactory):
    pipe = DiffusionPipeline.from_pretrained(BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / "p"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encoder_calls(pipe) -> tuple[list[int], list]:
    count = [0]
    encoders = [m for name, m in pipe.components.items() if name.startswith("text_encoder") and m is not None]
    handles = [m.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1)) for m in encoders]
    return count, handles


def image(pipe, cache: PromptCache | None, negative: str = "blurry", lora_state: object = ()) -> np.ndarray:
    kwargs = call_kwargs(pipe, "a red star icon", negative, 2, 4.0, 32, 32, [3, 4])
    kwargs["output_type"] = "np"
    with torch.inference_mode():
        return pipe(**(cache.apply(pipe, kwargs, lora_state) if cache else kwargs)).images


def test_cached_embeddings_give_the_same_images_without_the_text_encoders(pipe):
    reference = image(pipe, None)
    cache = PromptCache()
    count, handles = encoder_calls(pipe)
    try:
        first = image(pipe, cache)
        after_first = count[0]
        second = image(pipe, cache)
        after_second = count[0]
        image(pipe, cache, negative="noisy")  # another negative prompt: encoded again
        image(pipe, cache, lora_state=(("acme", 0.8),))  # another LoRA state: encoded again
    finally:
        for handle in handles:
            handle.remove()
    np.testing.assert_allclose(first, reference, atol=1e-6)
    np.testing.assert_allclose(second, reference, atol=1e-6)
    assert after_first > 0 and after_second == after_first  # the hit ran no text encoder
    uses_negative = type(pipe).__name__ != "FluxPipeline"  # FLUX.1 (no true CFG) ignores the negative prompt
    assert (cache.hits, cache.misses) == ((1, 3) if uses_negative else (2, 2))
    assert count[0] > after_second


def test_the_cache_is_bounded_and_leaves_unknown_pipelines_alone():
    cache = PromptCache(max_entries=2)

    class Other:
        def encode_prompt(self, **_):
            raise AssertionError("not called for a pipeline the cache does not know")

    kwargs = {"prompt": "x", "negative_prompt": "y", "guidance_scale": 5.0}
    assert cache.apply(Other(), kwargs, ()) is kwargs

    class StableDiffusionPipeline:  # the known class name, counting encodes
        _execution_device = "cpu"
        unet = None
        calls = 0

        def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance,
                          negative_prompt=None):
            type(self).calls += 1
            return torch.zeros(1), torch.ones(1)

    fake = StableDiffusionPipeline()
    for prompt in ("a", "b", "c", "a"):  # "a" was evicted by "c"
        out = cache.apply(fake, {**kwargs, "prompt": prompt}, ())
    assert fake.calls == 4 and set(out) == {"guidance_scale", "num_images_per_prompt",
                                                "prompt_embeds", "negative_prompt_embeds"}


def test_manager_reuses_the_embeddings_of_a_repeated_prompt(tmp_path: Path):
    manager = PipelineManager(paths=AppPaths(tmp_path))
    first = manager.generate(GenerationRequest(prompt="a blue shield icon", seed=5, preset="draft"))
    count, handles = encoder_calls(manager.pipeline)
    try:
        again = manager.generate(GenerationRequest(prompt="a blue shield icon", seed=5, preset="draft"))
    finally:
        for handle in handles:
            handle.remove()
    assert count[0] == 0
    np.testing.assert_array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))
