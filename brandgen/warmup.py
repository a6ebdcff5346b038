"""Compile warm-up at model load: the pipeline calls that make dynamo compile every graph a designer's clicks
need, so no click after the load pays for compilation.

Regional compilation shares one graph per block shape. Dynamo compiles the first batch size it sees static; the
second makes it mark the batch dimension dynamic (automatic dynamic shapes), and that graph then serves every
larger batch. So the warm-up runs 1 and 2 images at the model's size and default guidance (a CFG pipeline runs
batch 2 and 4), plus 1 image without CFG for pipelines where guidance <= 1 halves the batch. Sizes other than
the model's native one compile once on first use (the presets only change steps and upscaling).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from brandgen.acceleration import find_denoiser
from brandgen.pipeline_call import call_kwargs
from brandgen.step_cache import release_taps

WARMUP_STEPS = 2  # the scheduler's first step can differ from the rest; two cover both
WARMUP_PROMPT = "warm-up"
RECOMPILE_LIMIT = 64  # graphs per code object: block shapes x (static, dynamic) batch, with room to spare


def warmup_calls(pipe: Any, guidance: float) -> list[tuple[int, float]]:
    """(images, guidance) per warm-up call."""
    calls = [(1, guidance), (2, guidance)]
    if guidance > 1.0 and hasattr(type(pipe), "do_classifier_free_guidance"):
        calls.append((1, 1.0))
    return calls


def allow_recompiles() -> None:
    """Dynamo's default of 8 graphs per code object is below what SDXL's block shapes x batch variants need;
    past it, dynamo silently runs the block eagerly."""
    import torch._dynamo

    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key) and getattr(torch._dynamo.config, key) < RECOMPILE_LIMIT:
            setattr(torch._dynamo.config, key, RECOMPILE_LIMIT)


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def warm_up(pipe: Any, width: int, height: int, guidance: float,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the warm-up calls; returns what they cost and how many graphs dynamo compiled."""
    allow_recompiles()
    calls = warmup_calls(pipe, guidance)
    graphs, start = compiled_graphs(), time.perf_counter()
    for done, (count, scale) in enumerate(calls):
        if progress is not None:
            progress(done, len(calls))
        _call(pipe, WARMUP_STEPS, scale, width, height, count)
    if progress is not None:
        progress(len(calls), len(calls))
    release_taps(find_denoiser(pipe)[1])
    return {"calls": [{"images": count, "guidance": scale} for count, scale in calls],
            "seconds": round(time.perf_counter() - start, 2), "graphs_compiled": compiled_graphs() - graphs,
            "size": [width, height]}


def prime(pipe: Any, width: int, height: int, guidance: float) -> float:
    """One 1-step image at load on the CPU, so the designer's first click does not pay first-call costs (oneDNN
    kernel choice, allocator growth, lazy imports): brandgen-tiny's first Draft image on the 2-core CPU took
    0.80-0.81 s primed, 0.95-1.03 s not (`scripts/bench_first_image.py [--no-prime]`, docs/PERFORMANCE.md)."""
    start = time.perf_counter()
    _call(pipe, 1, guidance, width, height, 1)
    return time.perf_counter() - start


def _call(pipe: Any, steps: int, guidance: float, width: int, height: int, count: int) -> None:
    """One throw-away pipeline call with the warm-up prompt (nothing is kept)."""
    kwargs = call_kwargs(pipe, WARMUP_PROMPT, "", steps, guidance, width, height, list(range(count)))
    with torch.inference_mode():
        pipe(**kwargs)
