"""The model registry: presets/models.json read into validated ModelEntry records."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brandgen.errors import ModelUnavailable
from brandgen.paths import PRESETS_DIR, REPO_ROOT
from brandgen.training.config import lora_settings_problems, suggested_lora_settings

FAMILIES = ("sd15", "sdxl", "sd3", "flux", "hidream")
SOURCE_TYPES = ("local", "hub")
_REQUIRED = {
    "label": str, "family": str, "source_type": str, "source": str, "pipeline_class": str,
    "default_steps": int, "default_guidance": (int, float), "distilled": bool,
    "native_resolution": list, "vram_gb": (int, float), "license": str, "commercial_use": bool,
}


@dataclass(frozen=True)
class ModelEntry:
    """One model a user can pick: where its weights live and how to run it well."""

    id: str
    label: str
    family: str
    source_type: str
    source: str
    pipeline_class: str
    default_steps: int
    default_guidance: float
    distilled: bool
    native_resolution: tuple[int, int]
    vram_gb: float
    license: str
    commercial_use: bool
    notes: str = ""
    guidance_until: float = 1.0  # share of the steps that run classifier-free guidance (pipeline_call)
    lora_guidance: float | None = None  # guidance with a LoRA active when the designer leaves it at the default
    extra_components: dict[str, dict[str, Any]] = field(default_factory=dict)
    lora_settings: dict[str, Any] = field(default_factory=dict)  # what the Train tab starts from, over the size's
    prompt_hints: list[dict[str, str]] = field(default_factory=list)  # {"pattern", "message"}: see prompt_hints_for

    def suggested_lora_settings(self) -> dict[str, Any]:
        """The Train tab's starting LoRA settings for this model: the size's, with the entry's own on top."""
        return suggested_lora_settings(self.native_resolution[0], self.lora_settings)

    def prompt_hints_for(self, prompt: str) -> list[str]:
        """The model's hints whose pattern (a case-insensitive regex) occurs in what the designer typed: wordings
        this model is measured to follow badly (brandgen-tiny: a place, "ui", "app"), said next to the images."""
        return [h["message"] for h in self.prompt_hints if re.search(h["pattern"], prompt, re.IGNORECASE)]

    def guided_share(self, with_lora: bool) -> float:
        """The share of the steps a generation guides: the model's, under every preset (the Fast preset's cached
        steps follow the batch down to its conditional half), but every step with a LoRA active (a brand palette
        needs the late guided steps: the tiny demo gains +15.6 points instead of +31.4 without them,
        docs/PERFORMANCE.md). The manager and the LoRA demo benchmark both ask this."""
        return 1.0 if with_lora else self.guidance_until

    def default_guidance_for(self, with_lora: bool) -> float:
        """The guidance a generation runs when the designer leaves it at -1 (model default): the entry's
        lora_guidance with a LoRA active, if it has one. Classifier-free guidance pushes a brand LoRA's colours
        off its palette on brandgen-tiny (teal -> navy, coral -> orange at 6.0; docs/TINY_MODEL.md "Guidance with a
        brand LoRA"), so that model guides more gently with one."""
        return self.lora_guidance if with_lora and self.lora_guidance is not None else self.default_guidance

    def resolved_source(self, base: Path = REPO_ROOT) -> str:
        """Local paths are relative to the repository; hub ids are returned as they are."""
        if self.source_type == "local":
            path = Path(self.source)
            return str(path if path.is_absolute() else base / path)
        return self.source

    def summary(self) -> str:
        """One markdown paragraph for the UI: what it is, what it needs, what the licence allows."""
        w, h = self.native_resolution
        text = (
            f"**{self.label}** · {self.family} · {w}x{h} · ~{self.vram_gb:g} GB VRAM · "
            f"licence: {self.license}"
        )
        if not self.commercial_use:
            text += "\n\n⚠️ **Not cleared for commercial use** — check the licence before using outputs."
        if self.guidance_until < 1:
            text += (f"\n\nGuidance runs for the first {self.guidance_until:.0%} of the steps, the rest at half "
                     "the cost (Fast preset included); every step with a brand LoRA (docs/PERFORMANCE.md).")
        if self.lora_guidance is not None:
            text += (f"\n\nWith a brand LoRA, guidance defaults to {self.lora_guidance:g} instead of "
                     f"{self.default_guidance:g}: it keeps the LoRA's colours on its palette.")
        if self.notes:
            text += f"\n\n{self.notes}"
        return text


