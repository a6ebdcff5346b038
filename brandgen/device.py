"""Accelerator choice (CUDA > MPS > CPU), dtypes, and memory bookkeeping."""

from __future__ import annotations

import gc
import os
import traceback
from dataclasses import dataclass

import torch

from brandgen.errors import InvalidInput

MEMORY_MODES = ("auto", "resident", "model_offload", "group_offload", "sequential_offload")


@dataclass(frozen=True)
class DeviceInfo:
    device: str
    dtype: torch.dtype
    name: str

    def describe(self) -> str:
        return f"{self.name} ({self.device}, {str(self.dtype).replace('torch.', '')})"


def detect_device(prefer: str | None = None) -> DeviceInfo:
    """Pick the fastest available device; BRANDGEN_DEVICE (cuda/mps/cpu) overrides for tests and debugging."""
    prefer = (prefer or os.environ.get("BRANDGEN_DEVICE") or "").lower() or None
    if prefer in (None, "cuda") and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return DeviceInfo("cuda", dtype, torch.cuda.get_device_name(0))
    if prefer in (None, "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return DeviceInfo("mps", torch.float16, "Apple GPU")
    return DeviceInfo("cpu", torch.float32, "CPU")


def free_memory() -> None:
    """Return cached blocks to the driver so the next model (or a retry after OOM) has room."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


def free_memory_after(exc: BaseException) -> None:
    """Free memory after a failure: first drop the tensors the exception's frames still hold (the
    pipeline's latents and activations stay alive in a traceback until it is cleared), then free_memory()."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
    free_memory()


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> float | None:
    """Peak accelerator memory since the last reset; None on CPU, where torch does not track it."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def free_vram_gb() -> float | None:
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return free / 2**30
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def server_threads(cpus: int | None = None, torch_default: int | None = None) -> int:
    """Intra-op threads for the web server: BRANDGEN_TORCH_THREADS if set, else one core fewer than the machine
    has (never more than torch's own default). Denoising with every core while the server encodes, writes and
    streams results, and clients share the machine, made each image 1.6x slower under load on 2 cores
    (docs/RELIABILITY.md); one core left free keeps the per-image time at its idle value."""
    value = os.environ.get("BRANDGEN_TORCH_THREADS", "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise InvalidInput(f"BRANDGEN_TORCH_THREADS must be a whole number of threads, 1 or more; got {value!r}.")
        return threads
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(torch_default or torch.get_num_threads(), cpus - 1))
