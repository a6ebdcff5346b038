"""Procedural brand-asset images with captions: the training set of the embedded brandgen-tiny model.

Everything is drawn with PIL from a seed, so the data set needs no download, is identical on every
machine, and the evaluator can render the ground truth it compares against.
"""

from __future__ import annotations

import math
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# name -> (rgb, family). Families are what the evaluator reports; variants teach extra words.
COLORS: dict[str, tuple[tuple[int, int, int], str]] = {
    "red": ((229, 57, 53), "red"),
    "orange": ((251, 140, 0), "orange"),
    "yellow": ((253, 216, 53), "yellow"),
    "green": ((67, 160, 71), "green"),
    "teal": ((0, 150, 136), "teal"),
    "blue": ((30, 136, 229), "blue"),
    "purple": ((142, 36, 170), "purple"),
    "pink": ((236, 64, 122), "pink"),
    "brown": ((121, 85, 72), "brown"),
    "black": ((33, 33, 33), "black"),
    "white": ((250, 250, 250), "white"),
    "gray": ((140, 140, 140), "gray"),
    "navy": ((26, 35, 126), "blue"),
    "crimson": ((183, 28, 28), "red"),
    "sky blue": ((79, 195, 247), "blue"),
    "violet": ((126, 87, 194), "purple"),
    "lime": ((156, 204, 101), "green"),
    "turquoise": ((38, 198, 218), "teal"),
}
BASE_COLORS = [name for name, (_, family) in COLORS.items() if name == family]
FAMILIES = list(BASE_COLORS)

SHAPES = ["circle", "square", "rounded square", "triangle", "star", "heart", "hexagon", "diamond",
          "ring", "plus", "arrow", "check", "pentagon", "crescent", "bolt"]
SYNONYMS = {"check": ["checkmark", "tick"], "bolt": ["lightning bolt", "lightning"],
            "crescent": ["moon", "crescent moon"], "plus": ["plus sign", "cross"], "ring": ["donut"],
            "arrow": ["right arrow"], "circle": ["dot"], "rounded square": ["squircle"]}
ROTATABLE = {"triangle", "star", "heart", "hexagon", "plus", "arrow", "check", "pentagon", "crescent", "bolt"}
STYLES = ["flat", "outline", "two-tone", "gradient"]
BACKGROUNDS = {"light": [(255, 255, 255), (250, 248, 242), (240, 240, 240), (255, 251, 235)],
               "dark": [(18, 18, 18), (40, 42, 48), (22, 26, 40)]}

# Copied from presets/asset_types.json so the recipe stays reproducible when presets are edited.
TEMPLATES = {
    "icons": ("bgicon", "flat vector icon of", "minimal, centered, simple shapes, clean edges, plain background"),
    "logo": ("bglogo", "simple logo mark of", "vector, bold geometric shapes, centered, flat colors, plain background"),
    "product": ("bgproduct", "clean product illustration of",
                "soft lighting, studio composition, brand colors, high detail"),
    "premium": ("bgpremium", "premium editorial illustration of",
                "rich colors, elegant composition, subtle gradients, high detail"),
}
NEGATIVES = [
    "photo, realistic, 3d render, text, letters, watermark, blurry, noisy, cluttered, gradient mesh",
    "photo, cluttered background, text, watermark, blurry, deformed, low quality",
    "photo, realistic, text, letters, watermark, blurry, busy details, shadows",
    "photo, text, watermark, blurry, low quality, jpeg artifacts, deformed",
]


def _regular(n: int, start_deg: float = -90.0, r: float = 1.0) -> list[tuple[float, float]]:
    return [(r * math.cos(math.radians(start_deg + 360 * k / n)), r * math.sin(math.radians(start_deg + 360 * k / n)))
            for k in range(n)]


def _rounded_square(half: float = 0.9, radius: float = 0.38, steps: int = 10) -> list[tuple[float, float]]:
    pts, c = [], half - radius
    for cx, cy, a0 in ((c, c, 0), (-c, c, 90), (-c, -c, 180), (c, -c, 270)):
        pts += [(cx + radius * math.cos(math.radians(a0 + 90 * i / steps)),
                 cy + radius * math.sin(math.radians(a0 + 90 * i / steps))) for i in range(steps + 1)]
    return pts


def _star() -> list[tuple[float, float]]:
    return [((1.0 if k % 2 == 0 else 0.45) * math.cos(math.radians(-90 + 36 * k)),
             (1.0 if k % 2 == 0 else 0.45) * math.sin(math.radians(-90 + 36 * k))) for k in range(10)]


def _heart() -> list[tuple[float, float]]:
    ts = [2 * math.pi * i / 120 for i in range(120)]
    return [(16 * math.sin(t) ** 3 / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                            - math.cos(4 * t)) / 17) for t in ts]


