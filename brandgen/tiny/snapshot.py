"""A loadable brandgen-tiny folder from a run that is still training (its last UNet checkpoint, EMA weights).

A lent GPU can be taken back between two calls; returning a snapshot at the end of each call means a lost
machine costs only the time since then, and `python -m brandgen.tiny.train --init-model SNAPSHOT` goes on.

    python -m brandgen.tiny.snapshot --work-dir /tmp/work --out /tmp/snapshot
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from brandgen.tiny import model, vae_stage
from brandgen.tiny import tokenizer as tiny_tokenizer


def snapshot(work_dir: str | Path, out: str | Path) -> dict:
    """Save the run's current EMA weights as a pipeline folder; returns the step and where it went."""
    work = Path(work_dir)
    state = json.loads((work / "state.json").read_text())
    cfg, ckpt_path = state["config"], work / "unet_ckpt.pt"
    if not ckpt_path.exists():
        raise SystemExit(f"{work} has no UNet checkpoint yet (stages done: {', '.join(state['done']) or 'none'})")
    comps = model.build_components(cfg, tokenizer=tiny_tokenizer.CLIPTokenizer.from_pretrained(work / "tokenizer"))
    if cfg.get("init_model"):
        model.load_trained(comps, cfg["init_model"], fresh_vae=vae_stage.vae_fresh(cfg))
    if not cfg.get("init_model") or vae_stage.vae_retuned(cfg):  # the UNet learned this run's autoencoder and scale
        comps["vae"].load_state_dict(torch.load(work / "vae_done.pt", map_location="cpu"))
        comps["vae"].register_to_config(scaling_factor=state["info"]["scaling_factor"])
    ckpt = torch.load(ckpt_path, map_location="cpu")
    unet, text = comps["unet"], comps["text_encoder"]
    unet.load_state_dict(ckpt["unet"])
    text.load_state_dict(ckpt["text_encoder"])
    trained = list(unet.parameters()) + (list(text.parameters()) if cfg["train_unet"].get("text_lr_scale") else [])
    with torch.no_grad():
        for param, ema in zip(trained, ckpt["ema"], strict=True):
            param.copy_(ema)
    model.save_pipeline(model.assemble_pipeline(comps), out, data=model.trained_on(cfg))
    return {"step": ckpt["step"], "elapsed": round(ckpt["elapsed"], 1), "out": str(out)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    info = snapshot(args.work_dir, args.out)
    print(json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    main()
