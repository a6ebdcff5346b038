"""The keyword arguments of the one diffusers pipeline call the app makes, shared by generation and the compile
warm-up so that the warm-up traces exactly the shapes a designer's click will run."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

ProgressFn = Callable[[int, int], None]
GUIDANCE_TENSORS = ("latents", "prompt_embeds")  # what stop_guidance_after reads and changes at a step's end


def guided_steps(steps: int, guidance_until: float) -> int:
    """How many of `steps` run classifier-free guidance when it stops after `guidance_until` of them (>= 1)."""
    return max(1, min(steps, round(steps * guidance_until)))


def supports_guidance_interval(pipe: Any) -> bool:
    """Guidance can stop mid-loop only where the conditional half of prompt_embeds is all the UNet needs: the
    SD1.5-style pipelines (SDXL's pooled embeds and time ids would have to be cut too, and a compiled denoiser
    would see its batch halve)."""
    return "prompt_embeds" in getattr(pipe, "_callback_tensor_inputs", ()) and not hasattr(pipe, "text_encoder_2")


def stop_guidance_after(cut: int | None, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
    """Step-end hook: after step `cut`, drop the unconditional half of the batch and guidance with it."""
    if cut is not None and step + 1 == cut and pipeline.do_classifier_free_guidance:
        pipeline._guidance_scale = 0.0  # do_classifier_free_guidance is False from the next step on
        callback_kwargs["prompt_embeds"] = callback_kwargs["prompt_embeds"].chunk(2)[-1]
    return callback_kwargs


def guidance_cut(pipe: Any, steps: int, guidance_until: float) -> int | None:
    """The step after which guidance stops, or None when every step is guided (or the pipeline cannot stop it)."""
    return guided_steps(steps, guidance_until) if guidance_until < 1 and supports_guidance_interval(pipe) else None


def guidance_interval_kwargs(pipe: Any, steps: int, guidance_until: float) -> dict[str, Any]:
    """The step callback that stops guidance after `guidance_until` of the steps, for a direct pipeline call (the
    held-out eval, the LoRA demo); {} when every step is guided. The app's call gets it from call_kwargs."""
    cut = guidance_cut(pipe, steps, guidance_until)
    if cut is None:
        return {}
    return {"callback_on_step_end": partial(stop_guidance_after, cut),
            "callback_on_step_end_tensor_inputs": list(GUIDANCE_TENSORS)}


def call_kwargs(
    pipe: Any, prompt: str, negative: str, steps: int, guidance: float, width: int, height: int,
    seeds: list[int], progress: ProgressFn | None = None, cancel: threading.Event | None = None,
    guidance_until: float = 1.0,
) -> dict[str, Any]:
    """Only the arguments this pipeline's __call__ accepts; per-image CPU generators so seeds reproduce anywhere;
    a step callback that reports progress and stops the loop once `cancel` is set.

    guidance_until < 1 (a model's registry setting): classifier-free guidance runs for that share of the steps
    only; later steps denoise the prompt alone, at half the UNet batch. The layout is decided in the first
    steps, so a CPU model spends its guided (double) passes where they matter (measured per model in
    docs/PERFORMANCE.md before a model turns it on)."""
    accepted = inspect.signature(pipe.__call__).parameters
    cut = guidance_cut(pipe, steps, guidance_until)

    def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        if progress is not None:
            progress(step + 1, steps)
        if cancel is not None and cancel.is_set():
            pipeline._interrupt = True
        return stop_guidance_after(cut, pipeline, step, timestep, callback_kwargs)

    kwargs: dict[str, Any] = {
        "prompt": prompt, "num_inference_steps": steps, "guidance_scale": guidance,
        "width": width, "height": height, "num_images_per_prompt": len(seeds),
        "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
        "callback_on_step_end": on_step_end, "output_type": "pil",
    }
    if cut is not None:
        kwargs["callback_on_step_end_tensor_inputs"] = list(GUIDANCE_TENSORS)
    if negative and "negative_prompt" in accepted:
        kwargs["negative_prompt"] = negative
    return {key: value for key, value in kwargs.items() if key in accepted}
