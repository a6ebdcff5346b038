"""scripts/tiny_ship_check.py: every figure of a brandgen-tiny candidate against issue #18's targets and the shipped
model's floors, and the whole check on a tiny random-weight model."""

from __future__ import annotations

import json

import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def check():
    return load_script("tiny_ship_check")


def test_checks_hold_every_set_to_the_issue_targets_and_the_shipped_floors(check):
    sets = {"control": {"top1": 0.63, "top5": 0.725, "color_accuracy": 0.94},
            "blind": {"top1": 0.91, "top5": 0.93, "color_accuracy": 0.89},
            "fresh": {"top1": 0.39, "top5": 0.905}}  # no colour figure: a check that cannot pass, not one skipped
    demos = {"seeds 0-1": {"foreground_gain_points": 31.0}, "seeds 2-5": {"foreground_gain_points": 18.2}}
    shipped = {"model": "shipped", "sets": {"control": {"top5": 0.725}, "blind": {"top5": 0.94}}}
    failed = {c["check"] for c in check.checks(sets, demos, shipped) if not c["ok"]}
    assert failed == {"blind: color_accuracy", "blind: top5 >= shipped's", "fresh: top1", "fresh: color_accuracy",
                      "demo seeds 2-5: gain (points)"}
    names = [c["check"] for c in check.checks(sets, demos)]
    assert len(names) == 3 * 3 + 2 and not any("shipped" in n for n in names)  # no floors without a report


def test_whole_check_on_a_tiny_model_reports_sets_demos_and_a_verdict(check, tiny_dirs, tmp_path):
    tiny = ["--images=3", "--resolution=32", "--steps=2", "--sample-steps=2"]
    floors = tmp_path / "shipped.json"
    floors.write_text(json.dumps({"model": "shipped", "sets": {"control": {"top5": 0.0}}}))
    out = check.main(["--model", str(tiny_dirs["sd15"]), "--sets", "control", "--per-concept", "1", "--steps", "2",
                      "--against", str(floors), "--out", str(tmp_path / "check.json"),
                      "--sheets", str(tmp_path / "sheets"), *(f"--demo-arg={a}" for a in tiny)])
    assert json.loads((tmp_path / "check.json").read_text()) == out
    assert set(out["sets"]) == {"control"} and out["sets"]["control"]["n"] == 50
    assert [d["seeds"] for d in out["demos"].values()] == [[0, 1], [2, 3, 4, 5]]
    # the demo ran the folder as brandgen-tiny's entry would: its lora_guidance after training
    assert all(d["settings_of"] == "brandgen-tiny" and d["guidance"]["after"] == 1.5 for d in out["demos"].values())
    assert len(out["checks"]) == 3 + 1 + 2
    assert next(c for c in out["checks"] if "shipped" in c["check"])["ok"]  # any top-5 clears a 0 floor
    assert out["ship"] is False  # random weights draw no icon in its colour
    assert (tmp_path / "sheets" / "contact_sheet_control.png").is_file()
    assert (tmp_path / "sheets" / "lora_demo_seeds2-5.png").is_file()


def test_unknown_set_or_missing_model_is_refused_with_a_reason(check, tmp_path, capsys):
    with pytest.raises(SystemExit):
        check.main(["--model", str(tmp_path), "--sets", "control"])
    assert "no model_index.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check.main(["--model", str(tmp_path), "--sets", "controll"])
    assert "unknown phrasing sets ['controll']" in capsys.readouterr().err
