"""One brandgen-tiny training run's state: work folder, finished stages (state.json), checkpoints, --stop-after,
the log line every stage prints and the learning-rate schedule they share (train.py and vae_stage.py)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch


class StopRequested(Exception):
    """Raised by --stop-after to simulate an interrupted run (used by the resume test)."""


def log(stage: str, start: float, **fields) -> None:
    parts = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
    print(f"[{stage}] {parts} elapsed {time.time() - start:.1f}s", flush=True)


class Run:
    """Paths, device and progress state of one training run; state.json records finished stages."""

    def __init__(self, cfg: dict, work_dir: Path, device: str, resume: bool, stop_after: str | None):
        self.cfg, self.work, self.device, self.start = cfg, work_dir, torch.device(device), time.time()
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path = self.work / "state.json"
        state = json.loads(self.state_path.read_text()) if resume and self.state_path.exists() else {}
        if state and state.get("config") != cfg:
            raise SystemExit(f"--resume: config differs from the one in {self.state_path}; use a new --work-dir")
        if not resume:
            for f in [*self.work.glob("*.pt"), self.work / "images.npy"]:
                f.unlink(missing_ok=True)
        self.state = state or {"config": cfg, "done": [], "timings": {}}
        self.stop_stage, _, stop_step = (stop_after or "").partition(":")
        self.stop_step = int(stop_step) if stop_step else None
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" \
            else torch.autocast("cpu", enabled=False)

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def finish(self, stage: str, seconds: float, **info) -> None:
        self.state["done"].append(stage)
        self.state["timings"][stage] = round(seconds, 1)
        self.state.setdefault("info", {}).update(info)
        self.save_state()
        if self.stop_stage == stage and self.stop_step is None:
            raise StopRequested(stage)

    def save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_path)

    def save_ckpt(self, name: str, payload: dict) -> None:
        tmp = self.work / f"{name}.pt.tmp"
        torch.save(payload, tmp)
        tmp.replace(self.work / f"{name}.pt")

    def maybe_stop(self, stage: str, step: int) -> bool:
        return self.stop_stage == stage and self.stop_step is not None and step >= self.stop_step


def lr_factor(progress: float, step: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup by steps, then cosine by progress (max of step and time fractions)."""
    if step < warmup:
        return (step + 1) / warmup
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
