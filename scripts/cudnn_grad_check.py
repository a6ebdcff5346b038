"""Are LoRA gradients through cuDNN SDPA right? FLUX-width blocks, gradients per attention setup vs fp32 math.

The trainer runs attention on cuDNN SDPA with contiguous output gradients (brandgen/attention.py). This builds
a FLUX.1-width transformer with a few blocks (3072 wide, 24 heads, 4096 image + 512 text tokens, random
weights, LoRA r32 with non-zero B), computes one loss's LoRA gradients with each SDPA setup in its own process,
and compares each against the math backend (the reference): relative L2 error and cosine similarity.
`cudnn-unpatched` (cuDNN without the gradient fix) shows whether the old failure reproduces at this size.

    python scripts/cudnn_grad_check.py --out cudnn_grad_check.json      # CUDA only, ~1 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
SETUPS = ("math", "flash", "cudnn", "cudnn-unpatched")


def gradients(setup: str, layers: int, single_layers: int) -> dict[str, torch.Tensor]:
    from diffusers import FluxTransformer2DModel
    from gpu_train_bench import add_lora, inputs
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from brandgen.attention import contiguous_attention_grads, cudnn_attention_first

    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = FluxTransformer2DModel(num_layers=layers, num_single_layers=single_layers)
    torch.set_default_dtype(torch.float32)
    add_lora(model, "flux", 32)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if p.requires_grad and "lora_B" in name:  # the usual zero init would leave lora_A without a gradient
            torch.nn.init.normal_(p, std=0.02)
    if setup == "cudnn":
        contiguous_attention_grads(model)
    batch = inputs("flux", model, 1, 1024, "cuda", torch.bfloat16)
    choice = {"math": sdpa_kernel(SDPBackend.MATH), "flash": sdpa_kernel(SDPBackend.FLASH_ATTENTION)}
    with choice.get(setup, cudnn_attention_first(True)), torch.autocast("cuda", dtype=torch.bfloat16):
        pred = model(**batch, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), torch.zeros_like(pred, dtype=torch.float32))
        loss.backward()
    torch.cuda.synchronize()
    return {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.requires_grad}


def compare(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    a = torch.cat([grads[n].flatten() for n in sorted(reference)]).double()
    b = torch.cat([reference[n].flatten() for n in sorted(reference)]).double()
    return {"rel_l2_error": round(float((a - b).norm() / b.norm()), 5),
            "cosine": round(float(F.cosine_similarity(a, b, dim=0)), 6)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="double-stream blocks")
    parser.add_argument("--single-layers", type=int, default=4, help="single-stream blocks")
    parser.add_argument("--setup", default=None, help=argparse.SUPPRESS)  # child: one setup, grads to --save
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("CUDA only.")
    if args.setup:
        torch.save(gradients(args.setup, args.layers, args.single_layers), args.save)
        return {}
    rows, saved = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for setup in SETUPS:
            path = Path(folder, f"{setup}.pt")
            cmd = [sys.executable, __file__, "--setup", setup, "--save", str(path),
                   "--layers", str(args.layers), "--single-layers", str(args.single_layers)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            row: dict[str, Any] = {"setup": setup}
            if proc.returncode == 0:
                saved[setup] = torch.load(path)
                row.update(compare(saved[setup], saved["math"]) if "math" in saved else {})
            else:
                lines = [x for x in proc.stderr.splitlines() if "Error" in x or "error" in x]
                row["error"] = (lines[-1] if lines else proc.stderr[-300:]).strip()[:300]
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"meta": {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                       "layers": args.layers, "single_layers": args.single_layers,
                       "date": time.strftime("%Y-%m-%d %H:%M"),
                       "command": " ".join(["python", "scripts/cudnn_grad_check.py", *(argv or sys.argv[1:])])},
              "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
