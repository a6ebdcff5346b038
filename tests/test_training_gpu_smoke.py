"""The GPU training benchmarks' code paths, run tiny on the CPU (the lead runs the real ones on GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SCRIPTS.parent)}


def _run_tiny(script: str, out: Path, timeout: int, *extra: str) -> dict:
    """Run a benchmark script with --tiny and return the JSON it wrote."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / script), "--tiny", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_gpu_train_bench_tiny_measures_every_configuration(tmp_path: Path):
    result = _run_tiny("gpu_train_bench.py", tmp_path / "train.json", 180, "--models", "sdxl,flux,sd3,hidream")
    rows = result["rows"]
    assert [(r["model"], r["gradient_checkpointing"]) for r in rows] == [
        (model, checkpointing) for model in ("sdxl", "flux", "sd3", "hidream") for checkpointing in (False, True)
    ]
    for row in rows:
        assert "error" not in row, row
        assert row["forward_flops"] > 0 and row["step_ms_median"] > 0 and row["lora_params_m"] > 0
        assert row["floor_ms"] == round(3 * row["forward_flops"] / 800e12 * 1000, 4)
    assert result["meta"]["tiny"] and result["meta"]["attention"] == "cudnn"  # the trainer's setup by default
    assert all(row["attention"] == "cudnn" for row in rows)


def test_gpu_train_bench_sweeps_batch_sizes_and_refuses_cuda_graphs_without_a_gpu(tmp_path: Path):
    """In-process (the script's main takes argv): two short runs without paying two interpreter start-ups."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from gpu_train_bench import main
    finally:
        sys.path.remove(str(SCRIPTS))
    args = ["--tiny", "--models", "sdxl", "--checkpointing", "off", "--out", str(tmp_path / "sweep.json")]
    rows = main([*args, "--batch", "1,2"])["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    one, two = rows
    assert "error" not in one and "error" not in two
    assert 1.8 < two["forward_flops"] / one["forward_flops"] < 2.2  # the floor grows with the batch
    fp8 = main([*args, "--fp8-base", "on"])["rows"][0]  # the CPU has _scaled_mm too: the swap runs
    assert fp8["fp8_base"] is True and fp8["fp8_layers"] > 0 and "error" not in fp8
    graph = main([*args, "--cuda-graph"])["rows"][0]
    assert graph["cuda_graph"] is True and "needs a CUDA GPU" in graph["error"]


def test_ddp_train_bench_tiny_runs_two_gloo_processes(tmp_path: Path):
    result = _run_tiny("ddp_train_bench.py", tmp_path / "ddp.json", timeout=150)
    assert [r["num_processes"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["steps_per_s"] > 0 and row["lora_in_sync"] is True, row
    assert result["trainer"]["status"] == "done" and result["trainer"]["num_processes"] == 2


def test_trainer_graph_bench_tiny_runs_the_real_trainer(tmp_path: Path):
    """The script behind the trainer's CUDA-graph figures, on the CPU: the real trainer trains on the saved
    pipeline, and the graph is refused with the reason."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from trainer_graph_bench import main
    finally:
        sys.path.remove(str(SCRIPTS))
    home = os.environ.get("BRANDGEN_HOME")
    args = ["--tiny", "--steps", "4", "--skip", "1", "--checkpointing", "off", "--graph", "on"]
    result = main([*args, "--out", str(tmp_path / "t.json")])
    (row,) = result["rows"]
    assert row["cuda_graph"] is True and row["status"] == "done" and len(row["losses"]) == 4
    assert "Training (CUDA graph off: needs a CUDA GPU)" in row["messages"] and row["graphs_captured"] == 0
    assert row["step_ms_median"] > 0 and row["device_busy_ms_per_step"] is None  # no --profile
    assert result["meta"]["forward_flops"] > 0 and json.loads((tmp_path / "t.json").read_text())["rows"]
    assert os.environ.get("BRANDGEN_HOME") == home  # the script's temporary home does not leak into the caller
