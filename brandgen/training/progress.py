"""What a training run reports while it runs and when it ends: plain data shared by jobs, CLI and UI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager


@dataclass
class TrainProgress:
    """A snapshot for whoever watches the run (the job registry, the CLI's log line)."""

    phase: str  # loading | caching | training | decoder | validating | saving | done | cancelled
    step: int = 0
    total: int = 0
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    seconds: float = 0.0
    eta_seconds: float | None = None
    samples: list[str] = field(default_factory=list)
    message: str = ""


@dataclass
class TrainHooks:
    on_progress: Callable[[TrainProgress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    step_guard: Callable[[], ContextManager] | None = None  # e.g. the PipelineManager's accelerator lock


@dataclass
class TrainResult:
    status: str  # done | cancelled
    run_dir: Path
    lora_dir: Path | None
    steps: int
    final_loss: float | None
    checkpoint: Path | None
    message: str
    metrics: dict[str, float] = field(default_factory=dict)  # fixed-noise loss of the base model and the LoRA

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
