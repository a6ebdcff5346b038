"""The trainer itself (LoraTrainer, what the Train tab and `brandgen train` run) on a full-size random-weight SDXL
UNet: ms per optimizer step with and without `cuda_graph`, and whether the graph changes the losses.

    python scripts/trainer_graph_bench.py --out trainer_graph.json            # GPU: full-size UNet, 1024²
    python scripts/trainer_graph_bench.py --tiny --out x.json                 # CPU: the code path only

The pipeline is built from configs (no downloads): the real SDXL UNet, and text encoders and VAE that are small
but of the widths the UNet expects (2048-wide token embeddings, 1280 pooled, 8x latents), so the step's cost is
the UNet's, as with the real model. Every configuration trains the same seed on the same 1024² images, so with
the graph on the per-step losses must match the eager run's (the graph replays the same kernels).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def build_pipeline(folder: Path, tiny: bool, device: str) -> dict[str, Any]:
    """Save an SDXL pipeline whose UNet is full-size (tiny: the CPU test config); returns its forward FLOPs."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from gpu_train_bench import build, forward_flops, inputs

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_pipelines import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    widths = (32, 32) if tiny else (768, 1280)  # CLIP-L and OpenCLIP-bigG widths: 768 + 1280 = 2048

    def text(width: int, projection: bool) -> Any:
        torch.manual_seed(0)
        config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=width,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()

    torch.manual_seed(0)
    blocks = (32, 32, 32, 32)  # four blocks: the 8x downsampling of SDXL's VAE
    vae = AutoencoderKL(
        block_out_channels=blocks, in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    )
    dtype = torch.float32 if tiny else torch.bfloat16
    unet = build("sdxl", tiny, device, dtype)
    resolution = 64 if tiny else 1024
    batch = inputs("sdxl", unet, 1, resolution, device, dtype)
    autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=not tiny)  # noqa: E731
    flops = forward_flops(unet, batch, autocast)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text(widths[0], False), text_encoder_2=text(widths[1], True),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return {"forward_flops": flops, "resolution": resolution}


