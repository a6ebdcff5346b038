"""Training checkpoints in safetensors + JSON (never pickle): LoRA weights, optimizer, scheduler, step, RNG.

Each checkpoint is a folder written under a temporary name and renamed into place, so a crash mid-write
never leaves a checkpoint that looks complete. Only the newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from brandgen.errors import InvalidInput

PREFIX = "step_"


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def _split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta["plain"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(mt), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, mt, gauss = meta["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    root: Path,
    step: int,
    lora_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    scheduler_state: dict,
    trainer_state: dict,
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in lora_state.items()}, tmp / "lora.safetensors")
        opt_tensors, opt_meta = _split_optimizer(optimizer_state)
        rng_tensors, rng_meta = rng_state()
        save_file({**opt_tensors, **rng_tensors}, tmp / "state.safetensors")
        meta = {
            "step": step,
            "trainer": trainer_state,
            "optimizer": opt_meta,
            "scheduler": scheduler_state,
            "rng": rng_meta,
        }
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=float), encoding="utf-8")
    except BaseException:  # e.g. a full disk: no half-written checkpoint stays behind, older ones are kept
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything `save_checkpoint` wrote, ready for load_state_dict calls."""
    path = Path(path)
    if not (path / "state.json").is_file() or not (path / "lora.safetensors").is_file():
        raise InvalidInput(f"{path} is not a complete training checkpoint.")
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(path / "state.safetensors"))
    rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    opt = {k: v for k, v in tensors.items() if k.startswith("state.")}
    return {
        "step": meta["step"],
        "trainer": meta["trainer"],
        "scheduler": meta["scheduler"],
        "optimizer": _join_optimizer(opt, meta["optimizer"]),
        "lora": load_file(str(path / "lora.safetensors")),
        "rng_tensors": rng,
        "rng_meta": meta["rng"],
    }


def resume_from(run_dir: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, dict[str, int]]:
    """Load the newest checkpoint of a run into the LoRA model, optimizer, LR schedule and RNGs; returns its
    step and the trainer's loop counters (step, epoch, batch_in_epoch, micro)."""
    from peft.utils import set_peft_model_state_dict

    path = latest_checkpoint(Path(run_dir) / "checkpoints")
    if path is None:
        raise InvalidInput(f"No checkpoint to resume in {run_dir}.")
    ckpt = load_checkpoint(path)
    set_peft_model_state_dict(model, ckpt["lora"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    restore_rng(ckpt["rng_tensors"], ckpt["rng_meta"])
    return ckpt["step"], {k: int(ckpt["trainer"][k]) for k in ("step", "epoch", "batch_in_epoch", "micro")}