def _crescent() -> list[tuple[float, float]]:
    c1, r1, away = (0.42, -0.22), 0.8, math.atan2(0.22, -0.42)
    outer = [(math.cos(away + a), math.sin(away + a)) for a in np.linspace(-math.pi, math.pi, 160)]
    outer = [p for p in outer if math.dist(p, c1) > r1]
    inner = [(c1[0] + r1 * math.cos(away + a), c1[1] + r1 * math.sin(away + a))
             for a in np.linspace(math.pi, -math.pi, 160)]
    return outer + [p for p in inner if math.hypot(*p) < 1.0]


def shape_polygons(shape: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]] | None]:
    """Outline polygon (and hole polygon, for ring) of a shape in [-1, 1] coordinates, y down."""
    circle = _regular(96)
    table = {
        "circle": circle, "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
        "rounded square": _rounded_square(), "triangle": [(x, y + 0.25) for x, y in _regular(3)],
        "star": [(x, y + 0.1) for x, y in _star()], "heart": _heart(), "hexagon": _regular(6),
        "diamond": [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)], "ring": circle,
        "plus": [(-0.3, -0.9), (0.3, -0.9), (0.3, -0.3), (0.9, -0.3), (0.9, 0.3), (0.3, 0.3), (0.3, 0.9),
                 (-0.3, 0.9), (-0.3, 0.3), (-0.9, 0.3), (-0.9, -0.3), (-0.3, -0.3)],
        "arrow": [(-0.9, -0.2), (0.1, -0.2), (0.1, -0.62), (0.95, 0), (0.1, 0.62), (0.1, 0.2), (-0.9, 0.2)],
        "check": [(-0.92, 0.02), (-0.68, -0.2), (-0.28, 0.22), (0.68, -0.72), (0.92, -0.5), (-0.28, 0.68)],
        "pentagon": [(x, y + 0.1) for x, y in _regular(5)], "crescent": _crescent(),
        "bolt": [(0.2, -1), (-0.55, 0.12), (-0.05, 0.12), (-0.22, 1), (0.58, -0.18), (0.06, -0.18)],
    }
    return table[shape], (_regular(96, r=0.58) if shape == "ring" else None)


@dataclass(frozen=True)
class Element:
    """One shape on the canvas; cx, cy, size are fractions of the canvas, rotation in degrees."""

    shape: str
    color: str
    cx: float = 0.5
    cy: float = 0.5
    size: float = 0.62
    rotation: float = 0.0


@dataclass(frozen=True)
class AssetSpec:
    """Everything needed to draw and describe one image, so captions and pixels never disagree."""

    elements: tuple[Element, ...]
    style: str = "flat"
    background: str = "light"
    bg_rgb: tuple[int, int, int] = (255, 255, 255)
    bg_color: str | None = None
    stroke: float = 0.16
    tone_angle: float = 45.0


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of sRGB values in 0..255, shape [..., 3]; distances in Lab follow perception."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)




def _mix(rgb, other, t: float) -> tuple[int, int, int]:
    return tuple(int(round(a * (1 - t) + b * t)) for a, b in zip(rgb, other))


