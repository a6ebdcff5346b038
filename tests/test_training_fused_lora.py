"""The fused LoRA path (brandgen/training/fused_lora.py): the same outputs and gradients as peft's layers, peft's
own forward wherever fusing would change the maths, and a training run that uses it, trains the same losses and
leaves peft's layers behind. The speed is a GPU matter (scripts/gpu_train_bench.py --fused-lora)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.models.activations import GEGLU
from diffusers.models.attention import FeedForward
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.utils import get_peft_model_state_dict

from brandgen.loras import DIFFUSERS_FILE
from brandgen.paths import AppPaths
from brandgen.training.fused_lora import FusedGeglu, FusedLoraLinear, qualifies, restore, use_fused_lora
from brandgen.training.trainer import LoraTrainer
from training_helpers import make_dataset, one_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


class Block(torch.nn.Module):
    """Linear layers (with and without a bias), a GEGLU feed-forward and a conv, as in a UNet's transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(24, 40)
        self.down = torch.nn.Linear(40, 16, bias=False)
        self.ff = FeedForward(16, mult=2, activation_fn="geglu")
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(self.down(torch.nn.functional.gelu(self.up(x))))


def _lora_block(dropout: float = 0.0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, init_lora_weights="gaussian",
                        target_modules=["up", "down", "ff.net.0.proj", "ff.net.2", "conv"])
    block = inject_adapter_in_model(config, Block())
    for name, p in block.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a trained-looking adapter: B starts at zero otherwise
    return block


def _step(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    x = x.detach().clone().requires_grad_()
    y = block(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fused_layers_give_peft_outputs_and_gradients():
    block = _lora_block()
    fused = copy.deepcopy(block)
    assert use_fused_lora(fused) == 4  # the linear layers; peft's conv layer is left alone
    assert type(fused.up) is FusedLoraLinear and type(fused.conv) is not FusedLoraLinear
    assert type(fused.ff.net[0]) is FusedGeglu  # its projection and gate as one Function
    x = torch.randn(3, 5, 24)
    y, grad_x, grads = _step(block, x)
    fused_y, fused_grad_x, fused_grads = _step(fused, x)
    assert fused_y.shape == y.shape == (3, 5, 16)
    gate_out = fused.ff.net[0](torch.randn(2, 16))
    assert "GegluLora" in type(gate_out.grad_fn.next_functions[0][0]).__name__  # the gate joined the Function
    assert torch.allclose(fused_y, y, atol=1e-5) and torch.allclose(fused_grad_x, grad_x, atol=1e-5)
    assert grads.keys() == fused_grads.keys() and len(grads) == 8  # A and B of the four linear layers
    for name, grad in grads.items():
        assert grad.abs().max() > 1e-3, name  # real gradients, not zeros that match trivially
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-5), name
    assert all(p.grad is None for n, p in fused.named_parameters() if "lora_" not in n)  # the base stays frozen


def test_fused_layers_under_bf16_autocast_stay_within_bf16_rounding_of_peft():
    block = _lora_block()
    fused = copy.deepcopy(block)
    use_fused_lora(fused)
    x = torch.randn(4, 6, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, grad_x, grads = _step(block, x)
        fused_y, fused_grad_x, fused_grads = _step(fused, x)
    assert fused_y.dtype == y.dtype == torch.bfloat16  # what autocast gives a linear layer
    assert _rel(fused_y, y) < 0.02 and _rel(fused_grad_x, grad_x) < 0.02
    for name, grad in grads.items():
        assert fused_grads[name].dtype == torch.float32  # the LoRA weights' own dtype
        assert _rel(fused_grads[name], grad) < 0.03, name
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # sampling during training: no grads
        assert torch.allclose(fused(x).float(), fused_y.float(), atol=1e-6)


def test_layers_whose_maths_fusing_would_change_keep_peft_forward():
    with_dropout = _lora_block(dropout=0.1)
    assert use_fused_lora(with_dropout) == 0 and not qualifies(with_dropout.up)

    block = _lora_block()
    use_fused_lora(block)
    x = torch.randn(2, 24)
    layers = [m for m in block.modules() if isinstance(m, PeftLoraLinear)]
    inner = block.down.base_layer(torch.nn.functional.gelu(block.up.base_layer(x)))
    hidden, gate = block.ff.net[0].proj.base_layer(inner).chunk(2, dim=-1)
    base = block.ff.net[2].base_layer(hidden * torch.nn.functional.gelu(gate))  # the model without LoRA
    with torch.no_grad():
        for layer in layers:
            layer.enable_adapters(False)
        assert torch.allclose(block(x), base, atol=1e-6)  # adapters disabled: the base model, as with peft
        for layer in layers:
            layer.enable_adapters(True)
        assert not torch.allclose(block(x), base, atol=1e-3)

    two = _lora_block()
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["up"]), two, adapter_name="second")
    assert not qualifies(two.up)  # two adapters
    assert two.down.active_adapters == ["second"] and not qualifies(two.down)  # its one adapter is not active
    x = torch.randn(3, 40)
    expected = two.down(x)
    two.down.__class__ = FusedLoraLinear  # even if swapped by hand, the forward falls back to peft's
    assert torch.equal(two.down(x), expected)


