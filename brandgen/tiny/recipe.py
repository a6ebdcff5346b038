"""brandgen-tiny's training recipe: recipe.json, its "smoke" overrides and command-line overrides."""

from __future__ import annotations

import copy
import json
from pathlib import Path

RECIPE_PATH = Path(__file__).with_name("recipe.json")


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path = RECIPE_PATH, smoke: bool = False) -> dict:
    """The recipe, with its "smoke" section merged in for smoke runs (tiny sizes, seconds on a CPU)."""
    cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    smoke_cfg = cfg.pop("smoke", {})
    return deep_merge(cfg, smoke_cfg) if smoke else cfg


def set_value(cfg: dict, item: str) -> None:
    """Apply one `dotted.key=json` override; an unknown key is an error (a typo must not train silently)."""
    key, sep, raw = item.partition("=")
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not sep or not isinstance(node, dict) or last not in node:
        raise SystemExit(f"--set {item!r}: expected KEY=JSON with KEY one of the recipe's keys")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    old, number = node[last], (int, float)
    same = old is None or isinstance(value, type(old)) or (
        isinstance(old, number) and isinstance(value, number) and not isinstance(value, bool))
    if not same:
        raise SystemExit(f"--set {item!r}: {key} has type {type(old).__name__} in the recipe, got {value!r}")
    node[last] = value
