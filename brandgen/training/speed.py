"""Which GPU speed-ups a training run uses (compile, CUDA graph, fp8 base weights) and one line saying so.

Each is a request in TrainConfig that the run honours where it can; where it cannot (CPU, DDP, an older GPU)
the run trains without it and the progress message says why, instead of failing after minutes of loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _part(name: str, note: str | None, on: str) -> str:
    """`on` when the speed-up runs (note None), nothing when it was not asked for, else why it is off."""
    if note is None:
        return on
    return "" if note == "off" else f"{name} off: {note}"


@dataclass
class RunSpeed:
    """Each note is None when its speed-up runs, "off" when it was not asked for, else the reason it cannot."""

    compile_note: str | None = "off"
    compiled_blocks: int = 0
    graph_note: str | None = "off"
    graphed: Any = None  # the GraphedStep when the CUDA graph runs
    fp8_note: str | None = "off"
    fp8_layers: int = 0

    def message(self) -> str:
        """e.g. 'Training (compiled: 70 blocks; CUDA graph on)'; '' when nothing was asked for."""
        failure = self.graphed.failure if self.graphed is not None else None
        graph = f"CUDA graph failed, running without: {failure}" if failure else "CUDA graph on"
        parts = [
            _part("compile", self.compile_note, f"compiled: {self.compiled_blocks} blocks"),
            _part("CUDA graph", self.graph_note, graph),
            _part("fp8 base weights", self.fp8_note, f"fp8 base weights on: {self.fp8_layers} layers"),
        ]
        parts = [part for part in parts if part]
        return f"Training ({'; '.join(parts)})" if parts else ""
