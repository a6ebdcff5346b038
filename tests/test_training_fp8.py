"""fp8 base weights (brandgen/training/fp8_base.py): the maths against a plain linear layer, the swap under peft
LoRA layers, and a training run that uses them and leaves the exact base weights behind. PyTorch's CPU build
has `torch._scaled_mm`, so all of it runs here; only the speed needs a Hopper/Ada GPU (docs/PERFORMANCE.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from brandgen.errors import InvalidInput
from brandgen.loras import DIFFUSERS_FILE
from brandgen.paths import AppPaths
from brandgen.training import fp8_base
from brandgen.training.config import TrainConfig
from brandgen.training.fp8_base import Fp8Linear, quantize_rows, restore_base, use_fp8_base
from brandgen.training.progress import TrainHooks
from brandgen.training.speed import RunSpeed
from brandgen.training.trainer import LoraTrainer
from training_helpers import make_dataset, one_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


def test_quantize_rows_keeps_each_row_within_e4m3_precision_of_its_own_scale():
    torch.manual_seed(0)
    x = torch.randn(8, 64) * torch.logspace(-3, 3, 8)[:, None]  # rows six orders of magnitude apart
    x[3] = 0
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (8, 1)
    back = q.float() * scale
    assert torch.equal(back[3], torch.zeros(64))  # a zero row stays zero, no NaN from a zero scale
    error = (back - x).abs() / x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
    assert error.max() <= 2**-4  # three mantissa bits
    assert error.mean() < 0.01
    assert quantize_rows(x.t())[0].is_contiguous()  # row-major out of a transposed view, as _scaled_mm needs


def test_fp8_linear_follows_the_linear_layer_and_gives_only_the_input_gradient():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 160).requires_grad_(False)
    x = torch.randn(2, 50, 96, requires_grad=True)
    expected = linear(x)
    grad_out = torch.randn_like(expected)
    expected.backward(grad_out)
    expected_grad, x.grad = x.grad.clone(), None

    fp8 = Fp8Linear(linear)
    y = fp8(x)
    y.backward(grad_out)
    assert y.shape == expected.shape and y.dtype == torch.float32
    assert _rel(y, expected) < 0.06 and _rel(x.grad, expected_grad) < 0.06
    assert 0.001 < _rel(y, expected)  # it really is the fp8 path
    assert linear.weight.grad is None and fp8.weight is linear.weight and fp8.bias is linear.bias
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fp8(x).dtype == torch.bfloat16  # what autocast gives a linear layer


def test_fp8_linear_compiles_to_the_same_result():
    """torch.compile checks _scaled_mm's operand layouts, which eager CPU does not: the regional compile the
    trainer uses on GPUs once failed here (a transposed fp8 weight)."""
    torch.manual_seed(0)
    fp8 = Fp8Linear(torch.nn.Linear(64, 48).requires_grad_(False))
    x = torch.randn(32, 64, requires_grad=True)
    eager = fp8(x)
    eager.square().sum().backward()
    eager_grad, x.grad = x.grad.clone(), None
    compiled = torch.compile(fp8)(x)
    compiled.square().sum().backward()
    assert torch.allclose(compiled, eager, atol=1e-5) and torch.allclose(x.grad, eager_grad, atol=1e-4)


def test_swap_under_lora_keeps_the_adapter_training_and_restore_is_exact():
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
    )
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a trained-looking adapter, so its gradients are not all zero
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 7, 32))
    lora = [p for p in unet.parameters() if p.requires_grad]
    keys = set(get_peft_model_state_dict(unet))

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        for p in lora:
            p.grad = None
        out = unet(*inputs).sample
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in lora]

    before, grads = step()
    frozen = sum(fp8_base.qualifies(m) for m in unet.modules())
    assert use_fp8_base(unet) == frozen > 0
    assert all(isinstance(m.base_layer, Fp8Linear) for m in unet.modules() if hasattr(m, "lora_A"))
    assert [p for p in unet.parameters() if p.requires_grad] == lora and set(get_peft_model_state_dict(unet)) == keys
    during, fp8_grads = step()
    assert 0 < _rel(during, before) < 0.1
    flat, fp8_flat = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in fp8_grads])
    assert torch.nn.functional.cosine_similarity(flat, fp8_flat, dim=0) > 0.98
    assert restore_base(unet) == frozen and not any(isinstance(m, Fp8Linear) for m in unet.modules())
    after, _ = step()
    assert torch.equal(after, before)


def test_a_run_with_fp8_base_says_so_and_exports_a_lora_for_the_exact_base(
    tiny_dirs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A GPU would pass the capability check; here it is waved through so the CPU runs the same code path."""
    monkeypatch.setattr(fp8_base, "unavailable_reason", lambda requested, *_: None if requested else "off")
    messages: list[str] = []
    paths = AppPaths(tmp_path / "home")
    config = tiny_config(make_dataset(tmp_path / "data", count=2), str(tiny_dirs["sd15"]), max_steps=4,
                         checkpoint_every=0, fp8_base=True)
    trainer = LoraTrainer(config, paths=paths, device="cpu",
                          hooks=TrainHooks(on_progress=lambda p: messages.append(p.message)))
    result = trainer.run()
    assert result.status == "done" and trainer.speed.fp8_layers > 0
    assert f"Training (fp8 base weights on: {trainer.speed.fp8_layers} layers)" in messages
    assert all(np.isfinite(row["loss"]) for row in trainer.history.rows)
    assert not any(isinstance(m, Fp8Linear) for m in trainer.pipe.unet.modules())  # exact weights again

    trained = trainer.render(seeds=[3], output_type="np", steps=2)
    fresh = DiffusionPipeline.from_pretrained(tiny_dirs["sd15"])
    fresh.load_lora_weights(str(result.lora_dir), weight_name=DIFFUSERS_FILE)
    assert np.abs(trained - trainer.render(pipe=fresh, seeds=[3], output_type="np", steps=2)).max() < 1e-4


def test_an_fp8_request_that_cannot_run_is_explained_in_the_progress_line():
    assert fp8_base.unavailable_reason(False, "cuda") == "off"
    reason = fp8_base.unavailable_reason(True, "cpu")
    assert "Ada, Hopper" in reason
    assert fp8_base.unavailable_reason(True, "cpu", num_processes=2) == "not with several GPUs yet"
    assert RunSpeed().message() == ""  # nothing asked for: the plain "Training" line
    both = RunSpeed(graph_note="needs a CUDA GPU", fp8_note=reason).message()
    assert both == f"Training (CUDA graph off: needs a CUDA GPU; fp8 base weights off: {reason})"
    assert RunSpeed(graph_note="off", fp8_note=None, fp8_layers=743).message() == (
        "Training (fp8 base weights on: 743 layers)"
    )
    assert RunSpeed(compile_note=None, compiled_blocks=38, fp8_note=None, fp8_layers=536).message() == (
        "Training (compiled: 38 blocks; fp8 base weights on: 536 layers)"
    )
    assert TrainConfig.from_dict({"name": "acme", "fp8_base": True}).fp8_base is True
    with pytest.raises(InvalidInput, match="fp8_base"):
        TrainConfig.from_dict({"name": "acme", "fp8_base": 1})
