"""Pipelines and LoRA files for scripts/e2e_bench.py: full-size SDXL and FLUX.1-dev pipelines with random weights,
built from their published configs and saved as local diffusers folders (so every recipe loads them with
`from_pretrained`, as a user would), and two rank-32 LoRAs in each key format users bring.

No download: the tokenizer is brandgen-tiny's byte-level CLIP tokenizer (its ids fit every vocabulary; only the
padded lengths, 77 for CLIP and 512 for T5, matter for speed). `--tiny` builds the test suite's tiny pipelines.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_bench_models import sdxl_config, vae_config  # noqa: E402

TOKENIZER = ROOT / "assets" / "brandgen-tiny" / "tokenizer"
LORA_RANK = 32
LORA_FORMATS = ("diffusers", "peft", "kohya", "trainer")  # trainer = brandgen.training.export's own files
PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "flux": "FluxPipeline"}


def _tokenizer(max_length: int) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER), model_max_length=max_length)


def _clip(tokenizer: Any, hidden: int, layers: int, heads: int, act: str, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            hidden_act=act, projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5_xxl() -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(  # google/t5-v1_1-xxl encoder, as FLUX.1 ships it
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, tie_word_embeddings=False)).eval()


def scheduler(model: str) -> Any:
    """Built outside the GPU/bf16 init context: its tables stay float32 on the host, as from_pretrained makes them."""
    import diffusers

    if model == "sdxl":
        return diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                steps_offset=1, timestep_spacing="leading")
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                     max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def _full_size(model: str, schedule: Any) -> Any:
    import diffusers

    clip_tok = _tokenizer(77)
    if model == "sdxl":
        vae = diffusers.AutoencoderKL(**{**vae_config(4, False), "scaling_factor": 0.13025, "force_upcast": True})
        return diffusers.StableDiffusionXLPipeline(
            vae=vae, unet=diffusers.UNet2DConditionModel(**sdxl_config(False)),
            text_encoder=_clip(clip_tok, 768, 12, 12, "quick_gelu", False),
            text_encoder_2=_clip(clip_tok, 1280, 32, 20, "gelu", True), tokenizer=clip_tok, tokenizer_2=clip_tok,
            scheduler=schedule)
    return diffusers.FluxPipeline(
        vae=diffusers.AutoencoderKL(**vae_config(16, False)),
        transformer=diffusers.FluxTransformer2DModel(guidance_embeds=True),  # defaults = FLUX.1-dev
        text_encoder=_clip(clip_tok, 768, 12, 12, "quick_gelu", False), tokenizer=clip_tok,
        text_encoder_2=_t5_xxl(), tokenizer_2=_tokenizer(512), scheduler=schedule)


def build_pipeline_folder(model: str, folder: Path, tiny: bool, device: str) -> dict[str, Any]:
    """Write the pipeline to `folder` once (reused by later runs); returns how long it took."""
    import time

    if (folder / "model_index.json").is_file():
        return {"folder": str(folder), "built": False}
    start = time.perf_counter()
    if tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny_pipelines

        (tiny_pipelines.build_sdxl if model == "sdxl" else tiny_pipelines.build_flux)(folder)
    else:
        schedule = scheduler(model)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # random init in bf16 on the GPU: seconds, not minutes
        try:
            with torch.device(device):
                torch.manual_seed(0)
                pipe = _full_size(model, schedule)
        finally:
            torch.set_default_dtype(previous)
        pipe.save_pretrained(folder, safe_serialization=True)
        del pipe
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"folder": str(folder), "built": True, "build_s": round(time.perf_counter() - start, 1)}


def lora_files(model: str, folder: Path, out: Path, tiny: bool) -> dict[str, dict[str, Path]]:
    """LoRAs "a" and "b" (rank 32, alpha 16, the trainer's defaults; rank 4 with --tiny) on the trainer's default
    layers, each written as diffusers / peft / kohya files and as the project's trainer exports them."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from safetensors.torch import save_file

    from brandgen.lora_hotswap import slot_modules
    from brandgen.training.export import export_lora, kohya_state_dict
    from brandgen.training.families import FAMILIES

    family = FAMILIES[model]
    paths = {name: {fmt: out / name / f"{name}_{fmt}.safetensors" for fmt in LORA_FORMATS} for name in "ab"}
    if all(p.is_file() for files in paths.values() for p in files.values()):
        return paths
    cls = getattr(diffusers, PIPELINES[model])
    model_cls = diffusers.UNet2DConditionModel if model == "sdxl" else diffusers.FluxTransformer2DModel
    with torch.device("meta"):  # names and shapes only
        denoiser = model_cls.from_config(model_cls.load_config(folder / family.denoiser))
    rank = 4 if tiny else LORA_RANK
    alpha = rank / 2
    for seed, name in enumerate("ab", start=1):
        generator = torch.Generator().manual_seed(seed)
        state = {}
        for module in sorted(slot_modules(denoiser, family.default_targets)):
            layer = denoiser.get_submodule(module)
            state[f"{module}.lora_A.weight"] = (torch.randn(rank, layer.in_features, generator=generator)
                                                / layer.in_features ** 0.5).to(torch.bfloat16)
            state[f"{module}.lora_B.weight"] = (torch.randn(layer.out_features, rank, generator=generator)
                                                * 0.02).to(torch.bfloat16)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted({k.rsplit(".lora_", 1)[0] for k in state}))
        files = paths[name]
        files["peft"].parent.mkdir(parents=True, exist_ok=True)
        layers = f"{family.denoiser}_lora_layers"
        cls.save_lora_weights(files["peft"].parent, weight_name=files["peft"].name, safe_serialization=True,
                              **{layers: state, f"{family.denoiser}_lora_adapter_metadata": config.to_dict()})
        folded = {k: v * (alpha / rank) if ".lora_B." in k else v for k, v in state.items()}
        cls.save_lora_weights(files["diffusers"].parent, weight_name=files["diffusers"].name,  # training scripts
                              safe_serialization=True, **{layers: convert_state_dict_to_diffusers(folded)})
        # diffusers' converter of FLUX's BFL names is written for FLUX.1's own widths, so the tiny FLUX gets the
        # lora_transformer_<module> names (OneTrainer/ComfyUI; what the exporter writes for SD3 and HiDream)
        kohya_names = "sd3" if tiny and model == "flux" else model
        save_file(kohya_state_dict(kohya_names, state, alpha, denoiser), str(files["kohya"]))
        exported = export_lora(out / name / "trainer", name, model, family.denoiser, denoiser, state,
                               config.to_dict(), "bench", "", {"rank": rank, "alpha": alpha})
        exported.diffusers_file.replace(files["trainer"])
    return paths
