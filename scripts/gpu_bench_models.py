"""Full-size backbone configs (as published) and random inputs of the right shapes, for scripts/gpu_bench.py.

Tiny variants of each run the same code paths on CPU (--tiny). No weights are downloaded: every model is built
from its config with random weights: speed and memory do not depend on the values (HiDream's MoE routing does,
slightly; random gates spread tokens over the experts about evenly).
"""

from __future__ import annotations

from typing import Any

import torch

TEXT_ENCODER_PARAMS_B = {"sdxl": 0.82, "flux": 4.88, "hidream": 13.6}  # CLIP-L/G, T5-XXL enc, Llama-3.1-8B
VAE_PARAMS_B = 0.084
CORE_ESTIMATE_S = {"sdxl": 60, "flux": 90, "hidream": 120}  # time kept for later models' core sections
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out", "to_out.0")


# ----- model cases ----------------------------------------------------------------------------------------
def sdxl_config(tiny: bool) -> dict[str, Any]:
    if tiny:
        return dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                    transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
                    cross_attention_dim=64, norm_num_groups=32)
    return dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
        sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
        act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048,
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        upcast_attention=False,
    )


def flux_config(tiny: bool) -> dict[str, Any]:
    if tiny:
        return dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=16,
                    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                    axes_dims_rope=(4, 6, 6))
    return dict(guidance_embeds=True)  # FluxTransformer2DModel defaults = FLUX.1 (19 double + 38 single, 3072)


def hidream_config(tiny: bool) -> dict[str, Any]:
    if tiny:
        return dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1,
                    attention_head_dim=16, num_attention_heads=2, caption_channels=[32, 32], text_emb_dim=16,
                    num_routed_experts=4, num_activated_experts=2, axes_dims_rope=(8, 4, 4),
                    max_resolution=(8, 8), llama_layers=[0, 1])
    return dict(  # HiDream-ai/HiDream-I1-Full transformer/config.json
        patch_size=2, in_channels=16, out_channels=16, num_layers=16, num_single_layers=32, attention_head_dim=128,
        num_attention_heads=20, caption_channels=[4096, 4096], text_emb_dim=2048, num_routed_experts=4,
        num_activated_experts=2, axes_dims_rope=(64, 32, 32), max_resolution=(128, 128),
        llama_layers=list(range(32)) + [31] * 16,
    )


def vae_config(latent_channels: int, tiny: bool) -> dict[str, Any]:
    blocks = [8, 16] if tiny else [128, 256, 512, 512]
    config = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(blocks),
                  up_block_types=["UpDecoderBlock2D"] * len(blocks), block_out_channels=blocks,
                  layers_per_block=1 if tiny else 2, latent_channels=latent_channels,
                  norm_num_groups=4 if tiny else 32, sample_size=32 if tiny else 1024)
    if latent_channels == 16:  # FLUX / HiDream VAE
        config.update(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    return config


def sdxl_inputs(model: Any, batch: int, device: str, dtype: torch.dtype, tiny: bool) -> dict[str, Any]:
    cfg = model.config
    side = 8 if tiny else 128  # latent side for 1024 px
    text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    r = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)  # noqa: E731
    return dict(sample=r(batch, 4, side, side), timestep=torch.tensor(500.0, device=device),
                encoder_hidden_states=r(batch, 77, cfg.cross_attention_dim),
                added_cond_kwargs={"text_embeds": r(batch, text),
                                   "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * batch,
                                                            device=device, dtype=dtype)})


def flux_inputs(model: Any, batch: int, device: str, dtype: torch.dtype, tiny: bool) -> dict[str, Any]:
    cfg = model.config
    image_tokens, text_tokens = (16, 8) if tiny else (4096, 512)  # 1024 px: 64x64 packed latents; T5 512
    r = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)  # noqa: E731
    side = int(image_tokens ** 0.5)
    img_ids = torch.zeros(side, side, 3, device=device)
    img_ids[..., 1] += torch.arange(side, device=device)[:, None]
    img_ids[..., 2] += torch.arange(side, device=device)[None, :]
    return dict(hidden_states=r(batch, image_tokens, cfg.in_channels),
                encoder_hidden_states=r(batch, text_tokens, cfg.joint_attention_dim),
                pooled_projections=r(batch, cfg.pooled_projection_dim),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                img_ids=img_ids.reshape(-1, 3).to(dtype),
                txt_ids=torch.zeros(text_tokens, 3, device=device, dtype=dtype),
                guidance=torch.full((batch,), 3.5, device=device, dtype=dtype), return_dict=False)


def hidream_inputs(model: Any, batch: int, device: str, dtype: torch.dtype, tiny: bool) -> dict[str, Any]:
    cfg = model.config
    side, tokens = (8, 8) if tiny else (128, 128)
    r = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)  # noqa: E731
    llama_layers = max(cfg.llama_layers) + 1
    return dict(hidden_states=r(batch, cfg.in_channels, side, side),
                timesteps=torch.full((batch,), 500.0, device=device, dtype=dtype),
                encoder_hidden_states_t5=r(batch, tokens, cfg.caption_channels[0]),
                encoder_hidden_states_llama3=r(llama_layers, batch, tokens, cfg.caption_channels[1]),
                pooled_embeds=r(batch, cfg.text_emb_dim), return_dict=False)


CASES: dict[str, dict[str, Any]] = {
    "sdxl": dict(label="SDXL base UNet", cls="UNet2DConditionModel", config=sdxl_config, inputs=sdxl_inputs,
                 steps=28, batch=2, latent=4, hotswap=True, fp8=False),
    "flux": dict(label="FLUX.1-dev transformer", cls="FluxTransformer2DModel", config=flux_config,
                 inputs=flux_inputs, steps=28, batch=1, latent=16, hotswap=True, fp8=False),
    "hidream": dict(label="HiDream-I1 Full transformer", cls="HiDreamImageTransformer2DModel",
                    config=hidream_config, inputs=hidream_inputs, steps=50, batch=2, latent=16, hotswap=False,
                    fp8=True),
}


def random_lora(model: torch.nn.Module, rank: int, seed: int, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """A peft-format LoRA with small random B, on every attention projection the model has."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in LORA_TARGETS):
            down = torch.randn(rank, module.in_features, generator=generator) / module.in_features ** 0.5
            up = torch.randn(module.out_features, rank, generator=generator) * 0.01
            state[f"{name}.lora_A.weight"] = down.to(device, dtype)
            state[f"{name}.lora_B.weight"] = up.to(device, dtype)
    return state
