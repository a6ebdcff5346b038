"""Guidance for part of the steps (a model's `guidance_until`) against guidance on every step, same process.

Alternates the two settings through `PipelineManager.generate` (templates, VAE, metadata: what the app runs) at
the served app's thread count, so both sides see the same machine minute; reports the median request and
denoising time per preset and how far the images move (PSNR of the same seed). The held-out quality of a setting
is `python -m brandgen.tiny.icon_eval --guidance-until X`.

    python scripts/bench_guidance_interval.py [--model brandgen-tiny] [--threads 1] [--rounds 5] [--out r.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brandgen-tiny")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the served app: cores - 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--presets", default="draft,standard")
    parser.add_argument("--prompt", default="a teal heart icon")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("BRANDGEN_HOME", tempfile.mkdtemp(prefix="brandgen-bench-"))
    import torch

    from brandgen.generation import GenerationRequest
    from brandgen.manager import PipelineManager
    from brandgen.metrics import image_psnr
    from brandgen.paths import AppPaths

    torch.set_num_threads(args.threads)
    manager = PipelineManager(paths=AppPaths.from_env())
    entry = manager.registry.get(args.model)
    if entry.guidance_until >= 1:
        parser.error(f"{args.model} runs guidance on every step (guidance_until 1): nothing to compare")
    registries = {entry.guidance_until: manager.registry,
                  1.0: manager.registry.with_entry(dataclasses.replace(entry, guidance_until=1.0))}
    manager.load_model(entry.id)
    rows = {}
    for preset in args.presets.split(","):
        times = {k: {"request_s": [], "denoise_s": []} for k in registries}
        images = {}
        for rnd in range(args.rounds + 1):  # round 0 warms the preset's shapes and is not counted
            for share, registry in (registries.items() if rnd % 2 else reversed(registries.items())):
                manager.registry = registry
                start = time.perf_counter()
                result = manager.generate(GenerationRequest(prompt=args.prompt, model_id=entry.id, seed=rnd,
                                                            preset=preset))
                if rnd:
                    times[share]["request_s"].append(time.perf_counter() - start)
                    times[share]["denoise_s"].append(result.metadata[0]["seconds"])
                images.setdefault(rnd, {})[share] = result.images[0]
        medians = {str(k): {name: round(statistics.median(v), 3) for name, v in t.items()} for k, t in times.items()}
        rows[preset] = {
            "median": medians,
            "denoise_speedup": round(statistics.median(times[1.0]["denoise_s"])
                                     / statistics.median(times[entry.guidance_until]["denoise_s"]), 3),
            "psnr_db_vs_every_step": [round(image_psnr(v[entry.guidance_until], v[1.0]), 2) for v in images.values()],
            "raw": {str(k): t for k, t in times.items()},
        }
        print(preset, json.dumps(rows[preset]["median"]), "speed-up", rows[preset]["denoise_speedup"], flush=True)
    result = {"model": entry.id, "guidance_until": entry.guidance_until, "threads": args.threads,
              "rounds": args.rounds, "prompt": args.prompt, "presets": rows,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
