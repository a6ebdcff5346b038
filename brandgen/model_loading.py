"""How a registry entry becomes a diffusers pipeline, and whether it can right now (embedded, cached, or not yet
downloaded), with messages that say what to do when it cannot. PipelineManager calls these under its lock."""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any

import diffusers
import torch
from huggingface_hub import try_to_load_from_cache

from brandgen.errors import ModelUnavailable
from brandgen.registry import ModelEntry

# from_pretrained patches torch for the whole process while it builds a model (meta-device init), so two loads
# at once, even by different managers or a trainer, can leave weights on the meta device for good. Every
# pipeline load in the process takes this lock.
LOAD_LOCK = threading.RLock()


def availability(entry: ModelEntry) -> str:
    """Markdown for the UI: can this model load right now, and if not, why."""
    if entry.source_type == "local":
        ok = Path(entry.resolved_source(), "model_index.json").is_file()
        return "✅ Embedded: works offline." if ok else f"❌ Missing folder {entry.source}."
    cached = try_to_load_from_cache(entry.source, "model_index.json")
    if isinstance(cached, str):
        return "✅ In the local Hugging Face cache."
    return "⬇️ Not downloaded yet: the first load needs the Hugging Face Hub (and a token if gated)."


def load_pipeline(entry: ModelEntry, dtype: torch.dtype) -> Any:
    """The entry's pipeline on the CPU in `dtype`; missing weights or classes raise ModelUnavailable."""
    source = entry.resolved_source()
    if entry.source_type == "local" and not Path(source, "model_index.json").is_file():
        raise ModelUnavailable(f"{entry.label}: no diffusers model folder at {source}.")
    try:
        pipeline_cls = getattr(diffusers, entry.pipeline_class)
    except AttributeError:
        raise ModelUnavailable(
            f"{entry.label} needs diffusers.{entry.pipeline_class}, which this diffusers "
            f"({diffusers.__version__}) lacks. Upgrade diffusers."
        ) from None
    kwargs: dict[str, Any] = {"dtype": dtype}
    if entry.source_type == "local":
        kwargs["use_safetensors"] = True
    try:
        with LOAD_LOCK:
            for name, spec in entry.extra_components.items():
                kwargs[name] = load_component(spec, dtype)
            return pipeline_cls.from_pretrained(source, **kwargs)
    except ModelUnavailable:
        raise
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(unavailable_message(entry, exc)) from exc


def load_component(spec: dict[str, Any], dtype: torch.dtype) -> Any:
    """A component the registry names separately (e.g. a text encoder from another repo); tokenizers take no dtype."""
    module = importlib.import_module(spec["library"])
    component_cls = getattr(module, spec["class"])
    kwargs = dict(spec.get("kwargs", {}))
    if "Tokenizer" not in spec["class"]:
        kwargs["dtype"] = dtype
    return component_cls.from_pretrained(spec["source"], **kwargs)


def unavailable_message(entry: ModelEntry, exc: Exception) -> str:
    if entry.source_type == "local":
        return f"{entry.label} could not be loaded from {entry.resolved_source()}: {exc}"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    how = (
        "HF_HUB_OFFLINE is set, so nothing is downloaded"
        if offline else "they are not in the local Hugging Face cache and the Hub could not be reached"
    )
    return (
        f"Weights for {entry.label} ({entry.source}) are not available: {how}. On a connected machine run "
        f"`huggingface-cli download {entry.source}` (gated models need their licence accepted and "
        f"HF_TOKEN set), or pick BrandGen Tiny, which works offline. Details: {type(exc).__name__}: "
        f"{str(exc)[:300]}"
    )
