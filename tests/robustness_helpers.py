"""Small pieces shared by the robustness tests (test_robustness*.py)."""

from __future__ import annotations

import errno
import struct
import zlib
from pathlib import Path

import numpy as np

from brandgen.generation import GenerationRequest
from brandgen.manager import PipelineManager


def tiny_request(**kw) -> GenerationRequest:
    """Two denoising steps of the tiny SD1.5 model: a real generation in ~0.1 s on one CPU thread."""
    return GenerationRequest(**{"prompt": "a red star icon", "model_id": "tiny-sd15", "steps": 2, "seed": 7, **kw})


def pixels(manager: PipelineManager, **kw) -> np.ndarray:
    return np.asarray(manager.generate(tiny_request(**kw)).images[0], dtype=np.int16)


def png_bytes(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A 1-bit grayscale PNG of any declared size; `rows` None = header only (no image data at all)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    if rows is not None:
        out += chunk(b"IDAT", zlib.compress(rows, 9))
    return out + chunk(b"IEND", b"")


def huge_png(side: int = 12000) -> bytes:
    """A real, valid PNG of side x side pixels in a few KB: decoded, 12000^2 would take 144 MB (432 MB as RGB)."""
    return png_bytes(side, side, bytes(side * (1 + side // 8)))


def files_under(root: Path) -> set[Path]:
    return {p for p in Path(root).rglob("*") if p.is_file()}


class FullDisk:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self._handle = open(path, mode, *args, **kwargs)

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
