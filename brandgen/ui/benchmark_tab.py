"""The Benchmark tab: models x prompts x presets -> speed, memory and on-brand quality, with CSV and plots."""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr
import pandas as pd

from brandgen.benchmark import (
    DEFAULT_PALETTE, DEFAULT_PROMPTS, ROW_COLUMNS, SUMMARY_COLUMNS, BenchmarkSpec, display_table, elapsed_text,
    plot_frames, records, run_benchmark,
)
from brandgen.errors import InvalidInput
from brandgen.manager import PipelineManager
from brandgen.ui.common import NO_LORA, session_of, user_errors


def spec_from_ui(
    models: list[str] | str | None, prompts: str, presets: list[str] | None, asset_type: str, palette: str,
    seed: float | None, steps: float | None, lora: str | None, lora_weight: float | None,
) -> BenchmarkSpec:
    """Widget values -> a validated core spec (one prompt per line; 0 steps = the preset's)."""
    models = [models] if isinstance(models, str) else list(models or [])
    try:
        loras = ((str(lora), float(lora_weight or 0.0)),) if lora and lora != NO_LORA and lora_weight else ()
        spec = BenchmarkSpec(
            models=tuple(models), prompts=tuple((prompts or "").splitlines()), presets=tuple(presets or ()),
            loras=loras, palette=tuple(p for p in (palette or "").replace(";", ",").split(",")),
            asset_type=asset_type, seed=42 if seed is None else int(seed), steps=int(steps) if steps else None,
        )
    except (TypeError, ValueError, OverflowError) as exc:  # NaN, infinity or text where a number belongs
        raise InvalidInput(f"Seed, steps and the LoRA weight must be plain numbers ({exc}).") from exc
    return spec.validated()


def tables_and_plots(rows: list[dict] | None, summary: list[dict] | None) -> tuple:
    """The API's JSON rows -> the tables as people read them ('n/a') and the three figures."""
    rows_df = pd.DataFrame(rows or [], columns=ROW_COLUMNS)
    summary_df = pd.DataFrame(summary or [], columns=SUMMARY_COLUMNS)
    return (display_table(rows_df), display_table(summary_df), *plot_frames(rows_df, summary_df))


def build_benchmark_tab(manager: PipelineManager) -> None:
    """Lay out the tab and wire Run (API 'benchmark') and Cancel (API 'cancel_benchmark')."""
    registry = manager.registry
    cancels: dict[str | None, threading.Event] = {}  # per session: one user's Cancel stops only their own run

    with gr.Row():
        with gr.Column(scale=2):
            models = gr.Dropdown([(e.label, e.id) for e in registry.entries()], value=[registry.default_id],
                                 multiselect=True, label="Models")
            prompts = gr.Textbox("\n".join(DEFAULT_PROMPTS), lines=6, max_lines=20, label="Prompts (one per line)")
            presets = gr.CheckboxGroup([(p.choice_label, p.id) for p in manager.presets.values()],
                                       value=["draft"], label="Quality presets")
            asset_type = gr.Radio([(t.label, t.id) for t in manager.asset_types.values()], value="icons",
                                  label="Asset type")
            palette = gr.Textbox(", ".join(DEFAULT_PALETTE), label="Brand palette (hex colours, comma separated)")
            with gr.Row():
                seed = gr.Number(42, precision=0, label="Seed (same for every image)")
                steps = gr.Number(0, precision=0, label="Steps (0 = preset)")
            with gr.Row():
                lora = gr.Dropdown([NO_LORA, *(i.name for i in manager.list_loras())], value=NO_LORA,
                                   label="Brand LoRA", scale=3)
                lora_weight = gr.Slider(-2.0, 2.0, value=0.8, step=0.05, label="Weight", scale=2)
            with gr.Row():
                run = gr.Button("Run benchmark", variant="primary", scale=3)
                stop = gr.Button("Cancel", scale=1)
        with gr.Column(scale=3):
            status = gr.Markdown("Peak memory reads n/a on CPU; CLIP score reads n/a without a local CLIP model "
                                 "(set BRANDGEN_CLIP_MODEL to its folder).", elem_id="benchmark-status")
            summary_table = gr.Dataframe(headers=SUMMARY_COLUMNS, label="Per model", interactive=False, wrap=True)
            rows_table = gr.Dataframe(headers=ROW_COLUMNS, label="Per image", interactive=False, wrap=True,
                                      elem_id="benchmark-rows")
            csv_file = gr.File(label="results.csv", interactive=False)
            plots = [gr.Plot(label=label) for label in ("Speed per model", "Time per image", "Quality per model")]
    rows_json = gr.JSON(visible=False, label="rows")  # the API's rows: a list of dicts
    summary_json = gr.JSON(visible=False, label="summary")
    inputs = [models, prompts, presets, asset_type, palette, seed, steps, lora, lora_weight]

    @user_errors
    def run_grid(session: gr.Request, *values: Any, progress: gr.Progress = gr.Progress()) -> tuple:
        spec = spec_from_ui(*values)
        owner = session_of(session)
        cancels[owner] = cancel_event = threading.Event()
        progress((0, spec.total_images), desc="Loading the first model")

        def report(done: int, total: int, row: dict[str, Any]) -> None:
            progress((done, total), desc=f"{row['model']} · {row['prompt'] or row['status']}")

        try:
            result = run_benchmark(manager, spec, progress=report, cancel=cancel_event)
        finally:
            if cancels.get(owner) is cancel_event:
                del cancels[owner]
        text = elapsed_text(result)
        failed = result.rows_df[result.rows_df["status"] == "error"]
        if len(failed):
            gr.Warning(f"{len(failed)} row(s) failed; see the error column. First: {failed['error'].iloc[0][:200]}")
        if result.cancelled:
            gr.Info("Benchmark cancelled: partial results kept.")
        return records(result.rows_df), records(result.summary_df), str(result.csv_path), text

    def cancel(session: gr.Request) -> None:
        event = cancels.get(session_of(session))
        if event is not None:  # the run stops its current image at the next denoising step
            event.set()

    run.click(run_grid, inputs, [rows_json, summary_json, csv_file, status], api_name="benchmark").then(
        tables_and_plots, [rows_json, summary_json], [rows_table, summary_table, *plots], api_name=False,
    )
    stop.click(cancel, None, None, api_name="cancel_benchmark", queue=False)
