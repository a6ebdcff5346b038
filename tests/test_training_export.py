"""LoRA outputs: the diffusers file and the kohya-style single file give the same images, metadata is
complete, the library lists the folder once, publishing is atomic, and Hub upload is skipped offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, FluxTransformer2DModel, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from brandgen.errors import InvalidInput
from brandgen.loras import DIFFUSERS_FILE, LoraLibrary, inspect_lora
from brandgen.training.export import export_lora, kohya_state_dict, publish, push_to_hub, sgm_module_name
from brandgen.training.families import FluxFamily
from training_helpers import BUILDERS, one_torch_thread  # noqa: F401 (autouse fixture)

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "conv2", "time_emb_proj"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_models")
    return {name: BUILDERS[name](root / name) for name in ("sd15", "sdxl", "flux")}


def _random_lora(model: torch.nn.Module, targets: list[str], rank: int = 4, alpha: float = 2.0) -> dict:
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return get_peft_model_state_dict(model)


def _export(family: str, model_dir: Path, out: Path) -> tuple[Path, Path]:
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    state = _random_lora(unet, UNET_TARGETS)
    details = {"rank": 4, "alpha": 2.0, "steps": 10, "resolution": 32, "dataset_hash": "abc"}
    exported = export_lora(
        out, "brand", family, "unet", unet, state, unet.peft_config["default"].to_dict(), "tiny", "acme", details
    )
    assert exported.kohya_file is not None, exported.kohya_note
    return exported.diffusers_file, exported.kohya_file


def _render(model_dir: Path, lora: Path | None) -> np.ndarray:
    pipe = DiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    return pipe(
        "acme, a red star icon",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(3),
    ).images


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_kohya_file_loads_into_a_fresh_pipeline_like_the_diffusers_file(family: str, models: dict, tmp_path: Path):
    diffusers_file, kohya_file = _export(family, models[family], tmp_path / "lora")
    with safe_open(str(kohya_file), framework="pt") as handle:
        keys, meta = list(handle.keys()), handle.metadata()
    assert all(
        k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys
    )
    if family == "sdxl":
        assert any("input_blocks" in k for k in keys) and not any("down_blocks" in k for k in keys)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}[family]
    assert meta["brandgen.base_family"] == family and meta["brandgen.trigger"] == "acme"
    assert inspect_lora(kohya_file).format == "kohya" and inspect_lora(diffusers_file).format == "diffusers"

    base = _render(models[family], None)
    with_diffusers = _render(models[family], diffusers_file)
    with_kohya = _render(models[family], kohya_file)
    assert np.abs(with_diffusers - base).max() > 1e-3
    assert np.abs(with_diffusers - with_kohya).max() < 1e-4


def test_sgm_names_follow_the_sdxl_layout():
    unet = type("U", (), {"config": type("C", (), {"layers_per_block": 2})(), "up_blocks": [object()] * 3})()
    assert (
        sgm_module_name("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", unet)
        == "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    )
    assert sgm_module_name("up_blocks.0.attentions.2.proj_out", unet) == "output_blocks.2.1.proj_out"
    assert sgm_module_name("mid_block.attentions.0.proj_in", unet) == "middle_block.1.proj_in"
    assert sgm_module_name("down_blocks.2.resnets.1.conv2", unet) == "input_blocks.8.0.out_layers.3"
    assert sgm_module_name("conv_in", unet) == "input_blocks.0.0"


def test_flux_kohya_fuses_qkv_with_the_same_weight_delta(models: dict):
    transformer = FluxTransformer2DModel.from_pretrained(models["flux"] / "transformer")
    alpha = 2.0
    state = _random_lora(transformer, list(FluxFamily.default_targets), rank=4, alpha=alpha)
    tensors = kohya_state_dict("flux", state, alpha, transformer)

    def delta(name: str) -> torch.Tensor:
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        return up @ down * (tensors[f"{name}.alpha"].item() / down.shape[0])

    def peft_delta(module: str) -> torch.Tensor:
        return state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"] * (alpha / 4)

    p = "transformer_blocks.0.attn"
    qkv = torch.cat([peft_delta(f"{p}.to_q"), peft_delta(f"{p}.to_k"), peft_delta(f"{p}.to_v")])
    assert torch.allclose(delta("lora_unet_double_blocks_0_img_attn_qkv"), qkv, atol=1e-6)
    assert torch.allclose(
        delta("lora_unet_double_blocks_0_img_mlp_0"), peft_delta("transformer_blocks.0.ff.net.0.proj")
    )
    s = "single_transformer_blocks.0"
    linear1 = delta("lora_unet_single_blocks_0_linear1")
    mlp_out = transformer.get_submodule(f"{s}.proj_mlp").out_features
    expected = torch.cat(
        [
            peft_delta(f"{s}.attn.to_q"),
            peft_delta(f"{s}.attn.to_k"),
            peft_delta(f"{s}.attn.to_v"),
            torch.zeros(mlp_out, linear1.shape[1]),
        ]
    )
    assert torch.allclose(linear1, expected, atol=1e-6)


def test_library_lists_a_trained_folder_once_and_publish_is_atomic(models: dict, tmp_path: Path):
    loras = tmp_path / "loras"
    library = LoraLibrary(loras)
    staging = tmp_path / "run" / "lora"
    _export("sd15", models["sd15"], staging)
    target = publish(staging, loras, "brand")
    assert not staging.exists() and (target / DIFFUSERS_FILE).is_file() and (target / "brand.safetensors").is_file()
    infos = library.scan()
    assert [(i.name, i.path.name, i.format) for i in infos] == [("brand", DIFFUSERS_FILE, "diffusers")]
    other = tmp_path / "run2" / "lora"
    _export("sd15", models["sd15"], other)
    with pytest.raises(InvalidInput, match="already exists"):
        publish(other, loras, "brand")


def test_hub_upload_is_skipped_cleanly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = push_to_hub(tmp_path, "someone/brand-lora")
    assert result["status"] == "skipped" and "HF_HUB_OFFLINE" in result["message"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    result = push_to_hub(tmp_path, "someone/brand-lora")
    assert result["status"] == "skipped" and "token" in result["message"]
    assert os.environ["HF_HUB_OFFLINE"] == "0"
