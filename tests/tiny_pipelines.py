"""Tiny random-weight pipelines of the real diffusers classes, built from configs (no downloads).

They exercise the same loading, LoRA and generation code paths as the Hub models they stand for.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
    StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel, EulerDiscreteScheduler,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

TEXT_DIM = 32


def tiny_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a byte-level alphabet and whole-word merges for the test prompts' and the asset
    templates' words, so a templated prompt fits 77 tokens as with a real CLIP vocabulary."""
    import re

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from brandgen.templates import load_asset_types

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(chars)})
    merges = []
    template_words = {w for t in load_asset_types().values()
                      for w in re.findall(r"[a-z]{2,}", f"{t.trigger} {t.prefix} {t.suffix} {t.negative}")}
    for word in ("red", "blue", "star", "icon", "circle", *sorted(template_words - {"red", "blue", "star", "icon"})):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _clip_text(tokenizer: CLIPTokenizer, projection: bool = False) -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _vae(latent_channels: int = 4, blocks: tuple[int, ...] = (32, 64), **kwargs) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=blocks, in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(blocks), up_block_types=["UpDecoderBlock2D"] * len(blocks),
        latent_channels=latent_channels, sample_size=32, **kwargs,
    )


def build_sd15(out: Path) -> Path:
    """SD1.5-family: UNet2DConditionModel + AutoencoderKL + CLIPTextModel, 32x32 pixels."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=_clip_text(tokenizer), tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def build_sdxl(out: Path) -> Path:
    """SDXL-family: two CLIP text encoders, added time/text conditioning."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=2 * TEXT_DIM, norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip_text(tokenizer), text_encoder_2=_clip_text(tokenizer, projection=True),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def build_flux(out: Path) -> Path:
    """FLUX-family: MMDiT transformer, CLIP + T5 text encoders, flow-matching scheduler."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
        axes_dims_rope=(4, 4, 8),
    )
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0,
    ))
    vae = _vae(latent_channels=1, blocks=(4,), norm_num_groups=1, use_quant_conv=False,
               use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_clip_text(tokenizer),
        tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tiny_tokenizer(max_length=64), transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def _tiny_t5(tokenizer: CLIPTokenizer, d_model: int = TEXT_DIM) -> T5EncoderModel:
    torch.manual_seed(0)
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0,
    ))


def _tiny_flow_vae() -> AutoencoderKL:
    return _vae(latent_channels=4, blocks=(4,), norm_num_groups=1, use_quant_conv=False,
                use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def build_sd3(out: Path) -> Path:
    """SD3-family: SD3Transformer2DModel (MMDiT) over 2x CLIPTextModelWithProjection + T5, flow matching.

    The pipeline pads the concatenated CLIP embeddings (2 x 32) to the T5 width, so T5 and the joint
    attention are 64 wide; the pooled projection is the two CLIP projections side by side (64).
    """
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=2 * TEXT_DIM,
        pooled_projection_dim=2 * TEXT_DIM,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_tiny_flow_vae(),
        text_encoder=_clip_text(tokenizer, projection=True), tokenizer=tokenizer,
        text_encoder_2=_clip_text(tokenizer, projection=True), tokenizer_2=tokenizer,
        text_encoder_3=_tiny_t5(tokenizer, d_model=2 * TEXT_DIM), tokenizer_3=tiny_tokenizer(max_length=32),
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def build_hidream(out: Path) -> Path:
    """HiDream-family: HiDreamImageTransformer2DModel (sparse MoE DiT) over 2x CLIP + T5 + a tiny
    LlamaForCausalLM whose hidden states are read per layer (llama_layers)."""
    from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_channels=[TEXT_DIM, 16], text_emb_dim=2 * TEXT_DIM, num_routed_experts=4,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1),
    ).eval()
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()
    # HiDream pads CLIP prompts to 128 tokens (its real CLIPs are long-context), so these CLIPs are too
    tokenizer = tiny_tokenizer(max_length=128)

    def long_clip() -> CLIPTextModelWithProjection:
        torch.manual_seed(0)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128, projection_dim=TEXT_DIM,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )).eval()

    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_tiny_flow_vae(),
        text_encoder=long_clip(), tokenizer=tokenizer, text_encoder_2=long_clip(), tokenizer_2=tokenizer,
        text_encoder_3=_tiny_t5(tokenizer), tokenizer_3=tiny_tokenizer(max_length=32),
        text_encoder_4=llama, tokenizer_4=tiny_tokenizer(max_length=32), transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out
