"""Data-parallel LoRA training throughput: steps/s of a full-size random-weight SDXL UNet on 1 vs N GPUs.

Run it once per process count under accelerate (each run appends a row to --out):

    accelerate launch --num_processes 1 scripts/ddp_train_bench.py --out docs/perf/ddp_sdxl.json
    accelerate launch --num_processes 2 --multi_gpu scripts/ddp_train_bench.py --out docs/perf/ddp_sdxl.json

Each process trains batch 1 at 1024x1024 (bf16 autocast, LoRA r32, AdamW); the global batch grows with the
process count, so perfect scaling keeps steps/s flat and doubles samples/s. After the steps, a checksum of
the LoRA weights is compared across processes (DDP keeps them identical).

    python scripts/ddp_train_bench.py --tiny     # CPU smoke test: 1 and 2 gloo processes, then the real
                                                 # brandgen trainer (`brandgen train`) on 2 gloo processes
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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


def bench(args: argparse.Namespace) -> dict[str, Any] | None:
    """One process's share of a DDP run; returns the row on the main process."""
    from accelerate import Accelerator

    from gpu_train_bench import add_lora, build, inputs

    accelerator = Accelerator(mixed_precision="no" if args.tiny else "bf16", cpu=args.tiny)
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)  # bf16 backward through cuDNN SDPA crashed (illegal access)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    model = build("sdxl", args.tiny, str(device), dtype)
    params = add_lora(model, "sdxl", args.rank)
    if args.checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    torch.manual_seed(accelerator.process_index)  # each process sees different data, as with a sharded loader
    batch = inputs("sdxl", accelerator.unwrap_model(model), args.batch, args.resolution, str(device), dtype)

    def step() -> None:
        pred = model(**batch, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), torch.zeros_like(pred, dtype=torch.float32))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    accelerator.wait_for_everyone()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - start
    checksum = torch.stack([p.detach().float().sum() for p in params]).sum().reshape(1).to(device)
    sums = accelerator.gather(checksum)
    if not accelerator.is_main_process:
        return None
    n = accelerator.num_processes
    return {
        "num_processes": n,
        "per_process_batch": args.batch,
        "global_batch": args.batch * n,
        "resolution": args.resolution,
        "rank": args.rank,
        "gradient_checkpointing": args.checkpointing,
        "steps": args.steps,
        "step_ms": round(seconds / args.steps * 1000, 1),
        "steps_per_s": round(args.steps / seconds, 3),
        "samples_per_s": round(args.steps * args.batch * n / seconds, 3),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "lora_in_sync": bool(torch.allclose(sums, sums[0].expand_as(sums), rtol=1e-5)),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, payload: dict, queue: Any) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1",
        }
    )
    torch.set_num_threads(1)
    row = bench(argparse.Namespace(**payload["bench"]))
    from brandgen.paths import AppPaths
    from brandgen.training.config import TrainConfig
    from brandgen.training.trainer import LoraTrainer

    trainer = LoraTrainer(TrainConfig(**payload["config"]), paths=AppPaths(Path(payload["home"])), device="cpu")
    result = trainer.run()
    if trainer.accelerator.is_main_process:
        queue.put((row, {**result.to_dict(), "num_processes": trainer.accelerator.num_processes}))


def tiny(args: argparse.Namespace) -> dict[str, Any]:
    """1 process here, then 2 gloo processes (what `accelerate launch --cpu` would start) that run the
    benchmark and then the real brandgen trainer, so its DDP path (sharded batches, main-process saving)
    is exercised too."""
    import torch.multiprocessing as mp

    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_pipelines
    from training_helpers import make_dataset

    torch.set_num_threads(1)
    settings = {**vars(args), "resolution": 64, "warmup": 1, "steps": 2}
    single = bench(argparse.Namespace(**settings))
    work = Path(tempfile.mkdtemp(prefix="ddp-tiny-"))
    model = tiny_pipelines.build_sd15(work / "model")
    data = make_dataset(work / "data", count=4)
    config = {
        "name": "ddp-brand",
        "base_model": str(model),
        "data_dir": str(data),
        "resolution": 32,
        "rank": 4,
        "alpha": 4,
        "lr": 1e-3,
        "max_steps": 3,
        "allow_small_dataset": True,
        "validation_images": 1,
        "validation_steps": 2,
        "checkpoint_every": 2,
        "gradient_checkpointing": False,
    }
    queue = mp.get_context("spawn").SimpleQueue()
    payload = {"bench": settings, "config": config, "home": str(work / "home")}
    mp.start_processes(_worker, args=(2, _free_port(), payload, queue), nprocs=2, start_method="spawn")
    double, trainer = queue.get()
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return {"rows": [single, double], "trainer": trainer}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=None, help="JSON file; rows are appended across runs")
    args = parser.parse_args(argv)
    if args.tiny:
        result = tiny(args)
    else:
        row = bench(args)
        if row is None:
            return None
        old = json.loads(Path(args.out).read_text()) if args.out and Path(args.out).is_file() else {"rows": []}
        result = {"rows": [*old["rows"], row]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
