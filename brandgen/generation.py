"""Generation requests and results: plain data shared by the UI, the CLI and the API."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image

from brandgen.errors import InvalidInput
from brandgen.templates import MAX_PROMPT_CHARS

MAX_COUNT = 8
MAX_STEPS = 150
MAX_SIDE = 2048
MIN_SIDE = 64
MAX_SEED = 2**32 - 1
MAX_LORAS = 4


@dataclass(frozen=True)
class GenerationRequest:
    """What the user asked for. None means 'use the model's or the preset's default'."""

    prompt: str
    asset_type: str = "icons"
    model_id: str | None = None
    preset: str = "standard"
    loras: tuple[tuple[str, float], ...] = ()
    seed: int = -1
    count: int = 1
    negative_prompt: str = ""
    steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    use_template: bool = True

    def validated(self) -> "GenerationRequest":
        """Refuse what cannot be meant; the message names the field and the allowed range."""
        try:
            return self._checked()
        except (TypeError, ValueError, OverflowError) as exc:  # "abc", NaN or inf where a number belongs
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(f"A number field holds something that is not a usable number: {exc}.") from exc

    def _checked(self) -> "GenerationRequest":
        if len(self.negative_prompt or "") > MAX_PROMPT_CHARS:
            raise InvalidInput(f"The negative prompt has {len(self.negative_prompt)} characters; keep it under "
                               f"{MAX_PROMPT_CHARS}.")
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_COUNT:
            raise InvalidInput(f"Count must be between 1 and {MAX_COUNT}, got {self.count}.")
        for name, value in (("Seed", self.seed), ("Steps", self.steps)):
            number = None if value is None else float(value)  # int() would quietly turn 1.5 into 1
            if number is not None and math.isfinite(number) and not number.is_integer():
                raise InvalidInput(f"{name} must be a whole number, got {value}.")
        if self.steps is not None and not 1 <= int(self.steps) <= MAX_STEPS:
            raise InvalidInput(f"Steps must be between 1 and {MAX_STEPS}, got {self.steps}.")
        if self.guidance_scale is not None and not 0 <= float(self.guidance_scale) <= 30:
            raise InvalidInput(f"Guidance must be between 0 and 30, got {self.guidance_scale}.")
        for side_name, side in (("Width", self.width), ("Height", self.height)):
            if side is not None and not (MIN_SIDE <= side <= MAX_SIDE and side % 8 == 0):
                raise InvalidInput(
                    f"{side_name} must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}, got {side}."
                )
        if not -1 <= int(self.seed) <= MAX_SEED:
            raise InvalidInput(f"Seed must be -1 (random) or between 0 and {MAX_SEED}, got {self.seed}.")
        if len(self.loras) > MAX_LORAS:
            raise InvalidInput(f"Use at most {MAX_LORAS} LoRAs at once.")
        for name, weight in self.loras:
            if not -2.0 <= float(weight) <= 2.0:
                raise InvalidInput(f"LoRA weight for {name!r} must be between -2 and 2, got {weight}.")
        return self

    @property
    def active_loras(self) -> tuple[tuple[str, float], ...]:
        """The LoRA slots that do something: a name and a non-zero weight (the UI sends empty slots too)."""
        return tuple((name, weight) for name, weight in self.loras if name and weight)

    def resolved_seed(self) -> int:
        return random.randint(0, MAX_SEED - MAX_COUNT) if self.seed == -1 else int(self.seed)


def model_guidance(requested: float | None, default: float, label: str) -> float:
    """The guidance a model runs with. Below 1, diffusers turns classifier-free guidance off, so on a model that
    uses it (default 1 or more) the negative prompt would be ignored without a word: refused instead."""
    guidance = default if requested is None else float(requested)
    if guidance < 1 <= default:
        raise InvalidInput(f"Guidance {guidance:g} turns guidance off for {label}: the negative prompt (and the "
                           f"asset type's) would be ignored. Use 1-30, or -1 for its default ({default:g}).")
    return guidance


@dataclass
class GenerationResult:
    """Images and, for each, the full settings that reproduce it."""

    images: list[Image.Image]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the user should know about this run (a LoRA slot rebuild)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "images": self.metadata}


def request_to_dict(request: GenerationRequest) -> dict[str, Any]:
    data = asdict(request)
    data["loras"] = [list(pair) for pair in request.loras]
    return data
