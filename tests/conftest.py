"""Shared fixtures: tiny random-weight pipelines of real classes, a manager over them, LoRA files."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(2)

from brandgen.device import DeviceInfo  # noqa: E402
from brandgen.manager import PipelineManager  # noqa: E402
from brandgen.paths import AppPaths  # noqa: E402
from brandgen.registry import ModelRegistry  # noqa: E402

import tiny_pipelines  # noqa: E402
from app_server import free_port  # noqa: E402,F401 - re-exported for the tests

CPU = DeviceInfo("cpu", torch.float32, "CPU")


@pytest.fixture
def client(manager: PipelineManager):
    """The app served on 127.0.0.1 over the test manager, and a gradio_client talking to it."""
    from gradio_client import Client

    from brandgen.ui.app import build_app

    demo = build_app(manager)
    demo.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
    )
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "sd15": tiny_pipelines.build_sd15(root / "sd15"),
        "flux": tiny_pipelines.build_flux(root / "flux"),
    }


@pytest.fixture(scope="session")
def registry(tiny_dirs: dict[str, Path]) -> ModelRegistry:
    """The shipped registry with two tiny local models put first (the first is the default)."""
    shipped = ModelRegistry.from_file()
    base_sd = shipped.get("flat-design-icons")
    base_flux = shipped.get("flux1-schnell")
    tiny_sd = replace(base_sd, id="tiny-sd15", label="Tiny SD1.5", source_type="local",
                      source=str(tiny_dirs["sd15"]), native_resolution=(32, 32), default_steps=4)
    tiny_flux = replace(base_flux, id="tiny-flux", label="Tiny FLUX", source_type="local",
                        source=str(tiny_dirs["flux"]), native_resolution=(32, 32), commercial_use=False)
    return ModelRegistry({tiny_sd.id: tiny_sd, tiny_flux.id: tiny_flux,
                          **{e.id: e for e in shipped.entries()}})


@pytest.fixture
def app_paths(tmp_path: Path) -> AppPaths:
    paths = AppPaths(tmp_path / "home")
    paths.loras.mkdir(parents=True)
    return paths


@pytest.fixture
def manager(registry: ModelRegistry, app_paths: AppPaths) -> PipelineManager:
    return PipelineManager(registry=registry, paths=app_paths, device=CPU)


def make_sd15_lora(pipeline_dir: Path, out_file: Path, seed: int = 1, rank: int = 4) -> Path:
    """A real peft LoRA on the tiny UNet's attention, with non-zero B so it changes outputs."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(pipeline_dir / "unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(out_file.parent, unet_lora_layers=layers,
                                             weight_name=out_file.name, safe_serialization=True)
    return out_file
