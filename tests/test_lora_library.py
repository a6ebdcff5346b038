"""LoraLibrary: listing the loras/ folder and looking one LoRA up by name without reading the others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from brandgen import loras
from brandgen.errors import LoraError
from brandgen.loras import DIFFUSERS_FILE, LoraLibrary


def _lora(path: Path, tag: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"unet.a.lora_A.weight": torch.zeros(2, 4), "unet.a.lora_B.weight": torch.zeros(4, 2)}, str(path),
              metadata={"tag": tag})
    return path


def test_get_reads_only_the_named_loras_header_and_agrees_with_scan(tmp_path: Path, monkeypatch):
    root = tmp_path / "loras"
    for i in range(5):
        _lora(root / f"other{i}.safetensors", f"other{i}")
    _lora(root / "acme" / DIFFUSERS_FILE, "folder")  # a trained LoRA folder and a file of the same name:
    _lora(root / "acme.safetensors", "file")  # the later entry in sorted order wins, in scan and get alike
    (root / "broken.safetensors").write_bytes(b"not a safetensors file")
    library = LoraLibrary(root)
    listed = {info.name: info for info in library.scan()}
    assert sorted(listed) == ["acme", "other0", "other1", "other2", "other3", "other4"]
    assert "broken.safetensors" in library.problems

    read: list[str] = []
    real = loras.inspect_lora
    monkeypatch.setattr(loras, "inspect_lora", lambda path, name=None: read.append(Path(path).name) or real(path, name))
    acme = library.get("acme")
    assert acme.metadata["tag"] == listed["acme"].metadata["tag"] == "file"
    assert read == [DIFFUSERS_FILE, "acme.safetensors"]  # its two candidates, none of the other six files
    with pytest.raises(LoraError, match="'broken' cannot be used: .*not a readable safetensors"):
        library.get("broken")
    with pytest.raises(LoraError, match="No LoRA named 'missing'"):
        library.get("missing")
