"""tests/api_client.py against the real app (`python app.py` in a subprocess, temporary BRANDGEN_HOME)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import api_client
from app_server import REPO_ROOT, AppServer, running_app

TINY_SIZE = tuple(json.loads((REPO_ROOT / "presets" / "models.json").read_text())["brandgen-tiny"]["native_resolution"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with running_app(tmp_path_factory.mktemp("brandgen_home")) as app:
        yield app


@pytest.fixture(scope="module")
def client(server: AppServer):
    return api_client.connect(server.url, download_dir=str(server.home / "downloads"))


def test_generate_then_the_gallery_lists_it(client, server: AppServer):
    assert api_client.default_model(client) == "brandgen-tiny"
    result = api_client.generate(client, "a green leaf icon", seed=42, count=2, preset="draft")

    assert len(result["images"]) == 2
    for path in result["images"]:
        assert Path(path).parent.parent == server.home / "downloads"
        with Image.open(path) as image:
            assert image.size == TINY_SIZE and image.getextrema() != ((0, 0), (0, 0), (0, 0))
    metadata = result["metadata"]
    assert [m["seed"] for m in metadata] == [42, 43]
    assert {(m["model"], m["preset"], m["asset_type"], m["steps"]) for m in metadata} == {
        ("brandgen-tiny", "draft", "icons", 15)
    }
    assert "2 image(s)" in result["status"] and "seed 42" in result["captions"][0]

    listing = api_client.gallery_list(client, "green leaf")
    assert listing["total"] == 2
    by_id = {item["id"]: item for item in listing["items"]}
    assert set(by_id) == {m["gallery_id"] for m in metadata}
    assert sorted(item["seed"] for item in by_id.values()) == [42, 43]
    for item in by_id.values():
        assert (server.home / "outputs" / item["file"]).is_file()
    settings = api_client.gallery_item(client, metadata[1]["gallery_id"])
    assert settings["seed"] == 43 and settings["prompt"] == "a green leaf icon"
    assert api_client.gallery_list(client, "no such words")["total"] == 0


def test_train_start_poll_cancel(client, server: AppServer):
    assert api_client.training_status(client)["status"] == "none"
    state = api_client.start_training(client, "api-brand", max_steps=200)
    assert state["name"] == "api-brand" and state["status"] in ("queued", "running")

    running = api_client.wait_for_training(client, lambda s: s["status"] == "running" and s["step"] >= 1,
                                           timeout=120)
    assert running["status"] == "running" and running["total"] == 200 and running["loss"] is not None
    assert api_client.cancel_training(client)["status"] in ("cancelling", "cancelled")
    final = api_client.wait_for_training(client, lambda s: False, timeout=120)
    assert final["status"] == "cancelled", final
    assert 1 <= final["step"] < 200 and "Cancelled at step" in final["message"]
    assert list(Path(final["run_dir"]).glob("checkpoints/step_*/lora.safetensors"))
    assert Path(final["run_dir"]).parent == server.home / "training_runs"
    assert api_client.training_status(client)["status"] == "cancelled"  # stays cancelled; nothing restarts it


def test_one_by_one_benchmark(client, server: AppServer):
    result = api_client.benchmark(client, ["a teal heart icon"], presets=["draft"], seed=7)

    assert len(result["rows"]) == 1
    row = result["rows"][0]
    assert (row["model"], row["prompt"], row["preset"], row["status"]) == (
        "brandgen-tiny", "a teal heart icon", "draft", "ok")
    assert row["seed"] == 7 and row["steps"] == 15 and (row["width"], row["height"]) == TINY_SIZE
    assert row["seconds"] > 0 and 0 <= row["palette_adherence"] <= 1
    assert [(s["model"], s["images"], s["errors"]) for s in result["summary"]] == [("brandgen-tiny", 1, 0)]
    assert result["status"].startswith("Done: 1 image(s)")
    with open(result["csv"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["prompt"], r["status"]) for r in rows] == [("a teal heart icon", "ok")]
    assert list(server.home.glob("benchmarks/*/results.csv"))


def test_the_script_runs_from_the_command_line(server: AppServer):
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "api_client.py"), server.url, "--prompt", "a red star icon"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "generate: 2 image(s)" in out and "seed 43 ->" in out
    assert "train: cancelled at step" in out
    assert "benchmark: brandgen-tiny · a red star icon · ok" in out
    assert out.rstrip().endswith("OK")
