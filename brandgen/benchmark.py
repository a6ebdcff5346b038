"""Models x prompts x presets benchmark: speed, memory and on-brand quality as pandas tables, CSV and plots.

Each model is unloaded before its first prompt so its load time is a true cold start. A model that cannot
load (weights not downloaded, gated) becomes a row with an error and the run goes on with the next one.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from brandgen.errors import BrandGenError, Cancelled, InvalidInput
from brandgen.generation import MAX_SEED, GenerationRequest
from brandgen.metrics import background_cleanliness, clip_score, palette_adherence, parse_palette

DEFAULT_PROMPTS = (
    "bank transfer icon",
    "minimal fintech payment icon",
    "switch transfer symbol",
    "notification bell icon",
    "premium investment logo",
)
DEFAULT_PALETTE = ("#1a73e8", "#0b1f3a", "#34a853", "#ffffff")
CLEAN_BACKGROUND_TYPES = ("icons", "logo")  # asset types that promise a plain background
MAX_PROMPTS = 50
ROW_COLUMNS = [
    "model", "model_label", "prompt", "preset", "loras", "seed", "steps", "width", "height", "status", "error",
    "seconds", "steps_per_second", "peak_memory_gb", "device", "palette_adherence", "background_cleanliness",
    "clip_score", "image_path",
]
SUMMARY_COLUMNS = [
    "model", "model_label", "images", "errors", "load_seconds", "total_seconds", "mean_seconds",
    "mean_steps_per_second", "peak_memory_gb", "device", "palette_adherence", "background_cleanliness",
    "clip_score",
]
BenchmarkProgress = Callable[[int, int, dict[str, Any]], None]  # (images done, images planned, last row)


@dataclass(frozen=True)
class BenchmarkSpec:
    """What to run: every model x preset x prompt, one image each, same seed for a fair comparison."""

    models: tuple[str, ...]
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    presets: tuple[str, ...] = ("draft",)
    loras: tuple[tuple[str, float], ...] = ()
    palette: tuple[str, ...] = DEFAULT_PALETTE
    seed: int = 42
    asset_type: str = "icons"
    steps: int | None = None  # None: the preset's (or a distilled model's own) step count

    def validated(self) -> "BenchmarkSpec":
        """Drop blanks and duplicates, check sizes; raise InvalidInput with what to fix."""
        models = tuple(dict.fromkeys(m.strip() for m in self.models if m and m.strip()))
        prompts = tuple(dict.fromkeys(" ".join(p.split()) for p in self.prompts if p and p.strip()))
        presets = tuple(dict.fromkeys(p for p in self.presets if p))
        if not models:
            raise InvalidInput("Choose at least one model to benchmark.")
        if not prompts:
            raise InvalidInput("Give at least one prompt (one per line).")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidInput(f"Use at most {MAX_PROMPTS} prompts per run, got {len(prompts)}.")
        if not presets:
            raise InvalidInput("Choose at least one quality preset.")
        # the checks every image's request gets (steps, LoRA weights, numbers), once here instead of per row
        GenerationRequest(prompt=prompts[0], asset_type=self.asset_type, loras=self.loras, seed=self.seed,
                          steps=self.steps).validated()
        if not 0 <= int(self.seed) <= MAX_SEED:
            raise InvalidInput(f"Seed must be between 0 and {MAX_SEED}, got {self.seed}.")
        palette = tuple(parse_palette(list(self.palette)))
        return replace(self, models=models, prompts=prompts, presets=presets, palette=palette, seed=int(self.seed))

    @property
    def total_images(self) -> int:
        return len(self.models) * len(self.prompts) * len(self.presets)


@dataclass
class BenchmarkResult:
    """One run: a row per image (or per failed model), a row per model, and where the files are."""

    rows_df: pd.DataFrame
    summary_df: pd.DataFrame
    run_dir: Path
    cancelled: bool = False
    spec: BenchmarkSpec | None = field(default=None, repr=False)

    @property
    def csv_path(self) -> Path:
        return self.run_dir / "results.csv"

    @property
    def summary_csv_path(self) -> Path:
        return self.run_dir / "summary.csv"


def slugify(text: str, max_length: int = 60) -> str:
    """A file-name-safe slug: lowercase ASCII letters, digits and single dashes; never empty, never '..'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_length].strip("-")
    return slug or "prompt"


def _unique_slugs(prompts: tuple[str, ...]) -> dict[str, str]:
    seen: dict[str, int] = {}
    slugs = {}
    for prompt in prompts:
        slug = slugify(prompt)
        seen[slug] = seen.get(slug, 0) + 1
        slugs[prompt] = slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"
    return slugs


