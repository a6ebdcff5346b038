"""Attention for LoRA training on CUDA: cuDNN's fused SDPA first, fed gradients it can handle.

cuDNN SDPA runs a FLUX-size attention forward + backward about 1.9x faster than the flash kernel PyTorch
prefers (scripts/attention_backend_bench.py, docs/PERFORMANCE.md), and attention is over a third of a FLUX
LoRA step. Its backward failed inside models (`mha_graph.execute(...).is_good()`, then an illegal memory
access), though never on the same shapes in isolation, whatever the q/k/v or gradient layout. Handing SDPA a
contiguous output gradient, through a forward hook on every attention module, removes the failure, and the
LoRA gradients then match the fp32 math backend as closely as flash's do (scripts/cudnn_grad_check.py). The
cost is one copy of a gradient that is not already contiguous.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
               SDPBackend.MATH]


class _ContiguousGrad(torch.autograd.Function):
    """Identity forward; backward hands on a contiguous copy of a strided gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _contiguous_grads(module: torch.nn.Module, args: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return _ContiguousGrad.apply(output) if output.requires_grad else output
    if isinstance(output, tuple):
        return tuple(_contiguous_grads(module, args, o) for o in output)
    return output


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """diffusers attention modules: the ones that hold a swappable attention processor."""
    return [m for m in model.modules() if hasattr(m, "processor") and hasattr(m, "set_processor")]


def contiguous_attention_grads(model: torch.nn.Module) -> list[Any]:
    """Hook every attention module so gradients reach SDPA contiguous; returns the hook handles."""
    return [m.register_forward_hook(_contiguous_grads) for m in attention_modules(model)]


@contextlib.contextmanager
def cudnn_attention_first(enabled: bool = True) -> Iterator[None]:
    """Within the block SDPA tries cuDNN first, then flash, memory-efficient and math; restored afterwards."""
    if not enabled:
        yield
        return
    with sdpa_kernel(CUDNN_FIRST, set_priority=True):
        yield
