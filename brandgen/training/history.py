"""Loss history of a run: a CSV a spreadsheet opens, a PNG curve, and a DataFrame for the UI's plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

COLUMNS = ["step", "epoch", "loss", "lr", "seconds"]


class LossHistory:
    """Append-only rows of (step, epoch, loss, lr, seconds), persisted next to the run's checkpoints."""

    def __init__(self, rows: list[dict] | None = None):
        self.rows: list[dict] = list(rows or [])

    @classmethod
    def load(cls, path: Path, up_to_step: int | None = None) -> "LossHistory":
        """Read a run's CSV; on resume, rows after the checkpoint's step are dropped (they will be redone)."""
        if not Path(path).is_file():
            return cls()
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [
                {k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(handle)
            ]
        if up_to_step is not None:
            rows = [r for r in rows if r["step"] <= up_to_step]
        return cls(rows)

    def append(self, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        self.rows.append(
            {"step": step, "epoch": epoch, "loss": float(loss), "lr": float(lr), "seconds": round(float(seconds), 3)}
        )

    def save_csv(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(path)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def smoothed(self, weight: float = 0.9) -> list[float]:
        """Exponential moving average, bias-corrected so the first points are not pulled toward zero."""
        out, avg = [], 0.0
        for i, row in enumerate(self.rows, start=1):
            avg = weight * avg + (1 - weight) * row["loss"]
            out.append(avg / (1 - weight**i))
        return out

    def plot(self, path: Path, title: str = "Training loss") -> Path:
        """A small PNG of raw and smoothed loss (matplotlib, no display needed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        steps = [r["step"] for r in self.rows]
        losses = [r["loss"] for r in self.rows]
        if steps:
            ax.plot(steps, losses, color="#94a3b8", linewidth=0.8, label="loss")
            ax.plot(steps, self.smoothed(), color="#0f766e", linewidth=1.8, label="smoothed")
            if all(v > 0 and math.isfinite(v) for v in losses):
                ax.set_yscale("log")
            ax.legend(loc="upper right")
        ax.set_xlabel("step")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return Path(path)