def test_the_swap_keeps_the_adapter_state_and_restore_gives_peft_layers_back():
    block = _lora_block()
    keys = set(get_peft_model_state_dict(block))
    x = torch.randn(2, 24)
    before = block(x).detach()
    use_fused_lora(block)
    assert set(get_peft_model_state_dict(block)) == keys
    assert restore(block) == 4 and type(block.up) is PeftLoraLinear and type(block.ff.net[0]) is GEGLU
    assert torch.equal(block(x).detach(), before)


def test_a_run_with_fused_lora_trains_the_same_losses_and_exports_a_plain_lora(tiny_dirs: dict, tmp_path: Path):
    data = make_dataset(tmp_path / "data", count=2)
    runs = {}
    for fused in (False, True):
        config = tiny_config(data, str(tiny_dirs["sd15"]), max_steps=4, checkpoint_every=0, fused_lora=fused)
        trainer = LoraTrainer(config, paths=AppPaths(tmp_path / f"home-{fused}"), device="cpu")
        result = trainer.run()
        assert result.status == "done"
        runs[fused] = trainer, result
    plain, fused = runs[False][0], runs[True][0]
    assert plain.speed.fused_layers == 0 and fused.speed.fused_layers > 0
    plain_losses = [row["loss"] for row in plain.history.rows]
    fused_losses = [row["loss"] for row in fused.history.rows]
    assert len(fused_losses) == 4 and np.allclose(fused_losses, plain_losses, rtol=1e-4, atol=1e-6)
    assert not any(type(m) is FusedLoraLinear for m in fused.pipe.unet.modules())  # peft's layers again

    trained = fused.render(seeds=[3], output_type="np", steps=2)
    fresh = DiffusionPipeline.from_pretrained(tiny_dirs["sd15"])
    fresh.load_lora_weights(str(runs[True][1].lora_dir), weight_name=DIFFUSERS_FILE)
    assert np.abs(trained - fused.render(pipe=fresh, seeds=[3], output_type="np", steps=2)).max() < 1e-4
    assert np.abs(trained - plain.render(seeds=[3], output_type="np", steps=2)).max() < 1e-3


def test_fused_layers_compile_to_the_same_result():
    """The trainer compiles the blocks around these layers on GPUs: dynamo must trace the autograd Function."""
    block = _lora_block()
    use_fused_lora(block)
    x = torch.randn(2, 7, 24)
    y, grad_x, grads = _step(block, x)
    for p in block.parameters():
        p.grad = None
    compiled = torch.compile(block, fullgraph=True)
    compiled_y, compiled_grad_x, compiled_grads = _step(compiled, x)
    assert torch.allclose(compiled_y, y, atol=1e-5) and torch.allclose(compiled_grad_x, grad_x, atol=1e-5)
    compiled_grads = {n.removeprefix("_orig_mod."): g for n, g in compiled_grads.items()}
    assert compiled_grads.keys() == grads.keys()
    assert all(torch.allclose(compiled_grads[n], g, rtol=1e-4, atol=1e-5) for n, g in grads.items())

    # memory in eager code: the backward re-merges W + sBA, so only the frozen weights themselves are saved
    weights = {tuple(m.base_layer.weight.shape): m.base_layer.weight for m in block.modules()
               if isinstance(m, PeftLoraLinear)}
    saved: list[bool] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) in weights:
            saved.append(t.data_ptr() == weights[tuple(t.shape)].data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x.requires_grad_())
    assert saved and all(saved)  # no merged copies
