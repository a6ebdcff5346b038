"""CPU benchmark of brand LoRA training on the embedded model: time, and palette adherence before/after.

Trains a LoRA on an example brand dataset (teal/coral on cream) and renders the same prompts and seeds
before and after; prints one JSON object. Target on a 2-core CPU (issue #18): < 3 min with 25 images, and
foreground palette adherence (the glyph's pixels, not the canvas; brandgen.metrics) up >= 30 points.

    python scripts/bench_train_tiny.py                      # v2: real duotone icons, 256 px, the shipped model
    python scripts/bench_train_tiny.py --example v1 --model OLD_MODEL   # v1: assets/brand_example/icons, shapes, 128 px
    python scripts/bench_train_tiny.py --model path/to/diffusers/folder --steps 600 --lr 3e-4

--example v2 trains on assets/brand_example/icons_v2 (python -m brandgen.tiny.brand_icons) and asks for
subjects that are not among its 25 icons (brandgen/tiny/brand_example.json "held_subjects").
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
from brandgen.training.config import TIMESTEP_SAMPLING  # noqa: E402  (light: no torch)

PALETTE = ["#0f766e", "#f97360", "#fdf6e3"]
SHAPES = ["star", "heart", "circle", "bolt"]


def render_all(pipe, prompts: list[str], negative: str, seeds: list[int], steps: int, guidance: float, size: int,
               guidance_until: float = 1.0):
    import torch

    from brandgen.pipeline_call import guidance_interval_kwargs

    extra = guidance_interval_kwargs(pipe, steps, guidance_until)  # as the app runs a model's guidance_until
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
                **extra,
            ).images
    return images


def vae_round_trip(pipe, images: list, size: int) -> list:
    """The dataset through the model's VAE (encode, decode): a LoRA on the UNet cannot draw colours its VAE
    cannot reproduce, so the round trip's adherence is the ceiling of what training can reach."""
    import numpy as np
    from PIL import Image

    from brandgen.tiny.vae_tune import round_trip_rgb

    return [Image.fromarray(round_trip_rgb(pipe.vae, np.asarray(image.convert("RGB").resize((size, size))))
                            .astype(np.uint8)) for image in images]


