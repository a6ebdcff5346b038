"""Markdown tables for scripts/e2e_bench.py's JSON: one row per recipe, the speed ratios, the LoRA switches."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ratio(slow: Any, fast: Any) -> str:
    return f"{slow / fast:.2f}x" if isinstance(slow, (int, float)) and isinstance(fast, (int, float)) and fast else "—"


def _switch_phases(recipe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k.removeprefix("switch_"): v for k, v in recipe.items() if k.startswith("switch_") and isinstance(v, dict)}


def model_tables(name: str, model: dict[str, Any]) -> list[str]:
    recipes = model.get("recipes", {})
    lines = [f"### {name}", "",
             "| recipe | load s | 1 image first s | 1 image median s (n) | 4 images first s | 4 images median s (n) "
             "| LoRA switch ms, median | graphs compiled: 1 img / 4 img / switches | graph breaks | peak GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(kind, recipe, "") for kind, recipe in recipes.items()]
    if any(k in recipes.get("d", {}) for k in ("one_image_fast", "four_images_fast")):
        rows.append(("d", recipes["d"], "_fast"))
    for kind, recipe, suffix in rows:
        one, four = recipe.get(f"one_image{suffix}", {}), recipe.get(f"four_images{suffix}", {})
        if suffix:  # the Fast preset on recipe d's loaded pipeline: only its calls
            lines.append(f"| d, Fast preset (step cache) | | {_fmt(one.get('first_s'))} | {_fmt(one.get('median_s'))} "
                         f"({one.get('n_warm', 0)}) | {_fmt(four.get('first_s'))} | {_fmt(four.get('median_s'))} "
                         f"({four.get('n_warm', 0)}) | | {_fmt(one.get('graphs_compiled'))} / "
                         f"{_fmt(four.get('graphs_compiled'))} / | | |")
            continue
        switches = _switch_phases(recipe)
        switch_ms = sorted(ms for phase in switches.values() for ms in phase.get("switch_ms", []))
        median_switch = switch_ms[len(switch_ms) // 2] if switch_ms else None
        switch_graphs = sum(phase.get("graphs_compiled", 0) for phase in switches.values()) if switches else None
        phases = [recipe.get(k, {}) for k in ("load", "one_image", "four_images")] + list(switches.values())
        peaks = [p["peak_gb"] for p in phases if p.get("peak_gb") is not None]
        breaks = sum(p.get("graph_breaks", 0) for p in phases)
        problems = {**recipe.get("errors", {}), **recipe.get("skipped", {})}
        label = f"{kind}: {recipe.get('label', '')}" + (f" ({'; '.join(problems)})" if problems else "")
        lines.append(
            f"| {label} | {_fmt(recipe.get('load', {}).get('load_s'))} | {_fmt(one.get('first_s'))} | "
            f"{_fmt(one.get('median_s'))} ({one.get('n_warm', 0)}) | {_fmt(four.get('first_s'))} | "
            f"{_fmt(four.get('median_s'))} ({four.get('n_warm', 0)}) | {_fmt(median_switch, 1)} | "
            f"{_fmt(one.get('graphs_compiled'))} / {_fmt(four.get('graphs_compiled'))} / {_fmt(switch_graphs)} | "
            f"{breaks} | {_fmt(max(peaks) if peaks else None)} |")
    d = recipes.get("d", {})

    def median(recipe: dict[str, Any], phase: str) -> Any:
        return recipe.get(phase, {}).get("median_s")

    lines += ["", "| speed-up of d over | 1 image, Standard | 4 images, Standard | 1 image, Fast | 4 images, Fast |",
              "|---|---|---|---|---|"]
    for kind in ("a", "b", "c"):
        if kind in recipes:
            other = recipes[kind]
            lines.append(f"| {kind}: {other.get('label', '')} | "
                         + " | ".join(_ratio(median(other, base), median(d, base + suffix))
                                      for suffix in ("", "_fast") for base in ("one_image", "four_images")) + " |")
    if model.get("image_psnr_db"):
        lines += ["", "| image difference (PSNR, dB; 99 = identical) | " + " | ".join(model["image_psnr_db"]) + " |",
                  "|---|" + "---|" * len(model["image_psnr_db"]),
                  "| same prompt, seed, LoRA, steps | " + " | ".join(_fmt(v) for v in model["image_psnr_db"].values())
                  + " |"]
    lines += ["", "| recipe | LoRA format | switch ms A->B->A | graphs compiled per switch + call | call after switch s |",
              "|---|---|---|---|---|"]
    for kind, recipe in recipes.items():
        for fmt, phase in _switch_phases(recipe).items():
            lines.append(f"| {kind} | {fmt} | {', '.join(_fmt(m, 1) for m in phase.get('switch_ms', []))} | "
                         f"{', '.join(str(g) for g in phase.get('graphs_per_switch', []))} | "
                         f"{', '.join(_fmt(c) for c in phase.get('call_s', []))} |")
        for fmt, error in recipe.get("errors", {}).items():
            if fmt.startswith("switch_"):
                lines.append(f"| {kind} | {fmt.removeprefix('switch_')} | failed: {error[:120]} | | |")
    return lines + [""]


def write_markdown(results: dict[str, Any], path: Path) -> None:
    meta = results.get("meta", {})
    args = meta.get("args", {})
    lines = ["# scripts/e2e_bench.py", "",
             f"{meta.get('gpu', 'CPU')} · torch {meta.get('torch')} · diffusers {meta.get('diffusers')} · "
             f"started {meta.get('started')} · {args.get('steps')} steps · compile cache warm at start: "
             f"{meta.get('cache_warm_at_start')}", "",
             "Real pipeline calls (text encoders, denoiser, VAE decode, PIL), with LoRA `a` active; medians of the "
             "warm calls after the first. Graphs compiled after the first call of a compiled recipe are "
             "recompiles.", ""]
    for name, model in results.get("models", {}).items():
        lines += model_tables(name, model)
    Path(path).write_text("\n".join(lines), encoding="utf-8")
