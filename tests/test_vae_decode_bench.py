"""scripts/vae_decode_bench.py on tiny autoencoders (CPU, eager): one entry per model and batch."""

from __future__ import annotations

import json

from script_loader import load_script


def test_tiny_decode_bench_times_each_model_and_batch(tmp_path):
    bench = load_script("vae_decode_bench")
    out = bench.main(["--tiny", "--no-compile", "--device", "cpu", "--warm", "2", "--batches", "1,2",
                      "--out", str(tmp_path / "vae.json")])
    assert json.loads((tmp_path / "vae.json").read_text())["models"].keys() == {"sdxl", "flux"}
    for model in ("sdxl", "flux"):
        timed = out["models"][model]["eager"]
        assert set(timed) == {1, 2} and all(t["median_ms"] > 0 and t["n_warm"] == 2 for t in timed.values())
        assert "compiled" not in out["models"][model]
