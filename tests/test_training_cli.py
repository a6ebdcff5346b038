"""`brandgen train --config cfg.json` trains from a JSON file and prints the result as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brandgen.cli import main
from training_helpers import make_dataset, one_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


def test_train_command_writes_a_lora(
    tiny_dirs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setenv("BRANDGEN_HOME", str(tmp_path / "home"))
    data = make_dataset(tmp_path / "data", count=2)
    config = tiny_config(data, str(tiny_dirs["sd15"]), name="cli-brand", max_steps=3, checkpoint_every=2)
    path = tmp_path / "cfg.json"
    config.save(path)
    main(["train", "--config", str(path), "--device", "cpu", "--log-every", "1"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["status"] == "done" and result["steps"] == 3
    assert Path(result["lora_dir"], "pytorch_lora_weights.safetensors").is_file()
    assert "step 3/3" in captured.err
    path.write_text(json.dumps({"name": "x", "learning_rate": 1}))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(path)])
    assert exit_info.value.code == 2 and "learning_rate" in capsys.readouterr().err
