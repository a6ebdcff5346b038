"""Which GPU speed-ups a training run uses (compile, CUDA graph, fp8 base weights) and one line saying so.

Each is a request in TrainConfig that the run honours where it can; where it cannot (CPU, DDP, an older GPU)
the run trains without it and the progress message says why, instead of failing after minutes of loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RunSpeed:
    compile_note: str | None = "off"  # why nothing was compiled ("off": not asked for); None when on
    compiled_blocks: int = 0
    graphed: Any = None  # the GraphedStep when the CUDA graph is on
    graph_note: str = "off"  # why the graph is not used ("off": not asked for); None when on
    fp8_note: str | None = "off"  # the same for fp8 base weights
    fp8_layers: int = 0

    def message(self) -> str:
        """e.g. 'Training (compiled: 70 blocks; CUDA graph on)'; '' when nothing was asked for."""
        parts = []
        if self.compile_note is None:
            parts.append(f"compiled: {self.compiled_blocks} blocks")
        elif self.compile_note != "off":
            parts.append(f"compile off: {self.compile_note}")
        if self.graphed is not None:
            failure = self.graphed.failure
            parts.append(f"CUDA graph failed, running without: {failure}" if failure else "CUDA graph on")
        elif self.graph_note != "off":
            parts.append(f"CUDA graph off: {self.graph_note}")
        if self.fp8_note is None:
            parts.append(f"fp8 base weights on: {self.fp8_layers} layers")
        elif self.fp8_note != "off":
            parts.append(f"fp8 base weights off: {self.fp8_note}")
        return f"Training ({'; '.join(parts)})" if parts else ""
