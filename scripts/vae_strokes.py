"""How well does a model's autoencoder keep the colour of a stroke, by stroke width?

Draws one vertical bar per colour x background x width at 256 px, sends it through the VAE (encode mean ->
decode, as a LoRA's target latents come back) and reports the median colour of the bar's inner third against the
colour drawn (CIE76 delta E; brandgen.metrics counts a pixel on-palette within 18). Icon outlines at 256 px are
8-17 px wide, so a VAE that only keeps wide areas' colour caps what any LoRA on it can draw.

    python scripts/vae_strokes.py --model .work/v2run7/model [--out strokes.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLOURS = {"brand teal #0f766e": (15, 118, 110), "brand coral #f97360": (249, 115, 96), "teal": (0, 128, 128),
           "red": (220, 38, 38), "blue": (37, 99, 235)}
BACKGROUNDS = {"cream": (253, 246, 227), "white": (255, 255, 255)}
WIDTHS = (4, 8, 12, 16, 24, 64)
SIZE = 256


def bar(colour: tuple[int, int, int], background: tuple[int, int, int], width: int, size: int = SIZE) -> np.ndarray:
    """[size, size, 3] uint8: a vertical bar of `width` px, centred, over the middle 70% of the height."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    left, top = size // 2 - width // 2, int(size * 0.15)
    img[top:size - top, left:left + width] = colour
    return img


def stroke_errors(round_trip: Callable[[np.ndarray], np.ndarray], colours: dict = COLOURS,
                  backgrounds: dict = BACKGROUNDS, widths=WIDTHS, size: int = SIZE) -> list[dict]:
    """One row per colour x background x width: the colour that came back and its delta E from the one drawn."""
    from brandgen.tiny import data

    rows, middle = [], slice(int(size * 0.3), size - int(size * 0.3))
    for name, colour in colours.items():
        for bg_name, bg in backgrounds.items():
            for width in widths:
                out = np.asarray(round_trip(bar(colour, bg, width, size)), np.float64)
                left, third = size // 2 - width // 2, max(width // 3, 1)
                inner = left + (width - third) // 2
                back = np.median(out[middle, inner:inner + third].reshape(-1, 3), axis=0)
                d = np.linalg.norm(data.srgb_to_lab(back[None]) - data.srgb_to_lab(np.array([colour], np.float64)))
                rows.append({"colour": name, "background": bg_name, "width": width,
                             "back": [int(round(v)) for v in back], "delta_e": round(float(d), 1)})
    return rows


def vae_round_trip(model: str) -> Callable[[np.ndarray], np.ndarray]:
    from diffusers import AutoencoderKL

    from brandgen.tiny.vae_tune import round_trip_rgb

    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").float().eval()
    return lambda img: round_trip_rgb(vae, img)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "brandgen-tiny"), help="a diffusers model folder")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if not (Path(args.model) / "vae" / "config.json").is_file():
        parser.error(f"no autoencoder at {Path(args.model) / 'vae'}")
    rows = stroke_errors(vae_round_trip(args.model))
    by_width = {w: round(float(np.mean([r["delta_e"] for r in rows if r["width"] == w])), 1) for w in WIDTHS}
    result = {"model": args.model, "mean_delta_e_by_width": by_width, "rows": rows}
    for r in rows:
        print(f"{r['colour']:>20} on {r['background']:<5} {r['width']:>3} px -> {tuple(r['back'])} dE {r['delta_e']}")
    print(json.dumps({"mean_delta_e_by_width": by_width}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
