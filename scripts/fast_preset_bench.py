#!/usr/bin/env python
"""The Fast preset against Standard on one model, in one run: real PipelineManager calls on both sides,
interleaved per prompt and seed so both see the same machine state.

Per image: seconds for Standard and Fast, and how far the Fast image is from the Standard one with the same prompt
and seed (PSNR in dB, mean absolute pixel difference, background cleanliness of both). Works on any registry model;
the default is the embedded model, so it runs offline on a CPU.

  python scripts/fast_preset_bench.py --out fast.json                     # brandgen-tiny, 5 prompts x 2 seeds
  python scripts/fast_preset_bench.py --interval 3 --out fast3.json        # another schedule than the preset's
  python scripts/fast_preset_bench.py --model sdxl-base --seeds 3 --out fast_sdxl.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brandgen.benchmark import DEFAULT_PROMPTS  # noqa: E402
from brandgen.generation import GenerationRequest  # noqa: E402
from brandgen.manager import PipelineManager  # noqa: E402
from brandgen.metrics import background_cleanliness, image_psnr  # noqa: E402


def difference(a: Any, b: Any) -> tuple[float, float]:
    """(PSNR dB, mean absolute difference in 8-bit levels) of two images of one size."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return image_psnr(x, y), float(np.abs(x - y).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="registry id (default: the embedded model)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    parser.add_argument("--prompts", nargs="*", default=list(DEFAULT_PROMPTS))
    parser.add_argument("--interval", type=int, default=None,
                        help="one step in this many computed in full (default: the Fast preset's)")
    parser.add_argument("--out", required=True, help="JSON results; a .md summary is written beside it")
    args = parser.parse_args(argv)

    manager = PipelineManager()
    if args.interval:
        manager.presets["fast"] = replace(manager.presets["fast"], step_cache=args.interval)
    entry = manager.load_model(args.model)
    manager.generate(GenerationRequest(prompt=args.prompts[0], model_id=entry.id, preset="draft", seed=0))  # warm
    rows = []
    for prompt in args.prompts:
        for seed in range(args.seeds):
            images, seconds, cache = {}, {}, None
            for preset in ("standard", "fast"):
                result = manager.generate(GenerationRequest(prompt=prompt, model_id=entry.id, preset=preset, seed=seed))
                images[preset], seconds[preset] = result.images[0], result.seconds
                cache = result.metadata[0]["step_cache"] or cache
            psnr, mad = difference(images["standard"], images["fast"])
            rows.append({"prompt": prompt, "seed": seed, "standard_s": round(seconds["standard"], 3),
                         "fast_s": round(seconds["fast"], 3), "psnr_db": round(psnr, 2), "mean_abs_diff": round(mad, 2),
                         "background_standard": round(background_cleanliness(images["standard"]), 3),
                         "background_fast": round(background_cleanliness(images["fast"]), 3), "step_cache": cache})
            print(json.dumps(rows[-1]), flush=True)
    med = {key: statistics.median(r[key] for r in rows) for key in ("standard_s", "fast_s", "psnr_db", "mean_abs_diff")}
    summary = {"model": entry.id, "device": manager.device.describe(), "images": len(rows),
               "speedup": round(med["standard_s"] / med["fast_s"], 2), **{f"median_{k}": round(v, 3)
                                                                          for k, v in med.items()},
               "min_psnr_db": min(r["psnr_db"] for r in rows), "step_cache": rows[0]["step_cache"],
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
               "command": "python scripts/fast_preset_bench.py " + " ".join(argv or sys.argv[1:])}
    out = Path(args.out)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(
        f"Fast vs Standard on {entry.id} ({summary['device']}, {summary['date']}): {len(rows)} images, median "
        f"{med['standard_s']:.3f} s -> {med['fast_s']:.3f} s ({summary['speedup']}x); PSNR median "
        f"{med['psnr_db']:.1f} dB, min {summary['min_psnr_db']:.1f} dB; mean |diff| {med['mean_abs_diff']:.1f}/255.\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
