"""What the GPU benchmark scripts share: a time budget, synchronised timing and an atomically rewritten JSON."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class BenchClock:
    """args.tiny runs on the CPU; args.budget_s bounds the run; args.out receives self.results."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = "cpu" if args.tiny else "cuda"
        self.end = time.monotonic() + args.budget_s
        self.results: dict[str, Any] = {}

    def left(self) -> float:
        return self.end - time.monotonic()

    def write_json(self) -> Path:
        """Rewritten after every phase (through a temporary file), so a run cut off still leaves its results."""
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(out)
        return out

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.sync()
        start = time.perf_counter()
        value = fn()
        self.sync()
        return value, time.perf_counter() - start
