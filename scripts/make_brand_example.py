"""Write the example brand dataset: assets/brand_example/icons/ (30 icons, 128x128 PNG, + .txt captions).

The brand: teal #0f766e and coral #f97360 on cream #fdf6e3, two-tone rounded style (a teal rounded
tile carrying a coral glyph, or a teal glyph with a coral accent dot). Captions describe only the
content ("bgicon, flat vector icon of a star, ..."), so a LoRA trained on them learns the style as what
the trigger word means. Deterministic: the same files on every machine.

    python scripts/make_brand_example.py [--out assets/brand_example/icons] [--count 30]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brandgen.templates import load_asset_types  # noqa: E402

TEAL, CORAL, CREAM = (15, 118, 110), (249, 115, 96), (253, 246, 227)
PALETTE = ["#0f766e", "#f97360", "#fdf6e3"]
SIZE, SUPER = 128, 4


def _shapes() -> tuple[list[str], object]:
    """Shapes from the tiny model's procedural renderer when it is there (same vocabulary), else a few basics."""
    try:
        from brandgen.tiny.data import SHAPES, shape_polygons

        return [s for s in SHAPES if s != "ring"], shape_polygons
    except ImportError:
        import math

        def polygons(shape: str):
            n = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}.get(shape, 48)
            return [
                (math.cos(2 * math.pi * k / n - math.pi / 2), math.sin(2 * math.pi * k / n - math.pi / 2))
                for k in range(n)
            ], None

        return ["circle", "triangle", "square", "pentagon", "hexagon"], polygons


def draw_icon(shape: str, polygons, rng: random.Random) -> Image.Image:
    canvas = SIZE * SUPER
    image = Image.new("RGB", (canvas, canvas), CREAM)
    draw = ImageDraw.Draw(image)
    tile = rng.uniform(0.70, 0.82) * canvas
    cx, cy = canvas / 2 + rng.uniform(-4, 4) * SUPER, canvas / 2 + rng.uniform(-4, 4) * SUPER
    outline, _ = polygons(shape)
    if rng.random() < 0.6:  # teal rounded tile with a coral glyph
        draw.rounded_rectangle(
            (cx - tile / 2, cy - tile / 2, cx + tile / 2, cy + tile / 2), radius=tile * 0.24, fill=TEAL
        )
        half, glyph, accent = tile * 0.30, CORAL, None
    else:  # teal glyph with a coral accent dot
        half, glyph, accent = tile * 0.42, TEAL, CORAL
    draw.polygon([(cx + half * x, cy + half * y) for x, y in outline], fill=glyph)
    if accent is not None:
        r = tile * 0.11
        ax, ay = cx + half * 0.75, cy - half * 0.75
        draw.ellipse((ax - r, ay - r, ax + r, ay + r), fill=accent)
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "assets" / "brand_example" / "icons"))
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = load_asset_types()["icons"]
    shapes, polygons = _shapes()
    rng = random.Random(args.seed)
    for i in range(args.count):
        shape = shapes[i % len(shapes)]
        image = draw_icon(shape, polygons, rng)
        image.save(out / f"image_{i + 1:03d}.png", optimize=True)
        article = "an" if shape[0] in "aeiou" else "a"
        caption = f"{kind.trigger}, {kind.prefix} {article} {shape}, {kind.suffix}"
        (out / f"image_{i + 1:03d}.txt").write_text(caption + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {args.count} images + captions to {out} ({total / 1024:.0f} KiB); palette {', '.join(PALETTE)}")


if __name__ == "__main__":
    main()
