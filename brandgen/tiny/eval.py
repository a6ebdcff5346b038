"""Does brandgen-tiny draw what was asked? Color family and shape read back with classic image analysis.

    python -m brandgen.tiny.eval [--per-concept 4 --out r.json --sheet s.png]   # the shipped v2: held-out icons
    python -m brandgen.tiny.eval --shapes --model V1_MODEL --n 100 --out results.json [--grid PATH]   # v1 shapes

Without --shapes this runs brandgen.tiny.icon_eval (real icons by name, the shipped model). With --shapes it is
v1's evaluation of procedural shapes:
Background = median of the border; foreground = pixels far from it in Lab; the largest component's
interior gives the color family, and its hole-filled silhouette, normalised to its bounding box, is
matched by IoU against silhouettes rendered by data.py. No learned model is involved, so the metric
cannot share the generator's mistakes, and the tests check it on ground-truth renders.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from brandgen.metrics import border_pixels
from brandgen.tiny import data

NORM = 48
ROTATIONS = (-12.0, -6.0, 0.0, 6.0, 12.0)
MIN_SHAPE_IOU = 0.72
FG_DISTANCE = 22.0
MAX_BORDER_SPREAD = 12.0
MAX_RAGGEDNESS = 30.0
MAX_COLOR_SPREAD = 20.0


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels (0 = background) and component sizes (index = label), by unioning row runs."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    diff = np.diff(padded, axis=1)
    rows_s, cols_s = np.nonzero(diff == 1)
    _, cols_e = np.nonzero(diff == -1)
    parent = list(range(len(rows_s)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(rows_s, np.arange(h + 1))
    for r in range(1, h):
        prev = range(row_start[r - 1], row_start[r])
        for i in range(row_start[r], row_start[r + 1]):
            for j in prev:
                if cols_s[j] <= cols_e[i] and cols_s[i] <= cols_e[j]:
                    a, b = find(i), find(j)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    roots = np.array([find(i) for i in range(len(parent))], dtype=np.int64)
    _, compact = np.unique(roots, return_inverse=True)
    labels = np.zeros((h, w), np.int32)
    for i, (r, s, e) in enumerate(zip(rows_s, cols_s, cols_e)):
        labels[r, s:e] = compact[i] + 1
    return labels, np.bincount(labels.ravel())


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Mask plus every background region that does not touch the image border."""
    labels, _ = label_components(~mask)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ~np.isin(labels, border)


