"""Hugging Face Spaces: ZeroGPU when the Space runs on it, nothing at all everywhere else.

On ZeroGPU hardware a Space holds a GPU only while a function decorated with `spaces.GPU` runs; that
function runs in a forked worker, so what it changes in memory is lost and what it returns is pickled back.
BrandGen therefore wraps only `PipelineManager.generate` (plain data in, images out) and loads the model
in the main process at start (`prepare`), where ZeroGPU lets weights be placed "on cuda" ahead of time.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_GPU_SECONDS = 120  # ZeroGPU's quota counts this, not the time used: keep it near a real generation


def zero_gpu_enabled() -> bool:
    """True on a ZeroGPU Space (it sets SPACES_ZERO_GPU; BRANDGEN_ZERO_GPU=1 forces it) with `spaces` installed."""
    wanted = os.environ.get("SPACES_ZERO_GPU") or os.environ.get("BRANDGEN_ZERO_GPU", "").lower() in ("1", "true")
    return bool(wanted) and _spaces_module() is not None


def _spaces_module() -> Any:
    try:
        return importlib.import_module("spaces")
    except ImportError:
        return None


def gpu_seconds() -> int:
    """How long one call may hold the GPU: BRANDGEN_GPU_SECONDS, else DEFAULT_GPU_SECONDS."""
    try:
        return max(1, int(os.environ.get("BRANDGEN_GPU_SECONDS", DEFAULT_GPU_SECONDS)))
    except ValueError:
        return DEFAULT_GPU_SECONDS


def on_gpu(fn: F, duration: int | None = None) -> F:
    """`spaces.GPU(duration=...)(fn)` on ZeroGPU; `fn` itself (the very same object) anywhere else."""
    if not zero_gpu_enabled():
        return fn
    return _spaces_module().GPU(duration=duration or gpu_seconds())(fn)


def prepare(manager: Any) -> bool:
    """Load the default model in the main process on ZeroGPU, so each GPU call starts with it in memory."""
    if not zero_gpu_enabled():
        return False
    manager.load_model()
    return True
