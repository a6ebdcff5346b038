"""Fused LoRA linear layers for training: one GEMM each way instead of peft's base GEMM + LoRA path + adds.

peft computes y = base(x) + s * B(A(x)) and, in the backward, dx = dy W + s (dy B) A: the LoRA path writes a
full-size output in each direction and then adds it to the base one. With a frozen base that is pure memory
traffic: about six extra passes over every LoRA layer's activations per step (SDXL at 1024²: the largest
non-GEMM cost after attention, docs/PERFORMANCE.md). Here each step multiplies by the merged weight
W' = W + s B A (one small addmm per layer), so the forward is y = x W'^T and the input gradient dx = dy W',
both single GEMMs, and only the rank-r products the LoRA gradients need are computed:

    grad_B = s dy^T (x A^T)        grad_A = s (dy B)^T x

That is the same function and the same gradients; the only difference is where bf16 rounds (W' is rounded
once per element, peft rounds the LoRA output once per element), checked against peft in tests/.

Memory: the backward re-merges W' from the saved frozen weight, so eager code holds no merged copies. Under
torch.compile the re-merge is the same expression as the forward's and the compiler computes it once, keeping
each layer's merged weight until the backward: +3.5 GB on SDXL at batch 16 (93.7 -> 97.2 GB) and faster (a
re-merge it could not fold ran 629 ms vs 616 ms per step). On FLUX that was +9 GB for no gain, so the
transformer families keep peft's layers (Family.fused_lora).

`use_fused_lora(model)` switches qualifying peft `lora.Linear` layers to `FusedLoraLinear` (a subclass: the
state dict, saving and export do not change), and diffusers `GEGLU` feed-forwards over them to `FusedGeglu`
(projection and gate in one Function, see _GegluLoraMatmul); `restore(model)` switches both back. A layer
qualifies when it has exactly one adapter, no dropout, no DoRA or other variant, and a plain nn.Linear base
(not fp8); anything else keeps peft's forward, as does a layer whose adapter is disabled, merged or inactive.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.activations import GEGLU
from peft.tuners.lora import Linear as PeftLoraLinear


def _merge(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """W + s B A in one addmm, rounded once. The backward calls it again with the same arguments; compiled, that
    is the forward's own expression, so the compiler keeps the forward's result (module docstring)."""
    return torch.addmm(weight.to(dtype), b, a, alpha=scale)


class _MergedLoraMatmul(torch.autograd.Function):
    """y = x (W + s B A)^T (+ bias) with gradients for x, A and B only (W and the bias are frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        merged = _merge(weight, a, b, scale, dtype)
        x = x.to(dtype)
        h = x @ a.t() if ctx.needs_input_grad[4] else None  # N x r: what grad_B needs
        ctx.save_for_backward(x, h, weight, a, b)
        ctx.scale, ctx.dtype, ctx.param_dtypes = scale, dtype, (lora_a.dtype, lora_b.dtype)
        return torch.nn.functional.linear(x, merged, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, h, weight, a, b = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        # eager: recomputed, no merged copies kept; compiled: folded into the forward's (module docstring)
        merged = _merge(weight, a, b, ctx.scale, ctx.dtype)
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ merged
        if ctx.needs_input_grad[3]:
            grad_a = ((grad @ b).t() @ x).mul_(ctx.scale).to(ctx.param_dtypes[0])
        if ctx.needs_input_grad[4]:
            grad_b = (grad.t() @ h).mul_(ctx.scale).to(ctx.param_dtypes[1])
        return grad_x, None, None, grad_a, grad_b, None, None


class FusedLoraLinear(PeftLoraLinear):
    """peft's lora.Linear whose plain single-adapter forward runs as one merged-weight GEMM each way."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = _fusable_adapter(self)
        if args or kwargs or adapter is None:
            return super().forward(x, *args, **kwargs)
        return _apply(_MergedLoraMatmul, x, self, adapter, self.base_layer.out_features)


class _GegluLoraMatmul(torch.autograd.Function):
    """GEGLU over a fused LoRA projection: out = hidden * gelu(gate), [hidden | gate] = x (W + s B A)^T + bias.

    Autograd would write the projection's gradient as one N x 2k tensor (a concatenating elementwise kernel that
    ran at ~30% of memory bandwidth, SDXL's largest non-GEMM kernel) and multiply it by W'. Here the two halves'
    gradients come out of one elementwise pass as separate tensors and meet in the input gradient through a
    second GEMM accumulating into the first (addmm), so the concatenated gradient never exists.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        x = x.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        proj = torch.nn.functional.linear(x, _merge(weight, a, b, scale, dtype), bias)
        h = x @ a.t() if ctx.needs_input_grad[4] else None
        ctx.save_for_backward(x, h, proj, weight, a, b)
        ctx.scale, ctx.dtype, ctx.param_dtypes = scale, dtype, (lora_a.dtype, lora_b.dtype)
        hidden, gate = proj.chunk(2, dim=-1)
        return hidden * torch.nn.functional.gelu(gate)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, h, proj, weight, a, b = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        hidden, gate = proj.chunk(2, dim=-1)
        grad_hidden = grad * torch.nn.functional.gelu(gate)
        grad_gate = torch.ops.aten.gelu_backward(grad * hidden, gate)
        k = hidden.shape[-1]
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            merged = _merge(weight, a, b, ctx.scale, ctx.dtype)
            grad_x = torch.addmm(grad_hidden @ merged[:k], grad_gate, merged[k:])
        if ctx.needs_input_grad[3]:
            t = torch.addmm(grad_hidden @ b[:k], grad_gate, b[k:])  # dproj B, without dproj
            grad_a = (t.t() @ x).mul_(ctx.scale).to(ctx.param_dtypes[0])
        if ctx.needs_input_grad[4]:
            grad_b = torch.cat([grad_hidden.t() @ h, grad_gate.t() @ h]).mul_(ctx.scale).to(ctx.param_dtypes[1])
        return grad_x, None, None, grad_a, grad_b, None, None


class FusedGeglu(GEGLU):
    """diffusers' GEGLU whose fused LoRA projection and gate run as one autograd Function (_GegluLoraMatmul)."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        proj = self.proj
        adapter = _fusable_adapter(proj) if isinstance(proj, FusedLoraLinear) else None
        if args or kwargs or adapter is None:
            return super().forward(hidden_states, *args, **kwargs)
        return _apply(_GegluLoraMatmul, hidden_states, proj, adapter, proj.base_layer.out_features // 2)


def _apply(function: type[torch.autograd.Function], x: torch.Tensor, layer: PeftLoraLinear, adapter: str,
           out_features: int) -> torch.Tensor:
    """Run one of the Functions above on x flattened to rows, in autocast's dtype (explicit inside)."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    base = layer.base_layer
    flat = x.reshape(-1, base.in_features)
    with torch.autocast(device, enabled=False):
        y = function.apply(flat, base.weight, base.bias, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
                           float(layer.scaling[adapter]), dtype)
    return y.view(*x.shape[:-1], out_features)


def _fusable_adapter(layer: PeftLoraLinear) -> str | None:
    """The one active vanilla adapter of an unmerged, enabled layer; None when peft's own forward is needed."""
    if layer.disable_adapters or layer.merged or len(layer.lora_A) != 1:
        return None
    (adapter,) = layer.lora_A.keys()
    if adapter not in layer.active_adapters or adapter in layer.lora_variant:
        return None
    if not isinstance(layer.lora_dropout[adapter], torch.nn.Identity):
        return None
    return adapter


def qualifies(module: torch.nn.Module) -> bool:
    """A peft lora.Linear over a plain nn.Linear whose adapter _fusable_adapter accepts."""
    return (
        type(module) is PeftLoraLinear
        and type(module.base_layer) is torch.nn.Linear
        and _fusable_adapter(module) is not None
    )


def use_fused_lora(model: torch.nn.Module) -> int:
    """Switch qualifying LoRA layers to FusedLoraLinear in place; returns how many. Call after fp8_base (an
    fp8 base keeps peft's forward) and before compiling."""
    layers = [module for module in model.modules() if qualifies(module)]
    for layer in layers:
        layer.__class__ = FusedLoraLinear
    for module in model.modules():  # GEGLU feed-forwards whose projection was just fused: the gate joins it
        if type(module) is GEGLU and type(module.proj) is FusedLoraLinear:
            module.__class__ = FusedGeglu
    return len(layers)


def restore(model: torch.nn.Module) -> int:
    """Undo use_fused_lora: peft's own class comes back; returns how many."""
    layers = [module for module in model.modules() if type(module) is FusedLoraLinear]
    for layer in layers:
        layer.__class__ = PeftLoraLinear
    for module in model.modules():
        if type(module) is FusedGeglu:
            module.__class__ = GEGLU
    return len(layers)
