"""Step-level micro-benchmark (not an end-to-end figure): the VAE decode of one generation, eager against
`torch.compile`d, for SDXL's and FLUX's autoencoders at full size with random weights (latency does not depend on
the weight values). Answers whether performance mode should turn on `FastPathOptions.compile_vae` (off by default,
never measured): the decode runs once per image after the 28 denoising steps, so it is part of every Standard call.

    python scripts/vae_decode_bench.py --out vae_decode.json          # GPU: bf16, fused QKV as performance mode has
    python scripts/vae_decode_bench.py --tiny --no-compile --device cpu  # smoke test (tests/test_vae_decode_bench.py)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_bench_models import vae_config  # noqa: E402

LATENT_CHANNELS = {"sdxl": 4, "flux": 16}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_decode(vae, latents: torch.Tensor, warm: int, device: str) -> dict:
    """First call and median of `warm` later calls, in ms."""
    times = []
    for _ in range(warm + 1):
        _sync(device)
        start = time.perf_counter()
        vae.decode(latents).sample
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return {"first_ms": round(times[0], 2), "median_ms": round(statistics.median(times[1:]), 2), "n_warm": warm}


def bench(model: str, batches: list[int], size: int, warm: int, device: str, tiny: bool, compile_: bool) -> dict:
    from diffusers import AutoencoderKL

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    vae = AutoencoderKL(**vae_config(LATENT_CHANNELS[model], tiny)).to(device, dtype).eval()
    vae.fuse_qkv_projections()
    if device.startswith("cuda"):
        vae = vae.to(memory_format=torch.channels_last)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = {b: torch.randn(b, LATENT_CHANNELS[model], size // factor, size // factor, device=device, dtype=dtype)
               for b in batches}
    out = {"size": size, "dtype": str(dtype), "eager": {b: time_decode(vae, latents[b], warm, device) for b in batches}}
    if compile_:
        vae.decoder.compile()  # what compile_vae does (acceleration.accelerate_pipeline)
        out["compiled"] = {b: time_decode(vae, latents[b], warm, device) for b in batches}
        out["speedup"] = {b: round(out["eager"][b]["median_ms"] / out["compiled"][b]["median_ms"], 3)
                          for b in batches}
    if device.startswith("cuda"):
        out["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sdxl,flux")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 1024; tiny: 64)")
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny autoencoders: a smoke test of this script")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    size = args.size or (64 if args.tiny else 1024)
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "models": {}}
    for model in args.models.split(","):
        result["models"][model] = bench(model, batches, size, args.warm, args.device, args.tiny, not args.no_compile)
        print(model, json.dumps(result["models"][model]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
