"""The benchmark on the tiny SD1.5 pipeline: tables, files, errors, cancel, plots, CLI and the API endpoint."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
from gradio_client import Client
from matplotlib.figure import Figure

from brandgen.benchmark import (
    DEFAULT_PROMPTS, ROW_COLUMNS, SUMMARY_COLUMNS, BenchmarkSpec, display_table, plot_results, run_benchmark,
    slugify,
)
from brandgen.errors import InvalidInput
from brandgen.manager import PipelineManager
from brandgen.ui.benchmark_tab import spec_from_ui, tables_and_plots

PROMPTS = ("bank transfer icon", "notification bell icon")


@pytest.fixture(autouse=True)
def _no_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRANDGEN_CLIP_MODEL", raising=False)


def _spec(**kw) -> BenchmarkSpec:
    base = dict(models=("tiny-sd15",), prompts=PROMPTS, presets=("draft",), steps=2, seed=5,
                palette=("#1a73e8", "#ffffff"))
    return BenchmarkSpec(**{**base, **kw})


def test_grid_gives_rows_summary_files_and_plots(manager: PipelineManager):
    seen = []
    result = run_benchmark(manager, _spec(), progress=lambda done, total, row: seen.append((done, total)))
    rows, summary = result.rows_df, result.summary_df
    assert list(rows.columns) == ROW_COLUMNS and list(summary.columns) == SUMMARY_COLUMNS
    assert len(rows) == 2 and list(rows["prompt"]) == list(PROMPTS) and set(rows["status"]) == {"ok"}
    assert seen == [(1, 2), (2, 2)] and not result.cancelled

    assert result.run_dir.parent == manager.paths.benchmarks
    for prompt in PROMPTS:
        assert (result.run_dir / "outputs" / "tiny-sd15" / f"{slugify(prompt)}.png").is_file()
    assert list(rows["image_path"]) == [str(result.run_dir / "outputs" / "tiny-sd15" / f"{slugify(p)}.png")
                                        for p in PROMPTS]
    csv = pd.read_csv(result.csv_path, keep_default_na=False)  # keep the literal "n/a"
    assert len(csv) == 2 and list(csv.columns) == ROW_COLUMNS
    assert (csv["peak_memory_gb"] == "n/a").all() and (csv["clip_score"] == "n/a").all()
    assert pd.read_csv(result.summary_csv_path)["model"].tolist() == ["tiny-sd15"]

    first = rows.iloc[0]
    assert first["steps"] == 2 and first["seconds"] > 0 and first["steps_per_second"] > 0
    assert first["device"].startswith("CPU") and first["peak_memory_gb"] is None
    assert 0.0 <= first["palette_adherence"] <= 1.0 and 0.0 <= first["background_cleanliness"] <= 1.0
    assert first["clip_score"] is None and display_table(rows)["clip_score"].tolist() == ["n/a", "n/a"]

    model = summary.iloc[0]
    assert model["images"] == 2 and model["errors"] == 0 and model["load_seconds"] > 0
    assert model["total_seconds"] == pytest.approx(rows["seconds"].sum(), abs=0.01)
    assert model["mean_seconds"] == pytest.approx(rows["seconds"].mean(), abs=0.01)
    figures = plot_results(result)
    assert len(figures) == 3 and all(isinstance(f, Figure) and f.axes for f in figures)


def test_unavailable_model_is_an_error_row_and_the_run_goes_on(manager: PipelineManager):
    result = run_benchmark(manager, _spec(models=("sdxl-base", "nope", "tiny-sd15"), prompts=PROMPTS[:1]))
    rows = result.rows_df.set_index("model")
    assert rows.loc["sdxl-base", "status"] == "error"
    assert "huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0" in rows.loc["sdxl-base", "error"]
    assert "Unknown model" in rows.loc["nope", "error"]
    assert rows.loc["tiny-sd15", "status"] == "ok"
    summary = result.summary_df.set_index("model")
    assert summary.loc["sdxl-base", "errors"] == 1 and summary.loc["sdxl-base", "images"] == 0
    assert summary.loc["tiny-sd15", "images"] == 1
    plot_results(result)  # plots survive models without images


def test_cancel_between_images_and_mid_image(manager: PipelineManager, monkeypatch: pytest.MonkeyPatch):
    cancel = threading.Event()
    result = run_benchmark(manager, _spec(prompts=DEFAULT_PROMPTS), cancel=cancel,
                           progress=lambda done, total, row: cancel.set())
    assert result.cancelled and len(result.rows_df) == 1 and result.rows_df["status"].tolist() == ["ok"]
    assert result.csv_path.is_file()

    cancel = threading.Event()
    original = manager.generate
    steps_run = []

    def generate_and_press_cancel(request, progress=None):
        def step(i: int, n: int) -> None:
            steps_run.append(i)
            cancel.set()
            progress(i, n)
        return original(request, progress=step)

    monkeypatch.setattr(manager, "generate", generate_and_press_cancel)
    result = run_benchmark(manager, _spec(steps=10), cancel=cancel)
    assert result.cancelled and result.rows_df["status"].tolist() == ["cancelled"]
    assert steps_run == [1], "the current image stops after its denoising step"


def test_spec_validation_and_safe_slugs():
    with pytest.raises(InvalidInput, match="hex colour"):
        _spec(palette=("blue",)).validated()
    with pytest.raises(InvalidInput, match="at least one prompt"):
        _spec(prompts=("  ", "")).validated()
    with pytest.raises(InvalidInput, match="at least one model"):
        _spec(models=()).validated()
    with pytest.raises(InvalidInput, match="Steps must be between 1 and 150"):
        _spec(steps=1000).validated()
    with pytest.raises(InvalidInput, match="LoRA weight for 'acme'"):
        _spec(loras=(("acme", 5.0),)).validated()
    with pytest.raises(InvalidInput, match="plain numbers"):
        spec_from_ui(["tiny-sd15"], "icon", ["draft"], "icons", "#ffffff", float("nan"), 0, None, 0)
    spec = _spec(prompts=("a  b", "a b", "c")).validated()
    assert spec.prompts == ("a b", "c") and spec.total_images == 2
    assert slugify("../../etc/passwd") == "etc-passwd" and slugify("€€€") == "prompt"


def test_cli_prints_summary_and_writes_csv(manager, monkeypatch, tmp_path, capsys):
    from brandgen import cli

    monkeypatch.setattr(PipelineManager, "_instance", manager)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("bank transfer icon\n", encoding="utf-8")
    cli.main(["benchmark", "--model", "tiny-sd15", "--prompts-file", str(prompts), "--steps", "1",
              "--palette", "#1a73e8,#ffffff", "--out", str(tmp_path / "bench")])
    out = capsys.readouterr().out
    assert "tiny-sd15" in out and "load_seconds" in out and "n/a" in out
    csvs = list((tmp_path / "bench").glob("*/results.csv"))
    assert len(csvs) == 1 and len(pd.read_csv(csvs[0])) == 1



def test_benchmark_api_endpoint(client: Client):
    rows, summary, csv_path, status = client.predict(
        ["tiny-sd15", "sdxl-base"], "bank transfer icon\nnotification bell icon", ["draft"], "icons",
        "#1a73e8, #ffffff", 3, 2, "(none)", 0.8, api_name="/benchmark",
    )
    by_model = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    assert [r["status"] for r in by_model["tiny-sd15"]] == ["ok", "ok"]
    assert by_model["sdxl-base"][0]["status"] == "error" and by_model["sdxl-base"][0]["error"]
    assert by_model["tiny-sd15"][0]["clip_score"] is None and by_model["tiny-sd15"][0]["palette_adherence"] >= 0
    assert [s["model"] for s in summary] == ["tiny-sd15", "sdxl-base"]
    assert len(pd.read_csv(csv_path)) == 3 and "Done: 2 image(s)" in status
    rows_table, summary_table, *figures = tables_and_plots(rows, summary)  # what the tab shows after the run
    assert rows_table["peak_memory_gb"].tolist() == ["n/a"] * 3 and len(summary_table) == 2
    assert len(figures) == 3
    with pytest.raises(Exception, match="hex colour"):
        client.predict(["tiny-sd15"], "x", ["draft"], "icons", "notacolour", 3, 2, "(none)", 0.8,
                       api_name="/benchmark")
