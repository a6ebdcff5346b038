"""First-image latency of the embedded default model, as the app sees it (issue: < 3 s on a 2-core CPU).

Runs in a fresh process: builds the PipelineManager, loads brandgen-tiny, then times the first and the
following images at a quality preset through `PipelineManager.generate` (templates, upscaler, metadata
included). Outputs go to a temporary BRANDGEN_HOME so nothing in the repo is written.

    python scripts/bench_first_image.py [--preset standard] [--repeats 3] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brandgen-tiny")
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--prompt", default="a teal heart")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-prime", action="store_true", help="skip the 1-step image at load (the app's default)")
    args = parser.parse_args(argv)

    os.environ.setdefault("BRANDGEN_HOME", tempfile.mkdtemp(prefix="brandgen-bench-"))
    t0 = time.perf_counter()
    import torch

    from brandgen.generation import GenerationRequest
    from brandgen.manager import PipelineManager

    t_import = time.perf_counter() - t0
    manager = PipelineManager(prime_on_load=not args.no_prime)
    t1 = time.perf_counter()
    manager.load_model(args.model)
    t_load = time.perf_counter() - t1
    times = []
    for i in range(1 + args.repeats):
        request = GenerationRequest(prompt=args.prompt, model_id=args.model, preset=args.preset, seed=i)
        t = time.perf_counter()
        result = manager.generate(request)
        times.append(time.perf_counter() - t)
    meta = result.metadata[0] if hasattr(result, "metadata") else {}
    report = {
        "model": args.model, "preset": args.preset, "device": manager.device.describe(),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.platform(),
        "prime_on_load": not args.no_prime, "import_s": round(t_import, 2), "load_s": round(t_load, 2),
        "first_image_s": round(times[0], 2),
        "next_image_s": [round(t, 2) for t in times[1:]],
        "steps": meta.get("steps"), "size": [meta.get("width"), meta.get("height")],
    }
    print(json.dumps(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
