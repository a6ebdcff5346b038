"""CPU inference latency of brandgen-tiny architectures (random weights: speed does not depend on them).

    python scripts/tiny_cpu_latency.py --out latency.json [--compile]
    python scripts/tiny_cpu_latency.py --pipeline recipe "run 3" --unet recipe "run 3" --vae recipe
    python scripts/tiny_cpu_latency.py --pipeline "run 3+vae 32/64/128/128 (run 3)" "recipe"
    python scripts/tiny_cpu_latency.py --save recipe /tmp/app/assets/brandgen-tiny   # random weights, for the app

"A+B" names a UNet variant with a VAE variant; "run 3+vae 32/64/128/128 (run 3)" is run 3's whole model.

Times, on this machine's CPU with torch's default threads: one UNet call at batch 2 (a CFG step at 256 px) for the
recipe's UNet ("recipe": brandgen/tiny/recipe.json as it is now) and the alternatives in VARIANTS, the VAE decode
of one image for the VAE variants, and whole StableDiffusionPipeline calls at the Draft (15) and Standard (28) step
counts with the app's icon template and negative prompt (a CFG batch of 2, like `PipelineManager.generate`),
plain, with channels_last and (--compile) with torch.compile of the UNet. Planning figures for the issue's CPU
targets (Draft < 1.5 s, Standard < 3 s); the app's own first-image figure comes from scripts/bench_first_image.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brandgen.templates import build_prompt  # noqa: E402
from brandgen.tiny import model, train  # noqa: E402
from brandgen.tiny import tokenizer as tiny_tokenizer  # noqa: E402
from brandgen.tiny.recipe import deep_merge  # noqa: E402

CROSS_AT_8 = {"down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}
CROSS_AT_16_8 = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}
RUN3_UNET = {"block_out_channels": [64, 128, 256], "layers_per_block": 1, "attention_head_dim": [2, 4, 8],
             **CROSS_AT_16_8}
RUN3_VAE = {"block_out_channels": [32, 64, 128, 128], "layers_per_block": 1, "norm_num_groups": 16}


def _unet(channels: list[int], heads: list[int], attention: dict = CROSS_AT_8) -> dict:
    return {"unet": {**RUN3_UNET, **attention, "block_out_channels": channels, "attention_head_dim": heads}}


VARIANTS = {  # name -> overrides of the recipe config (deep-merged): what each alternative changes
    "recipe": {},
    "run 3": {"unet": RUN3_UNET},  # the UNet of runs 2-3 (docs/TINY_MODEL.md)
    "run 3, cross-attention only at 8x8": {"unet": {**RUN3_UNET, **CROSS_AT_8}},
    "32/96/256, cross-attention at 16 and 8": _unet([32, 96, 256], [1, 3, 8], CROSS_AT_16_8),
    "32/96/256, cross-attention only at 8x8": _unet([32, 96, 256], [1, 3, 8]),
    "32/128/256, cross-attention only at 8x8": _unet([32, 128, 256], [1, 4, 8]),
    "32/128/192, cross-attention only at 8x8": _unet([32, 128, 192], [1, 4, 6]),
    "48/96/192, cross-attention at 16 and 8": _unet([48, 96, 192], [2, 3, 6], CROSS_AT_16_8),
    "48/96/192, cross-attention only at 8x8": _unet([48, 96, 192], [2, 3, 6]),
    "32/64/128, cross-attention at 16 and 8": _unet([32, 64, 128], [1, 2, 4], CROSS_AT_16_8),
    "vae 32/64/128/128 (run 3)": {"vae": RUN3_VAE},
    "vae 32/32/64/128": {"vae": {**RUN3_VAE, "block_out_channels": [32, 32, 64, 128]}},
    "vae 16/32/64/128": {"vae": {**RUN3_VAE, "block_out_channels": [16, 32, 64, 128]}},
    # more latent channels keep thin strokes' colour (scripts/vae_strokes.py); the UNet's in/out follow them
    "vae 8 latent channels": {"vae": {"latent_channels": 8}, "unet": {"in_channels": 8, "out_channels": 8}},
    "vae 32/64/128/128, 8 latent channels": {"vae": {**RUN3_VAE, "latent_channels": 8},
                                             "unet": {"in_channels": 8, "out_channels": 8}},
}
DEFAULT_UNETS = [n for n in VARIANTS if not n.startswith("vae")]
DEFAULT_VAES = ["recipe", *[n for n in VARIANTS if n.startswith("vae")]]


def median_ms(fn, repeats: int, warmup: int = 3) -> dict:
    """Median and range in ms: on a shared CPU a single figure hides a spread of a third."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - start))
    return {"ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1), "max_ms": round(max(times), 1)}


def variant_config(cfg: dict, name: str) -> dict:
    """The recipe with a variant's changes; "A+B" applies both (a UNet variant with a VAE variant)."""
    for part in name.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"unknown variant {part!r}; one of {sorted(VARIANTS)}")
        cfg = deep_merge(cfg, VARIANTS[part])
    return cfg


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(Path(train.__file__).with_name("recipe.json")))
    parser.add_argument("--unet", nargs="*", default=DEFAULT_UNETS, help="variants whose UNet call is timed")
    parser.add_argument("--vae", nargs="*", default=DEFAULT_VAES, help="variants whose VAE decode is timed")
    parser.add_argument("--pipeline", nargs="*", default=["recipe"], help="variants timed as whole pipeline calls")
    parser.add_argument("--repeats", type=int, default=20, help="timed UNet calls per variant")
    parser.add_argument("--pipeline-repeats", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true", help="also time pipelines with channels_last")
    parser.add_argument("--compile", action="store_true", help="also time pipeline calls with a compiled UNet")
    parser.add_argument("--save", nargs=2, metavar=("VARIANT", "DIR"), default=None,
                        help="only write VARIANT with random weights as a model folder (for bench_first_image.py)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cfg = train.load_config(args.config)
    tokenizer = tiny_tokenizer.train_tokenizer(1024, ["a teal bell icon"] * 10)
    if args.save:
        comps = model.build_components(variant_config(cfg, args.save[0]), tokenizer=tokenizer)
        return {"saved": str(model.save_pipeline(model.assemble_pipeline(comps), args.save[1]))}
    torch.manual_seed(0)
    report: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "machine": platform.platform(),
                    "processor": platform.processor(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "recipe": {"unet": cfg["unet"], "vae": cfg["vae"]}, "unet_ms_batch2": {}, "vae_decode_ms": {}}
    latent = cfg["unet"]["sample_size"]
    t = torch.tensor([500, 500])
    for name in args.unet:
        comps = model.build_components(variant_config(cfg, name), tokenizer=tokenizer)
        unet, hidden = comps["unet"].eval(), comps["text_config"].hidden_size
        cond = torch.randn(2, tokenizer.model_max_length, hidden)
        x = torch.randn(2, unet.config.in_channels, latent, latent)
        timing = median_ms(lambda: unet(x, t, cond), args.repeats)
        report["unet_ms_batch2"][name] = {**timing, "params_m": round(model.count_parameters(unet) / 1e6, 2)}
        print("unet", name, report["unet_ms_batch2"][name], flush=True)
    for name in args.vae:
        vae = model.build_components(variant_config(cfg, name), tokenizer=tokenizer)["vae"].eval()
        z = torch.randn(1, vae.config.latent_channels, latent, latent)
        report["vae_decode_ms"][name] = {**median_ms(lambda: vae.decode(z), 7, warmup=2),
                                         "params_m": round(model.count_parameters(vae) / 1e6, 2),
                                         "decoder_params_m": round(model.count_parameters(vae.decoder) / 1e6, 2)}
        print("vae", name, report["vae_decode_ms"][name], flush=True)
    size = cfg["image_size"]
    pair = build_prompt("a teal bell", "icons")  # the app's icon template: trigger, prefix, suffix and negative

    for name in args.pipeline:
        pipe = model.assemble_pipeline(model.build_components(variant_config(cfg, name), tokenizer=tokenizer))
        pipe.set_progress_bar_config(disable=True)

        def call(steps: int):
            return lambda: pipe(pair.prompt, negative_prompt=pair.negative, num_inference_steps=steps,
                                guidance_scale=6.0, height=size, width=size, output_type="pil",
                                generator=torch.Generator().manual_seed(0))

        def pipeline_times(label: str) -> None:
            report.setdefault(label, {})[name] = {
                f"{steps}_steps": median_ms(call(steps), args.pipeline_repeats, warmup=1) for steps in (15, 28)}
            print(label, name, report[label][name], flush=True)

        pipeline_times("pipeline")
        if args.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
            pipeline_times("pipeline_channels_last")
            pipe.unet.to(memory_format=torch.contiguous_format)
            pipe.vae.to(memory_format=torch.contiguous_format)
        if args.compile:
            pipe.unet = torch.compile(pipe.unet)
            start = time.perf_counter()
            call(28)()
            report.setdefault("compile_first_call_s", {})[name] = round(time.perf_counter() - start, 1)
            pipeline_times("pipeline_compiled")
    print(json.dumps(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