def _message(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BrandGenError) else f"{type(exc).__name__}: {str(exc)[:300]}"


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _row(model_id: str, label: str, prompt: str, preset: str, spec: BenchmarkSpec, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_COLUMNS)
    row.update(model=model_id, model_label=label, prompt=prompt, preset=preset, seed=spec.seed, error="",
               loras=", ".join(f"{n}:{w:g}" for n, w in spec.loras) or "")
    row.update(values)
    return row


def _quality(image: Any, prompt: str, spec: BenchmarkSpec) -> dict[str, float | None]:
    clean = background_cleanliness(image) if spec.asset_type in CLEAN_BACKGROUND_TYPES else None
    clip = clip_score(image, prompt)
    return {
        "palette_adherence": round(palette_adherence(image, list(spec.palette)), 4),
        "background_cleanliness": None if clean is None else round(clean, 4),
        "clip_score": None if clip is None else round(clip, 2),
    }


def run_benchmark(
    manager: Any, spec: BenchmarkSpec, progress: BenchmarkProgress | None = None,
    cancel: threading.Event | None = None, out_root: Path | None = None,
) -> BenchmarkResult:
    """Run the grid on `manager`, writing images + results.csv + summary.csv to <benchmarks>/<run_id>/.

    `cancel` is checked between images and, through the step callback, passed to manager.cancel() so the
    current image stops after its denoising step. The partial result is returned with cancelled=True.
    """
    spec = spec.validated()
    cancel = cancel or threading.Event()
    run_dir = Path(out_root or manager.paths.benchmarks) / new_run_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    slugs = _unique_slugs(spec.prompts)
    rows: list[dict[str, Any]] = []
    loads: dict[str, float | None] = {}
    total, done, cancelled = spec.total_images, 0, False

    def on_step(_step: int, _steps: int) -> None:
        if cancel.is_set():
            manager.cancel()

    def record(row: dict[str, Any], images: int = 1) -> None:
        nonlocal done
        rows.append(row)
        done += images
        if progress is not None:
            progress(done, total, row)

    with manager.lock:
        for model_id in spec.models:
            if cancel.is_set():
                cancelled = True
                break
            per_model = len(spec.prompts) * len(spec.presets)
            entry = None
            try:
                entry = manager.registry.get(model_id)
                manager.unload()  # a cold start for every model, not a cache hit
                manager.load_model(model_id)
                loads[model_id] = manager.last_load_seconds
            except Exception as exc:  # noqa: BLE001 - one missing model must not end the run
                label = entry.label if entry is not None else model_id
                record(_row(model_id, label, "", "", spec, status="error", error=_message(exc)), per_model)
                continue
            model_dir = run_dir / "outputs" / slugify(model_id)
            model_dir.mkdir(parents=True, exist_ok=True)
            for preset in spec.presets:
                for prompt in spec.prompts:
                    if cancel.is_set():
                        cancelled = True
                        break
                    row = _run_one(manager, spec, entry, prompt, preset, model_dir, slugs[prompt], on_step)
                    cancelled = row["status"] == "cancelled"
                    record(row)
                    if cancelled:
                        break
                if cancelled:
                    break
            if cancelled:
                break
    rows_df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    summary_df = summarize(rows_df, loads)
    result = BenchmarkResult(rows_df, summary_df, run_dir, cancelled=cancelled, spec=spec)
    rows_df.to_csv(result.csv_path, index=False, na_rep="n/a")
    summary_df.to_csv(result.summary_csv_path, index=False, na_rep="n/a")
    return result


def _run_one(manager: Any, spec: BenchmarkSpec, entry: Any, prompt: str, preset: str, model_dir: Path,
             slug: str, on_step: Callable[[int, int], None]) -> dict[str, Any]:
    """One image: generate, save, measure; any user-facing error becomes the row's error, not a crash."""
    base = dict(model_id=entry.id, label=entry.label, prompt=prompt, preset=preset, spec=spec)
    request = GenerationRequest(prompt=prompt, asset_type=spec.asset_type, model_id=entry.id, preset=preset,
                                loras=spec.loras, seed=spec.seed, count=1, steps=spec.steps)
    try:
        result = manager.generate(request, progress=on_step)
    except Cancelled:
        return _row(**base, status="cancelled", error="Cancelled by the user.")
    except Exception as exc:  # noqa: BLE001 - recorded in the row; the next image still runs
        return _row(**base, status="error", error=_message(exc))
    image, meta = result.images[0], result.metadata[0]
    name = f"{slug}.png" if len(spec.presets) == 1 else f"{slug}-{slugify(preset)}.png"
    path = model_dir / name
    image.save(path)
    seconds = float(meta["seconds"])
    return _row(
        **base, status="ok", steps=meta["steps"], width=meta["output_width"], height=meta["output_height"],
        seconds=round(seconds, 3), steps_per_second=round(meta["steps"] / seconds, 3) if seconds > 0 else None,
        peak_memory_gb=meta["peak_memory_gb"], device=meta["device"], image_path=str(path),
        **_quality(image, prompt, spec),
    )


