"""Export gallery images as a zip: PNG, transparent PNG and SVG at 1x/2x/4x, with a CSV and JSON manifest.

Background removal is deliberately simple and offline: brand icons and logos sit on a flat background,
so the border colour, a soft colour-distance alpha and a flood fill from the border are enough.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from brandgen.errors import InvalidInput
from brandgen.gallery import GalleryItem, GalleryStore
from brandgen.metrics import border_pixels, rgb_to_lab
from brandgen.ownership import OPERATOR, Access
from brandgen.paths import writing
from brandgen.png_settings import png_bytes
from brandgen.presets import UPSCALE_FACTORS, LanczosUpscaler, Upscaler

EXPORT_FORMATS = ("png", "transparent_png", "svg")
MAX_EXPORT_IMAGES = 200
SOFT_EDGE = (6.0, 30.0)  # delta E from the background: below -> transparent, above -> opaque
SVG_TRACE_SIDE = 512  # trace at least this many pixels on the long side, for smooth curves
_CSV_FIELDS = ["id", "file", "format", "scale", "width", "height", "asset_type", "model", "seed", "preset",
               "loras", "user_prompt", "commercial_use", "palette_adherence"]


@dataclass(frozen=True)
class ExportResult:
    zip_path: Path
    files: list[str]
    manifest: list[dict[str, Any]]


def border_color(rgb: np.ndarray, band: int = 2) -> np.ndarray:
    """The background colour: the median of the outermost pixels (robust to a subject touching one edge)."""
    return np.median(border_pixels(rgb, band), axis=0)


def _fill_runs(reached: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Spread `reached` along each row's runs of `allowed` pixels (one vectorised scanline pass)."""
    starts = allowed & ~np.pad(allowed, ((0, 0), (1, 0)))[:, :-1]
    run_id = np.where(allowed, np.cumsum(starts.ravel()).reshape(allowed.shape), 0)
    hit = np.zeros(int(run_id.max()) + 1, dtype=bool)
    hit[run_id[reached & allowed]] = True
    hit[0] = False
    return hit[run_id]


def flood_from_border(allowed: np.ndarray) -> np.ndarray:
    """Pixels of `allowed` 4-connected to the image border: row and column scanline passes until stable."""
    seeds = np.zeros_like(allowed)
    seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = True
    reached = allowed & seeds
    while True:
        grown = _fill_runs(reached, allowed)
        grown = _fill_runs(grown.T, allowed.T).T
        if (grown == reached).all():
            return grown
        reached = grown


def _neighbourhood_max(values: np.ndarray, radius: int) -> np.ndarray:
    """Maximum over a (2r+1)^2 window, as two separable passes of shifted maxima."""
    out = values
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        n = out.shape[axis]
        out = np.max([np.take(padded, range(k, k + n), axis=axis) for k in range(2 * radius + 1)], axis=0)
    return out


def background_alpha(image: Image.Image, soft: tuple[float, float] = SOFT_EDGE) -> tuple[np.ndarray, np.ndarray]:
    """(alpha 0..1, background RGB): transparent where background-coloured and connected to the border.

    At the edge, alpha is the pixel's distance from the background relative to the nearest solid colour
    around it, which recovers antialiasing coverage. Background-coloured holes inside the subject (the white
    of an eye) stay opaque unless they reach the edge.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = border_color(rgb)
    distance = np.sqrt(((rgb_to_lab(rgb) - rgb_to_lab(background)) ** 2).sum(-1))
    low, high = soft
    connected = flood_from_border(distance < high)
    edge_zone = _neighbourhood_max(connected, 1)
    solid = np.maximum(_neighbourhood_max(distance, 2), high)
    coverage = np.clip((distance - low) / (solid - low), 0.0, 1.0)
    alpha = np.where(edge_zone, coverage, 1.0)
    return alpha.astype(np.float32), background


def _with_alpha(rgb_image: Image.Image, alpha: np.ndarray, background: np.ndarray) -> Image.Image:
    """Combine colour and alpha, removing the background's tint from the soft edge (no halo)."""
    rgb = np.asarray(rgb_image.convert("RGB"), dtype=np.float32)
    a = alpha[..., None]
    clean = np.where(a > 0.02, (rgb - (1.0 - a) * background) / np.maximum(a, 0.02), rgb)
    out = np.dstack([np.clip(clean, 0, 255), alpha * 255.0]).round().astype(np.uint8)
    return Image.fromarray(out, "RGBA")


def remove_background(image: Image.Image, soft: tuple[float, float] = SOFT_EDGE) -> Image.Image:
    """An RGBA copy of a flat-background asset with the background made transparent."""
    alpha, background = background_alpha(image, soft)
    return _with_alpha(image, alpha, background)


def _transparent_at(image: Image.Image, alpha: np.ndarray, background: np.ndarray, big: Image.Image) -> Image.Image:
    """Scale the 1x alpha to the upscaled colour image instead of re-estimating it on many more pixels."""
    if big.size == image.size:
        return _with_alpha(image, alpha, background)
    mask = Image.fromarray((alpha * 255).round().astype(np.uint8), "L").resize(big.size, Image.Resampling.LANCZOS)
    return _with_alpha(big, np.asarray(mask, dtype=np.float32) / 255.0, background)


def vectorize(image: Image.Image, width: int | None = None, height: int | None = None) -> str:
    """SVG paths traced by vtracer (colour, stacked splines); transparent pixels stay empty."""
    import vtracer

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    svg = vtracer.convert_raw_image_to_svg(
        buffer.getvalue(), img_format="png", colormode="color", hierarchical="stacked", mode="spline",
        filter_speckle=4, color_precision=6, layer_difference=16, corner_threshold=60,
        length_threshold=4.0, splice_threshold=45, path_precision=3,
    )
    w, h = image.size
    size = f'width="{width or w}" height="{height or h}" viewBox="0 0 {w} {h}"'
    return re.sub(r'width="\d+" height="\d+"', size, svg, count=1)


