"""One set of random LoRA factors written in the three key formats users bring: peft (`lora_A`/`lora_B` with the
adapter config in the header), diffusers (what `save_lora_weights(convert_state_dict_to_diffusers(...))` writes:
old `lora.down`/`lora.up` keys for attention, peft keys for other layers, no alpha) and kohya (`lora_unet_...` /
`lora_transformer_...` with `.alpha`, from the project's own exporter). All three mean the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from brandgen.lora_hotswap import slot_modules

FORMATS = ("diffusers", "peft", "kohya")


def random_peft_state(model: torch.nn.Module, targets: tuple[str, ...], rank: int, seed: int
                      ) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(slot_modules(model, targets)):
        layer = model.get_submodule(name)
        state[f"{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=generator) / layer.in_features ** 0.5
        state[f"{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.3
    return state


def write_formats(pipe: Any, family: str, folder: Path, stem: str, targets: tuple[str, ...], rank: int, seed: int,
                  kohya_family: str | None = None) -> dict[str, Path]:
    """The same LoRA (alpha = rank / 2, so strength 0.5 per layer) as `folder/<stem>_<format>.safetensors`."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from safetensors.torch import save_file

    from brandgen.training.export import kohya_state_dict

    denoiser = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    model = getattr(pipe, denoiser)
    state = random_peft_state(model, targets, rank, seed)
    alpha = rank / 2
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted({k.rsplit(".lora_", 1)[0] for k in state}))
    paths = {fmt: folder / f"{stem}_{fmt}.safetensors" for fmt in FORMATS}
    type(pipe).save_lora_weights(paths["peft"].parent, weight_name=paths["peft"].name, safe_serialization=True,
                                 **{f"{denoiser}_lora_layers": state,
                                    f"{denoiser}_lora_adapter_metadata": config.to_dict()})
    folded = {k: v * (alpha / rank) if ".lora_B." in k else v for k, v in state.items()}  # no alpha in this format
    type(pipe).save_lora_weights(paths["diffusers"].parent, weight_name=paths["diffusers"].name,
                                 safe_serialization=True,
                                 **{f"{denoiser}_lora_layers": convert_state_dict_to_diffusers(folded)})
    save_file(kohya_state_dict(kohya_family or family, state, alpha, model), str(paths["kohya"]))
    return paths
