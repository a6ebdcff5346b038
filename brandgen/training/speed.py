"""Which GPU speed-ups a training run uses (compile, CUDA graph, fp8 base weights) and one line saying so.

Each is a request in TrainConfig that the run honours where it can; where it cannot (CPU, DDP, an older GPU)
the run trains without it and the progress message says why, instead of failing after minutes of loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from brandgen.training import fp8_base, fused_lora


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
    fused_layers: int = 0  # LoRA layers on the merged-weight path (brandgen/training/fused_lora.py); not in the message

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


def swap_layers(model: torch.nn.Module, speed: RunSpeed, fp8: bool, fused: bool, device: torch.device,
                num_processes: int) -> None:
    """fp8 base weights where asked and possible, then the fused LoRA path on the layers still plain nn.Linear
    underneath (an fp8 base keeps peft's forward). Before compiling: the compiled code sees the final layers."""
    speed.fp8_note = fp8_base.unavailable_reason(fp8, device, num_processes)
    if speed.fp8_note is None:
        speed.fp8_layers = fp8_base.use_fp8_base(model)
    if fused:
        speed.fused_layers = fused_lora.use_fused_lora(model)


def restore_layers(model: torch.nn.Module) -> None:
    """The exact base weights and peft's own LoRA layers again, for whatever uses the model after training."""
    fp8_base.restore_base(model)
    fused_lora.restore(model)
