"""Image quality measures that need no model: palette adherence (whole image and foreground only) and
background cleanliness.

CLIP score needs a CLIP model on disk; without one it is reported as None ("n/a"), never guessed.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from brandgen.errors import InvalidInput

_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
PALETTE_TOLERANCE = 18.0  # CIE76 delta E: about "clearly the same brand colour"
FOREGROUND_DISTANCE = 22.0  # delta E from the background colour beyond which a pixel belongs to the subject


def parse_palette(text: str | list[str]) -> list[str]:
    """'#1A2B3C, ff8800' -> ['#1a2b3c', '#ff8800']; a clear error for anything else."""
    items = text if isinstance(text, list) else re.split(r"[\s,;]+", text or "")
    palette = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        match = _HEX.match(item)
        if not match:
            raise InvalidInput(f"{item!r} is not a hex colour like #1a73e8.")
        palette.append("#" + match.group(1).lower())
    if not palette:
        raise InvalidInput("The palette is empty: give 1 to 12 hex colours like #1a73e8, #fbbc04.")
    if len(palette) > 12:
        raise InvalidInput("Use at most 12 palette colours.")
    return palette


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) uint8/float 0-255 -> CIELAB (D65), so distances match what eyes see."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _pixels(image: Image.Image, side: int = 128) -> np.ndarray:
    image = image.convert("RGB")
    if max(image.size) > side:
        image = image.resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(image)


def border_pixels(rgb: np.ndarray, band: int) -> np.ndarray:
    """The (N, 3) colours of the outermost `band` rows and columns: where a flat background shows."""
    return np.concatenate([rgb[:band].reshape(-1, 3), rgb[-band:].reshape(-1, 3),
                           rgb[:, :band].reshape(-1, 3), rgb[:, -band:].reshape(-1, 3)])


def palette_distances(image: Image.Image, palette: list[str]) -> np.ndarray:
    """Per-pixel delta E to the nearest palette colour."""
    lab = rgb_to_lab(_pixels(image)).reshape(-1, 1, 3)
    targets = rgb_to_lab(np.array([hex_to_rgb(c) for c in parse_palette(palette)], dtype=np.float64))
    return np.sqrt(((lab - targets[None]) ** 2).sum(-1)).min(1)


def palette_adherence(image: Image.Image, palette: list[str], tolerance: float = PALETTE_TOLERANCE) -> float:
    """Share of pixels within `tolerance` delta E of some brand colour (0..1; higher is more on-brand).

    Include the background colour in the palette if it is part of the brand.
    """
    return float((palette_distances(image, palette) <= tolerance).mean())


def foreground_mask(image: Image.Image, min_distance: float = FOREGROUND_DISTANCE) -> np.ndarray:
    """Pixels (at the metrics' working size) clearly unlike the background, i.e. the border's median colour."""
    px = _pixels(image)
    lab = rgb_to_lab(px)
    background = np.median(rgb_to_lab(border_pixels(px, max(1, px.shape[0] // 64))), axis=0)
    return np.sqrt(((lab - background) ** 2).sum(-1)) > min_distance


def foreground_palette_adherence(image: Image.Image, palette: list[str], tolerance: float = PALETTE_TOLERANCE,
                                 min_distance: float = FOREGROUND_DISTANCE) -> float:
    """Share of foreground pixels within `tolerance` delta E of some brand colour (0..1; 0 when nothing is drawn).

    The whole-image measure is dominated by the background: a cream canvas with a red glyph on it scores high
    for a teal-on-cream brand. Only the subject's pixels say whether the glyph is drawn in the brand's colours.
    Anti-aliased edges count as foreground, so even a perfectly on-brand icon scores a little under 1.
    """
    mask = foreground_mask(image, min_distance).reshape(-1)
    if not mask.any():
        return 0.0
    return float((palette_distances(image, palette)[mask] <= tolerance).mean())


def image_psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB of two 8-bit images of one size (identical: 99, not infinity), how the
    benchmarks report how far a speed-up moved an image."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def background_cleanliness(image: Image.Image, border: float = 0.08) -> float:
    """How plain the background is (0..1): share of the border band within a small delta E of its median.

    Icons and logos want a flat, unbroken background; noise, texture or cut-off subjects lower it.
    """
    px = _pixels(image)
    h, w, _ = px.shape
    lab = rgb_to_lab(border_pixels(px, max(1, int(round(min(h, w) * border)))))
    median = np.median(lab, axis=0)
    return float((np.sqrt(((lab - median) ** 2).sum(-1)) <= 10.0).mean())


def clip_score(image: Image.Image, prompt: str, model_dir: str | Path | None = None) -> float | None:
    """CLIP image-text similarity x100 when a CLIP model is on disk (BRANDGEN_CLIP_MODEL), else None."""
    model_dir = model_dir or os.environ.get("BRANDGEN_CLIP_MODEL")
    if not model_dir or not Path(model_dir).is_dir():
        return None
    import torch

    model, processor = _clip_model(str(Path(model_dir).resolve()))
    inputs = processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        out = model(**inputs)
    img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    return float(max(0.0, (img * txt).sum()) * 100)


@functools.lru_cache(maxsize=1)
def _clip_model(model_dir: str) -> tuple[Any, Any]:
    """(model, processor), loaded once per folder: a benchmark scores every image with the same CLIP."""
    from transformers import CLIPModel, CLIPProcessor

    from brandgen.model_loading import LOAD_LOCK

    with LOAD_LOCK:  # never beside a pipeline load (see brandgen/model_loading.py)
        return CLIPModel.from_pretrained(model_dir).eval(), CLIPProcessor.from_pretrained(model_dir)
