"""Training data: validate a folder of images + captions, write template captions, load crops or buckets.

Validation runs before any model loads, so a designer learns in a second what would waste an hour:
unreadable files, too few or too small images, missing captions and duplicates.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

from brandgen.errors import InvalidInput
from brandgen.png_settings import MAX_IMAGE_PIXELS
from brandgen.templates import AssetType, get_asset_type

SUPPORTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_SUFFIX = ".txt"
HASH_SIZE = 16
NEAR_DUPLICATE_BITS = 8  # of 512 dHash bits: re-encoded or resized copies differ by ~0-2, distinct icons by 15+
_GENERIC_STEM = re.compile(r"^(image|img|photo|pic|dsc|scan|file|icon|logo|asset)?[\W_]*\d*$", re.IGNORECASE)
TABLE_COLUMNS = ["file", "status", "format", "width", "height", "caption", "note"]
MIN_IMAGE_SIDE = 8  # a smaller image holds nothing a LoRA can learn


@dataclass
class DatasetReport:
    """What a folder holds and whether it can train a LoRA; `table()` is the UI's per-file view."""

    folder: Path
    asset_type: str
    resolution: int
    rows: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)  # usable images, in file order
    captions: dict[str, str] = field(default_factory=dict)  # file name -> caption ("" when missing)
    missing_captions: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # (kept, other, "exact"|"near")
    stats: dict = field(default_factory=dict)
    dataset_hash: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=TABLE_COLUMNS)

    def summary(self) -> str:
        """Markdown for the UI: verdict, numbers, then every error and warning."""
        s = self.stats
        head = "✅ Ready to train." if self.ok else "❌ Not ready to train."
        size = (
            f" Sizes: min {s['min_side']} px, median {s['median_side']} px, max {s['max_side']} px."
            if s.get("count")
            else ""
        )
        lines = [f"{head} {s.get('count', 0)} usable image(s) of {len(self.rows)} file(s).{size}"]
        lines += [f"- ❌ {e}" for e in self.errors] + [f"- ⚠️ {w}" for w in self.warnings]
        return "\n".join(lines)


def _size_problem(width: int, height: int) -> str | None:
    """Why an image is too small to learn from or too large to decode (judged from its header alone)."""
    if min(width, height) < MIN_IMAGE_SIDE:
        return f"too small ({width}x{height} px; at least {MIN_IMAGE_SIDE} px a side)"
    if width * height > MAX_IMAGE_PIXELS:
        return (f"too large ({width}x{height} px, over {MAX_IMAGE_PIXELS // 10**6} megapixels); "
                "downscale it to a few thousand pixels a side")
    return None


