"""CPU benchmark of brand LoRA training on the embedded model: time, and palette adherence before/after.

Trains a LoRA on the example brand dataset (teal/coral on cream) and renders the same prompts and seeds
before and after; prints one JSON object. Target on a 2-core CPU: < 3 min with 25 images at 128 px.

    python scripts/bench_train_tiny.py                      # needs assets/brandgen-tiny
    python scripts/bench_train_tiny.py --model path/to/diffusers/folder --resolution 128
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PALETTE = ["#0f766e", "#f97360", "#fdf6e3"]
SHAPES = ["star", "heart", "circle", "bolt"]


def render_all(pipe, prompts: list[str], negative: str, seeds: list[int], steps: int, guidance: float, size: int):
    import torch

    images = []
    for prompt in prompts:
        for seed in seeds:
            images += pipe(
                prompt,
                negative_prompt=negative,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=size,
                width=size,
                generator=torch.Generator().manual_seed(seed),
            ).images
    return images


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brandgen-tiny", help="registry id or diffusers folder")
    parser.add_argument("--data", default=str(ROOT / "assets" / "brand_example" / "icons"))
    parser.add_argument("--images", type=int, default=25)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--trigger", default="tealcoral")
    args = parser.parse_args(argv)

    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    from brandgen.loras import DIFFUSERS_FILE
    from brandgen.metrics import palette_adherence
    from brandgen.paths import AppPaths
    from brandgen.templates import build_prompt
    from brandgen.training.config import TrainConfig
    from brandgen.training.families import UNET_CONV_TARGETS, get_family
    from brandgen.training.loading import resolve_base_model
    from brandgen.training.trainer import LoraTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    source, family, entry = resolve_base_model(args.model, None)
    if not Path(source, "model_index.json").is_file():
        result = {"status": "skipped", "reason": f"no model folder at {source} (build brandgen-tiny first)"}
        print(json.dumps(result))
        return result
    guidance = entry.default_guidance if entry else 6.0
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = work / "data"
    data.mkdir()
    images = sorted(p for p in Path(args.data).iterdir() if p.suffix == ".png")[: args.images]
    for image in images:
        shutil.copy(image, data)
        if image.with_suffix(".txt").exists():
            shutil.copy(image.with_suffix(".txt"), data)
    pairs = [build_prompt(f"a {shape}", "icons", extra_triggers=(args.trigger,)) for shape in SHAPES]
    prompts, negative = [p.prompt for p in pairs], pairs[0].negative
    seeds = list(range(args.seeds))

    pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=torch.float32)  # the weights are fp16
    pipe.set_progress_bar_config(disable=True)
    before = render_all(pipe, prompts, negative, seeds, args.sample_steps, guidance, args.resolution)

    config = TrainConfig(
        name="bench-brand",
        base_model=str(source),
        data_dir=str(data),
        trigger=args.trigger,
        resolution=args.resolution,
        rank=args.rank,
        alpha=args.rank,
        lr=args.lr,
        max_steps=args.steps,
        batch_size=1,
        gradient_checkpointing=False,
        checkpoint_every=0,
        validation_images=0,
        allow_small_dataset=True,
        # attention alone gives a small UNet little to work with; its resnet layers let it learn a palette
        target_modules=[*get_family(family).default_targets, *UNET_CONV_TARGETS] if family in ("sd15", "sdxl") else [],
    )
    start = time.perf_counter()
    result = LoraTrainer(config, paths=AppPaths(work / "home"), device="cpu").run()
    train_seconds = time.perf_counter() - start

    pipe.load_lora_weights(str(result.lora_dir), weight_name=DIFFUSERS_FILE)
    after = render_all(pipe, prompts, negative, seeds, args.sample_steps, guidance, args.resolution)
    grid_dir = ROOT / "benchmarks" / "outputs"
    grid_dir.mkdir(parents=True, exist_ok=True)
    for tag, batch in (("before", before), ("after", after)):
        grid = Image.new("RGB", (args.resolution * len(batch), args.resolution))
        for i, image in enumerate(batch):
            grid.paste(image, (i * args.resolution, 0))
        grid.save(grid_dir / f"train_tiny_{tag}.png")

    mean = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
    report = {
        "status": "done",
        "model": args.model,
        "family": family,
        "images": len(images),
        "resolution": args.resolution,
        "rank": args.rank,
        "steps": result.steps,
        "lr": args.lr,
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "palette": PALETTE,
        "adherence_before": mean([palette_adherence(i, PALETTE) for i in before]),
        "adherence_after": mean([palette_adherence(i, PALETTE) for i in after]),
        "dataset_adherence": mean([palette_adherence(Image.open(p), PALETTE) for p in images]),
        "eval_loss": result.metrics,
        "prompts": prompts,
        "seeds": seeds,
        "grids": [str(grid_dir / "train_tiny_before.png"), str(grid_dir / "train_tiny_after.png")],
    }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