def kept_by_colour(originals: list, round_trips: list, palette: list[str], size: int) -> dict[str, float]:
    """For each brand colour, the share of the dataset's pixels drawn in it (within delta E 10) that are still
    within the palette tolerance of it after the VAE round trip: which colour the autoencoder loses (thin teal
    outlines, large coral fills)."""
    import numpy as np

    from brandgen.metrics import PALETTE_TOLERANCE, hex_to_rgb, rgb_to_lab

    lab = rgb_to_lab(np.array([hex_to_rgb(c) for c in palette], np.float64))
    kept, drawn = np.zeros(len(palette)), np.zeros(len(palette))
    for original, back in zip(originals, round_trips):
        x = rgb_to_lab(np.asarray(original.convert("RGB").resize((size, size)), np.float64).reshape(-1, 3))
        y = rgb_to_lab(np.asarray(back.convert("RGB"), np.float64).reshape(-1, 3))
        distance = np.linalg.norm(x[:, None] - lab[None], axis=-1)
        nearest, drawn_in_palette = distance.argmin(1), distance.min(1) < 10
        for k in range(len(palette)):
            mask = (nearest == k) & drawn_in_palette
            drawn[k] += mask.sum()
            kept[k] += (np.linalg.norm(y[mask] - lab[k], axis=-1) < PALETTE_TOLERANCE).sum()
    return {c: round(float(kept[k] / drawn[k]), 4) if drawn[k] else None for k, c in enumerate(palette)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brandgen-tiny", help="registry id or diffusers folder")
    parser.add_argument("--example", choices=("v1", "v2"), default="v2",
                        help="v1: procedural shapes at 128 px; v2: real icons at 256 px (data, palette, subjects)")
    parser.add_argument("--data", default=None, help="dataset folder (default: the example's)")
    parser.add_argument("--images", type=int, default=25)
    parser.add_argument("--resolution", type=int, default=None, help="default: 128 for v1, 256 for v2")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="default: 600 for v2, 250 for v1")
    parser.add_argument("--lr", type=float, default=None, help="default: 3e-4 for v2, 1e-3 for v1")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--lora-guidance", type=float, default=None,
                        help="guidance after training (default: as the app does, the registry model's "
                             "lora_guidance, else its default guidance)")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance-until", type=float, default=None,
                        help="guide this share of the sampling steps (default: as the app does, the registry model's "
                             "share without a LoRA and every step with one)")
    parser.add_argument("--sweep-lora-guidance", default="", metavar="G1,G2,...",
                        help="also render the trained LoRA at these guidance scales (same seeds) and report each "
                             "one's foreground adherence: how a model's lora_guidance is chosen")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--trigger", default=None, help="default: tealcoral (v2: brand_example.json's)")
    parser.add_argument("--target-modules", choices=("attention+conv", "attention"), default="attention+conv")
    parser.add_argument("--timesteps", choices=TIMESTEP_SAMPLING, default=None,
                        help="TrainConfig.timesteps: high-noise weights the steps where a palette is decided "
                             "(default: what the Train tab suggests for the model, else uniform)")
    parser.add_argument("--decoder-steps", type=int, default=None,
                        help="TrainConfig.decoder_steps: a brand decoder tuned after the LoRA (brand_decoder.py; "
                             "default: the model's lora_settings, 0 for none)")
    parser.add_argument("--settings-of", default=None, metavar="REGISTRY_ID",
                        help="judge a model folder with this registry entry's guidance and LoRA settings, as if it "
                             "shipped under that id (a candidate for brandgen-tiny: --settings-of brandgen-tiny)")
    parser.add_argument("--out", default=None, help="also write the JSON report here")
    parser.add_argument("--grid", default=None,
                        help="before/after PNG (default: benchmarks/outputs/train_tiny_EXAMPLE_before_after.png)")
    parser.add_argument("--ceiling-only", action="store_true",
                        help="only the dataset's VAE round trip (the adherence no LoRA can exceed), no training")
    args = parser.parse_args(argv)
    palette, subjects, trigger = PALETTE, SHAPES, "tealcoral"
    data_dir = ROOT / "assets" / "brand_example" / "icons"
    if args.example == "v2":
        from brandgen.tiny.brand_icons import brand_palette, load_brand

        brand = load_brand()
        palette, subjects, trigger = brand_palette(brand), brand["held_subjects"], brand["trigger"]
        data_dir = ROOT / "assets" / "brand_example" / "icons_v2"
    args.trigger = args.trigger or trigger
    args.data = args.data or str(data_dir)
    args.resolution = args.resolution or (256 if args.example == "v2" else 128)
    from brandgen.registry import ModelRegistry
    from brandgen.training.loading import resolve_base_model

    registry = ModelRegistry.from_file()
    source, family, entry = resolve_base_model(args.model, registry)
    if args.settings_of:
        entry = registry.get(args.settings_of)
    if args.example == "v2":  # what the Train tab suggests for this model (its entry's lora_settings win), in epochs
        from brandgen.training.config import suggested_lora_settings

        suggested = entry.suggested_lora_settings() if entry else suggested_lora_settings(args.resolution)
        args.steps = args.steps or suggested["epochs"] * args.images
        args.lr = args.lr or suggested["lr"]
        args.timesteps = args.timesteps or suggested.get("timesteps", "uniform")
        args.decoder_steps = suggested.get("decoder_steps", 0) if args.decoder_steps is None else args.decoder_steps
    args.steps, args.lr = args.steps or 250, args.lr or 1e-3  # v1's figures
    args.timesteps = args.timesteps or "uniform"
    args.decoder_steps = args.decoder_steps or 0

    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    from brandgen.brand_decoder import DecoderBlend
    from brandgen.loras import DIFFUSERS_FILE
    from brandgen.metrics import foreground_palette_adherence, palette_adherence
    from brandgen.paths import AppPaths
    from brandgen.templates import build_prompt
    from brandgen.training.config import TrainConfig
    from brandgen.training.families import UNET_CONV_TARGETS, get_family
    from brandgen.training.trainer import LoraTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(source, "model_index.json").is_file():
        result = {"status": "skipped", "reason": f"no model folder at {source} (build brandgen-tiny first)"}
        print(json.dumps(result))
        return result
    guidance = entry.default_guidance if entry else 6.0
    # as the app guides with a LoRA active and Guidance left at -1 (ModelEntry.default_guidance_for)
    guidance_lora = (args.lora_guidance if args.lora_guidance is not None
                     else entry.default_guidance_for(True) if entry else guidance)
    # as the app guides: the model's share before the LoRA, its share with a LoRA active after (ModelEntry)
    until, until_lora = ((args.guidance_until,) * 2 if args.guidance_until is not None
                         else (entry.guided_share(False), entry.guided_share(True)) if entry else (1.0, 1.0))
    images = sorted(p for p in Path(args.data).iterdir() if p.suffix == ".png")[: args.images]
    pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=torch.float32)  # the weights are fp16
    pipe.set_progress_bar_config(disable=True)
    if args.ceiling_only:  # seconds instead of minutes: screens an autoencoder before any LoRA is trained on it
        dataset = [Image.open(p) for p in images]
        round_trip = vae_round_trip(pipe, dataset, args.resolution)
        adherence = [foreground_palette_adherence(i, palette) for i in round_trip]
        result = {"status": "ceiling", "model": args.model, "images": len(images), "palette": palette,
                  "vae_round_trip_foreground_adherence": round(sum(adherence) / len(adherence), 4),
                  "vae_round_trip_kept_by_colour": kept_by_colour(dataset, round_trip, palette, args.resolution)}
        print(json.dumps(result))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
        return result
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = work / "data"
    data.mkdir()
    for image in images:
        shutil.copy(image, data)
        if image.with_suffix(".txt").exists():
            shutil.copy(image.with_suffix(".txt"), data)
    pairs = [build_prompt(f"a {subject}", "icons", extra_triggers=(args.trigger,)) for subject in subjects]
    prompts, negative = [p.prompt for p in pairs], pairs[0].negative
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    before = render_all(pipe, prompts, negative, seeds, args.sample_steps, guidance, args.resolution, until)

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
        target_modules=[*get_family(family).default_targets, *UNET_CONV_TARGETS]
        if family in ("sd15", "sdxl") and args.target_modules == "attention+conv" else [],
        timesteps=args.timesteps,
        decoder_steps=args.decoder_steps,
    )
    start = time.perf_counter()
    result = LoraTrainer(config, paths=AppPaths(work / "home"), device="cpu").run()
    train_seconds = time.perf_counter() - start

    pipe.load_lora_weights(str(result.lora_dir), weight_name=DIFFUSERS_FILE)
    blend = DecoderBlend()  # the LoRA's brand decoder at weight 1, as the app applies it
    delta = blend.delta_for(Path(result.lora_dir) / DIFFUSERS_FILE, pipe.vae, config.name, str(args.model))
    brand = [(config.name, delta, 1.0)] if delta is not None else []
    blend.set(pipe.vae, brand)
    after = render_all(pipe, prompts, negative, seeds, args.sample_steps, guidance_lora, args.resolution, until_lora)
    grid = Image.new("RGB", (args.resolution * len(before), 2 * args.resolution))  # row 1 before, row 2 after
    for row, batch in enumerate((before, after)):
        for i, image in enumerate(batch):
            grid.paste(image.resize((args.resolution, args.resolution)), (i * args.resolution, row * args.resolution))
    grid_path = Path(args.grid or ROOT / "benchmarks" / "outputs" / f"train_tiny_{args.example}_before_after.png")
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(grid_path)

    mean = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
    dataset = [Image.open(p) for p in images]
    round_trip = vae_round_trip(pipe, dataset, args.resolution)  # through the brand decoder when it has one
    blend.set(pipe.vae, [])
    base_round_trip = vae_round_trip(pipe, dataset, args.resolution)
    blend.set(pipe.vae, brand)  # for the guidance sweep
    foreground = {tag: mean([foreground_palette_adherence(i, palette) for i in batch])
                  for tag, batch in (("before", before), ("after", after), ("dataset", dataset),
                                     ("vae", round_trip), ("vae_base", base_round_trip))}
    sweep = {}
    for value in (float(v) for v in args.sweep_lora_guidance.split(",") if v.strip()):
        batch = render_all(pipe, prompts, negative, seeds, args.sample_steps, value, args.resolution, until_lora)
        sweep[f"{value:g}"] = mean([foreground_palette_adherence(i, palette) for i in batch])
    report = {
        "status": "done",
        "model": args.model,
        "settings_of": args.settings_of,
        "family": family,
        "images": len(images),
        "resolution": args.resolution,
        "rank": args.rank,
        "steps": result.steps,
        "lr": args.lr,
        "guidance": {"before": guidance, "after": guidance_lora},
        "guidance_until": {"before": until, "after": until_lora},
        "target_modules": args.target_modules,
        "timesteps": args.timesteps,
        "example": args.example,
        "trigger": args.trigger,
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "palette": palette,
        "adherence_before": mean([palette_adherence(i, palette) for i in before]),
        "adherence_after": mean([palette_adherence(i, palette) for i in after]),
        "dataset_adherence": mean([palette_adherence(i, palette) for i in dataset]),
        "foreground_adherence_before": foreground["before"],
        "foreground_adherence_after": foreground["after"],
        "foreground_gain_points": round(100 * (foreground["after"] - foreground["before"]), 1),
        "dataset_foreground_adherence": foreground["dataset"],
        "vae_round_trip_foreground_adherence": foreground["vae"],
        "base_decoder_round_trip_foreground_adherence": foreground["vae_base"],
        "decoder_steps": args.decoder_steps,
        "brand_decoder": delta is not None,
        "foreground_adherence_after_by_guidance": sweep,
        "eval_loss": result.metrics,
        "prompts": prompts,
        "seeds": seeds,
        "grid": str(grid_path),
    }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
