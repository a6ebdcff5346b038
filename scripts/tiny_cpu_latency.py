"""CPU inference latency of brandgen-tiny's recipe architecture (random weights: speed does not depend on them).

    python scripts/tiny_cpu_latency.py --out latency.json [--compile]

Times, on this machine's CPU with torch's default threads: one UNet call at batch 2 (a CFG step at 256 px) for the
recipe's UNet and cheaper variants, the VAE decode of one image, and whole StableDiffusionPipeline calls at the
Draft (15) and Standard (28) step counts, plain, with channels_last and (--compile) with torch.compile of the UNet.
Planning figures for the issue's CPU targets (Draft < 1.5 s, Standard < 3 s); the app's own first-image figure
comes from scripts/bench_first_image.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brandgen.tiny import model, train  # noqa: E402
from brandgen.tiny import tokenizer as tiny_tokenizer  # noqa: E402

VARIANTS = {  # name -> changes to the recipe's "unet" section
    "recipe": {},
    "first level 48 channels": {"block_out_channels": [48, 128, 256]},
    "cross-attention only at 8x8": {"down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                                    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"]},
    "32/64/128 channels": {"block_out_channels": [32, 64, 128], "attention_head_dim": [1, 2, 4]},
}


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(Path(train.__file__).with_name("recipe.json")))
    parser.add_argument("--repeats", type=int, default=20, help="timed UNet calls per variant")
    parser.add_argument("--pipeline-repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time pipeline calls with a compiled UNet")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cfg = train.load_config(args.config)
    tokenizer = tiny_tokenizer.train_tokenizer(1024, ["a teal bell icon"] * 10)
    torch.manual_seed(0)
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "unet_ms_batch2": {}}
    latent = cfg["unet"]["sample_size"]
    x, t = torch.randn(2, 4, latent, latent), torch.tensor([500, 500])
    for name, change in VARIANTS.items():
        variant = copy.deepcopy(cfg)
        variant["unet"].update(change)
        comps = model.build_components(variant, tokenizer=tokenizer)
        unet, hidden = comps["unet"].eval(), comps["text_config"].hidden_size
        cond = torch.randn(2, tokenizer.model_max_length, hidden)
        report["unet_ms_batch2"][name] = {"ms": median_ms(lambda: unet(x, t, cond), args.repeats),
                                          "params_m": round(model.count_parameters(unet) / 1e6, 1)}
        print(name, report["unet_ms_batch2"][name], flush=True)
    pipe = model.assemble_pipeline(model.build_components(cfg, tokenizer=tokenizer))
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn(1, 4, latent, latent)
    report["vae_decode_ms"] = median_ms(lambda: pipe.vae.decode(z), 5)
    size = cfg["image_size"]

    def call(steps: int):
        return lambda: pipe("a teal bell icon", num_inference_steps=steps, guidance_scale=6.0, height=size,
                            width=size, generator=torch.Generator().manual_seed(0))

    def pipeline_times(label: str) -> None:
        report[label] = {f"{steps}_steps_ms": median_ms(call(steps), args.pipeline_repeats, warmup=1)
                         for steps in (15, 28)}
        print(label, report[label], flush=True)

    pipeline_times("pipeline")
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipeline_times("pipeline_channels_last")
    if args.compile:
        pipe.unet.to(memory_format=torch.contiguous_format)
        pipe.vae.to(memory_format=torch.contiguous_format)
        pipe.unet = torch.compile(pipe.unet)
        start = time.perf_counter()
        call(28)()
        report["compile_first_call_s"] = round(time.perf_counter() - start, 1)
        pipeline_times("pipeline_compiled")
    print(json.dumps(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
