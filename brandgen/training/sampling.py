"""Looking at a model during training: validation images from cached prompt embeddings, and a loss at
fixed noise that is comparable before and after training (the per-step loss is too noisy for that)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from brandgen.training.families import Cond, Family


def render_images(
    pipe: Any,
    family: Family,
    cond: Cond,
    uncond: Cond,
    *,
    seeds: list[int],
    steps: int,
    guidance: float,
    resolution: int,
    device: torch.device,
    dtype: torch.dtype,
    autocast: Callable[[], AbstractContextManager],
    output_type: str = "pil",
) -> Any:
    """Run `pipe` on cached embeddings (its text encoders may be gone); the VAE visits the device only now."""
    cast = {k: v[None].to(device, dtype) for k, v in cond.items()}
    uncast = {k: v[None].to(device, dtype) for k, v in uncond.items()}
    denoiser = getattr(pipe, family.denoiser)
    was_training = denoiser.training
    denoiser.eval()
    vae_dtype = pipe.vae.dtype
    pipe.vae.to(device, dtype)
    try:
        with torch.no_grad(), autocast():
            out = pipe(
                **family.pipeline_kwargs(cast, uncast),
                height=resolution,
                width=resolution,
                num_inference_steps=steps,
                guidance_scale=guidance,
                num_images_per_prompt=len(seeds),
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                output_type=output_type,
            )
    finally:
        pipe.vae.to("cpu", vae_dtype)
        denoiser.train(was_training)
    return out.images


@torch.no_grad()
def fixed_noise_loss(
    model: Any,
    family: Family,
    items: list[dict[str, torch.Tensor]],
    *,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    autocast: Callable[[], AbstractContextManager],
    draws: int = 16,
    use_lora: bool = True,
) -> float:
    """Mean loss over `draws` (item, noise, timestep) triples fixed by `seed`. use_lora=False measures the
    base model (the LoRA's B matrices start at zero, so this is also the loss before training)."""
    was_training = model.training
    model.eval()
    model.enable_adapters() if use_lora else model.disable_adapters()
    total = 0.0
    try:
        for i in range(draws):
            item = {k: v[None].to(device, dtype) for k, v in items[i % len(items)].items()}
            latents = item.pop("latents")
            with autocast():
                total += family.loss(model, latents, item, torch.Generator().manual_seed(seed + 10_000 + i)).item()
    finally:
        model.enable_adapters()
        model.train(was_training)
    return total / draws


def save_samples(images: list[Any], folder: Path, step: int) -> list[str]:
    """Validation images as <folder>/step_<step>_<i>.png (the Train tab shows the newest); their paths."""
    folder.mkdir(exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"step_{step:06d}_{i}.png"
        image.save(path)
        paths.append(str(path))
    return paths
