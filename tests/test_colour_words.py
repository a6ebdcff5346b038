"""scripts/colour_words.py: a colour asked for by words or hex, scored on the glyph's pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_pipelines
from script_loader import load_script


@pytest.fixture(scope="module")
def cw():
    return load_script("colour_words")


def test_colour_specs_are_parsed_and_malformed_ones_refused(cw):
    assert cw.parse_colour("teal=#0f766e") == ("teal", "#0f766e")
    assert cw.parse_colour("dark teal and coral = #F97360") == ("dark teal and coral", "#F97360")
    assert cw.parse_colour("#0f766e=#0f766e") == ("#0f766e", "#0f766e")  # the hex itself as the words
    for bad in ("teal", "=#0f766e", "teal=#0f766", "teal=0f766e", "teal=#0g766e"):
        with pytest.raises(ValueError, match="WORDS=#rrggbb"):
            cw.parse_colour(bad)
    with pytest.raises(SystemExit):
        cw.main(["--model", "x", "--colours", "teal"])


def test_scores_every_model_and_colour_on_the_held_subjects(cw, tmp_path: Path):
    model = tiny_pipelines.build_sd15(tmp_path / "pipe")
    out = tmp_path / "c.json"
    result = cw.main(["--model", str(model), "--colours", "teal=#0f766e", "white=#ffffff", "--seeds", "1",
                      "--steps", "2", "--out", str(out)])
    scores = result["models"][str(model)]
    assert set(scores) == {"teal -> #0f766e", "white -> #ffffff"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert json.loads(out.read_text())["models"] == result["models"] and result["subjects"]
