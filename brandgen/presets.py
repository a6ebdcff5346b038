"""Quality presets (steps, upscale factor and step caching; guidance belongs to each model) and the upscaler."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageFilter

from brandgen.errors import InvalidInput
from brandgen.paths import PRESETS_DIR

UPSCALE_FACTORS = (1, 2, 4)


@dataclass(frozen=True)
class QualityPreset:
    id: str
    label: str
    steps: int
    upscale: int
    step_cache: int = 1  # > 1: the Fast preset's step cache, one full step in this many (brandgen.step_cache)

    @property
    def choice_label(self) -> str:
        """How the Generate and Benchmark tabs name it: what it costs in steps, upscale and caching."""
        text = f"{self.label} · {self.steps} steps"
        if self.step_cache > 1:
            text += f", 1 in {self.step_cache} computed in full"
        return text + (f" + {self.upscale}x" if self.upscale > 1 else "")


def load_quality_presets(path: Path | None = None) -> dict[str, QualityPreset]:
    raw = json.loads(Path(path or PRESETS_DIR / "quality.json").read_text(encoding="utf-8"))
    presets = {}
    for preset_id, spec in raw.items():
        if spec["upscale"] not in UPSCALE_FACTORS or spec["steps"] < 1 or spec.get("step_cache", 1) < 1:
            raise ValueError(f"quality preset {preset_id!r}: bad steps, upscale factor or step_cache")
        presets[preset_id] = QualityPreset(id=preset_id, **spec)
    return presets


def get_preset(preset_id: str, presets: dict[str, QualityPreset] | None = None) -> QualityPreset:
    presets = presets if presets is not None else load_quality_presets()
    try:
        return presets[preset_id]
    except KeyError:
        raise InvalidInput(f"Unknown quality preset {preset_id!r}. Choose one of: {', '.join(presets)}.") from None


class Upscaler(Protocol):
    """Anything that enlarges an image by an integer factor; a learned model can replace the default."""

    name: str

    def __call__(self, image: Image.Image, factor: int) -> Image.Image: ...


class LanczosUpscaler:
    """Lanczos resampling plus a light unsharp mask: offline, fast, and kind to flat brand art."""

    name = "lanczos"

    def __call__(self, image: Image.Image, factor: int) -> Image.Image:
        if factor not in UPSCALE_FACTORS:
            raise InvalidInput(f"Upscale factor must be one of {UPSCALE_FACTORS}, got {factor}.")
        if factor == 1:
            return image
        big = image.resize((image.width * factor, image.height * factor), Image.Resampling.LANCZOS)
        return big.filter(ImageFilter.UnsharpMask(radius=1.0 * factor, percent=60, threshold=2))