def make_images(folder: Path, count: int, size: int, mixed: bool = False) -> Path:
    """Two-tone brand tiles at the training resolution (the dataset check rejects sets far below it);
    `mixed`: a third landscape and a third portrait, so aspect-ratio buckets give several shapes."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shape = [(size, size), (size * 4 // 3, size), (size, size * 4 // 3)][i % 3 if mixed else 0]
        image = Image.new("RGB", shape, (253, 246, 227))
        draw = ImageDraw.Draw(image)
        pad = size // 8 + i * size // 200
        draw.rounded_rectangle((pad, pad, shape[0] - pad, shape[1] - pad), radius=size // 6, fill=(15, 118, 110))
        r, c = size // 6, size // 2 + (i % 5 - 2) * size // 50
        draw.ellipse((c - r, c - r, c + r, c + r), fill=(249, 115, 96))
        image.save(folder / f"image_{i:03d}.png")
        (folder / f"image_{i:03d}.txt").write_text("a teal tile with a coral dot, two-tone\n")
    return folder


def train(model: Path, data: Path, resolution: int, args: argparse.Namespace, **options: Any) -> dict[str, Any]:
    from brandgen.training.config import TrainConfig
    from brandgen.training.progress import TrainHooks
    from brandgen.training.trainer import LoraTrainer

    messages: list[str] = []
    config = TrainConfig(
        name=f"graph-bench-{len(os.listdir(os.environ['BRANDGEN_HOME'] + '/loras'))}",
        base_model=str(model), family="sdxl", data_dir=str(data), resolution=resolution, rank=args.rank,
        alpha=args.rank / 2, lr=1e-4, max_steps=args.steps, batch_size=args.batch, optimizer="adamw",
        grad_accum=args.grad_accum, bucketing=args.bucketing,
        checkpoint_every=0, validation_images=0, allow_small_dataset=True, compile=not args.tiny, **options,
    )
    busy: dict[str, Any] = {}

    def watch(p: Any) -> None:
        if p.message:
            messages.append(p.message)
        if args.profile and p.phase == "training" and p.loss is not None:
            _profile_window(p.step, args.skip, busy)

    hooks = TrainHooks(on_progress=watch)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = LoraTrainer(config, hooks=hooks)
    result = trainer.run()
    rows = _history(result.run_dir)
    # on a GPU the trainer records a step's loss once the next step is queued, and the last two together:
    # the final interval is not a step's time
    step_ms = [1000 * (b["seconds"] - a["seconds"]) for a, b in zip(rows, rows[1:])][args.skip : -1]
    return {
        **options,
        "status": result.status,
        "step_ms_median": round(statistics.median(step_ms), 1) if step_ms else None,
        "step_ms_min": round(min(step_ms), 1) if step_ms else None,
        "first_step_s": round(rows[0]["seconds"], 1),  # compile (and capture) happen in the first step
        "run_s": round(time.perf_counter() - start, 1),
        "losses": [row["loss"] for row in rows],
        "messages": sorted(set(messages)),
        "fused_lora_layers": trainer.speed.fused_layers,
        "graphs_captured": trainer.speed.graphed.captured if trainer.speed.graphed is not None else 0,
        "dynamo_unique_graphs": _dynamo_graphs(),
        "device_busy_ms_per_step": busy.get("ms"),
        "top_ops": busy.get("top"),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }


def _profile_window(step: int, skip: int, busy: dict[str, Any], steps: int = 3) -> None:
    """Profile `steps` optimizer steps after the skipped ones: the device's busy time per step (kernels only;
    far below the step time when the host is the bottleneck) and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    if step == skip:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        busy["prof"] = profile(activities=activities)
        busy["prof"].__enter__()
    elif step == skip + steps and "prof" in busy:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        prof = busy.pop("prof")
        prof.__exit__(None, None, None)
        key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        events = prof.key_averages()
        busy["ms"] = round(sum(getattr(e, key) for e in events) / steps / 1000, 1)
        top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:12]
        busy["top"] = [{"op": e.key[:80], "ms_per_step": round(getattr(e, key) / steps / 1000, 2)} for e in top]


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _history(run_dir: Path) -> list[dict[str, float]]:
    import csv

    with open(run_dir / "loss.csv", newline="", encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny UNet on the CPU (the graph is refused there)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5, help="steps left out of the timing (compile, capture)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--bucketing", action="store_true", help="square, landscape and portrait images, buckets on")
    parser.add_argument("--checkpointing", default="on", help="on | off | off,on (the trainer's default is on)")
    parser.add_argument("--profile", action="store_true", help="device busy time over 3 steps after --skip")
    parser.add_argument("--graph", default="off,on", help="off,on (compare) | on | off")
    parser.add_argument("--fp8-base", default="off", help="off | on | off,on: TrainConfig.fp8_base (Ada/Hopper)")
    parser.add_argument("--fused-lora", default="on", help="on | off | off,on: TrainConfig.fused_lora (default on)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    home_before = os.environ.get("BRANDGEN_HOME")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = _run_all(Path(tmp), args, device, argv)
    finally:  # in-process callers (the tests) keep their own home
        if home_before is None:
            os.environ.pop("BRANDGEN_HOME", None)
        else:
            os.environ["BRANDGEN_HOME"] = home_before
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return result


def _run_all(work: Path, args: argparse.Namespace, device: str, argv: list[str] | None) -> dict[str, Any]:
    """Build the pipeline and images under `work`, then train every configuration."""
    os.environ["BRANDGEN_HOME"] = str(work / "home")
    (work / "home" / "loras").mkdir(parents=True)
    start = time.perf_counter()
    built = build_pipeline(work / "model", args.tiny, device)
    if device == "cuda":
        torch.cuda.empty_cache()
    data = make_images(work / "data", 12 if args.bucketing else 8, built["resolution"], args.bucketing)
    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python scripts/trainer_graph_bench.py " + " ".join(argv or sys.argv[1:]),
        "build_s": round(time.perf_counter() - start, 1),
        **built,
        "floor_ms": round(3 * built["forward_flops"] * args.batch / 800e12 * 1000, 2),
    }
    rows = []
    for checkpointing, fp8, fused in [(c == "on", f == "on", u == "on") for c in args.checkpointing.split(",")
                                      for f in args.fp8_base.split(",") for u in args.fused_lora.split(",")]:
        for graph in [g == "on" for g in args.graph.split(",")]:
            row = train(work / "model", data, built["resolution"], args, cuda_graph=graph,
                        gradient_checkpointing=checkpointing, fp8_base=fp8, fused_lora=fused)
            print(json.dumps({k: v for k, v in row.items() if k != "losses"}), file=sys.stderr, flush=True)
            rows.append(row)
            gc.collect()  # the finished trainer's model and graph pool go before the next run
            if device == "cuda":
                torch.cuda.empty_cache()
    for eager, graphed in zip(rows[::2], rows[1::2]):  # same seed and data: the losses must agree
        if args.graph == "off,on":
            graphed["max_loss_diff_vs_eager"] = max(abs(a - b) for a, b in zip(eager["losses"], graphed["losses"]))
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
