"""Where BrandGen reads and writes: one root (BRANDGEN_HOME) so Spaces can point it at persistent storage."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from brandgen.errors import InvalidInput, StorageError

TRUTHY = ("1", "true", "yes", "on")  # how BRANDGEN_* switches read "on" (CLI and performance mode)

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = REPO_ROOT / "presets"
ASSETS_DIR = REPO_ROOT / "assets"
SHIPPED_DATASETS = ASSETS_DIR / "brand_example"  # example training images the web app may always read
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

    @property
    def quarantine(self) -> Path:
        """Damaged files set aside for a person to inspect (an unreadable gallery index): never served."""
        return self.home / "quarantine"

    @property
    def compile_cache(self) -> Path:
        """torch.compile's persistent cache in performance mode: a restart compiles from it in seconds."""
        return self.home / ".cache" / "inductor"

    @property
    def training_data(self) -> Path:
        return self.home / "training_data"

    def dataset_roots(self, write: bool = False) -> list[Path]:
        """Where the web app may read training images: uploads (training_data/), the shipped example datasets and
        the folders listed in BRANDGEN_DATA_ROOTS (os.pathsep-separated). `write` (template captions): the same
        without the shipped examples. Everywhere by default: the dataset box must not list or write any folder of
        the server (`/etc`); the CLI (`brandgen train`) reads any folder its user names."""
        listed = [Path(p).expanduser().resolve() for p in os.environ.get("BRANDGEN_DATA_ROOTS", "").split(os.pathsep)
                  if p.strip()]
        return [self.training_data.resolve(), *listed, *([] if write else [SHIPPED_DATASETS.resolve()])]

    def dataset_folder(self, folder: str | Path, write: bool = False) -> Path:
        """`folder` if the web app may use it as a dataset (see dataset_roots), else a clear refusal."""
        if "\0" in str(folder):
            raise InvalidInput("The dataset folder name contains a NUL byte; give a plain folder path.")
        roots = self.dataset_roots(write)
        resolved = Path(folder).resolve()
        if not any(resolved == root or root in resolved.parents for root in roots):
            doing = "write captions into" if write else "read"
            raise InvalidInput(
                f"Dataset folder {Path(folder).name!r} is outside the folders this server may {doing}: upload the "
                f"images instead (they go to {self.training_data.name}/), or list the folder in BRANDGEN_DATA_ROOTS."
            )
        return Path(folder)

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


_WRITE_ERRNOS = {errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EROFS: "read-only", errno.EACCES: "denied",
                 errno.EPERM: "denied"}


@contextlib.contextmanager
def writing(what: str, where: Path) -> Iterator[None]:
    """Turn a write the disk refused (full, read-only, no permission) into a StorageError that says what to do;
    any other error passes through unchanged."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        kind = _WRITE_ERRNOS.get(getattr(exc, "errno", None) or 0)
        if kind is None and "disk is full" in str(exc):  # SQLite: "database or disk is full"
            kind = "full"
        if kind is None:
            raise
        advice = {
            "full": "the disk is full. Free some space (or point BRANDGEN_HOME at a larger disk) and try again",
            "read-only": "the disk is read-only. Point BRANDGEN_HOME at a writable folder",
            "denied": "permission denied. Point BRANDGEN_HOME at a folder this app may write to",
        }[kind]
        raise StorageError(f"Could not save {what} in {where}: {advice}. ({exc})") from exc
