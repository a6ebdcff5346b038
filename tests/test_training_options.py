"""Training speed options: regional compile and cuDNN attention apply on CUDA only, and the config fields validate."""
from __future__ import annotations

import pytest
import torch

from brandgen.errors import InvalidInput
from brandgen.training.config import TrainConfig
from brandgen.training.loading import make_optimizer, maybe_compile


class _Blocks(torch.nn.Module):
    _repeated_blocks = ["Linear"]

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)
        self.compiled_with: dict | None = None

    def compile_repeated_blocks(self, **kwargs) -> None:
        self.compiled_with = kwargs


def test_compile_only_on_cuda_and_only_when_asked():
    model = _Blocks()
    assert maybe_compile(model, enabled=True, device_type="cpu") is False
    assert maybe_compile(model, enabled=False, device_type="cuda") is False
    assert model.compiled_with is None
    assert maybe_compile(model, enabled=True, device_type="cuda") is True
    assert model.compiled_with == {"fullgraph": False, "dynamic": False}


def test_models_without_repeated_blocks_are_left_eager():
    plain = torch.nn.Linear(2, 2)
    assert maybe_compile(plain, enabled=True, device_type="cuda") is False


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
