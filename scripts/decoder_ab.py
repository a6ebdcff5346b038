"""Decode the same generated latents with several autoencoders of one latent space: a decoder tune's A/B.

Draws latents once with the model's text encoder, UNet and scheduler at the app's settings (the Benchmark tab's
prompts and some icon prompts through the icons template, 28 steps, guidance 6 on the model's guided share), then
decodes them with every --vae. Per autoencoder: the canvas roughness (mean CIE76 delta E of the outer band's
pixels from their median, at full resolution: speckle on a flat canvas raises it), background_cleanliness (the
Benchmark tab's score) and PSNR against the first --vae. Same latents on every side, so only the decoder differs.

    python scripts/decoder_ab.py --model .work/v2run8/model --vae .work/v2run8/model/vae TUNED/vae --out ab.json \
        [--sheet ab.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ICON_PROMPTS = ("a simple bell glyph in teal", "shopping cart icon, coral", "outline calendar icon, navy",
                "filled heart icon, red", "user profile icon, blue")
BAND = 1 / 16  # of the canvas's side (16 px at 256 px): the edge, where a flat background shows


def roughness(rgb: np.ndarray) -> float:
    """Mean delta E of the border band's pixels from their median colour: 0 for a perfectly flat canvas."""
    from brandgen.metrics import border_pixels, rgb_to_lab

    rgb = np.asarray(rgb, dtype=np.uint8)
    lab = rgb_to_lab(border_pixels(rgb, max(1, round(rgb.shape[0] * BAND))))
    return float(np.sqrt(((lab - np.median(lab, axis=0)) ** 2).sum(-1)).mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved brandgen-tiny folder (UNet, text encoder, scheduler)")
    parser.add_argument("--vae", nargs="+", required=True, help="autoencoder folders of the model's latent space")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--guidance-until", type=float, default=0.5, help="the model's guided share (registry)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--sheet", default=None, help="PNG: one row per autoencoder")
    args = parser.parse_args(argv)

    import torch
    from diffusers import AutoencoderKL, DiffusionPipeline
    from PIL import Image

    from brandgen.benchmark import DEFAULT_PROMPTS
    from brandgen.metrics import background_cleanliness, image_psnr
    from brandgen.pipeline_call import guidance_interval_kwargs
    from brandgen.templates import build_prompt
    from brandgen.tiny.icon_data import from_pixels

    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    scale = pipe.vae.config.scaling_factor
    jobs = [(p, s) for p in (*DEFAULT_PROMPTS, *ICON_PROMPTS) for s in range(args.seeds)]
    latents, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for prompt, seed in jobs:
            pair = build_prompt(prompt, "icons")
            latents.append(pipe(prompt=pair.prompt, negative_prompt=pair.negative, num_inference_steps=args.steps,
                                guidance_scale=args.guidance, generator=torch.Generator().manual_seed(seed),
                                output_type="latent", **guidance_interval_kwargs(pipe, args.steps,
                                                                                 args.guidance_until)).images)
    generate_s = time.perf_counter() - t0
    decoded: dict[str, list[np.ndarray]] = {}
    for folder in args.vae:
        vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()
        if abs(vae.config.scaling_factor - scale) > 1e-6:
            parser.error(f"{folder}: scaling factor {vae.config.scaling_factor} is not the model's {scale}: "
                         "another latent space")
        with torch.inference_mode():
            decoded[folder] = [from_pixels(vae.decode(z / scale).sample)[0] for z in latents]
    first = decoded[args.vae[0]]
    result = {"model": args.model, "images": len(jobs), "steps": args.steps, "guidance": args.guidance,
              "guidance_until": args.guidance_until, "generate_s": round(generate_s, 1), "vaes": {}}
    for folder, images in decoded.items():
        rough = [roughness(i) for i in images]
        result["vaes"][folder] = {
            "roughness_median": round(statistics.median(rough), 2), "roughness_mean": round(statistics.mean(rough), 2),
            "background_cleanliness_mean": round(statistics.mean(
                background_cleanliness(Image.fromarray(i)) for i in images), 3),
            "psnr_vs_first_median": None if folder == args.vae[0] else round(statistics.median(
                image_psnr(a.astype(np.float64), b.astype(np.float64)) for a, b in zip(images, first)), 2),
            "roughness": [round(r, 2) for r in rough]}
        print(folder, {k: v for k, v in result["vaes"][folder].items() if k != "roughness"}, flush=True)
    if args.sheet:
        side = first[0].shape[0]
        sheet = Image.new("RGB", (side * len(jobs), side * len(decoded)))
        for row, images in enumerate(decoded.values()):
            for col, image in enumerate(images):
                sheet.paste(Image.fromarray(image), (col * side, row * side))
        sheet.save(args.sheet)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
