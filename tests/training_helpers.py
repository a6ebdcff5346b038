"""Small shared pieces of the training tests: a brand-coloured image set and tiny model folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import tiny_pipelines
from brandgen.training.config import TrainConfig

TEAL, CORAL, CREAM = (15, 118, 110), (249, 115, 96), (253, 246, 227)


def brand_image(size: int = 32, variant: int = 0) -> Image.Image:
    """Cream background, a teal rounded tile and a coral dot: the kind of two-tone style a LoRA learns."""
    image = Image.new("RGB", (size, size), CREAM)
    draw = ImageDraw.Draw(image)
    pad = size // 8 + variant % 3
    draw.rounded_rectangle((pad, pad, size - pad, size - pad), radius=size // 6, fill=TEAL)
    r = size // 6 + variant % 2
    c = size // 2 + (variant % 4) - 2
    draw.ellipse((c - r, c - r, c + r, c + r), fill=CORAL)
    return image


def make_dataset(folder: Path, count: int = 1, size: int = 32, captions: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        brand_image(size, i).save(folder / f"image_{i:03d}.png")
        if captions:
            (folder / f"image_{i:03d}.txt").write_text("a teal tile with a coral dot, two-tone\n")
    return folder


def tiny_config(data: Path, model: str, **overrides) -> TrainConfig:
    """A run small enough for a shared 2-core CPU: 32 px, rank 4, no samples, no gradient checkpointing."""
    settings = dict(
        name="brand",
        base_model=model,
        data_dir=str(data),
        resolution=32,
        rank=4,
        alpha=4,
        lr=1e-3,
        allow_small_dataset=True,
        validation_images=0,
        gradient_checkpointing=False,
    )
    return TrainConfig(**{**settings, **overrides})


BUILDERS = {
    "sd15": tiny_pipelines.build_sd15,
    "sdxl": tiny_pipelines.build_sdxl,
    "sd3": tiny_pipelines.build_sd3,
    "flux": tiny_pipelines.build_flux,
    "hidream": tiny_pipelines.build_hidream,
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The CI machine's 2 cores are shared; two OpenMP threads that wait on each other under load run
    these tiny models 10-20x slower than one thread, so training tests use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
