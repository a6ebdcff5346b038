"""scripts/gpu_bench.py --tiny on CPU (the step micro-benchmark): every section's code path runs and the JSON says
what it measured, with no synthetic end-to-end figures left in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_bench.py"


def test_gpu_bench_tiny_runs_every_section(tmp_path: Path):
    out = tmp_path / "tiny.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--cache-dir", str(tmp_path / "inductor"),
         "--warmup", "0", "--measure", "1"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"sdxl", "flux", "hidream"} and results["meta"]["finished"]
    for name, res in results["models"].items():
        assert not res["errors"], (name, res["errors"])
        for section in ("build", "flops", "eager", "fast", "speedup"):
            assert section in res, (name, section)
        assert not {"baseline", "transfers", "vae"} & set(res) and set(res["speedup"]) == {"per_step"}
        assert res["flops"]["flops_per_step"] > 0 and res["fast"]["step_ms_median"] > 0
        assert "compile:regional" in res["fast"]["report"]["applied"]
    assert "fuse_qkv" in results["models"]["flux"]["fast"]["report"]["applied"]
    for name in ("sdxl", "flux"):
        swap = results["models"][name]["hotswap"]
        assert swap["outputs_differ"] and swap["recompiled_after_switch"] is False, swap
    memory = results["models"]["hidream"]["memory"]
    assert "fp8_skipped" in memory and memory["text_encoders_gb"] > 20
