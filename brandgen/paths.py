"""Where BrandGen reads and writes: one root (BRANDGEN_HOME) so Spaces can point it at persistent storage."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from brandgen.errors import InvalidInput

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = REPO_ROOT / "presets"
ASSETS_DIR = REPO_ROOT / "assets"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class AppPaths:
    """The writable folders of one BrandGen installation."""

    home: Path

    @property
    def loras(self) -> Path:
        return Path(os.environ.get("BRANDGEN_LORAS_DIR", self.home / "loras"))

    @property
    def outputs(self) -> Path:
        return self.home / "outputs"

    @property
    def training_runs(self) -> Path:
        return self.home / "training_runs"

    @property
    def benchmarks(self) -> Path:
        return self.home / "benchmarks"

    @classmethod
    def from_env(cls) -> "AppPaths":
        """BRANDGEN_HOME if set, else the repository folder (the layout a fresh clone has)."""
        return cls(Path(os.environ.get("BRANDGEN_HOME", REPO_ROOT)).resolve())


def safe_name(name: str, what: str = "name") -> str:
    """Accept a plain file/folder name only, so no user string can point outside the app's folders."""
    name = (name or "").strip()
    if not _SAFE_NAME.match(name) or ".." in name:
        raise InvalidInput(
            f"Invalid {what} {name!r}: use letters, digits, '.', '_' or '-' (no slashes, no '..')."
        )
    return name


def resolve_inside(root: Path, name: str, what: str = "name") -> Path:
    """Join a user-given name to root and prove the result stays inside root."""
    root = root.resolve()
    path = (root / safe_name(name, what)).resolve()
    if root not in path.parents and path != root:
        raise InvalidInput(f"Invalid {what} {name!r}: it points outside {root.name}/.")
    return path