def summarize(rows_df: pd.DataFrame, loads: dict[str, float | None] | None = None) -> pd.DataFrame:
    """One row per model: totals and means over its successful images, plus its cold load time."""
    loads = loads or {}
    records = []
    for model_id, group in rows_df.groupby("model", sort=False):
        ok = group[group["status"] == "ok"]
        numeric = ok[["seconds", "steps_per_second", "peak_memory_gb", "palette_adherence",
                      "background_cleanliness", "clip_score"]].apply(pd.to_numeric, errors="coerce")

        def mean(col: str, digits: int = 3) -> float | None:
            value = numeric[col].mean()
            return None if pd.isna(value) else round(float(value), digits)

        peak = numeric["peak_memory_gb"].max()
        load = loads.get(model_id)
        records.append({
            "model": model_id, "model_label": group["model_label"].iloc[0], "images": len(ok),
            "errors": int((group["status"] == "error").sum()),
            "load_seconds": None if load is None else round(load, 3),
            "total_seconds": round(float(numeric["seconds"].sum()), 3) if len(ok) else None,
            "mean_seconds": mean("seconds"), "mean_steps_per_second": mean("steps_per_second"),
            "peak_memory_gb": None if pd.isna(peak) else round(float(peak), 3),
            "device": ok["device"].iloc[0] if len(ok) else None,
            "palette_adherence": mean("palette_adherence", 4),
            "background_cleanliness": mean("background_cleanliness", 4), "clip_score": mean("clip_score", 2),
        })
    return pd.DataFrame(records, columns=SUMMARY_COLUMNS)


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """For people: missing measurements (peak memory on CPU, CLIP without a model) read 'n/a'."""
    return df.astype(object).where(df.notna(), "n/a")


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe rows (NaN -> None) for the API."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


def plot_results(result: BenchmarkResult) -> list[Figure]:
    """Speed per model (mean image time vs cold load), time per image, and quality per model."""
    return plot_frames(result.rows_df, result.summary_df)


def plot_frames(rows: pd.DataFrame, summary: pd.DataFrame) -> list[Figure]:
    """plot_results over bare tables (the UI rebuilds them from the API's JSON)."""
    ok = rows[rows["status"] == "ok"]
    labels = list(summary["model"])
    speed = Figure(figsize=(7, 3.6), layout="constrained")
    ax = speed.subplots()
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], pd.to_numeric(summary["mean_seconds"], errors="coerce").fillna(0), 0.4,
           label="mean s / image")
    ax.bar([x + 0.2 for x in xs], pd.to_numeric(summary["load_seconds"], errors="coerce").fillna(0), 0.4,
           label="cold load s")
    ax.set_xticks(list(xs), labels, rotation=15, ha="right")
    ax.set_ylabel("seconds")
    ax.set_title("Speed per model")
    ax.legend()

    per_prompt = Figure(figsize=(7, 3.6), layout="constrained")
    ax = per_prompt.subplots()
    for model_id, group in ok.groupby("model", sort=False):
        ax.plot(range(len(group)), pd.to_numeric(group["seconds"]), marker="o", label=model_id)
    ax.set_xlabel("image (prompt x preset, in run order)")
    ax.set_ylabel("seconds")
    ax.set_title("Time per image")
    if len(ok):
        ax.legend()

    quality = Figure(figsize=(7, 3.6), layout="constrained")
    ax = quality.subplots()
    metrics = ["palette_adherence", "background_cleanliness"]
    width = 0.8 / len(metrics)
    for i, column in enumerate(metrics):
        values = pd.to_numeric(summary[column], errors="coerce").fillna(0)
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], values, width, label=column.replace("_", " "))
    ax.set_xticks(list(xs), labels, rotation=15, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("On-brand quality per model (0..1, higher is better; CLIP in the table)")
    ax.legend()
    return [speed, per_prompt, quality]


def elapsed_text(result: BenchmarkResult) -> str:
    ok = int((result.rows_df["status"] == "ok").sum())
    errors = int((result.rows_df["status"] == "error").sum())
    state = "Cancelled" if result.cancelled else "Done"
    seconds = pd.to_numeric(result.rows_df["seconds"], errors="coerce").sum()
    return f"{state}: {ok} image(s) in {seconds:.1f} s of generation, {errors} error row(s). Files: {result.run_dir}"

