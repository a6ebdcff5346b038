#!/usr/bin/env python
"""End-to-end image generation, four ways, in one process: real pipeline calls, not step arithmetic.

For SDXL- and FLUX.1-dev-size pipelines (random full-size weights from the published configs, saved once as local
diffusers folders under --work-dir; scripts/e2e_bench_models.py) it times, with a brand LoRA active:
  a  seed-000 recipe: AutoPipelineForText2Image + enable_model_cpu_offload + load_lora_weights + fuse_lora
  b  expert resident recipe as diffusers' docs teach it: bf16, LoRA fused then unloaded, fuse_qkv_projections,
     channels_last (UNet, VAE), torch.compile of the whole denoiser with fullgraph=True (--expert-mode)
  c  PipelineManager, plain (resident, single LoRA fused)
  d  PipelineManager, performance mode (BRANDGEN_PERFORMANCE=1: a UNet compiled whole, a DiT by its blocks, LoRAs
     merged into the weights or the peft slot (--hotswap), warm-up at load, --quantization), at the Standard and the
     Fast preset (step cache)
Per recipe: load time (for d it includes the compile warm-up), 1 image and 4 images: first call and median of
--warm warm calls (28 steps, 1024², CFG 7.5 for SDXL, guidance 3.5 for FLUX); LoRA switches A->B->A for LoRAs in
diffusers, peft, kohya and the project's trainer formats (c, d; a reloads); dynamo graphs compiled and graph
breaks per phase (torch._dynamo.utils.counters); peak GPU memory; PSNR between the recipes' images (same
prompt, seed, LoRA). Writes --out (JSON, rewritten after every
phase) and the same path with .md (tables).

  python scripts/e2e_bench.py --out e2e.json --work-dir /tmp/bg-e2e --cache-dir /tmp/bg-inductor --models sdxl
  python scripts/e2e_bench.py --tiny --out /tmp/tiny.json      # CPU smoke test of every code path (seconds)
Run twice with the same --cache-dir for the warm-compile-cache figures (meta.cache_warm_at_start says which).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BenchClock, log  # noqa: E402
from e2e_bench_models import LORA_FORMATS, build_pipeline_folder, lora_files  # noqa: E402
from e2e_bench_recipes import DiffusersRecipe, ManagerRecipe  # noqa: E402
from e2e_bench_report import write_markdown  # noqa: E402

RECIPES = {"a": "seed recipe (offload, fused LoRA)", "b": "expert resident recipe (compiled, fused LoRA)",
           "c": "PipelineManager plain", "d": "PipelineManager performance mode"}


def dynamo_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


class Bench(BenchClock):
    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.results = {"meta": self._meta(), "models": {}}
        self.kept: dict[str, Any] = {}  # "<recipe>/<phase>" -> first image of its last call, per model

    def _meta(self) -> dict[str, Any]:
        import diffusers
        import peft
        import transformers

        cache = Path(self.args.cache_dir) if self.args.cache_dir else None
        meta = {"args": vars(self.args), "torch": torch.__version__, "diffusers": diffusers.__version__,
                "peft": peft.__version__, "transformers": transformers.__version__,
                "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "cache_warm_at_start": bool(cache and cache.is_dir() and any(cache.iterdir()))}
        if torch.cuda.is_available():
            meta.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
        return meta

    def save(self) -> None:
        write_markdown(self.results, self.write_json().with_suffix(".md"))

    def phase(self, res: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]], estimate_s: float = 0.0) -> None:
        """Run one measured phase; record its result, dynamo graphs/breaks, peak memory, or its error."""
        if self.left() < estimate_s:
            res.setdefault("skipped", {})[key] = f"time budget: ~{estimate_s:.0f} s needed, {self.left():.0f} s left"
            log(f"  skip {key}: {res['skipped'][key]}")
            return
        graphs, breaks = dynamo_counts()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - recorded; the run goes on
            res.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"  {key} FAILED {type(exc).__name__}: {str(exc)[:400]}")
            traceback.print_exc()
            self.save()
            return
        now_graphs, now_breaks = dynamo_counts()
        value.update(graphs_compiled=now_graphs - graphs, graph_breaks=now_breaks - breaks,
                     peak_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device == "cuda" else None)
        res[key] = value
        log(f"  {key}: {json.dumps(value, default=str)[:300]}")
        self.save()

    def calls(self, generate: Callable[[int], Any], count: int, warm: int, keep: str | None = None
              ) -> dict[str, Any]:
        """First call, then `warm` calls: their median, all times, and a pixel statistic of the last image
        (kept under `keep` for the image differences between recipes)."""
        image, first = self.timed(lambda: generate(count))
        times = []
        for _ in range(warm):
            image, seconds = self.timed(lambda: generate(count))
            times.append(seconds)
        if keep:
            self.kept[keep] = image[0]
        return {"images": count, "first_s": round(first, 3), "median_s": round(statistics.median(times), 3)
                if times else None, "warm_s": [round(t, 3) for t in times], "n_warm": len(times),
                "pixel_mean": image_mean(image)}

    def free(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()


def psnr(a: Any, b: Any) -> float | None:
    """Peak signal-to-noise ratio of two 8-bit images in dB (identical: None would hide it, so 99)."""
    import numpy as np

    from brandgen.metrics import image_psnr

    a, b = np.asarray(a), np.asarray(b)
    return round(image_psnr(a, b), 2) if a.shape == b.shape else None


IMAGE_PAIRS = {  # what each difference measures (same prompt, seed, LoRA and steps)
    "b_vs_c": ("b/one_image", "c/one_image"),  # expert compile + fused QKV vs plain bf16
    "d_vs_c": ("d/one_image", "c/one_image"),  # performance mode (fp8 if asked, compile, LoRA slot) vs plain bf16
    "d_vs_b": ("d/one_image", "b/one_image"),  # performance mode (fp8 if asked) vs the expert's bf16 graph
    "d_fast_vs_d": ("d/one_image_fast", "d/one_image"),  # the Fast preset's step cache
    "d_fast_vs_c": ("d/one_image_fast", "c/one_image"),
}


def image_differences(kept: dict[str, Any]) -> dict[str, float | None]:
    return {name: psnr(kept[x], kept[y]) for name, (x, y) in IMAGE_PAIRS.items() if x in kept and y in kept}


def image_mean(images: Any) -> float | None:
    import numpy as np

    try:
        return round(float(np.asarray(images[0], dtype=np.float32).mean()), 3)
    except Exception:  # noqa: BLE001 - only a sanity statistic
        return None


def run_recipe(bench: Bench, model: str, kind: str, folder: Path, loras: dict[str, dict[str, Path]],
               res: dict[str, Any]) -> None:
    args = bench.args
    recipe = (DiffusersRecipe if kind in "ab" else ManagerRecipe)(bench, model, folder, loras, kind)
    res["label"] = RECIPES[kind]

    def load() -> dict[str, Any]:
        report, seconds = bench.timed(recipe.load)
        return {"load_s": round(seconds, 2), **report}

    bench.phase(res, "load", load, estimate_s=30)
    if "load" not in res:
        recipe.close()
        bench.free()
        return
    bench.phase(res, "one_image", lambda: bench.calls(recipe.generate, 1, args.warm, f"{kind}/one_image"),
                estimate_s=20)
    image_s = res.get("one_image", {}).get("median_s") or 5.0  # what the later phases' estimates scale with
    fast = (lambda count: recipe.generate(count, preset="fast")) if kind == "d" else None
    if fast:
        bench.phase(res, "one_image_fast", lambda: bench.calls(fast, 1, args.warm, "d/one_image_fast"),
                    estimate_s=image_s * (1 + args.warm))
    if kind in args.four_images:
        bench.phase(res, "four_images", lambda: bench.calls(recipe.generate, 4, args.warm4),
                    estimate_s=4 * image_s * (1 + args.warm4))
        if fast:
            bench.phase(res, "four_images_fast", lambda: bench.calls(fast, 4, args.warm4),
                        estimate_s=3 * image_s * (1 + args.warm4))
    if kind in args.switch_recipes:
        for fmt in args.formats:
            bench.phase(res, f"switch_{fmt}", lambda fmt=fmt: switches(bench, recipe, fmt),
                        estimate_s=3 * (1.0 + image_s * args.switch_steps / args.steps))
    recipe.close()  # drops the pipeline before the next recipe loads its own
    bench.free()


def switches(bench: Bench, recipe: Any, fmt: str) -> dict[str, Any]:
    """A -> B -> A in one format: each switch timed alone, then one short call that must not compile."""
    out: dict[str, Any] = {"switch_ms": [], "call_s": [], "pixel_means": [], "graphs_per_switch": [], "notes": []}
    for name in ("a", "b", "a"):
        graphs, _ = dynamo_counts()
        _, seconds = bench.timed(lambda: recipe.switch(name, fmt))
        images, call = bench.timed(lambda: recipe.generate(1, bench.args.switch_steps))
        out["switch_ms"].append(round(seconds * 1e3, 1))
        out["call_s"].append(round(call, 3))
        out["pixel_means"].append(image_mean(images))
        out["graphs_per_switch"].append(dynamo_counts()[0] - graphs)
        out["notes"] += recipe.notes if isinstance(recipe, ManagerRecipe) else []
    out["switch_ms_median"] = statistics.median(out["switch_ms"])
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results (a .md table is written beside it)")
    parser.add_argument("--work-dir", default="/tmp/brandgen-e2e", help="pipeline folders and LoRA files (reused)")
    parser.add_argument("--cache-dir", default=None, help="persistent inductor cache for recipes b and d")
    parser.add_argument("--models", default="sdxl,flux", help="comma list of sdxl,flux")
    parser.add_argument("--recipes", default="a,b,c,d", help="comma list of a,b,c,d (see above)")
    parser.add_argument("--quick", action="store_true",
                        help="3 warm calls, 4 images only for c and d, LoRA switches in two formats")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny pipelines, same code paths")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per image (default 28)")
    parser.add_argument("--warm", type=int, default=None, help="warm 1-image calls after the first (default 5)")
    parser.add_argument("--warm4", type=int, default=None, help="warm 4-image calls after the first (default 5)")
    parser.add_argument("--switch-steps", type=int, default=None, help="steps of the call after a switch (4)")
    parser.add_argument("--formats", default=None, help=f"LoRA formats to switch in (default {','.join(LORA_FORMATS)})")
    parser.add_argument("--expert-mode", default="default", choices=("default", "max-autotune",
                                                                     "max-autotune-no-cudagraphs"),
                        help="torch.compile mode of recipe b (the docs' max-autotune compiles for minutes)")
    parser.add_argument("--expert-compile", default="full", choices=("full", "regional"),
                        help="recipe b: the whole denoiser (default) or compile_repeated_blocks")
    parser.add_argument("--quantization", default="none", choices=("none", "fp8", "int8wo"),
                        help="performance mode's weights (recipe d)")
    parser.add_argument("--perf-compile-mode", default="default",
                        choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                        help="recipe d's torch.compile mode (reduce-overhead: CUDA graphs)")
    parser.add_argument("--perf-compile", default="auto", choices=("auto", "regional", "full"),
                        help="recipe d (BRANDGEN_COMPILE): auto (the app's default: a UNet whole, a DiT's repeated "
                             "blocks), regions, or the whole denoiser")
    parser.add_argument("--unet-regions", default="layers", choices=("layers", "blocks"),
                        help="recipe d: what regional compile compiles in a UNet (FastPathOptions.unet_regions)")
    parser.add_argument("--hotswap", default="merge", choices=("merge", "slot"),
                        help="recipe d's LoRA switcher (BRANDGEN_LORA_HOTSWAP)")
    parser.add_argument("--four-recipes", default=None, help="recipes that also time 4 images (default abcd)")
    parser.add_argument("--switch-recipes", default="acd", help="recipes that time LoRA switches")
    parser.add_argument("--budget-s", type=float, default=3600.0, help="skip phases that would not fit")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    bad = (set(args.models) - {"sdxl", "flux"}) | (set(args.recipes) - set(RECIPES))
    if bad:
        parser.error(f"unknown models or recipes: {sorted(bad)}")
    quick, tiny = args.quick, args.tiny
    args.steps = args.steps or (2 if tiny else 28)
    args.warm = args.warm if args.warm is not None else (2 if tiny else 3 if quick else 5)
    args.warm4 = args.warm4 if args.warm4 is not None else (1 if tiny else 2 if quick else 5)
    args.switch_steps = args.switch_steps or (1 if tiny else 4)
    args.four_images = args.four_recipes.replace(",", "") if args.four_recipes else "cd" if quick else "abcd"
    args.switch_recipes = args.switch_recipes.replace(",", "")
    args.formats = (tuple(f.strip() for f in args.formats.split(",")) if args.formats
                    else ("diffusers", "kohya") if quick else LORA_FORMATS)
    if set(args.formats) - set(LORA_FORMATS):
        parser.error(f"unknown LoRA formats {args.formats}; choose from {LORA_FORMATS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("No CUDA GPU: run on the GPU machine, or use --tiny for the CPU smoke test.", file=sys.stderr)
        return 2
    if args.tiny:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.cache_dir:
        from brandgen.acceleration import configure_compile_cache

        configure_compile_cache(args.cache_dir)
    bench = Bench(args)
    work = Path(args.work_dir)
    log(f"e2e_bench models={args.models} recipes={args.recipes} steps={args.steps} warm={args.warm}/{args.warm4} "
        f"device={bench.results['meta'].get('gpu', 'cpu')}")
    for model in args.models:
        res: dict[str, Any] = {"recipes": {}}
        bench.results["models"][model] = res
        log(f"{model}: pipeline folder and LoRA files ...")
        res["build"] = build_pipeline_folder(model, work / model, args.tiny, bench.device)
        loras = lora_files(model, work / model, work / f"loras-{model}", args.tiny)
        for kind in args.recipes:
            log(f"{model} / {kind}: {RECIPES[kind]}")
            res["recipes"][kind] = {}
            run_recipe(bench, model, kind, work / model, loras, res["recipes"][kind])
            res["image_psnr_db"] = image_differences(bench.kept)
            bench.save()
        bench.kept.clear()
    bench.results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    bench.results["meta"]["total_s"] = round(args.budget_s - bench.left(), 1)
    bench.save()
    log(f"wrote {args.out} and {Path(args.out).with_suffix('.md')} in {bench.results['meta']['total_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
