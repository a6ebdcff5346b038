"""brandgen.attention: contiguous gradients into SDPA's backward, and the cuDNN-first SDPA order."""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel
from peft import LoraConfig

from brandgen.attention import _ContiguousGrad, attention_modules, contiguous_attention_grads, cudnn_attention_first


class _RecordGrad(torch.autograd.Function):
    """Identity that remembers whether the gradient it received was contiguous."""

    seen: list[bool] = []

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _RecordGrad.seen.append(grad.is_contiguous())
        return grad


def _grad_contiguity(fix: bool) -> bool:
    """Gradient layout reaching an attention output that is concatenated with a wider branch (FLUX single block)."""
    _RecordGrad.seen = []
    attention_out = torch.randn(1, 8, 4, requires_grad=True)
    y = _RecordGrad.apply(attention_out)
    y = _ContiguousGrad.apply(y) if fix else y
    torch.cat([y, torch.randn(1, 8, 16)], dim=-1).sum().backward()
    return _RecordGrad.seen[0]


def test_a_sliced_gradient_reaches_attention_contiguous_only_with_the_fix():
    assert _grad_contiguity(fix=False) is False  # a slice of the concatenation's gradient
    assert _grad_contiguity(fix=True) is True


def _tiny_flux_with_lora() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _loss_and_grads(model: FluxTransformer2DModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = model(hidden_states=torch.randn(1, 16, 4, generator=g), timestep=torch.tensor([0.5]),
                encoder_hidden_states=torch.randn(1, 6, 32, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g),
                img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(6, 3), return_dict=False)[0]
    loss = out.pow(2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_hooks_cover_every_attention_module_and_change_no_value():
    plain = _tiny_flux_with_lora()
    hooked = _tiny_flux_with_lora()
    handles = contiguous_attention_grads(hooked)
    assert len(handles) == len(attention_modules(hooked)) == 2  # one joint block + one single block
    loss_a, grads_a = _loss_and_grads(plain)
    loss_b, grads_b = _loss_and_grads(hooked)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-6, atol=1e-7)
    for handle in handles:
        handle.remove()
    assert all(not m._forward_hooks for m in attention_modules(hooked))


def test_cudnn_first_enables_cudnn_inside_and_restores_the_flags_after():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        with cudnn_attention_first():
            assert torch.backends.cuda.cudnn_sdp_enabled()
            assert torch.backends.cuda.flash_sdp_enabled()  # a fallback for shapes cuDNN does not take
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        with cudnn_attention_first(enabled=False):
            assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
