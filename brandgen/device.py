"""Accelerator choice (CUDA > MPS > CPU), dtypes, and memory bookkeeping."""

from __future__ import annotations

import gc
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class ThreadPlan:
    """CPU threads for one generation in the served app: every core for a request nobody else waits behind, one
    core left to the server while others queue. On 2 cores a lone Draft image denoises in 1.06 s with 2 threads and
    1.32 s with 1; under a 16-client load 1 thread gave 18% more throughput (docs/PERFORMANCE.md)."""

    lone: int
    busy: int

    def threads(self, others_waiting: int | None, others_running: int | None = 0) -> int:
        """`others_waiting`: requests queued behind this one; `others_running`: tasks keeping a core busy
        (others_running()). Unknown (None) counts as busy: with another process on one of 2 cores, 2 threads wait
        on each other and an image takes 4-18x its time (docs/RELIABILITY.md)."""
        return self.lone if others_waiting == 0 and others_running == 0 else self.busy


def _own_running(task_dir: Path) -> int:
    """This process's threads the kernel has runnable now (state R in /proc/self/task/*/stat)."""
    count = 0
    for task in task_dir.iterdir():
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # a thread that just ended
        count += state == "R"
    return count


def others_running(samples: int = 6, gap_s: float = 0.01, stat: Path = Path("/proc/stat"),
                   task_dir: Path = Path("/proc/self/task")) -> int | None:
    """Tasks of other processes that stay runnable across `samples` reads of the kernel's `procs_running` (the
    least seen, so brief work is not counted; this process's own threads, e.g. the server's event loop, are
    subtracted); None without /proc (not Linux). ~55 ms, against the ~0.3 s a lone Draft image gains from the
    second core on 2 cores."""
    seen = []
    for i in range(samples):
        try:
            lines = stat.read_text().splitlines()
            own = _own_running(task_dir)
        except OSError:
            return None
        counts = [int(line.split()[1]) for line in lines if line.startswith("procs_running ")]
        if not counts:
            return None
        seen.append(counts[0] - max(1, own))  # the caller itself is running
        if i + 1 < samples:
            time.sleep(gap_s)
    return max(0, min(seen))


def server_thread_plan(cpus: int | None = None, torch_default: int | None = None) -> ThreadPlan:
    """The served app's ThreadPlan: BRANDGEN_TORCH_THREADS, if set, fixes both counts; otherwise a lone request
    gets torch's own default and a busy server one core fewer than the machine has (never more than torch's
    default). Denoising with every core while the server encodes, writes and streams results, and clients share
    the machine, made each image 1.6x slower under load on 2 cores (docs/RELIABILITY.md); one core left free keeps
    the per-image time at its idle value."""
    value = os.environ.get("BRANDGEN_TORCH_THREADS", "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise InvalidInput(f"BRANDGEN_TORCH_THREADS must be a whole number of threads, 1 or more; got {value!r}.")
        return ThreadPlan(threads, threads)
    cpus = cpus or os.cpu_count() or 1
    lone = max(1, min(torch_default or torch.get_num_threads(), cpus))
    return ThreadPlan(lone=lone, busy=max(1, min(lone, cpus - 1)))
