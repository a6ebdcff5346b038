"""scripts/tiny_cpu_latency.py times architecture variants, including ones with more latent channels."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def latency():
    return load_script("tiny_cpu_latency")


def test_eight_latent_channel_variants_time_their_own_latents(latency):
    report = latency.main(["--unet", "recipe+vae 8 latent channels", "--vae", "recipe", "vae 8 latent channels",
                           "--pipeline", "--repeats", "1"])
    unet = report["unet_ms_batch2"]["recipe+vae 8 latent channels"]
    assert unet["ms"] > 0 and unet["params_m"] > 1
    decode = report["vae_decode_ms"]
    assert decode["vae 8 latent channels"]["ms"] > 0
    assert decode["vae 8 latent channels"]["params_m"] > decode["recipe"]["params_m"]  # wider latent-facing convs
    recipe = latency.train.load_config(str(ROOT / "brandgen" / "tiny" / "recipe.json"))
    cfg = latency.variant_config(recipe, "recipe+vae 8 latent channels")
    assert cfg["vae"]["latent_channels"] == cfg["unet"]["in_channels"] == cfg["unet"]["out_channels"] == 8