def _trace_factor(image: Image.Image) -> int:
    return next((f for f in UPSCALE_FACTORS if max(image.size) * f >= SVG_TRACE_SIDE), UPSCALE_FACTORS[-1])


def render_item(
    item: GalleryItem, formats: list[str], scales: list[int], upscaler: Upscaler,
) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(file name, bytes, manifest row) for each requested format and size of one image."""
    try:
        with Image.open(item.path) as opened:
            image = opened.convert("RGB")
    except OSError as exc:  # deleted or damaged on disk since it was listed
        raise InvalidInput(f"Gallery image {item.id} could not be read ({exc}); press Refresh, choose again.") from exc
    meta = item.metadata
    upscaled: dict[int, Image.Image] = {}

    def at(factor: int) -> Image.Image:
        """Upscale once per factor (and only when a PNG needs it): the SVG trace often shares an export size."""
        if factor not in upscaled:
            upscaled[factor] = upscaler(image, factor)
        return upscaled[factor]

    alpha = background = traced = None
    if "transparent_png" in formats or "svg" in formats:
        alpha, background = background_alpha(image)
    if "svg" in formats:
        traced = _transparent_at(image, alpha, background, at(_trace_factor(image)))
    files = []
    for scale in scales:
        size = (image.width * scale, image.height * scale)
        stem = f"{item.id}/{item.id}@{scale}x"
        outputs: list[tuple[str, str, bytes]] = []
        if "png" in formats:
            outputs.append(("png", f"{stem}.png", png_bytes(at(scale), meta)))
        if "transparent_png" in formats:
            outputs.append(("transparent_png", f"{stem}-transparent.png",
                            png_bytes(_transparent_at(image, alpha, background, at(scale)), meta)))
        if "svg" in formats:
            outputs.append(("svg", f"{stem}.svg", vectorize(traced, *size).encode("utf-8")))
        files += [(name, data, _manifest_row(item, name, fmt, scale, size)) for fmt, name, data in outputs]
    return files


def _manifest_row(item: GalleryItem, name: str, fmt: str, scale: int, size: tuple[int, int]) -> dict[str, Any]:
    meta = item.metadata
    loras = ";".join(f"{lora['name']}:{lora['weight']}" for lora in meta.get("loras") or [])
    return {"id": item.id, "file": name, "format": fmt, "scale": scale, "width": size[0], "height": size[1],
            "asset_type": meta.get("asset_type"), "model": meta.get("model"), "seed": meta.get("seed"),
            "preset": meta.get("preset"), "loras": loras, "user_prompt": meta.get("user_prompt"),
            "commercial_use": meta.get("commercial_use"), "palette_adherence": meta.get("palette_adherence")}


def _validated(ids: list[str], formats: list[str], scales: list[int | str]) -> tuple[list[str], list[str], list[int]]:
    ids = list(dict.fromkeys(GalleryStore.validate_id(i) for i in ids or []))
    if not ids:
        raise InvalidInput("Select at least one image to export.")
    if len(ids) > MAX_EXPORT_IMAGES:
        raise InvalidInput(f"Export at most {MAX_EXPORT_IMAGES} images at once; got {len(ids)}.")
    bad = [f for f in formats or [] if f not in EXPORT_FORMATS]
    if bad or not formats:
        raise InvalidInput(f"Choose export formats from {', '.join(EXPORT_FORMATS)}; got {formats}.")
    try:
        sizes = sorted({int(str(s).rstrip("x")) for s in scales or []})
    except ValueError:
        sizes = []
    if not sizes or any(s not in UPSCALE_FACTORS for s in sizes):
        raise InvalidInput(f"Choose export sizes from {', '.join(f'{f}x' for f in UPSCALE_FACTORS)}; got {scales}.")
    return ids, [f for f in EXPORT_FORMATS if f in formats], sizes


def export_items(
    store: GalleryStore, ids: list[str], formats: list[str], scales: list[int | str],
    upscaler: Upscaler | None = None, access: Access = OPERATOR,
) -> ExportResult:
    """Write one zip under outputs/exports/ with a generated name; returns its path and manifest. `access`: in
    private mode only the caller's own images can be exported."""
    ids, formats, sizes = _validated(ids, formats, scales)
    upscaler = upscaler or LanczosUpscaler()
    items = [store.get(i, access) for i in ids]
    out_dir = store.root / "exports"
    stamp = datetime.now(timezone.utc)
    zip_path = out_dir / f"brandgen-export-{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}.zip"
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    rows: list[dict[str, Any]] = []
    with writing("the export zip", out_dir):
        try:
            out_dir.mkdir(exist_ok=True)
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for item in items:
                    for name, data, row in render_item(item, formats, sizes, upscaler):
                        archive.writestr(name, data)
                        rows.append(row)
                csv_text = io.StringIO()
                writer = csv.DictWriter(csv_text, fieldnames=_CSV_FIELDS)
                writer.writeheader()
                writer.writerows(rows)
                archive.writestr("manifest.csv", csv_text.getvalue())
                manifest = {"exported_at": stamp.isoformat(timespec="seconds"), "formats": formats,
                            "scales": sizes, "files": rows,
                            "images": [{"id": i.id, "metadata": i.metadata} for i in items]}
                archive.writestr("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
            os.replace(tmp, zip_path)
        finally:
            tmp.unlink(missing_ok=True)
    return ExportResult(zip_path=zip_path, files=[r["file"] for r in rows], manifest=rows)