def _dhash(image: Image.Image) -> int:
    """Horizontal + vertical difference hash (512 bits): survives resizing and re-encoding, so re-exported
    copies are caught, while flat icons that share a layout still differ in enough bits."""
    gray = image.convert("L")
    n = HASH_SIZE
    h = np.asarray(gray.resize((n + 1, n), Image.Resampling.BILINEAR), dtype=np.int16)
    v = np.asarray(gray.resize((n, n + 1), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = np.concatenate([(h[:, 1:] > h[:, :-1]).ravel(), (v[1:] > v[:-1]).ravel()])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _read_caption(image_path: Path) -> str:
    path = image_path.with_suffix(CAPTION_SUFFIX)
    if not path.is_file():
        return ""
    return " ".join(path.read_text(encoding="utf-8", errors="replace").split())


def template_caption(kind: AssetType, file_name: str = "", trigger: str = "") -> str:
    """A caption in the app's prompt template (trigger + prefix + subject + suffix), so training matches use.

    The subject comes from a descriptive file name ("shield_check.png" -> "shield check"), else a neutral phrase.
    """
    stem = Path(file_name).stem
    subject = "a brand asset" if _GENERIC_STEM.match(stem) else " ".join(re.split(r"[\W_]+", stem)).strip()
    lead = ", ".join(t for t in (trigger, kind.trigger) if t)
    return f"{lead}, {kind.prefix} {subject}, {kind.suffix}"


def with_trigger(caption: str, trigger: str) -> str:
    """Put the LoRA's trigger word first (where prompts put it at generation time) unless already there."""
    if not trigger or re.search(rf"(^|\W){re.escape(trigger)}(\W|$)", caption):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def validate_dataset(
    folder: str | Path,
    asset_type: str,
    resolution: int = 512,
    types: dict[str, AssetType] | None = None,
    allow_small: bool = False,
) -> DatasetReport:
    """Inspect every file in `folder` (not recursive) and report what training would use and why not."""
    kind = get_asset_type(asset_type, types)
    folder = Path(folder).expanduser()
    report = DatasetReport(folder=folder, asset_type=asset_type, resolution=int(resolution))
    if not folder.is_dir():
        report.errors.append(f"Folder not found: {folder}.")
        report.stats = {"count": 0}
        return report
    seen_sha: dict[str, str] = {}
    hashes: list[tuple[str, int]] = []
    sides: list[int] = []
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() == CAPTION_SUFFIX:
            continue
        row = {"file": path.name, "status": "skipped", "format": "", "width": 0, "height": 0, "caption": "", "note": ""}
        report.rows.append(row)
        try:
            with Image.open(path) as image:
                fmt = image.format or ""
                width, height = image.size
                problem = _size_problem(width, height)
                if problem is None:  # the header is read; decode only what is sane to decode
                    image.load()
                    dhash = _dhash(image)
        except Image.DecompressionBombError:
            width = height = 0
            problem = f"too large to open safely (over {2 * Image.MAX_IMAGE_PIXELS // 10**6} megapixels)"
        except Exception as exc:  # PIL raises many types for non-images and truncated files
            row["note"] = (
                "not an image" if path.suffix.lower() not in IMAGE_SUFFIXES else f"unreadable ({type(exc).__name__})"
            )
            report.warnings.append(f"{path.name}: {row['note']}; skipped.")
            continue
        if problem is not None:
            row.update(width=width, height=height, note=problem)
            report.warnings.append(f"{path.name}: {problem}; skipped.")
            continue
        row.update(format=SUPPORTED_FORMATS.get(fmt, fmt), width=width, height=height)
        if fmt not in SUPPORTED_FORMATS:
            row["note"] = f"{fmt or 'unknown'} is not supported (use PNG, JPEG or WebP)"
            report.warnings.append(f"{path.name}: {row['note']}; skipped.")
            continue
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen_sha:
            row.update(status="duplicate", note=f"same file as {seen_sha[sha]}")
            report.duplicates.append((seen_sha[sha], path.name, "exact"))
            report.warnings.append(f"{path.name} is an exact copy of {seen_sha[sha]}; skipped.")
            continue
        seen_sha[sha] = path.name
        for other, other_hash in hashes:
            if bin(dhash ^ other_hash).count("1") <= NEAR_DUPLICATE_BITS:
                report.duplicates.append((other, path.name, "near"))
                report.warnings.append(f"{path.name} looks almost the same as {other} (near duplicate); kept.")
                row["note"] = f"near duplicate of {other}"
                break
        hashes.append((path.name, dhash))
        caption = _read_caption(path)
        row.update(status="ok", caption=caption)
        if not caption:
            report.missing_captions.append(path.name)
        if min(width, height) < resolution:
            row["note"] = (row["note"] + "; " if row["note"] else "") + f"smaller than {resolution} px (upscaled)"
        report.captions[path.name] = caption
        report.images.append(path)
        sides.append(min(width, height))
        digest.update(path.name.encode() + sha.encode() + caption.encode())
    count = len(report.images)
    report.dataset_hash = digest.hexdigest()[:16]
    report.stats = {"count": count}
    if sides:
        report.stats.update(min_side=min(sides), max_side=max(sides), median_side=int(median(sides)))
    _judge(report, kind, sides, allow_small)
    return report


def _judge(report: DatasetReport, kind: AssetType, sides: list[int], allow_small: bool) -> None:
    count, res = len(report.images), report.resolution
    lo, hi = kind.recommended_images
    if count == 0:
        report.errors.append("No usable images (PNG, JPEG or WebP) in the folder.")
    elif count < kind.min_images:
        message = (
            f"{count} image(s); {kind.label} LoRAs need at least {kind.min_images} "
            f"(recommended {lo}-{hi}) or they copy the training images."
        )
        (report.warnings if allow_small else report.errors).append(message)
    elif count < lo:
        report.warnings.append(f"{count} images: enough to train, but {lo}-{hi} give a more general style.")
    small = sum(1 for s in sides if s < res)
    if small:
        report.warnings.append(
            f"{small} image(s) have a side under {res} px and will be upscaled (softer results); "
            f"use larger originals or a lower resolution."
        )
    if sides and max(sides) < res // 2:
        report.errors.append(f"Every image is under {res // 2} px; choose a resolution near {max(sides)} px.")
    if report.missing_captions:
        example = template_caption(kind, report.missing_captions[0])
        report.warnings.append(
            f"{len(report.missing_captions)} image(s) have no caption (.txt). Training uses a template caption "
            f"such as \"{example}\"; press 'Write template captions' to save them as files you can edit."
        )


def write_template_captions(
    folder: str | Path, asset_type: str, trigger: str = "", types: dict[str, AssetType] | None = None
) -> list[Path]:
    """Write a template .txt next to each image that has none; never overwrites a caption."""
    kind = get_asset_type(asset_type, types)
    report = validate_dataset(folder, asset_type, types=types, allow_small=True)
    written = []
    for name in report.missing_captions:
        path = (report.folder / name).with_suffix(CAPTION_SUFFIX)
        if not path.exists():
            path.write_text(template_caption(kind, name, trigger) + "\n", encoding="utf-8")
            written.append(path)
    return written


def import_uploads(files: list[str | Path], dest: Path) -> Path:
    """Copy uploaded images (and .txt captions) into `dest`, keeping only safe plain file names."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = 0
    for file in files or []:
        src = Path(file)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", src.name).lstrip(".") or "upload"
        if src.suffix.lower() not in (*IMAGE_SUFFIXES, CAPTION_SUFFIX):
            continue
        shutil.copyfile(src, dest / name)
        copied += 1
    if not copied:
        raise InvalidInput("None of the uploaded files is a PNG, JPEG, WebP image or .txt caption.")
    return dest


# ----- loading for training ---------------------------------------------------------------------------
@dataclass
class Example:
    """One training image, cropped to its bucket, with what SDXL's size conditioning needs."""

    pixels: torch.Tensor  # [3, H, W] in [-1, 1]
    caption: str
    original_size: tuple[int, int]  # (h, w) before resizing
    crop_top_left: tuple[int, int]
    bucket: tuple[int, int]  # (h, w) after cropping


def bucket_for(height: int, width: int, resolution: int, bucketing: bool, divisibility: int) -> tuple[int, int]:
    if not bucketing:
        return resolution, resolution
    from diffusers.training_utils import find_nearest_bucket, generate_aspect_ratio_buckets

    options = generate_aspect_ratio_buckets(resolution, divisibility=divisibility)
    return options[find_nearest_bucket(height, width, options)]


def load_example(path: Path, caption: str, resolution: int, bucketing: bool = False, divisibility: int = 16) -> Example:
    """Resize to cover the bucket, centre-crop, scale to [-1, 1]; EXIF rotation is applied first."""
    with Image.open(path) as raw:
        image = ImageOps.exif_transpose(raw).convert("RGB")
    w, h = image.size
    bh, bw = bucket_for(h, w, resolution, bucketing, divisibility)
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
    image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    top, left = (rh - bh) // 2, (rw - bw) // 2
    image = image.crop((left, top, left + bw, top + bh))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    return Example(pixels=pixels, caption=caption, original_size=(h, w), crop_top_left=(top, left), bucket=(bh, bw))


def load_examples(
    report: DatasetReport,
    resolution: int,
    trigger: str = "",
    bucketing: bool = False,
    divisibility: int = 16,
    types: dict[str, AssetType] | None = None,
) -> list[Example]:
    """Every usable image of a validated report, captioned (template where missing, trigger first)."""
    if not report.ok:
        raise InvalidInput("The dataset is not ready to train:\n" + "\n".join(report.errors))
    kind = get_asset_type(report.asset_type, types)
    examples = []
    for path in report.images:
        caption = report.captions.get(path.name) or template_caption(kind, path.name)
        examples.append(load_example(path, with_trigger(caption, trigger), resolution, bucketing, divisibility))
    return examples
