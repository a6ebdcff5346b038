"""The keyword arguments of the one diffusers pipeline call the app makes, shared by generation and the compile
warm-up so that the warm-up traces exactly the shapes a designer's click will run."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

import torch

ProgressFn = Callable[[int, int], None]


def call_kwargs(
    pipe: Any, prompt: str, negative: str, steps: int, guidance: float, width: int, height: int,
    seeds: list[int], progress: ProgressFn | None = None, cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Only the arguments this pipeline's __call__ accepts; per-image CPU generators so seeds reproduce anywhere;
    a step callback that reports progress and stops the loop once `cancel` is set."""
    accepted = inspect.signature(pipe.__call__).parameters

    def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        if progress is not None:
            progress(step + 1, steps)
        if cancel is not None and cancel.is_set():
            pipeline._interrupt = True
        return callback_kwargs

    kwargs: dict[str, Any] = {
        "prompt": prompt, "num_inference_steps": steps, "guidance_scale": guidance,
        "width": width, "height": height, "num_images_per_prompt": len(seeds),
        "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
        "callback_on_step_end": on_step_end, "output_type": "pil",
    }
    if negative and "negative_prompt" in accepted:
        kwargs["negative_prompt"] = negative
    return {key: value for key, value in kwargs.items() if key in accepted}
