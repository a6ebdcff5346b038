"""The tiny v2 LoRA demo dataset: 25 real icons of one set, recoloured into a brand palette.

    python -m brandgen.tiny.brand_icons --pack .work/icons/iconpack.npz --out assets/brand_example/icons_v2

A designer's brand set is one icon family in two or three brand colours, so that is what the demo trains on:
Phosphor's duotone icons (MIT; notice in THIRD_PARTY_NOTICES.txt) with the line in the brand's main colour and
the duotone fill, which Phosphor draws at 20% opacity of the line colour, as a solid accent colour, on the brand
background (brand_example.json). Captions are the app's icon template around the pack's icon name, with no colour
or style words, so a LoRA learns the palette and the style as what its trigger word means. Deterministic: the same
files from the same pack on every machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from brandgen.metrics import hex_to_rgb
from brandgen.templates import load_asset_types
from brandgen.tiny import icon_data, icons

BRAND_PATH = Path(__file__).with_name("brand_example.json")


def load_brand(path: str | Path = BRAND_PATH) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def brand_palette(brand: dict) -> list[str]:
    """The brand's colours, line and fill first (what a glyph should be drawn in), background last."""
    p = brand["palette"]
    return [p["line"], p["fill"], p["background"]]


def pick_icons(meta: list[dict], brand: dict) -> list[int]:
    """Pack indices of the demo's icons: the brand's set and style, icons of the everyday concepts first (in
    concepts.json order, the subjects the model knows best), never a held subject, never an icon the model's
    own evaluation holds out."""
    concepts = list(icons.load_concepts()["concepts"])
    held = set(brand["held_subjects"])
    candidates = [i for i, m in enumerate(meta) if m["set"] == brand["set"] and m["style"] == brand["style"]
                  and not m.get("heldout") and m["phrase"] not in held and m.get("concept") not in held]
    order = {c: n for n, c in enumerate(concepts)}
    candidates.sort(key=lambda i: (order.get(meta[i].get("concept"), len(order)), meta[i]["name"]))
    if len(candidates) < brand["count"]:
        raise ValueError(f"the pack has only {len(candidates)} {brand['set']} {brand['style']} icons to choose from")
    return candidates[: brand["count"]]


def split_duotone(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fill alpha, line alpha) in [0, 1] of one uint8 duotone mask (icon_data.split_duotone, which training's
    two-tone variants use too)."""
    fill, line = icon_data.split_duotone(torch.from_numpy(np.ascontiguousarray(mask))[None, None])
    return fill[0, 0].numpy(), line[0, 0].numpy()


def render_icon(mask: np.ndarray, brand: dict) -> Image.Image:
    """One brand icon: the mask scaled to icon_scale of the canvas, centred, fill and line in brand colours."""
    size, p = brand["size"], brand["palette"]
    inner = round(size * brand["icon_scale"])
    offset = (size - inner) // 2
    layers = []
    for alpha in split_duotone(mask):
        small = Image.fromarray(alpha.astype(np.float32), mode="F").resize((inner, inner), Image.Resampling.LANCZOS)
        canvas = np.zeros((size, size), np.float32)
        canvas[offset:offset + inner, offset:offset + inner] = np.clip(np.asarray(small), 0, 1)
        layers.append(canvas[..., None])
    image = np.broadcast_to(np.array(hex_to_rgb(p["background"]), np.float32), (size, size, 3))
    for alpha, colour in zip(layers, (p["fill"], p["line"])):
        image = image * (1 - alpha) + np.array(hex_to_rgb(colour), np.float32) * alpha
    return Image.fromarray(np.round(image).astype(np.uint8))


def caption_for(meta: dict, brand: dict) -> str:
    """The app's template around the icon's name (the Train tab adds the LoRA's trigger word in front)."""
    kind = load_asset_types()[brand["asset_type"]]
    phrase = meta["phrase"]
    article = "an" if phrase[:1] in "aeiou" else "a"
    return f"{kind.trigger}, {kind.prefix} {article} {phrase}, {kind.suffix}"


def build(masks: np.ndarray, meta: list[dict], out: str | Path, brand: dict | None = None) -> list[Path]:
    """Write <n>_<icon name>.png + .txt for each picked icon into `out` (replacing an earlier build's files)."""
    brand = brand or load_brand()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), *out.glob("*.txt")]:
        old.unlink()
    written = []
    for n, index in enumerate(pick_icons(meta, brand), start=1):
        path = out / f"{n:02d}_{meta[index]['name']}.png"
        render_icon(masks[index], brand).save(path, optimize=True)
        path.with_suffix(".txt").write_text(caption_for(meta[index], brand) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pack", default=".work/icons/iconpack.npz")
    parser.add_argument("--out", default="assets/brand_example/icons_v2")
    args = parser.parse_args(argv)
    masks, meta, _ = icons.load_pack(args.pack)
    written = build(masks, meta, args.out)
    total = sum(p.stat().st_size + p.with_suffix(".txt").stat().st_size for p in written)
    brand = load_brand()
    print(f"wrote {len(written)} {brand['set']} {brand['style']} icons + captions to {args.out} "
          f"({total / 1024:.0f} KiB); palette {', '.join(brand_palette(brand))}; trigger {brand['trigger']}")


if __name__ == "__main__":
    main()
