"""`brandgen train --config cfg.json`: the trainer without the app, also under `accelerate launch`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from brandgen.errors import InvalidInput
from brandgen.training.config import TrainConfig
from brandgen.training.progress import TrainHooks, TrainProgress
from brandgen.training.trainer import LoraTrainer


def _printer(log_every: int):
    said = {"training": "Training"}

    def show(p: TrainProgress) -> None:
        if p.phase != "training":
            print(f"[{p.phase}] {p.message}", file=sys.stderr, flush=True)
            return
        if p.message and p.message != said["training"]:  # e.g. whether the CUDA graph is on
            said["training"] = p.message
            print(f"[training] {p.message}", file=sys.stderr, flush=True)
        if p.loss is not None and (p.step % log_every == 0 or p.step == p.total):
            eta = f" · eta {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
            print(f"step {p.step}/{p.total} · loss {p.loss:.4f} · lr {p.lr:.2e}{eta}", file=sys.stderr, flush=True)

    return show


def train_command(config_path: str, resume: str | None = None, device: str | None = None, log_every: int = 10) -> None:
    """Train from a JSON config; `resume` is a run folder whose newest checkpoint is continued.
    Only the main process prints (accelerate launch starts one process per GPU)."""
    if not (config_path or resume):
        raise InvalidInput("Give --config cfg.json (or --resume RUN_FOLDER).")
    config = TrainConfig.from_file(Path(resume, "config.json") if resume else config_path)
    trainer = LoraTrainer(
        config,
        run_dir=Path(resume) if resume else None,
        device=device,
        hooks=TrainHooks(on_progress=_printer(max(1, log_every))),
    )
    result = trainer.run(resume=bool(resume))
    if trainer.accelerator.is_main_process:
        print(json.dumps(result.to_dict(), indent=2))
