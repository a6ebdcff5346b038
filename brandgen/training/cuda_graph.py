"""One training micro-batch (forward, loss, backward) replayed as a CUDA graph: one launch instead of thousands.

A UNet LoRA step at batch 1 is bound by the host launching ~12k small kernels (LoRA GEMMs, casts, norms); as a
graph the full-size SDXL step ran 4x faster on an H200 (docs/PERFORMANCE.md). What stays outside the graph is
cheap and keeps the trainer's semantics unchanged: the CPU-generator noise draw (Family.noised), gradient
clipping, the (fused) optimizer step and the LR schedule. Gradients are allocated once and zeroed in place, so
the captured backward accumulates into them (`grad += new`), which also makes gradient accumulation work.

One graph per input shape (aspect-ratio buckets), up to `max_graphs`; other shapes run eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Inputs = dict[str, torch.Tensor]

# families whose denoiser is a UNet: launch-bound, so they gain; the transformer families' kernels are
# large enough that a graph buys little, and FLUX's predict builds position ids on the host each call
GRAPH_FAMILIES = ("sd15", "sdxl")


def unavailable_reason(
    requested: bool, device_type: str, num_processes: int, mixed_precision: str, family: str
) -> str | None:
    """Why a run cannot use a CUDA graph (None when it can). Said in the UI instead of failing the run."""
    if not requested:
        return "off"
    if device_type != "cuda":
        return "needs a CUDA GPU"
    if num_processes > 1:
        return "not with several GPUs (DDP all-reduces inside the backward)"
    if mixed_precision == "fp16":
        return "not with fp16 (the loss scaler changes between steps); bf16 or fp32 work"
    if family not in GRAPH_FAMILIES:
        return f"only for UNet models ({', '.join(GRAPH_FAMILIES)}); {family} steps are compute-bound already"
    return None


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: Inputs  # static buffers the graph reads; new values are copied in before each replay
    loss: torch.Tensor  # the graph's output, overwritten by every replay


class GraphedStep:
    """`step(noised, cond)` runs `loss_fn(noised, cond)` and its backward (scaled by `loss_scale`, e.g.
    1 / gradient-accumulation steps) and returns the unscaled loss. Needs CUDA; the caller checks first."""

    def __init__(
        self,
        loss_fn: Callable[[Inputs, Inputs], torch.Tensor],
        params: list[torch.nn.Parameter],
        loss_scale: float = 1.0,
        max_graphs: int = 4,
        warmup: int = 3,
    ):
        self.loss_fn, self.params, self.loss_scale = loss_fn, params, loss_scale
        self.max_graphs, self.warmup = max_graphs, warmup
        self.graphs: dict[tuple, _Captured | None] = {}
        self.failure: str | None = None  # a capture error turns graphs off for the rest of the run
        for p in params:  # allocated once: the captured backward accumulates into these very tensors
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    @property
    def captured(self) -> int:
        return sum(entry is not None for entry in self.graphs.values())

    def __call__(self, noised: Inputs, cond: Inputs) -> torch.Tensor:
        inputs = {**{f"n.{k}": v for k, v in noised.items()}, **{f"c.{k}": v for k, v in cond.items()}}
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(inputs.items()))
        if key not in self.graphs and self.failure is None and len(self.graphs) < self.max_graphs:
            self.graphs[key] = self._capture(inputs)
        entry = self.graphs.get(key)
        if entry is None:  # a shape beyond max_graphs, or graphs failed: the same maths, eagerly
            return self._run(inputs)
        for name, buffer in entry.inputs.items():
            buffer.copy_(inputs[name], non_blocking=True)
        entry.graph.replay()
        return entry.loss.clone()  # the next replay overwrites entry.loss

    def _run(self, inputs: Inputs) -> torch.Tensor:
        noised = {k[2:]: v for k, v in inputs.items() if k.startswith("n.")}
        cond = {k[2:]: v for k, v in inputs.items() if k.startswith("c.")}
        loss = self.loss_fn(noised, cond)
        (loss * self.loss_scale).backward()
        return loss.detach()

    def _capture(self, inputs: Inputs) -> _Captured | None:
        """Warm up on a side stream (compiles, cuBLAS/cuDNN plans), capture, then put the gradients back as they
        were: warm-up ran real backwards into them, and a capture records kernels without running them."""
        saved = [p.grad.clone() for p in self.params]
        pointers = [p.grad.data_ptr() for p in self.params]
        static = {k: v.clone() for k, v in inputs.items()}
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self._run(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls the app's other threads make meanwhile (a status poll reading memory
            # figures) neither break this capture nor fail themselves; GPU work itself waits on the step lock
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                loss = self._run(static)
            if [p.grad.data_ptr() for p in self.params] != pointers:
                raise RuntimeError("the captured backward did not accumulate into the existing gradients")
        except Exception as exc:  # e.g. an op that syncs with the host: train on without graphs
            self.failure = f"{type(exc).__name__}: {str(exc)[:300]}"
            graph = None
        for p, grad, pointer in zip(self.params, saved, pointers):
            if p.grad is None or p.grad.data_ptr() != pointer:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(grad)
        return _Captured(graph, static, loss) if graph is not None else None
