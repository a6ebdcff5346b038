"""The per-family maths of LoRA training: which layers get LoRA, how text and images are encoded,
how noise is added and what the model must predict.

SD1.5/SDXL are DDPM models (epsilon or v-prediction, read from the scheduler config); SD3, FLUX and
HiDream are flow-matching models (logit-normal sigmas, target = noise - latents), following the
diffusers example training scripts for each family.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from brandgen.errors import InvalidInput

Cond = dict[str, torch.Tensor]
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "HiDreamImagePipeline": "hidream",
}


def _to_device(values: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU tensor onto `like`'s device without waiting for the GPU (a pageable copy syncs the stream, which
    would keep the host from preparing the next step while the GPU runs this one)."""
    values = values.to(dtype or values.dtype)
    if like.device.type != "cuda":
        return values.to(like.device)
    return values.pin_memory().to(like.device, non_blocking=True)


def _randn(shape: torch.Size | tuple, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Noise drawn on the CPU from a per-step generator, so runs and resumes repeat exactly on any device."""
    return _to_device(torch.randn(shape, generator=generator, dtype=torch.float32), like, like.dtype)


class Family:
    """SD1.5: UNet2DConditionModel conditioned on one CLIP text encoder."""

    name = "sd15"
    denoiser = "unet"
    text_encoders: tuple[str, ...] = ("text_encoder",)
    # the linear layers of every transformer block (what kohya-ss trains by default); convs are opt-in
    default_targets: tuple[str, ...] = (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "proj_in",
        "proj_out",
        "ff.net.0.proj",
        "ff.net.2",
    )
    default_guidance = 7.0
    default_steps = 25
    default_resolution = 512
    # TrainConfig.fused_lora applies (brandgen/training/fused_lora.py): SDXL's step 1.86x -> 1.48x of its floor
    fused_lora = True
    high_noise = False  # TrainConfig.timesteps == "high-noise" (DDPM families only; flow models sample logit-normal)

    def use_timesteps(self, mode: str) -> None:
        """TrainConfig.timesteps: "high-noise" draws DDPM timesteps with a density rising with t."""
        self.high_noise = mode == "high-noise"

    def setup(self, pipe: Any) -> None:
        """Remember what the loss needs from the pipeline before its text encoders are freed."""
        self.vae_config = pipe.vae.config
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.model_config = getattr(pipe, self.denoiser).config
        self.scheduler = self.make_scheduler(pipe)

    def make_scheduler(self, pipe: Any) -> Any:
        return DDPMScheduler.from_config(pipe.scheduler.config)

    def divisibility(self) -> int:
        """Pixel multiple the model accepts: the VAE factor times the UNet's downsampling."""
        return self.vae_scale * 2 ** (len(self.model_config.block_out_channels) - 1)

    # ----- caching -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, pipe: Any, prompts: list[str], device: torch.device) -> Cond:
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return {"prompt_embeds": embeds}

    @torch.no_grad()
    def encode_images(self, vae: Any, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE posterior's mean, scaled for the denoiser. Its std is tiny for trained VAEs, so the mean is
        cached once (as kohya-ss does) instead of sampling every step."""
        mean = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
        return self.scale_latents(mean.float()).cpu()

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        shift = getattr(self.vae_config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae_config.scaling_factor

    def image_cond(self, original_size: tuple[int, int], crop: tuple[int, int], bucket: tuple[int, int]) -> Cond:
        return {}

    # ----- training --------------------------------------------------------------------------------
    def loss(self, model: Any, latents: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        return self.loss_from(model, self.noised(latents, generator), cond)

    def noised(self, latents: torch.Tensor, generator: torch.Generator) -> Cond:
        """The random part of a step (noise, timesteps, target), drawn on the CPU. Kept apart from `loss_from`
        so a CUDA graph can replay the model's part with these as inputs (brandgen/training/cuda_graph.py)."""
        sched = self.scheduler
        noise = _randn(latents.shape, generator, latents)
        total = sched.config.num_train_timesteps
        if self.high_noise:  # density rising linearly with t: high-noise steps, where a palette is decided
            u = torch.rand((latents.shape[0],), generator=generator)
            steps = (total * u.sqrt()).long().clamp(max=total - 1)
        else:
            steps = torch.randint(0, total, (latents.shape[0],), generator=generator)
        steps = _to_device(steps, latents)
        noisy = sched.add_noise(latents, noise, steps)
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, steps)
        else:
            target = noise
        return {"noisy": noisy, "timesteps": steps, "target": target}

    def loss_from(self, model: Any, noised: Cond, cond: Cond) -> torch.Tensor:
        """The model's prediction against the target: only device work, no host syncs."""
        pred = model(noised["noisy"], noised["timesteps"], **self.model_kwargs(cond), return_dict=False)[0]
        return F.mse_loss(pred.float(), noised["target"].float())

    def model_kwargs(self, cond: Cond) -> dict[str, Any]:
        return {"encoder_hidden_states": cond["prompt_embeds"]}

    # ----- sampling ---------------------------------------------------------------------------------
    def pipeline_kwargs(self, cond: Cond, uncond: Cond | None) -> dict[str, Any]:
        """Arguments that let the pipeline run from cached embeddings, without its text encoders."""
        kwargs = {"prompt_embeds": cond["prompt_embeds"]}
        if uncond is not None:
            kwargs["negative_prompt_embeds"] = uncond["prompt_embeds"]
        return kwargs


class SDXLFamily(Family):
    """SDXL: two CLIP encoders; the UNet also takes the pooled text embedding and size/crop "time ids"."""

    name = "sdxl"
    text_encoders = ("text_encoder", "text_encoder_2")
    default_guidance = 6.0
    default_resolution = 1024

    @torch.no_grad()
    def encode_text(self, pipe: Any, prompts: list[str], device: torch.device) -> Cond:
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def image_cond(self, original_size: tuple[int, int], crop: tuple[int, int], bucket: tuple[int, int]) -> Cond:
        return {"time_ids": torch.tensor([*original_size, *crop, *bucket], dtype=torch.float32)}

    def model_kwargs(self, cond: Cond) -> dict[str, Any]:
        return {
            "encoder_hidden_states": cond["prompt_embeds"],
            "added_cond_kwargs": {"text_embeds": cond["pooled_prompt_embeds"], "time_ids": cond["time_ids"]},
        }

    def pipeline_kwargs(self, cond: Cond, uncond: Cond | None) -> dict[str, Any]:
        kwargs = {"prompt_embeds": cond["prompt_embeds"], "pooled_prompt_embeds": cond["pooled_prompt_embeds"]}
        if uncond is not None:
            kwargs.update(
                negative_prompt_embeds=uncond["prompt_embeds"],
                negative_pooled_prompt_embeds=uncond["pooled_prompt_embeds"],
            )
        return kwargs


class FlowFamily(Family):
    """Shared flow-matching loss: x_t = (1 - s) x0 + s noise, s logit-normal; the model predicts noise - x0."""

    denoiser = "transformer"
    # measured on FLUX: no faster (353 vs 351 ms) and the compiled step kept the merged weights (+9 GB)
    fused_lora = False
    default_guidance = 4.5
    default_steps = 28
    default_resolution = 1024

    def make_scheduler(self, pipe: Any) -> Any:
        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def use_timesteps(self, mode: str) -> None:
        if mode != "uniform":
            raise InvalidInput(f"timesteps {mode!r} is for SD1.5/SDXL models; {self.name} is a flow model, which "
                               "samples its noise levels logit-normally already: use 'uniform'.")

    def divisibility(self) -> int:
        return self.vae_scale * int(getattr(self.model_config, "patch_size", None) or 2)

    def sample_sigmas(
        self, batch: int, generator: torch.Generator, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit-normal(0, 1) positions on the training schedule (SD3 paper), read as (timesteps, sigmas)."""
        sched = self.scheduler
        u = torch.sigmoid(torch.randn(batch, generator=generator))
        index = (u * sched.config.num_train_timesteps).long().clamp(max=len(sched.timesteps) - 1)
        timesteps = _to_device(sched.timesteps[index], like)
        sigmas = _to_device(sched.sigmas[index], like, like.dtype).view(-1, 1, 1, 1)
        return timesteps, sigmas

    def noised(self, latents: torch.Tensor, generator: torch.Generator) -> Cond:
        noise = _randn(latents.shape, generator, latents)
        timesteps, sigmas = self.sample_sigmas(latents.shape[0], generator, latents)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        return {"noisy": noisy, "timesteps": timesteps, "target": noise - latents}

    def loss_from(self, model: Any, noised: Cond, cond: Cond) -> torch.Tensor:
        pred = self.predict(model, noised["noisy"], noised["timesteps"], cond)
        return F.mse_loss(pred.float(), noised["target"].float())

    def predict(self, model: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Cond) -> torch.Tensor:
        raise NotImplementedError


# the image and text streams' attention projections of an MMDiT block (SD3 and FLUX name them alike)
MMDIT_ATTENTION_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)


class SD3Family(FlowFamily):
    """SD3/3.5: MMDiT over CLIP-L + CLIP-G + T5 embeddings and a pooled CLIP vector."""

    name = "sd3"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    default_targets = MMDIT_ATTENTION_TARGETS

    @torch.no_grad()
    def encode_text(self, pipe: Any, prompts: list[str], device: torch.device) -> Cond:
        length = min(256, pipe.tokenizer_3.model_max_length) if pipe.tokenizer_3 is not None else 256
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=length,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def predict(self, model: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Cond) -> torch.Tensor:
        return model(
            hidden_states=noisy,
            timestep=timesteps,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            return_dict=False,
        )[0]

    pipeline_kwargs = SDXLFamily.pipeline_kwargs


class FluxFamily(FlowFamily):
    """FLUX.1: latents packed into 2x2 patches with position ids; guidance is an input of [dev] models."""

    name = "flux"
    text_encoders = ("text_encoder", "text_encoder_2")
    default_targets = (
        *MMDIT_ATTENTION_TARGETS,
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    )
    default_guidance = 3.5
    train_guidance = 3.5  # the diffusers FLUX LoRA script's default for guidance-distilled [dev]

    def divisibility(self) -> int:
        return self.vae_scale * 2

    @torch.no_grad()
    def encode_text(self, pipe: Any, prompts: list[str], device: torch.device) -> Cond:
        length = min(512, pipe.tokenizer_2.model_max_length)
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1, max_sequence_length=length
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def predict(self, model: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Cond) -> torch.Tensor:
        from diffusers import FluxPipeline

        b, c, h, w = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
        embeds = cond["prompt_embeds"]
        txt_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        guidance = None
        if getattr(self.model_config, "guidance_embeds", False):
            guidance = torch.full((b,), self.train_guidance, device=noisy.device, dtype=torch.float32)
        pred = model(
            hidden_states=packed,
            timestep=timesteps / 1000,
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return FluxPipeline._unpack_latents(pred, h * self.vae_scale, w * self.vae_scale, self.vae_scale)

    def pipeline_kwargs(self, cond: Cond, uncond: Cond | None) -> dict[str, Any]:
        return {"prompt_embeds": cond["prompt_embeds"], "pooled_prompt_embeds": cond["pooled_prompt_embeds"]}


class HiDreamFamily(FlowFamily):
    """HiDream-I1: sparse MoE DiT over CLIP x2 + T5 + Llama-3.1 hidden states; its output is -(noise - x0)."""

    name = "hidream"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4")
    default_targets = ("to_q", "to_k", "to_v", "to_out")
    default_guidance = 5.0

    def make_scheduler(self, pipe: Any) -> Any:
        config = dict(pipe.scheduler.config)
        config.setdefault("shift", 3.0)
        return FlowMatchEulerDiscreteScheduler.from_config(config)

    @torch.no_grad()
    def encode_text(self, pipe: Any, prompts: list[str], device: torch.device) -> Cond:
        t5, _, llama, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=128,
        )
        # llama is [layers, batch, seq, dim]; cache it batch-first like everything else
        return {"prompt_embeds_t5": t5, "prompt_embeds_llama3": llama.transpose(0, 1), "pooled_prompt_embeds": pooled}

    def predict(self, model: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Cond) -> torch.Tensor:
        out = model(
            hidden_states=noisy,
            timesteps=timesteps,
            encoder_hidden_states_t5=cond["prompt_embeds_t5"],
            encoder_hidden_states_llama3=cond["prompt_embeds_llama3"].transpose(0, 1).contiguous(),
            pooled_embeds=cond["pooled_prompt_embeds"],
            return_dict=False,
        )[0]
        return -out

    def pipeline_kwargs(self, cond: Cond, uncond: Cond | None) -> dict[str, Any]:
        def pack(c: Cond) -> tuple:
            return (
                c["prompt_embeds_t5"],
                c["prompt_embeds_llama3"].transpose(0, 1).contiguous(),
                c["pooled_prompt_embeds"],
            )

        t5, llama, pooled = pack(cond)
        kwargs = {"prompt_embeds_t5": t5, "prompt_embeds_llama3": llama, "pooled_prompt_embeds": pooled}
        if uncond is not None:
            n_t5, n_llama, n_pooled = pack(uncond)
            kwargs.update(
                negative_prompt_embeds_t5=n_t5,
                negative_prompt_embeds_llama3=n_llama,
                negative_pooled_prompt_embeds=n_pooled,
            )
        return kwargs


# resnet layers of a UNet: small models (BrandGen Tiny) need them to pick up a palette; opt-in for big ones
UNET_CONV_TARGETS = ("conv1", "conv2", "time_emb_proj")

FAMILIES: dict[str, type[Family]] = {
    cls.name: cls for cls in (Family, SDXLFamily, SD3Family, FluxFamily, HiDreamFamily)
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]()
    except KeyError:
        raise ValueError(f"No LoRA trainer for model family {name!r}; known: {', '.join(FAMILIES)}.") from None