def _hint_problems(hints: Any) -> list[str]:
    if not isinstance(hints, list):
        return ["prompt_hints must be a list of {pattern, message}"]
    problems = []
    for i, hint in enumerate(hints):
        if not (isinstance(hint, dict) and set(hint) == {"pattern", "message"}
                and all(isinstance(v, str) and v.strip() for v in hint.values())):
            problems.append(f"prompt_hints[{i}] must be {{pattern, message}}, both non-empty text")
            continue
        try:
            re.compile(hint["pattern"])
        except re.error as exc:
            problems.append(f"prompt_hints[{i}] pattern is not a regular expression: {exc}")
    return problems


def _validate(model_id: str, raw: dict[str, Any]) -> ModelEntry:
    problems = [
        f"'{key}' must be {kind}" for key, kind in _REQUIRED.items()
        if not isinstance(raw.get(key), kind) or (kind is int and isinstance(raw.get(key), bool))
    ]
    if raw.get("family") not in FAMILIES:
        problems.append(f"family must be one of {FAMILIES}")
    if raw.get("source_type") not in SOURCE_TYPES:
        problems.append(f"source_type must be one of {SOURCE_TYPES}")
    res = raw.get("native_resolution")
    if not (isinstance(res, list) and len(res) == 2 and all(isinstance(v, int) and v % 8 == 0 for v in res)):
        problems.append("native_resolution must be [width, height], multiples of 8")
    if isinstance(raw.get("default_steps"), int) and raw["default_steps"] < 1:
        problems.append("default_steps must be >= 1")
    until = raw.get("guidance_until", 1.0)
    if isinstance(until, bool) or not isinstance(until, (int, float)) or not 0 < until <= 1:
        problems.append("guidance_until must be a number in (0, 1]")
    elif until < 1 and raw.get("family") != "sd15":
        problems.append("guidance_until < 1 is only supported for the sd15 family")
    lora_guidance = raw.get("lora_guidance")
    if lora_guidance is not None and (isinstance(lora_guidance, bool) or not isinstance(lora_guidance, (int, float))
                                      or not 1 <= lora_guidance <= 30):
        problems.append("lora_guidance must be a number in [1, 30] (below 1 turns the negative prompt off)")
    for name, spec in (raw.get("extra_components") or {}).items():
        if not {"library", "class", "source"} <= set(spec):
            problems.append(f"extra component {name!r} needs library, class and source")
    if "lora_settings" in raw:
        problems += lora_settings_problems(raw["lora_settings"], raw.get("family", ""))
    problems += _hint_problems(raw.get("prompt_hints", []))
    if problems:
        raise ValueError(f"presets/models.json entry {model_id!r}: " + "; ".join(problems))
    known = set(_REQUIRED) | {"notes", "extra_components", "guidance_until", "lora_guidance", "lora_settings",
                              "prompt_hints"}
    return ModelEntry(
        id=model_id,
        **{k: v for k, v in raw.items() if k in known and k != "native_resolution"},
        native_resolution=(res[0], res[1]),
    )


class ModelRegistry:
    """All models from one models.json, in file order (the first is the default)."""

    def __init__(self, entries: dict[str, ModelEntry]):
        if not entries:
            raise ValueError("The model registry is empty.")
        self._entries = entries

    @classmethod
    def from_file(cls, path: Path | None = None) -> "ModelRegistry":
        path = path or PRESETS_DIR / "models.json"
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls({model_id: _validate(model_id, spec) for model_id, spec in raw.items()})

    @property
    def default_id(self) -> str:
        return next(iter(self._entries))

    def ids(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def get(self, model_id: str) -> ModelEntry:
        try:
            return self._entries[model_id]
        except KeyError:
            raise ModelUnavailable(
                f"Unknown model {model_id!r}. Available: {', '.join(self._entries)}."
            ) from None

    def with_entry(self, entry: ModelEntry) -> "ModelRegistry":
        """A copy with one more (or a replaced) entry: used by tests and by local imports."""
        return ModelRegistry({**self._entries, entry.id: entry})
