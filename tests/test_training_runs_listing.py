"""The run list the Train tab shows: damaged run folders stay listed, and run folders never collide."""

from __future__ import annotations

import json
from datetime import datetime

from brandgen.paths import AppPaths
from brandgen.training.jobs import TrainingJobs
from brandgen.training import loading
from brandgen.training.loading import new_run_dir


def _run(paths: AppPaths, name: str, result: str | None) -> None:
    folder = paths.training_runs / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    if result is not None:
        (folder / "result.json").write_text(result, encoding="utf-8")


def test_a_corrupt_result_file_does_not_hide_the_other_runs(app_paths: AppPaths):
    _run(app_paths, "good-20260101-000000", json.dumps({"status": "done"}))
    _run(app_paths, "torn-20260101-000001", '{"status": "do')  # cut off mid-write
    _run(app_paths, "list-20260101-000002", "[1, 2]")  # valid JSON, wrong shape
    _run(app_paths, "open-20260101-000003", None)
    runs = {r["run"]: r for r in TrainingJobs(paths=app_paths).list_runs()}
    assert runs["good-20260101-000000"]["status"] == "done"
    assert runs["torn-20260101-000001"]["status"] == "unreadable result.json"
    assert runs["list-20260101-000002"]["status"] == "unreadable result.json"
    assert runs["open-20260101-000003"]["status"] == "unfinished"


def test_runs_started_in_the_same_second_get_their_own_folders(app_paths: AppPaths, monkeypatch):
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 1, 12, 0, 0)

    monkeypatch.setattr(loading, "datetime", FrozenClock)
    first = new_run_dir(app_paths, "brand")
    first.mkdir(parents=True)
    second = new_run_dir(app_paths, "brand")
    second.mkdir()
    third = new_run_dir(app_paths, "brand")
    assert first.name == "brand-20261201-120000"
    assert (second.name, third.name) == ("brand-20261201-120000-2", "brand-20261201-120000-3")
    assert all(p.parent == app_paths.training_runs and p.name.startswith("brand-") for p in (first, second, third))
