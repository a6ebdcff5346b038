"""Performance mode: how the app is told to use the GPU fast path, what it does at model load beyond it, and
how it tells the user what it did.

The fast path itself lives in acceleration.py; this module turns start-up settings (environment variables, which
is also how a Hugging Face Space is configured, or the CLI's --performance flags) into FastPathOptions, builds
the LoRA hotswap slot and runs the compile warm-up when a model loads (`prepare_performance`), and turns the
manager's report into one line for the Generate tab.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brandgen.acceleration import COMPILE_MODES, QUANTIZATIONS, TORCH_COMPILE_MODES, FastPathOptions
from brandgen.errors import InvalidInput
from brandgen.paths import TRUTHY

if TYPE_CHECKING:
    from brandgen.lora_fuse import LoraFuser
    from brandgen.lora_hotswap import LoraHotswapper
    from brandgen.registry import ModelEntry

StageFn = Callable[[str, int, int], None]  # (what is happening, done, total)

FALSY = ("0", "false", "no", "off", "")
ENV_ON = "BRANDGEN_PERFORMANCE"
ENV_QUANTIZATION = "BRANDGEN_QUANTIZATION"
ENV_COMPILE = "BRANDGEN_COMPILE"
ENV_COMPILE_MODE = "BRANDGEN_COMPILE_MODE"  # torch.compile mode, e.g. reduce-overhead (CUDA graphs)
ENV_HOTSWAP = "BRANDGEN_LORA_HOTSWAP"
ENV_CACHE = "BRANDGEN_COMPILE_CACHE"


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    value = value.strip().lower()
    if value not in TRUTHY + FALSY:
        raise InvalidInput(f"{name}={env[name]!r}: use 1 or 0 (also true/false, yes/no, on/off).")
    return value in TRUTHY


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in choices:
        raise InvalidInput(f"{name}={env[name]!r}: use one of {', '.join(choices)}.")
    return value


def _compile_mode(env: Mapping[str, str]) -> str | None:
    modes = tuple(m for m in TORCH_COMPILE_MODES if m)
    mode = _choice(env, ENV_COMPILE_MODE, modes, "default")
    return None if mode == "default" else mode


def _hotswap(env: Mapping[str, str]) -> tuple[bool, str]:
    """BRANDGEN_LORA_HOTSWAP: on (merge, the default), slot, or off."""
    value = env.get(ENV_HOTSWAP, "1").strip().lower()
    if value in ("merge", "slot"):
        return True, value
    if value not in TRUTHY + FALSY:
        raise InvalidInput(f"{ENV_HOTSWAP}={env[ENV_HOTSWAP]!r}: use 1 (merge LoRAs into the weights), slot (a peft "
                           "adapter slot, for fp8) or 0.")
    return value in TRUTHY, "merge"


def options_from_env(env: Mapping[str, str] | None = None, cache_default: Path | None = None
                     ) -> FastPathOptions | None:
    """FastPathOptions when BRANDGEN_PERFORMANCE is on, else None (the plain path). Bad values raise InvalidInput
    at start-up, naming the variable, rather than being ignored.

    LoRA hotswap is on by default: a designer switches brand LoRAs often, and a swap then costs milliseconds and
    no recompilation (docs/PERFORMANCE.md); the persistent compile cache makes a restart compile in seconds.
    """
    env = os.environ if env is None else env
    if not _flag(env, ENV_ON, False):
        return None
    cache = env.get(ENV_CACHE, "").strip() or (str(cache_default) if cache_default else None)
    hotswap, style = _hotswap(env)
    return FastPathOptions(
        compile=_choice(env, ENV_COMPILE, COMPILE_MODES, "auto"),
        compile_mode=_compile_mode(env),
        quantization=_choice(env, ENV_QUANTIZATION, QUANTIZATIONS, "none"),
        lora_hotswap=hotswap,
        hotswap_style=style,
        cache_dir=cache,
    ).validated()


def describe(options: FastPathOptions | None, report: Mapping[str, Any]) -> str:
    """One Markdown line for the Generate tab: off (and how to turn it on), waiting for a model, or what applied."""
    if options is None:
        return (f"**Performance mode:** off. On a GPU, start the app with `{ENV_ON}=1` (or `brandgen serve "
                "--performance`) to keep models resident in bf16, compiled at load.")
    if not report:
        return "**Performance mode:** on; applied when the next model loads."
    applied = ", ".join(report.get("applied", [])) or "nothing"
    skipped = "; ".join(f"{k}: {v}" for k, v in report.get("skipped", {}).items())
    extra = ""
    if "lora_slot" in report:
        extra += f" LoRA slot: {report['lora_slot']['layers']} layers at rank {report['lora_slot']['rank']}."
    if "lora_merge" in report:
        extra += " LoRAs are merged into the weights: switching and weights never recompile."
    if "warmup" in report:
        warm = report["warmup"]
        extra += (f" Compiled at load: {len(warm['calls'])} warm-up calls, {warm['seconds']:.1f} s, "
                  f"{warm['graphs_compiled']} graphs.")
    return f"**Performance mode:** on ({report.get('device', '?')}). Applied: {applied}." + (
        f" Not applied: {skipped}." if skipped else "") + extra


def prepare_performance(pipe: Any, entry: ModelEntry, options: FastPathOptions | None, report: dict[str, Any],
                        on_stage: StageFn | None = None) -> LoraFuser | LoraHotswapper | None:
    """After apply_fast_path: make the LoRA switcher (the merge needs nothing built; the opt-in slot is built now,
    so the compiled graphs already hold it), then run the compile warm-up with progress, so neither the first LoRA
    nor the first click compiles. Returns the switcher."""
    from brandgen.generation import MAX_COUNT
    from brandgen.lora_hotswap import hotswapper_for
    from brandgen.training.families import FAMILIES
    from brandgen.warmup import warm_up

    family = FAMILIES.get(entry.family)
    hotswap = hotswapper_for(pipe, options, family.default_targets if family else ())
    if hotswap is not None:
        if options.hotswap_style == "slot":
            report["lora_slot"] = {"layers": hotswap.prepare(), "rank": hotswap.target_rank}
        else:
            report["lora_merge"] = True
        report.setdefault("applied", []).append("lora_hotswap")
    if any(step.startswith("compile:") for step in report.get("applied", [])):
        text = f"Compiling {entry.label} for 1-{MAX_COUNT} images at {entry.native_resolution[0]}px (warm-up)"
        report["warmup"] = warm_up(pipe, *entry.native_resolution, entry.default_guidance,
                                   (lambda done, total: on_stage(text, done, total)) if on_stage else None)
    return hotswap
