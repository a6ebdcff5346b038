"""Training-step speed of the brandgen-tiny recipe's UNet + text encoder on random latents (GPU planning).

    python scripts/tiny_step_bench.py [--config brandgen/tiny/recipe.json] [--steps 30] --out step.json

A step-level micro-benchmark (not an end-to-end figure): the same forward/backward/AdamW as
brandgen/tiny/train.py's UNet stage, timed eagerly with and without channels_last, and compiled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brandgen.tiny import model, train
from brandgen.tiny import tokenizer as tiny_tokenizer


def bench(cfg: dict, batch: int, steps: int, channels_last: bool, compile_: bool, device: str) -> dict:
    comps = model.build_components(cfg, tokenizer=tiny_tokenizer.train_tokenizer(1024, ["a red icon"] * 10))
    unet, text = comps["unet"].to(device).train(), comps["text_encoder"].to(device).train()
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda")
    fwd = torch.compile(unet) if compile_ else unet
    size = cfg["unet"]["sample_size"]
    x = torch.randn(batch, 4, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ids = torch.randint(0, comps["text_config"].vocab_size, (batch, 77), device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with autocast:
            pred = fwd(x, t, encoder_hidden_states=text(ids)[0]).sample
        loss = (pred.float() - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.time()
    for _ in range(3):
        step()
    torch.cuda.synchronize() if device == "cuda" else None
    warm = time.time() - t0
    t0 = time.time()
    for _ in range(steps):
        step()
    torch.cuda.synchronize() if device == "cuda" else None
    dt = (time.time() - t0) / steps
    return {"batch": batch, "channels_last": channels_last, "compile": compile_, "ms_per_step": round(dt * 1000, 1),
            "samples_per_s": round(batch / dt), "warmup_s": round(warm, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="brandgen/tiny/recipe.json")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batches", default="256,512")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = device == "cuda"
    cfg = train.load_config(args.config, smoke=args.smoke)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for cl, comp in ((True, False), (False, False), (False, True)):
            if comp and args.no_compile:
                continue
            rows.append(bench(cfg, batch, args.steps, cl, comp, device))
            print(json.dumps(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