def normalise(mask: np.ndarray, res: int = NORM, rotation: float = 0.0) -> np.ndarray | None:
    """Crop to the bounding box, pad to a square (keeping aspect) and resize: scale/position invariant."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    if rotation:
        img = img.rotate(rotation, resample=Image.BILINEAR, expand=True)
    arr = np.asarray(img) > 127
    ys, xs = np.nonzero(arr)
    if len(ys) < 4:
        return None
    crop = arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    side = max(crop.shape)
    square = np.zeros((side, side), bool)
    oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
    return np.asarray(Image.fromarray(square.astype(np.uint8) * 255).resize((res, res), Image.BILINEAR)) > 127


@functools.lru_cache(maxsize=4)
def reference_masks(res: int = NORM) -> tuple[tuple[str, np.ndarray], ...]:
    """Normalised filled silhouettes of every shape, flat and (hole-filled) outline, drawn by data.py."""
    refs = []
    for shape in data.SHAPES:
        for style in ("flat", "outline"):
            cov = data.element_mask(data.Element(shape, "black", size=0.7), style, 128, stroke=0.16)
            refs.append((shape, normalise(fill_holes(cov > 0.5), res)))
    return tuple(refs)


def color_family(rgb) -> str:
    """Family of a colour: lightness rules for black/white/gray, nearest palette colour (Lab) otherwise."""
    lab = data.srgb_to_lab(np.asarray(rgb, np.float64))
    lightness, chroma = lab[0], math.hypot(lab[1], lab[2])
    if chroma < 10 or (chroma < 16 and (lightness < 25 or lightness > 88)):
        return "black" if lightness < 30 else "white" if lightness > 85 else "gray"
    best, best_d = "gray", float("inf")
    for rgb_ref, family in data.COLORS.values():
        if family in ("black", "white", "gray"):
            continue
        ref = data.srgb_to_lab(np.asarray(rgb_ref, np.float64))
        d = math.sqrt(0.3 * (lab[0] - ref[0]) ** 2 + (lab[1] - ref[1]) ** 2 + (lab[2] - ref[2]) ** 2)
        if d < best_d:
            best, best_d = family, d
    return best


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    return ~_erode(~mask)


def analyze(image: Image.Image) -> dict:
    """Background, foreground share, color family, shape and its IoU score (shape None if unsure)."""
    rgb = np.asarray(image.convert("RGB").filter(ImageFilter.MedianFilter(3)), np.float64)
    h, w, _ = rgb.shape
    border = border_pixels(rgb, 3)
    bg = np.median(border, axis=0)
    lab, bg_lab = data.srgb_to_lab(rgb), data.srgb_to_lab(bg)
    border_spread = float(np.median(np.linalg.norm(data.srgb_to_lab(border) - bg_lab, axis=-1)))
    far = _dilate(_erode(np.linalg.norm(lab - bg_lab, axis=-1) > FG_DISTANCE))
    labels, sizes = label_components(far)
    sizes[0] = 0
    result = {"background": [int(v) for v in bg], "color": None, "shape": None, "score": 0.0, "fg_fraction": 0.0,
              "border_spread": round(border_spread, 2)}
    if sizes.max() < 0.005 * h * w or border_spread > MAX_BORDER_SPREAD:
        return result
    main = labels == int(sizes.argmax())
    result["fg_fraction"] = round(float(main.mean()), 4)
    inner = _erode(main)
    pixels = rgb[inner if inner.sum() >= 12 else main]
    median = np.median(pixels, axis=0)
    spread = float(np.median(np.linalg.norm(data.srgb_to_lab(pixels) - data.srgb_to_lab(median), axis=-1)))
    result["color_spread"] = round(spread, 2)
    if spread > MAX_COLOR_SPREAD:  # not a flat-colored element (e.g. a patch of noise)
        return result
    result["color"] = color_family(median)
    filled = fill_holes(main)
    hole_fraction = 1.0 - main.sum() / max(filled.sum(), 1)
    result["hole_fraction"] = round(float(hole_fraction), 3)
    ragged = (main & ~_erode(main)).sum() / math.sqrt(main.sum())
    result["raggedness"] = round(float(ragged), 2)
    if filled.mean() > 0.85 or ragged > MAX_RAGGEDNESS:  # no clean element (e.g. noise): report nothing
        result["color"] = None
        return result
    scores: dict[str, float] = {}
    refs = reference_masks()
    for angle in ROTATIONS:
        cand = normalise(filled, rotation=angle)
        if cand is None:
            continue
        for shape, ref in refs:
            iou = float((cand & ref).sum() / max((cand | ref).sum(), 1))
            scores[shape] = max(scores.get(shape, 0.0), iou)
    if not scores:
        return result
    shape = max(scores, key=scores.get)
    if shape in ("circle", "ring"):
        shape = "ring" if 0.12 < hole_fraction < 0.55 else "circle"
    result["score"] = round(scores[shape], 4)
    result["shape"] = shape if scores[shape] >= MIN_SHAPE_IOU else None
    return result


def classify(image: Image.Image) -> tuple[str | None, str | None]:
    """(color family, shape) of the main element; None where the image shows no clear element/shape."""
    found = analyze(image)
    return found["color"], found["shape"]


def evaluate_pipeline(pipe, pairs, steps: int = 28, guidance: float = 5.0, batch: int = 25,
                      keep_images: bool = False) -> dict:
    """Generate every (color, shape, prompt, seed) pair and score color, shape and both."""
    import torch

    results, images = [], []
    for s in range(0, len(pairs), batch):
        chunk = pairs[s:s + batch]
        gens = [torch.Generator(device="cpu").manual_seed(seed) for *_, seed in chunk]
        out = pipe([p for _, _, p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens).images
        for (color, shape, prompt, seed), img in zip(chunk, out):
            found = analyze(img)
            results.append({"prompt": prompt, "seed": seed, "color": color, "shape": shape,
                            "pred_color": found["color"], "pred_shape": found["shape"], "score": found["score"],
                            "color_ok": found["color"] == data.COLORS[color][1], "shape_ok": found["shape"] == shape})
            results[-1]["both_ok"] = results[-1]["color_ok"] and results[-1]["shape_ok"]
        images += out if keep_images else []
    n = max(len(results), 1)
    summary = {"n": len(results), "steps": steps, "guidance": guidance,
               "color_accuracy": sum(r["color_ok"] for r in results) / n,
               "shape_accuracy": sum(r["shape_ok"] for r in results) / n,
               "joint_accuracy": sum(r["both_ok"] for r in results) / n, "results": results}
    if keep_images:
        summary["images"] = images
    return summary


def render_samples(pipe, path: str | Path, steps: int = 28, guidance: float = 5.0, seed: int = 7) -> Path:
    """A 4x4 grid: held-out icon prompts plus the app's templates and descriptive prompts."""
    import torch

    prompts = [p for _, _, p, _ in data.heldout_pairs(12, seed=seed)]
    for kind, subject in (("icons", "a blue bolt"), ("logo", "a blue circle and a yellow star")):
        trigger, prefix, suffix = data.TEMPLATES[kind]
        prompts.append(f"{trigger}, {prefix} {subject}, {suffix}")
    prompts += ["outline icon of a green heart on a dark background", "two-tone purple hexagon logo on white"]
    gens = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens).images
    return save_grid(images, path, cols=4)


def save_grid(images: list[Image.Image], path: str | Path, cols: int = 10) -> Path:
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, math.ceil(len(images) / cols) * h), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return Path(path)


def load_pipeline(model: str, device: str | None = None):
    """The model as both evaluators run it: float32 (CPU kernels), on cuda when present, no progress bars."""
    import torch
    from diffusers import DiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def report(summary: dict, out: str | None) -> dict:
    """Print the scores (without the per-prompt rows) and write everything to out, if given."""
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    if out:
        Path(out).write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> dict:
    """The shipped model's evaluation (icon_eval); `--shapes` for v1's 'a <color> <shape> icon' prompts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--shapes" not in argv:
        from brandgen.tiny import icon_eval  # it imports this module

        return icon_eval.main(argv)
    argv.remove("--shapes")
    parser = argparse.ArgumentParser(description="Score brandgen-tiny v1 on held-out 'a <color> <shape> icon' prompts")
    parser.add_argument("--model", default="assets/brandgen-tiny")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--grid", default=None, help="write a PNG grid of the generated images here")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=6.0, help="the app default for brandgen-tiny")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model, args.device)
    summary = evaluate_pipeline(pipe, data.heldout_pairs(args.n), args.steps, args.guidance, args.batch,
                                keep_images=bool(args.grid))
    if args.grid:
        save_grid(summary.pop("images"), args.grid)
    return report(summary, args.out)


if __name__ == "__main__":
    main()
