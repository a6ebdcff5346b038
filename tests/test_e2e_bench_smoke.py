"""scripts/e2e_bench.py --tiny on CPU: every recipe's real pipeline calls run, the JSON and the markdown say what
was measured, and performance mode compiles nothing after its load-time warm-up (LoRA switches included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "e2e_bench.py"


def test_e2e_bench_tiny_runs_every_recipe(tmp_path: Path):
    out = tmp_path / "e2e.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--work-dir", str(tmp_path / "work"),
         "--quick", "--warm", "1", "--warm4", "1", "--formats", "diffusers"],
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["meta"]["finished"] and set(results["models"]) == {"sdxl", "flux"}
    for model, res in results["models"].items():
        assert set(res["recipes"]) == {"a", "b", "c", "d"}
        for kind, recipe in res["recipes"].items():
            assert not recipe.get("errors") and not recipe.get("skipped"), (model, kind, recipe)
            for phase in ("one_image", "four_images") if kind in "cd" else ("one_image",):  # --quick
                assert recipe[phase]["first_s"] > 0 and recipe[phase]["median_s"] > 0, (model, kind, phase)
        assert res["recipes"]["d"]["four_images"]["images"] == 4
        assert res["recipes"]["b"]["one_image"]["graphs_compiled"] > 0  # the expert recipe compiles on first use
        perf = res["recipes"]["d"]
        assert "lora_hotswap" in perf["load"]["fast_path_report"]["applied"]
        assert perf["load"]["fast_path_report"]["warmup"]["graphs_compiled"] > 0 and perf["load"]["progress"]
        phases = [perf["one_image"], perf["one_image_fast"], perf["four_images"], perf["four_images_fast"],
                  perf["switch_diffusers"]]
        assert [p["graphs_compiled"] for p in phases] == [0] * 5, "no recompiles after the warm-up, Fast included"
        psnr = res["image_psnr_db"]
        assert psnr["d_vs_c"] > 60 and psnr["d_vs_b"] > 60  # the same maths in fp32
        assert 20 < psnr["d_fast_vs_d"] < 99  # the step cache changes the image, a little
        switch = perf["switch_diffusers"]
        assert len(switch["switch_ms"]) == 3 and switch["pixel_means"][0] != switch["pixel_means"][1]
        assert switch["pixel_means"][0] == switch["pixel_means"][2]  # A -> B -> A comes back to A
    table = out.with_suffix(".md").read_text()
    assert "| d: PipelineManager performance mode |" in table and "| speed-up of d over |" in table
    assert "| d, Fast preset (step cache) |" in table and "| image difference (PSNR, dB; 99 = identical) |" in table
