"""Brand kits: a saved palette, trigger words and default LoRAs; and palette lock, which recolours to the palette.

Kits are small JSON files under BRANDGEN_HOME/brandkits/ so they can be copied between machines by hand.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from brandgen.errors import InvalidInput
from brandgen.generation import MAX_LORAS
from brandgen.metrics import hex_to_rgb, palette_adherence, parse_palette, rgb_to_lab
from brandgen.paths import resolve_inside, safe_name, writing

_CHUNK_PIXELS = 1 << 18  # bounds memory: Lab distances for 262k colours x 12 palette entries at a time
EDGE_RESIDUAL = 40.0  # RGB units: an edge pixel this close to the line between two brand colours is a blend


@dataclass(frozen=True)
class BrandKit:
    """What makes outputs on-brand: colours, words that trigger the brand style, LoRAs and their weights."""

    name: str
    palette: list[str]
    trigger_words: list[str] = field(default_factory=list)
    loras: list[tuple[str, float]] = field(default_factory=list)

    def validated(self) -> "BrandKit":
        loras = [(safe_name(str(n), "LoRA name"), float(w)) for n, w in self.loras if n]
        if len(loras) > MAX_LORAS:
            raise InvalidInput(f"A brand kit holds at most {MAX_LORAS} LoRAs.")
        if any(not -2.0 <= w <= 2.0 for _, w in loras):
            raise InvalidInput("Brand kit LoRA weights must be between -2 and 2.")
        words = [" ".join(str(w).split()) for w in self.trigger_words if str(w).strip()]
        return BrandKit(safe_name(self.name, "brand kit name"), parse_palette(self.palette), words, loras)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "palette": self.palette, "trigger_words": self.trigger_words,
                "loras": [{"name": n, "weight": w} for n, w in self.loras]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BrandKit":
        try:
            loras = [(str(item["name"]), float(item["weight"])) for item in data.get("loras", [])]
            return cls(str(data["name"]), list(data["palette"]), list(data.get("trigger_words", [])), loras).validated()
        except InvalidInput:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"Brand kit data is malformed: {exc}") from exc


def split_words(text: str) -> list[str]:
    """'acme style, blue accent' -> ['acme style', 'blue accent']."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


class BrandKitStore:
    """CRUD over <home>/brandkits/<name>.json; writes are atomic so a crash never leaves half a kit."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return resolve_inside(self.root, f"{safe_name(name, 'brand kit name')}.json", "brand kit name")

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json") if not p.name.startswith("."))

    def get(self, name: str) -> BrandKit:
        path = self._path(name)
        if not path.is_file():
            raise InvalidInput(f"No brand kit named {name!r}.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"Brand kit {name!r} is unreadable ({exc}); save it again.") from exc
        return BrandKit.from_dict(data)

    def save(self, kit: BrandKit) -> BrandKit:
        kit = kit.validated()
        path = self._path(kit.name)
        tmp = path.with_name(f".{path.name}.tmp")
        with writing("the brand kit", self.root):
            try:
                tmp.write_text(json.dumps(kit.to_dict(), indent=2), encoding="utf-8")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return kit

    def delete(self, name: str) -> None:
        path = self._path(name)
        if not path.is_file():
            raise InvalidInput(f"No brand kit named {name!r}.")
        path.unlink()


def _nearest_two(lab: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the nearest and second-nearest palette colour for each pixel."""
    order = np.argsort(((lab[:, None, :] - targets[None]) ** 2).sum(-1), axis=1)
    return order[:, 0], order[:, min(1, order.shape[1] - 1)]


def recolor_to_palette(image: Image.Image, palette: list[str] | str, blend_edges: bool = True) -> Image.Image:
    """Map every pixel to its nearest palette colour in Lab, keeping antialiased edges.

    Hard mapping alone turns smooth edges into stairs; so at boundaries between two palette colours, a pixel
    that lies between them keeps its mix (projected onto the line joining them), and only there.
    """
    colors = parse_palette(palette)
    has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
    rgba = np.asarray(image.convert("RGBA"))
    h, w = rgba.shape[:2]
    rgb = rgba[..., :3].reshape(-1, 3).astype(np.float32)
    targets_rgb = np.array([hex_to_rgb(c) for c in colors], dtype=np.float32)
    targets_lab = rgb_to_lab(targets_rgb)
    keys = rgba[..., :3].reshape(-1, 3).astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
    unique, inverse = np.unique(keys, return_inverse=True)  # generated art repeats colours: map each once
    colours = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], -1).astype(np.float32)
    first_u = np.empty(len(unique), dtype=np.intp)
    second_u = np.empty(len(unique), dtype=np.intp)
    for start in range(0, len(unique), _CHUNK_PIXELS):
        end = min(start + _CHUNK_PIXELS, len(unique))
        first_u[start:end], second_u[start:end] = _nearest_two(rgb_to_lab(colours[start:end]), targets_lab)
    first, second = first_u[inverse.ravel()], second_u[inverse.ravel()]
    out = targets_rgb[first]
    if blend_edges and len(colors) > 1:
        labels = first.reshape(h, w)
        across, down = labels[:, 1:] != labels[:, :-1], labels[1:] != labels[:-1]
        edge = np.zeros((h, w), dtype=bool)
        edge[:, 1:] |= across
        edge[:, :-1] |= across
        edge[1:] |= down
        edge[:-1] |= down
        idx = np.flatnonzero(edge)
        a, b, p = targets_rgb[first[idx]], targets_rgb[second[idx]], rgb[idx]
        span = b - a
        t = np.clip(((p - a) * span).sum(-1) / np.maximum((span**2).sum(-1), 1e-6), 0.0, 1.0)
        mix = a + t[:, None] * span
        near_line = np.sqrt(((p - mix) ** 2).sum(-1)) <= EDGE_RESIDUAL
        out[idx[near_line]] = mix[near_line]
    result = np.dstack([out.reshape(h, w, 3).round().astype(np.uint8), rgba[..., 3]])
    return Image.fromarray(result, "RGBA") if has_alpha else Image.fromarray(result[..., :3], "RGB")


def kit_state(kit: BrandKit | None, palette_lock: bool) -> dict[str, Any] | None:
    """What the Generate tab needs to know about the active kit (plain data, kept in a gr.State)."""
    if kit is None:
        return None
    return {"name": kit.name, "palette": list(kit.palette), "palette_lock": bool(palette_lock)}


def apply_brand_kit(
    images: list[Image.Image], metadata: list[dict[str, Any]], state: dict[str, Any] | None,
) -> list[Image.Image]:
    """Palette-lock images if asked, and record the kit, palette and adherence in each image's metadata."""
    if not state or not state.get("palette"):
        return images
    palette = parse_palette(state["palette"])
    locked = bool(state.get("palette_lock"))
    out = []
    for image, meta in zip(images, metadata):
        if locked:
            image = recolor_to_palette(image, palette)
        meta.update(brand_kit=state.get("name"), palette=palette, palette_lock=locked,
                    palette_adherence=round(palette_adherence(image, palette), 4))
        out.append(image)
    return out
