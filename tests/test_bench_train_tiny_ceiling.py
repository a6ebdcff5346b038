"""scripts/bench_train_tiny.py --ceiling-only: the demo set's VAE round trip, the most a brand LoRA can reach."""

from __future__ import annotations

import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_train_tiny")


def test_ceiling_only_reports_the_round_trip_without_training(bench, tiny_dirs, tmp_path):
    out = bench.main(["--model", str(tiny_dirs["sd15"]), "--ceiling-only", "--images", "3", "--resolution", "32"])
    assert out["status"] == "ceiling" and out["images"] == 3
    # a random-weight autoencoder returns noise: far below the dataset's own adherence (0.92), but a real number
    assert 0.0 <= out["vae_round_trip_foreground_adherence"] < 0.5
    assert "adherence_after" not in out and "train_seconds" not in out
