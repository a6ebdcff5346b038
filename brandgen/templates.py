"""Asset-type prompt templates: trigger word + prefix + the user's words + suffix, and a negative prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brandgen.errors import InvalidInput
from brandgen.paths import PRESETS_DIR

MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class AssetType:
    """How one kind of brand asset is asked for, and how many images train a LoRA for it."""

    id: str
    label: str
    trigger: str
    prefix: str
    suffix: str
    negative: str
    min_images: int
    recommended_images: tuple[int, int]
    examples: tuple[str, ...] = ()  # subjects the Generate tab offers (what the embedded model draws well)


@dataclass(frozen=True)
class PromptPair:
    prompt: str
    negative: str


def load_asset_types(path: Path | None = None) -> dict[str, AssetType]:
    raw = json.loads(Path(path or PRESETS_DIR / "asset_types.json").read_text(encoding="utf-8"))
    types = {}
    for type_id, spec in raw.items():
        lo, hi = spec["recommended_images"]
        if not 0 < spec["min_images"] <= lo <= hi:
            raise ValueError(f"asset type {type_id!r}: need 0 < min_images <= recommended range")
        types[type_id] = AssetType(
            id=type_id, label=spec["label"], trigger=spec["trigger"], prefix=spec["prefix"],
            suffix=spec["suffix"], negative=spec["negative"], min_images=spec["min_images"],
            recommended_images=(lo, hi), examples=tuple(spec.get("examples", ())),
        )
    return types


def clean_prompt(user_prompt: str | None) -> str:
    """Collapse whitespace and refuse what would make a useless or abusive prompt."""
    text = " ".join((user_prompt or "").split())
    if not text:
        raise InvalidInput("The prompt is empty: describe the asset, e.g. 'a blue shield icon'.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInput(
            f"The prompt has {len(text)} characters; keep it under {MAX_PROMPT_CHARS} "
            "(text encoders read only the first ~77 tokens anyway)."
        )
    return text


def get_asset_type(asset_type: str, types: dict[str, AssetType] | None = None) -> AssetType:
    types = types if types is not None else load_asset_types()
    try:
        return types[asset_type]
    except KeyError:
        raise InvalidInput(
            f"Unknown asset type {asset_type!r}. Choose one of: {', '.join(types)}."
        ) from None


def build_prompt(
    user_prompt: str,
    asset_type: str,
    extra_negative: str = "",
    extra_triggers: tuple[str, ...] = (),
    types: dict[str, AssetType] | None = None,
) -> PromptPair:
    """Wrap the user's words in the asset type's template.

    Brand LoRA trigger words (extra_triggers) go first, next to the type's trigger, because
    LoRAs are trained with the trigger at the start of each caption.
    """
    kind = get_asset_type(asset_type, types)
    words = clean_prompt(user_prompt)
    lead = ", ".join(t for t in (*extra_triggers, kind.trigger) if t)
    prompt = f"{lead}, {kind.prefix} {words}, {kind.suffix}" if lead else f"{kind.prefix} {words}, {kind.suffix}"
    negative = ", ".join(part for part in (kind.negative, " ".join(extra_negative.split())) if part)
    return PromptPair(prompt=prompt, negative=negative)


_TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3", "tokenizer_4")
_NO_LIMIT = 100_000  # tokenizers without a length limit report ~1e30


def truncation_note(pipe: Any, prompt: str) -> str | None:
    """Which words of the final prompt no text encoder of `pipe` reads, said to the designer: CLIP reads 77 tokens
    and diffusers only logs what it cut, so a long prompt silently lost its end and the template's style suffix.
    Counted with the pipeline's first tokenizer against the longest window among its tokenizers (FLUX's and SD3's
    T5 reads 256-512), less the begin and end tokens."""
    tokenizers = [t for t in (getattr(pipe, name, None) for name in _TOKENIZERS) if t is not None]
    if not tokenizers:
        return None
    room = max(min(int(t.model_max_length), _NO_LIMIT) for t in tokenizers) - 2
    ids = tokenizers[0](prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids
    if len(ids) <= room:
        return None
    dropped = " ".join(tokenizers[0].decode(ids[room:]).split())
    shown = dropped if len(dropped) <= 120 else "..." + dropped[-117:]
    return (f"The prompt is longer than this model reads ({len(ids)} tokens with the template, it reads {room}): it "
            f"ignored \"{shown}\". Put the words that matter first, or shorten the prompt.")
