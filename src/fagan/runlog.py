"""What a training run writes as it goes: ``loss.log``, ``stats.jsonl``, TensorBoard.

Only the main process owns a :class:`RunLog`. Every line is appended and flushed at
once, so a crash loses at most the line being written (the readers in
:mod:`fagan.plots` skip a truncated last line).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor


class RunLog:
    """Appends feedback records to the model folder.

    Args:
        model_dir: the run's model folder (``loss.log`` and ``stats.jsonl`` go here).
        tensorboard: also write TensorBoard events under ``model_dir/tensorboard``
            when the ``tensorboard`` package is installed.
    """

    def __init__(self, model_dir: Path, tensorboard: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.loss_log = self.model_dir / "loss.log"
        self.stats = self.model_dir / "stats.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(self.model_dir / "tensorboard"))

    def feedback(self, record: dict[str, Any]) -> None:
        """Logs one feedback point.

        ``record`` holds at least ``step``, ``d_loss`` and ``g_loss``; nested dicts
        (such as ``gamma``) become ``gamma/<layer>`` TensorBoard scalars.
        """
        with open(self.loss_log, "a", encoding="utf-8") as handle:
            handle.write(f"{record['d_loss']}\t{record['g_loss']}\n")
        self.append_stats(record)

    def append_stats(self, record: dict[str, Any]) -> None:
        """Appends one JSON line to ``stats.jsonl`` (and its numbers to TensorBoard)."""
        with open(self.stats, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_jsonable(record)) + "\n")
        if self.writer is not None:
            step = int(record["step"])
            for name, value in _flatten(record):
                if name not in ("step", "epoch", "batch", "time") and math.isfinite(value):
                    self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        """Adds a (3, H, W) uint8 image grid to TensorBoard."""
        if self.writer is not None:
            self.writer.add_image(tag, grid, step)

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep the line parseable
    return value


def _flatten(record: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((name, float(value)))
    return out
