"""Every model family trains a LoRA on a tiny random-weight pipeline: the loss falls on an overfit image,
the LoRA is exported, and a fresh pipeline that loads the file renders exactly what the trained model does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from brandgen.loras import DIFFUSERS_FILE, inspect_lora, read_metadata_json
from brandgen.paths import AppPaths
from brandgen.training.families import UNET_CONV_TARGETS, Family
from brandgen.training.trainer import LoraTrainer
from training_helpers import BUILDERS, make_dataset, one_torch_thread, tiny_config  # noqa: F401 (autouse fixture)

# Tiny random UNets cannot overfit through attention LoRAs alone; convolution LoRAs give them the capacity.
UNET_TARGETS = [*Family.default_targets, *UNET_CONV_TARGETS, "conv_in", "conv_out"]
CASES = {  # family: (target modules or [] for the family default, steps, learning rate, gradient checkpointing)
    "sd15": (UNET_TARGETS, 40, 1e-2, True),
    "sdxl": (UNET_TARGETS, 40, 1e-2, False),
    "sd3": ([], 30, 1e-2, True),
    "flux": ([], 30, 1e-2, False),
    "hidream": ([], 30, 1e-2, True),
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_models")
    return {family: build(root / family) for family, build in BUILDERS.items()}


@pytest.mark.parametrize("family", list(CASES))
def test_family_trains_exports_and_reloads_identically(family: str, model_dirs: dict[str, Path], tmp_path: Path):
    targets, steps, lr, checkpointing = CASES[family]
    data = make_dataset(tmp_path / "data", count=1)
    paths = AppPaths(tmp_path / "home")
    config = tiny_config(
        data,
        str(model_dirs[family]),
        name=f"brand-{family}",
        trigger="acmebrand",
        lr=lr,
        max_steps=steps,
        validation_images=1,
        validation_steps=2,
        gradient_checkpointing=checkpointing,
        checkpoint_every=0,
        target_modules=targets,
    )
    trainer = LoraTrainer(config, paths=paths, device="cpu")
    result = trainer.run()

    assert result.status == "done" and result.steps == steps
    # the fused LoRA path (TrainConfig.fused_lora, on by default) where it was measured to pay: UNet families
    assert (trainer.speed.fused_layers > 0) == (family in ("sd15", "sdxl"))
    base, final = result.metrics["eval_loss_base"], result.metrics["eval_loss_final"]
    assert final < 0.85 * base, f"{family}: fixed-noise loss {base:.3f} -> {final:.3f}"
    losses = [row["loss"] for row in trainer.history.rows]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])

    lora_dir = paths.loras / config.name
    assert result.lora_dir == lora_dir
    info = inspect_lora(lora_dir / DIFFUSERS_FILE)
    assert info.format == "diffusers" and info.base_family == family and info.trigger == "acmebrand"
    meta = read_metadata_json(info)
    assert meta["rank"] == 4 and meta["steps"] == steps and meta["dataset_hash"]
    assert (lora_dir / f"{config.name}.safetensors").is_file()
    assert (result.run_dir / "loss.csv").is_file() and (result.run_dir / "loss.png").is_file()
    assert len(list((result.run_dir / "samples").glob("*.png"))) == 1

    trained = trainer.render(seeds=[7], output_type="np", steps=2)
    fresh = DiffusionPipeline.from_pretrained(model_dirs[family])
    plain = trainer.render(pipe=fresh, seeds=[7], output_type="np", steps=2)
    fresh.load_lora_weights(str(lora_dir), weight_name=DIFFUSERS_FILE)
    reloaded = trainer.render(pipe=fresh, seeds=[7], output_type="np", steps=2)
    assert np.abs(trained - reloaded).max() < 1e-4
    assert np.abs(trained - plain).max() > 1e-3  # the LoRA does change the image


def test_high_noise_timesteps_lean_to_high_t_and_flow_families_refuse_them():
    from diffusers import DDPMScheduler

    from brandgen.errors import InvalidInput
    from brandgen.training.config import TrainConfig
    from brandgen.training.families import get_family

    family = get_family("sd15")
    family.scheduler = DDPMScheduler(num_train_timesteps=1000)
    latents = torch.zeros(4000, 1, 1, 1)
    uniform = family.noised(latents, torch.Generator().manual_seed(0))["timesteps"].float()
    family.use_timesteps("high-noise")
    high = family.noised(latents, torch.Generator().manual_seed(0))["timesteps"].float()
    assert 480 < uniform.mean() < 520 and 650 < high.mean() < 685  # density 2t/T^2: mean 2T/3
    assert high.min() >= 0 and high.max() <= 999 and (high < 250).float().mean() < 0.08  # P(t < T/4) = 1/16
    family.use_timesteps("uniform")
    again = family.noised(latents, torch.Generator().manual_seed(0))["timesteps"].float()
    assert torch.equal(again, uniform)  # the default draws exactly what it drew before the option existed
    for flow in ("sd3", "flux", "hidream"):
        get_family(flow).use_timesteps("uniform")
        with pytest.raises(InvalidInput, match="flow model"):
            get_family(flow).use_timesteps("high-noise")
    with pytest.raises(InvalidInput, match="timesteps must be one of"):
        TrainConfig(name="x", timesteps="late").validated()
    assert TrainConfig.from_dict({"name": "x", "timesteps": "high-noise"}).validated().timesteps == "high-noise"
