"""Training speed options: regional compile and cuDNN attention apply on CUDA only, and the config fields validate."""
from __future__ import annotations

import pytest
import torch

from brandgen.errors import InvalidInput
from brandgen.training.config import TrainConfig
from brandgen.training.loading import compile_note, make_optimizer, maybe_compile


def test_compile_only_on_cuda_only_when_asked_and_for_every_family():
    """Module.compile only wraps the block; nothing compiles until a forward runs, so this is cheap on the CPU."""
    from diffusers import SD3Transformer2DModel

    def compiled(model: torch.nn.Module) -> list[str]:
        return [type(m).__name__ for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]

    torch.manual_seed(0)
    sd3 = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=16)
    assert maybe_compile(sd3, enabled=True, device_type="cpu") == 0
    assert maybe_compile(sd3, enabled=False, device_type="cuda") == 0
    assert compiled(sd3) == []
    # SD3 declares no _repeated_blocks: its joint blocks come from TRAINING_REGIONS
    assert maybe_compile(sd3, enabled=True, device_type="cuda") == 2
    assert compiled(sd3) == ["JointTransformerBlock", "JointTransformerBlock"]
    plain = torch.nn.Linear(2, 2)
    assert maybe_compile(plain, enabled=True, device_type="cuda") == 0  # nothing known: eager, and the run says so
    assert compile_note(True, "cuda", 0, plain) == "no known blocks to compile in Linear"
    assert compile_note(True, "cuda", 2, sd3) is None and compile_note(False, "cuda", 0, sd3) == "off"
    assert compile_note(True, "cpu", 0, sd3) == "needs a CUDA GPU"


def test_compile_is_a_known_training_setting():
    cfg = TrainConfig.from_dict({"name": "acme", "compile": True}).validated()
    assert cfg.compile is True
    with pytest.raises(InvalidInput, match="Unknown training setting"):
        TrainConfig.from_dict({"name": "acme", "compiled": True})


def test_plain_adamw_on_cpu():
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer, name = make_optimizer("adamw", params, 1e-4, 0.0, "cpu")
    assert name == "adamw" and not optimizer.defaults.get("fused")


def test_cudnn_attention_is_on_by_default_on_cuda_and_can_be_turned_off():
    from types import SimpleNamespace

    from brandgen.training.trainer import LoraTrainer

    def uses_cudnn(settings: dict, device: str) -> bool:
        cfg = TrainConfig.from_dict({"name": "acme", **settings}).validated()
        return LoraTrainer._cudnn_attention(SimpleNamespace(config=cfg, accelerator=SimpleNamespace(
            device=torch.device(device))))

    assert uses_cudnn({}, "cuda") is True
    assert uses_cudnn({"cudnn_attention": False}, "cuda") is False
    assert uses_cudnn({}, "cpu") is False  # no cuDNN kernels, no gradient hooks on the CPU
    with pytest.raises(InvalidInput, match="cudnn_attention"):
        TrainConfig.from_dict({"name": "acme", "cudnn_attention": "no"})


def test_cuda_graph_says_why_it_cannot_run_instead_of_failing():
    from brandgen.training.cuda_graph import unavailable_reason

    assert unavailable_reason(True, "cuda", 1, "bf16", "sdxl") is None  # the case it is built for
    assert unavailable_reason(True, "cuda", 1, "no", "sd15") is None
    assert unavailable_reason(False, "cuda", 1, "bf16", "sdxl") == "off"
    assert "CUDA GPU" in unavailable_reason(True, "cpu", 1, "no", "sdxl")
    assert "several GPUs" in unavailable_reason(True, "cuda", 2, "bf16", "sdxl")
    assert "fp16" in unavailable_reason(True, "cuda", 1, "fp16", "sdxl")
    assert "UNet" in unavailable_reason(True, "cuda", 1, "bf16", "flux")
    assert TrainConfig.from_dict({"name": "acme", "cuda_graph": True}).cuda_graph is True
    with pytest.raises(InvalidInput, match="cuda_graph"):
        TrainConfig.from_dict({"name": "acme", "cuda_graph": "yes"})


def test_graphed_step_without_a_capture_is_the_trainers_eager_maths():
    """Shapes beyond max_graphs (and any capture failure) run eagerly: the same scaled backward accelerate does,
    accumulating into gradients that exist from the start (the graph needs them allocated)."""
    from brandgen.training.cuda_graph import GraphedStep

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    params = list(model.parameters())

    def loss_fn(noised: dict, cond: dict) -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(noised["noisy"] + cond["shift"]), noised["target"])

    batches = [({"noisy": torch.randn(3, 4), "target": torch.randn(3, 2)}, {"shift": torch.randn(3, 4)}) for _ in range(2)]
    step = GraphedStep(loss_fn, params, loss_scale=0.5, max_graphs=0)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    losses = [step(noised, cond) for noised, cond in batches]
    assert step.captured == 0 and step.failure is None
    got = [p.grad.clone() for p in params]

    for p in params:
        p.grad = None
    expected_losses = []
    for noised, cond in batches:
        loss = loss_fn(noised, cond)
        (loss / 2).backward()  # accelerate.backward with gradient_accumulation_steps=2
        expected_losses.append(loss.detach())
    assert torch.allclose(torch.stack(losses), torch.stack(expected_losses))
    assert not losses[0].requires_grad
    for g, p in zip(got, params):
        assert torch.allclose(g, p.grad)