def tones(color: str, background_rgb: tuple[int, int, int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Second tone for two-tone/gradient styles: moved away from the background so it stays visible."""
    rgb = COLORS[color][0]
    span = 0.22 if COLORS[color][1] in ("black", "white", "gray") else 0.3
    light, dark = _mix(rgb, (255, 255, 255), span), _mix(rgb, (0, 0, 0), span)
    bg = srgb_to_lab(background_rgb)
    d_light, d_dark = (float(np.linalg.norm(srgb_to_lab(c) - bg)) for c in (light, dark))
    return (rgb, light) if d_light > d_dark else (rgb, dark)


def contrast(rgb_a, rgb_b) -> float:
    return float(np.linalg.norm(srgb_to_lab(rgb_a) - srgb_to_lab(rgb_b)))


def _pick_background(rng: random.Random, colors: list[str]) -> tuple[str, tuple[int, int, int], str | None]:
    families = {COLORS[c][1] for c in colors}
    for _ in range(20):
        roll = rng.random()
        kind = "light" if roll < 0.55 else "dark" if roll < 0.8 else "colored"
        if kind == "colored":
            name = rng.choice([c for c in COLORS if COLORS[c][1] not in families])
            bg, bg_name = COLORS[name][0], name
        else:
            bg, bg_name = rng.choice(BACKGROUNDS[kind]), None
        if all(contrast(COLORS[c][0], bg) > 40 for c in colors):
            return kind, bg, bg_name
    return ("dark", BACKGROUNDS["dark"][0], None) if "white" in families else ("light", (255, 255, 255), None)


def sample_spec(rng: random.Random) -> AssetSpec:
    """A random asset: mostly one centred shape, sometimes two side by side."""
    style = rng.choices(STYLES, weights=[0.45, 0.2, 0.15, 0.2])[0]
    count = 2 if rng.random() < 0.2 else 1
    colors = [rng.choice(list(COLORS))]
    if count == 2:
        colors.append(rng.choice([c for c in COLORS if COLORS[c][1] != COLORS[colors[0]][1]]))
    elements = []
    for i, color in enumerate(colors):
        shape = rng.choice(SHAPES)
        rot = rng.uniform(-12, 12) if shape in ROTATABLE and rng.random() < 0.4 else 0.0
        if count == 1:
            el = Element(shape, color, 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05),
                         rng.uniform(0.5, 0.72), rot)
        else:
            el = Element(shape, color, (0.27, 0.73)[i] + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.06, 0.06),
                         rng.uniform(0.34, 0.42), rot)
        elements.append(el)
    kind, bg, bg_name = _pick_background(rng, colors)
    return AssetSpec(tuple(elements), style, kind, bg, bg_name, rng.uniform(0.12, 0.2), rng.uniform(0, 360))


def _element_points(el: Element, pts, canvas: int) -> list[tuple[float, float]]:
    cos, sin = math.cos(math.radians(el.rotation)), math.sin(math.radians(el.rotation))
    half = el.size * canvas / 2
    return [(el.cx * canvas + half * (x * cos - y * sin), el.cy * canvas + half * (x * sin + y * cos)) for x, y in pts]


def element_mask(el: Element, style: str, size: int, stroke: float = 0.16, supersample: int = 4) -> np.ndarray:
    """Coverage (0..1 float32) of one element, drawn at supersample x and box-filtered for antialiasing."""
    canvas = size * supersample
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    outline, hole = shape_polygons(el.shape)
    pts = _element_points(el, outline, canvas)
    if style == "outline" and el.shape != "ring":
        width = max(1, int(round(stroke * el.size * canvas / 2)))
        draw.line(pts + pts[:2], fill=255, width=width, joint="curve")
    else:
        draw.polygon(pts, fill=255)
        if hole:
            draw.polygon(_element_points(el, hole, canvas), fill=0)
    return np.asarray(img.reduce(supersample), dtype=np.float32) / 255.0


def render(spec: AssetSpec, size: int = 128) -> Image.Image:
    """RGB image of a spec; colours are composited at the output size from 4x-supersampled coverage."""
    out = np.empty((size, size, 3), np.float32)
    out[:] = spec.bg_rgb
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    ux, uy = math.cos(math.radians(spec.tone_angle)), math.sin(math.radians(spec.tone_angle))
    for el in spec.elements:
        alpha = element_mask(el, spec.style, size, spec.stroke)
        base, second = (np.array(c, np.float32) for c in tones(el.color, spec.bg_rgb))
        proj = ((xx - el.cx) * ux + (yy - el.cy) * uy) / max(el.size, 1e-3)
        if spec.style == "gradient":
            t = np.clip(proj + 0.5, 0, 1)[..., None]
            fill = base + (second - base) * t
        elif spec.style == "two-tone":
            fill = np.where((proj > 0.12)[..., None], second, base)
        else:
            fill = np.broadcast_to(base, out.shape)
        out = out * (1 - alpha[..., None]) + fill * alpha[..., None]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def _name(rng: random.Random, shape: str) -> str:
    return rng.choice(SYNONYMS[shape]) if shape in SYNONYMS and rng.random() < 0.15 else shape


def article(word: str) -> str:
    """"a" or "an" before `word` (by its first letter: enough for colours, shapes and icon names)."""
    return "an" if word[:1] in "aeiou" else "a"


def _subject(spec: AssetSpec, rng: random.Random) -> str:
    parts = [f"{c} {_name(rng, s)}" for c, s in ((e.color, e.shape) for e in spec.elements)]
    if len(parts) == 2:
        return f"{article(parts[0])} {parts[0]} and {article(parts[1])} {parts[1]}"
    tail = rng.choice(["", "", " icon", " icon", " logo", " symbol", " shape"])
    return f"{article(parts[0])} {parts[0]}{tail}" if rng.random() < 0.75 else parts[0] + tail


def _style_words(spec: AssetSpec, rng: random.Random) -> str:
    words = {"flat": ["flat", "solid", "filled"], "outline": ["outline", "line art", "outlined"],
             "two-tone": ["two-tone", "duotone", "two tone"], "gradient": ["gradient", "gradient fill"]}
    return rng.choice(words[spec.style])


def _background_words(spec: AssetSpec, rng: random.Random) -> str:
    if spec.background == "colored":
        return f"on {article(spec.bg_color)} {spec.bg_color} background"
    if spec.background == "dark":
        return rng.choice(["on a dark background", "on a black background", "on dark", "dark background"])
    return rng.choice(["on a white background", "on a light background", "on white", "white background"])


def caption(spec: AssetSpec, rng: random.Random) -> str:
    """A natural-language caption: bare words, the app's prompt templates, or a descriptive sentence."""
    subject, roll = _subject(spec, rng), rng.random()
    if roll < 0.3:
        text = subject
        if rng.random() < 0.3:
            text += ", " + rng.choice([_style_words(spec, rng), _background_words(spec, rng)])
    elif roll < 0.7:
        kind = rng.choices(list(TEMPLATES), weights=[0.45, 0.35, 0.1, 0.1])[0]
        trigger, prefix, suffix = TEMPLATES[kind]
        extra = ""
        if rng.random() < 0.35:
            extra = f", {_style_words(spec, rng)} style, {_background_words(spec, rng)}"
        text = f"{prefix} {subject}{extra}, {suffix}"
        text = f"{trigger}, {text}" if rng.random() < 0.5 else text
    else:
        style, bg = _style_words(spec, rng), _background_words(spec, rng)
        kind = rng.choice(["icon", "logo", "symbol", "vector icon"])
        bare = subject.split(" ", 1)[1] if subject.startswith(("a ", "an ")) else subject
        text = rng.choice([f"{style} {kind} of {subject} {bg}", f"{style} {bare} {kind} {bg}",
                           f"{bare}, {style}, {bg}", f"{subject}, {style} style, {bg.removeprefix('on ')}"])
    return text


def _spec_rng(seed: int, index: int, salt: int = 0) -> random.Random:
    return random.Random(f"{seed}:{index}:{salt}")


def spec_at(seed: int, index: int) -> AssetSpec:
    """The index-th spec of a data set; independent of worker count so data sets are reproducible."""
    return sample_spec(_spec_rng(seed, index))


def caption_at(seed: int, index: int, variant: int = 0) -> str:
    return caption(spec_at(seed, index), _spec_rng(seed, index, 1 + variant))


def _make_chunk(args: tuple[int, int, int, int, int]) -> tuple[np.ndarray, list[list[str]], list[AssetSpec]]:
    seed, start, stop, size, k = args
    images = np.empty((stop - start, size, size, 3), np.uint8)
    captions, specs = [], []
    for i in range(start, stop):
        spec = spec_at(seed, i)
        images[i - start] = np.asarray(render(spec, size))
        captions.append([caption(spec, _spec_rng(seed, i, 1 + v)) for v in range(k)])
        specs.append(spec)
    return images, captions, specs


def make_training_set(n: int, seed: int, size: int = 128, workers: int = 1, captions_per_image: int = 1
                      ) -> tuple[np.ndarray, list[list[str]], list[AssetSpec]]:
    """Like make_dataset with several captions per image (phrasing variety for the text encoder).

    Workers are forked processes: rendering is pure Python/PIL, so processes are what scale.
    """
    chunk = max(1, min(1024, math.ceil(n / max(1, workers * 4))))
    jobs = [(seed, s, min(n, s + chunk), size, captions_per_image) for s in range(0, n, chunk)]
    images = np.empty((n, size, size, 3), np.uint8)
    captions: list[list[str]] = []
    specs: list[AssetSpec] = []
    pool = None
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        results = pool.map(_make_chunk, jobs) if pool else map(_make_chunk, jobs)
        for (_, start, stop, _, _), (imgs, caps, sps) in zip(jobs, results):
            images[start:stop] = imgs
            captions += caps
            specs += sps
    finally:
        if pool:
            pool.shutdown()
    return images, captions, specs


def make_dataset(n: int, seed: int, size: int = 128, workers: int = 1) -> tuple[np.ndarray, list[str], list[AssetSpec]]:
    """n images [n, size, size, 3] uint8, one caption each, and their specs; workers>1 uses processes."""
    images, captions, specs = make_training_set(n, seed, size, workers, 1)
    return images, [c[0] for c in captions], specs


def heldout_pairs(n: int = 100, seed: int = 20240601) -> list[tuple[str, str, str, int]]:
    """Evaluation prompts "a <color> <shape> icon" with their own noise seeds (never training seeds)."""
    rng = random.Random(f"heldout:{seed}")
    combos = [(c, s) for c in BASE_COLORS for s in SHAPES]
    rng.shuffle(combos)
    combos = (combos * (n // len(combos) + 1))[:n]
    return [(c, s, f"{article(c)} {c} {s} icon", rng.randrange(2**31)) for c, s in combos]
