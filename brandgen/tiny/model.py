"""brandgen-tiny components built from plain configs, assembled into a standard StableDiffusionPipeline.

Using the SD1.5 classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel) keeps LoRA training,
load_lora_weights, set_adapters and fuse_lora working exactly as they do for SD1.5 checkpoints.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from brandgen.tiny import tokenizer as tiny_tokenizer

SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "steps_offset")

MODEL_CARD = """---
license: apache-2.0
library_name: diffusers
pipeline_tag: text-to-image
tags: [brandgen, stable-diffusion, tiny, {tag}]
---
# brandgen-tiny

The embedded default model of BrandGen: a {params:.1f}M-parameter text-to-image model in the SD1.5 family
(UNet2DConditionModel + AutoencoderKL + CLIPTextModel, {size}x{size} pixels), trained from scratch {data}
It exists so the app works offline and LoRA training can be tried on any machine; it is not a general image model.

- Recipe: `python -m brandgen.tiny.train --config brandgen/tiny/recipe.json` (see `brandgen/tiny/` and
  docs/TINY_MODEL.md).
- Prompts like "a red star icon", "outline bell icon, teal" or the app's templates ("bgicon, flat vector icon of ...").
- Weights: float16 safetensors; load with `DiffusionPipeline.from_pretrained(path)` (on a CPU pass
  `torch_dtype=torch.float32`: PyTorch's CPU kernels do not run this UNet in float16).
- License: Apache-2.0, like the BrandGen repository.{notice}
"""
CARD_DATA = {  # data kind -> (tag, what it learned from, licence note)
    "icons": ("icon-sets",
              ("on real icons of permissively licensed sets (Tabler, Lucide, Phosphor, Fluent; brand and logo icons "
               "left out), each tinted in many colours on plain backgrounds with captions from the icons' names, "
               "tags and synonyms. It draws everyday UI icons by name in outline, filled, duotone and Fluent "
               "styles, in named or hex colours."),
              " The icon sets' licences (MIT, ISC) are reproduced in THIRD_PARTY_NOTICES.txt."),
    "procedural": ("procedural-data",
                   ("on procedurally drawn flat icons (`brandgen/tiny/data.py`): colours, basic shapes, icon/logo "
                    "styles and backgrounds."),
                   " Data: synthetic only."),
}


def trained_on(cfg: dict) -> str:
    """The CARD_DATA kind of a training config: an icon pack, or the procedural shapes (v1, --smoke)."""
    return "icons" if cfg["data"].get("pack") else "procedural"


def text_config_for(cfg: dict, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """The recipe's text encoder sized to the tokenizer (vocabulary, special ids, max length)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **cfg["text_encoder"],
    )


def build_components(cfg: dict, tokenizer: CLIPTokenizer | None = None) -> dict:
    """Fresh, randomly initialised components for a recipe config (no downloads).

    The tokenizer is trained locally unless given or cached in cfg["tokenizer_dir"].
    """
    if tokenizer is None:
        tok_cfg = cfg.get("tokenizer", {})
        if cfg.get("tokenizer_dir"):
            tokenizer = tiny_tokenizer.load_or_train(cfg["tokenizer_dir"], tok_cfg.get("vocab_size", 1536))
        else:
            tokenizer = tiny_tokenizer.train_tokenizer(tok_cfg.get("vocab_size", 1536))
    text_config = text_config_for(cfg, tokenizer)
    text_encoder = CLIPTextModel(text_config)
    unet_cfg = dict(cfg["unet"])
    unet_cfg.setdefault("cross_attention_dim", text_config.hidden_size)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**cfg["vae"])
    schedule = {k: cfg["scheduler"][k] for k in SCHEDULE_KEYS if k in cfg["scheduler"]}
    noise_scheduler = DDPMScheduler(**schedule)
    scheduler = DPMSolverMultistepScheduler(**schedule, **cfg["scheduler"].get("inference", {}))
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "text_config": text_config,
            "tokenizer": tokenizer, "scheduler": scheduler, "noise_scheduler": noise_scheduler}


def assemble_pipeline(components: dict) -> StableDiffusionPipeline:
    """A standard SD pipeline (no safety checker: the model only draws flat shapes)."""
    return StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
        unet=components["unet"], scheduler=components["scheduler"], safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def load_trained(components: dict, folder: str | Path, fresh_vae: bool = False) -> dict:
    """Start from a saved brandgen-tiny folder: its UNet, VAE (and latent scaling factor) and text encoder
    replace the fresh components, so UNet training can continue across machines from the returned weights.
    fresh_vae keeps the recipe's new autoencoder; the UNet then takes every saved weight but the latent-facing
    conv_in / conv_out where the latent channels changed (those start fresh)."""
    folder = Path(folder)
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        if not (folder / name / "config.json").exists():
            raise ValueError(f"init_model {folder} is not a saved brandgen-tiny pipeline (no {name}/config.json)")
        if name == "vae" and fresh_vae:
            continue
        saved = cls.from_pretrained(folder / name, torch_dtype=torch.float32)
        state = saved.state_dict()
        if name == "unet" and fresh_vae:
            own = components["unet"].state_dict()
            state = {k: v for k, v in state.items()
                     if not (k.startswith(("conv_in.", "conv_out.")) and k in own and own[k].shape != v.shape)}
            state = {**{k: v for k, v in own.items() if k not in state}, **state}
        try:
            components[name].load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"init_model {folder}: its {name} does not fit this recipe ({str(exc)[:300]})") from exc
        if name == "vae":
            components["vae"].register_to_config(scaling_factor=saved.config.scaling_factor)
    return components


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(pipe: StableDiffusionPipeline) -> dict[str, int]:
    return {name: count_parameters(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")}


def save_pipeline(pipe: StableDiffusionPipeline, out_dir: str | Path, data: str = "procedural") -> Path:
    """Save as float16 safetensors in shards under 16 MiB (keeps every file small enough for plain git).

    A copy is converted, so the caller's pipeline keeps its dtype and weights; `data` ("icons" from an icon pack,
    or "procedural") picks what the model card says it learned from.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(pipe)
    for name in ("unet", "vae", "text_encoder"):  # nn.Module.to: skips diffusers' fp32-module warning
        torch.nn.Module.to(getattr(half, name), torch.float16)
    half.save_pretrained(out, safe_serialization=True, max_shard_size="15MB")
    tok_dir = out / "tokenizer"
    tiny_tokenizer.save_tokenizer(pipe.tokenizer, tok_dir)
    counts = parameter_counts(pipe)
    size = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    tag, learned, notice = CARD_DATA[data]
    card = MODEL_CARD.format(params=sum(counts.values()) / 1e6, size=size, tag=tag, data=learned, notice=notice)
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


def folder_size(path: str | Path) -> tuple[int, int]:
    """(total bytes, largest file bytes) of a saved model folder."""
    sizes = [p.stat().st_size for p in Path(path).rglob("*") if p.is_file()]
    return sum(sizes), max(sizes, default=0)
