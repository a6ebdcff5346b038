"""Which SDPA backend trains FLUX-size attention, and how fast: forward + backward per backend and tensor layout.

The FLUX LoRA backward crashed with an illegal memory access on the cuDNN SDPA backend (docs/PERFORMANCE.md).
This isolates attention: FLUX.1 joint attention (24 heads x 128, 4096 image + 512 text tokens, bf16) with
q/k/v either contiguous BHSD or BSHD-strided views (how diffusers' attention dispatch hands them to SDPA), and
the output gradient matching the output's strides, transposed, or a slice of a wider tensor. Each case runs in its own process so one
crash cannot hide the others.

    python scripts/attention_backend_bench.py --out attention_h100.json     # CUDA only, ~1 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

PEAK_FLOPS = 800e12
BACKENDS = ("flash", "efficient", "cudnn")
LAYOUTS = ("bhsd", "bshd")  # storage order of q/k/v; SDPA always sees [B, H, S, D]
# dO strides: equal to the output's; a [B, S, H*D] gradient seen as [B, H, S, D]; or a slice of a wider gradient,
# as in FLUX's single blocks, which concatenate the attention output with the 4x wider MLP branch
GRADS = ("like_out", "transposed", "sliced")


def make(layout: str, batch: int, heads: int, seq: int, dim: int) -> torch.Tensor:
    shape = (batch, seq, heads, dim) if layout == "bshd" else (batch, heads, seq, dim)
    t = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    t = t.transpose(1, 2) if layout == "bshd" else t
    return t.requires_grad_(True)


def run_case(backend: str, layout: str, grad: str, seq: int, steps: int) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    b, h, d = 1, 24, 128
    q, k, v = (make(layout, b, h, seq, d) for _ in range(3))
    out_grad = torch.randn(b, h, seq, d, device="cuda", dtype=torch.bfloat16)
    if grad == "transposed":  # a [B, S, H*D] gradient seen through the view [B, H, S, D]
        out_grad = out_grad.transpose(1, 2).contiguous().transpose(1, 2)
    elif grad == "sliced":
        wide = torch.randn(b, seq, 5 * h * d, device="cuda", dtype=torch.bfloat16)
        out_grad = wide[..., : h * d].unflatten(-1, (h, d)).transpose(1, 2)

    def step() -> None:
        with sdpa_kernel([kernel]):
            out = F.scaled_dot_product_attention(q, k, v)
        out.backward(out_grad)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / steps * 1000
    flops = 4 * b * h * seq * seq * d * 3.5  # forward 4*B*H*S^2*D; backward 2.5x (recomputes the scores)
    return {"ms_fwd_bwd": round(ms, 3), "tflops": round(flops / ms / 1e9, 1),
            "floor_ms": round(flops / PEAK_FLOPS * 1000, 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4608, help="tokens (FLUX 1024^2: 4096 image + 512 text)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # child process: backend,layout,grad
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("CUDA only: this measures GPU attention kernels.")
    if args.case:
        backend, layout, grad = args.case.split(",")
        print(json.dumps(run_case(backend, layout, grad, args.seq, args.steps)))
        return {}
    rows = []
    for backend in BACKENDS:
        for layout in LAYOUTS:
            for grad in GRADS:
                cmd = [sys.executable, __file__, "--case", f"{backend},{layout},{grad}",
                       "--seq", str(args.seq), "--steps", str(args.steps)]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                row: dict[str, Any] = {"backend": backend, "qkv_layout": layout, "grad_layout": grad}
                if proc.returncode == 0:
                    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                else:
                    lines = [line for line in proc.stderr.splitlines() if "Error" in line or "error" in line]
                    row["error"] = (lines[-1] if lines else proc.stderr[-300:]).strip()[:300]
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "meta": {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "cudnn": torch.backends.cudnn.version(), "seq": args.seq, "heads": 24, "head_dim": 128,
                 "date": time.strftime("%Y-%m-%d %H:%M"),
                 "command": " ".join(["python", "scripts/attention_backend_bench.py", *(argv or sys.argv[1:])])},
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
