"""fp8 base weights for LoRA training: the frozen linear layers multiply in fp8 on Hopper/Ada GPUs.

A LoRA run never updates the base weights, so each is quantized once (float8 e4m3, one scale per row) in the
two layouts its GEMMs need: W for the forward (y = x W^T) and W^T for the input gradient (dx = dy W). The
activations and the output gradients are quantized per row on the fly; no weight gradient is ever computed.
The LoRA layers themselves stay in full precision. This is torchao's "rowwise" float8 recipe cut down to a
frozen weight, where torchao's Float8Linear would requantize W every step and compute a weight gradient.

`use_fp8_base(model)` swaps every qualifying frozen nn.Linear for an `Fp8Linear` (the original module is kept
inside, so LoRA state dicts and export do not change) and `restore_base(model)` puts them back, so whatever uses
the model after training gets the exact weights (the run's own samples and evaluation losses use fp8).
"""

from __future__ import annotations

from typing import Any

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def unavailable_reason(requested: bool, device: torch.device | str, num_processes: int = 1) -> str | None:
    """Why fp8 base weights cannot be used here (None when they can); said in the UI instead of failing."""
    if not requested:
        return "off"
    if num_processes > 1:  # DDP would broadcast the fp8 buffers every step; never tried on several GPUs
        return "not with several GPUs yet"
    if torch.device(device).type != "cuda":
        return "needs an NVIDIA GPU with fp8 (Ada, Hopper or newer)"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return f"{torch.cuda.get_device_name(device)} has no fp8 tensor cores (needs Ada, Hopper or newer)"
    return None


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D tensor as (e4m3 values, fp32 scale per row), x ~= values * scale; an all-zero row stays zero.
    The values come out row-major whatever x's layout (elementwise ops would keep a transposed one)."""
    x = x.contiguous()
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = amax.clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class _Fp8Matmul(torch.autograd.Function):
    """y = x @ W^T in fp8 with the gradient for x only (W is frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, wt: torch.Tensor,
                wt_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(wt, wt_scale)
        ctx.out_dtype = out_dtype
        q, scale = quantize_rows(x)
        # _scaled_mm wants the second operand column-major: W (out x in, row-major) transposed is exactly that
        return torch._scaled_mm(q, w.t(), scale_a=scale, scale_b=w_scale.t(), out_dtype=out_dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        wt, wt_scale = ctx.saved_tensors
        q, scale = quantize_rows(grad)
        grad_x = torch._scaled_mm(q, wt.t(), scale_a=scale, scale_b=wt_scale.t(), out_dtype=ctx.out_dtype)
        return grad_x, None, None, None, None, None


class Fp8Linear(torch.nn.Module):
    """A frozen nn.Linear computing in fp8. `original` is the untouched layer (also its weights' owner)."""

    def __init__(self, original: torch.nn.Linear):
        super().__init__()
        self.original = original
        self.in_features, self.out_features = original.in_features, original.out_features
        weight = original.weight.detach()
        w, w_scale = quantize_rows(weight)  # per output channel, for the forward
        wt, wt_scale = quantize_rows(weight.t())  # per input channel, for the input gradient
        for name, value in (("w", w), ("w_scale", w_scale), ("wt", wt), ("wt_scale", wt_scale)):
            self.register_buffer(name, value, persistent=False)

    @property
    def weight(self) -> torch.nn.Parameter:  # peft and diffusers read base_layer.weight (dtype, device, shape)
        return self.original.weight

    @property
    def bias(self) -> torch.nn.Parameter | None:
        return self.original.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        flat = x.reshape(-1, self.in_features)
        y = _Fp8Matmul.apply(flat, self.w, self.w_scale, self.wt, self.wt_scale, out_dtype)
        if self.bias is not None:
            y = y + self.bias.to(out_dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 rowwise"


def qualifies(module: torch.nn.Module) -> bool:
    """Frozen plain nn.Linear whose sizes fp8 GEMMs accept (multiples of 16)."""
    return (
        type(module) is torch.nn.Linear
        and not module.weight.requires_grad
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def use_fp8_base(model: torch.nn.Module) -> int:
    """Swap qualifying frozen linear layers for Fp8Linear in place; returns how many were swapped.
    Call after the LoRA layers exist (their own A/B weights train and are never swapped)."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if qualifies(child)]
    for parent, name, child in swaps:
        setattr(parent, name, Fp8Linear(child))
    return len(swaps)


def restore_base(model: torch.nn.Module) -> int:
    """Undo use_fp8_base: the original layers come back; returns how many."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, Fp8Linear)]
    for parent, name, child in swaps:
        setattr(parent, name, child.original)
    return len(swaps)
