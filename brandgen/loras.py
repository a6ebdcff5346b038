"""The LoRA library: discovery in loras/, format detection, and refusing unsafe or broken files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from brandgen.errors import LoraError
from brandgen.paths import safe_name

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_transformer_")


@dataclass(frozen=True)
class LoraInfo:
    """A LoRA file the app may load, with what its header says about it."""

    name: str
    path: Path
    format: str  # "diffusers" (peft keys) or "kohya"
    size_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def adapter_name(self) -> str:
        """peft adapter names become module attributes, so only word characters are allowed."""
        return "lora_" + re.sub(r"\W", "_", self.name)

    @property
    def base_family(self) -> str | None:
        return self.metadata.get("brandgen.base_family")

    @property
    def trigger(self) -> str:
        return self.metadata.get("brandgen.trigger", "")


def detect_format(keys: list[str]) -> str:
    """kohya files (A1111/ComfyUI) name modules lora_unet_*; diffusers/peft files use dotted paths."""
    if not keys:
        raise LoraError("The LoRA file holds no tensors.")
    if any(k.startswith(_KOHYA_PREFIXES) for k in keys):
        return "kohya"
    if any(("lora_A" in k or "lora_B" in k or "lora.down" in k or "lora_down" in k) for k in keys):
        return "diffusers"
    raise LoraError("This safetensors file has no LoRA weights in a known layout (diffusers/peft or kohya).")


def inspect_lora(path: Path, name: str | None = None) -> LoraInfo:
    """Read only the safetensors header: cheap, and never executes anything from the file."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraError(
            f"{path.name} is a pickle file ({path.suffix}); BrandGen loads LoRAs only from .safetensors, "
            "because pickles can run code. Convert it to safetensors first."
        )
    if path.suffix.lower() != ".safetensors":
        raise LoraError(f"{path.name} is not a .safetensors file.")
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path.name}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for truncated/garbage files
        raise LoraError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    return LoraInfo(
        name=name or path.stem, path=path, format=detect_format(keys),
        size_bytes=path.stat().st_size, metadata=metadata,
    )


class LoraLibrary:
    """The LoRAs in one folder: `name.safetensors` files and `name/` folders from the trainer."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.problems: dict[str, str] = {}  # file (as under root, e.g. "evil.ckpt", "acme/x.safetensors") -> why

    def scan(self) -> list[LoraInfo]:
        """Rescan the folder; files that cannot be used are reported in `problems`, not raised, one entry per
        file (`evil.ckpt`, `evil.bin` and `evil.pt` are three warnings, not one).

        `problems` is replaced whole at the end, so a scan on another thread never shows a half-filled dict.
        """
        found: dict[str, LoraInfo] = {}
        problems: dict[str, str] = {}
        for name, candidate in self._entries():
            try:
                found[name] = inspect_lora(candidate, name=name)
            except LoraError as exc:
                problems[candidate.relative_to(self.root).as_posix()] = str(exc)
        self.problems = problems
        return list(found.values())

    def _entries(self, only: str | None = None) -> list[tuple[str, Path]]:
        """(name, file to read) for each LoRA-like entry, in sorted order (a later one of the same name wins);
        `only` keeps one name without reading any file."""
        entries = sorted(self.root.iterdir()) if self.root.is_dir() else []
        result = []
        for entry in entries:
            name = entry.stem if entry.is_file() else entry.name
            if only is not None and name != only:
                continue
            candidate = self._candidate(entry)
            if candidate is not None:
                result.append((name, candidate))
        return result

    def _candidate(self, entry: Path) -> Path | None:
        if entry.is_file() and entry.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
            return entry
        if entry.is_dir():
            preferred = entry / DIFFUSERS_FILE
            if preferred.is_file():
                return preferred
            files = sorted(entry.glob("*.safetensors"))
            return files[0] if files else None
        return None

    def names(self) -> list[str]:
        return [info.name for info in self.scan()]

    def get(self, name: str) -> LoraInfo:
        """One LoRA by name, reading only its own file's header (generation asks for each LoRA it applies)."""
        name = safe_name(name, "LoRA name")
        found, problem = None, None
        for _, candidate in self._entries(only=name):
            try:
                found = inspect_lora(candidate, name=name)
            except LoraError as exc:
                problem = str(exc)
        if found is not None:
            return found
        if problem is not None:
            raise LoraError(f"LoRA {name!r} cannot be used: {problem}")
        raise LoraError(f"No LoRA named {name!r} in {self.root.name}/. Refresh the list or add the file.")


def read_metadata_json(info: LoraInfo) -> dict:
    """Training metadata (base model, trigger, rank, steps) stored by our trainer, if any."""
    raw = info.metadata.get("brandgen", "")
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
