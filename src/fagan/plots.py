"""Reading training logs and plotting loss curves.

The original project appended one line ``d_loss<TAB>g_loss`` per feedback step to
``loss.log`` in the model directory and plotted it with a separate script. This module
reads that format (and JSON-lines stats files), tolerating the half-written last line a
crash can leave, and draws the curves with Matplotlib's Agg canvas directly, so it never
needs a display or touches pyplot's global state.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fagan.errors import FaganError
from fagan.fileio import atomic_write, check_output_file

__all__ = [
    "MAX_LOG_BYTES",
    "MAX_PLOT_POINTS",
    "envelope",
    "plot_loss_curves",
    "plot_losses",
    "read_loss_log",
    "read_stats_jsonl",
]

#: Most points drawn per curve (longer curves are drawn as their min/max envelope).
MAX_PLOT_POINTS = 2_000

#: Largest log file read (about 800,000 feedback lines of a training log).
MAX_LOG_BYTES = 16 << 20


def _read_lines(path: Path) -> list[str]:
    """Read a text log, keeping line endings so a trailing partial line can be spotted."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_LOG_BYTES:
                raise FaganError(
                    f"{path} is {size:,} bytes; logs of at most {MAX_LOG_BYTES:,} bytes are read"
                )
            return handle.read(MAX_LOG_BYTES + 1).splitlines(keepends=True)
    except FileNotFoundError as exc:
        raise FaganError(f"log file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise FaganError(f"expected a log file but found a directory: {path}") from exc
    except UnicodeDecodeError as exc:
        raise FaganError(f"{path} is not a text log file: {exc.reason}") from exc
    except OSError as exc:
        raise FaganError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_loss_log(path: str | os.PathLike) -> tuple[list[float], list[float]]:
    """Read the original project's ``loss.log``: one ``d_loss<TAB>g_loss`` line per feedback.

    Blank lines are skipped. Any whitespace separates the two numbers; ``nan`` and ``inf``
    are accepted (a diverged run logs them). A last line without a newline that does not
    parse is taken to be a write interrupted by a crash and ignored.

    Args:
        path: The loss log.

    Returns:
        ``(d_losses, g_losses)``, one entry per logged feedback.

    Raises:
        FaganError: If the file is missing or unreadable, a complete line is not two
            numbers (the message names the file and line number), or there are no entries.
    """
    path = Path(path)
    lines = _read_lines(path)
    d_losses: list[float] = []
    g_losses: list[float] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        fields = text.split()
        try:
            if len(fields) != 2:
                raise ValueError(text)
            d_loss, g_loss = float(fields[0]), float(fields[1])
        except ValueError:
            if number == len(lines) and not raw.endswith(("\n", "\r")):
                break  # partial last line from an interrupted write
            raise FaganError(
                f"{path}, line {number}: expected 'd_loss<TAB>g_loss', got {text[:60]!r}"
            ) from None
        d_losses.append(d_loss)
        g_losses.append(g_loss)
    if not d_losses:
        raise FaganError(f"{path} holds no loss entries (expected 'd_loss<TAB>g_loss' lines)")
    return d_losses, g_losses


def read_stats_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines stats file: one JSON object per line.

    Blank lines are skipped. A last line without a newline that is not valid JSON is
    taken to be a write interrupted by a crash and ignored. An empty file gives ``[]``.

    Args:
        path: The stats file.

    Returns:
        The records in file order.

    Raises:
        FaganError: If the file is missing or unreadable, or a complete line is not a JSON
            object (the message names the file and line number).
    """
    path = Path(path)
    lines = _read_lines(path)
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not raw.endswith(("\n", "\r")):
                break  # partial last line from an interrupted write
            raise FaganError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise FaganError(
                f"{path}, line {number}: expected a JSON object, got {type(record).__name__}"
            )
        records.append(record)
    return records


def _supported_formats() -> dict[str, str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return FigureCanvasAgg(Figure()).get_supported_filetypes()


def _plot_format(plot_file: Path) -> str:
    """The Matplotlib format of ``plot_file``, once it is known to be writable there.

    Raises:
        FaganError: an extension Matplotlib cannot write, or a path that cannot be written.
    """
    fmt = plot_file.suffix.lower().lstrip(".") or "png"
    supported = _supported_formats()
    if fmt not in supported:
        raise FaganError(
            f"cannot write a plot as .{fmt}; use one of: "
            + ", ".join("." + ext for ext in sorted(supported))
        )
    check_output_file(plot_file)
    return fmt


def envelope(
    values: Sequence[float], max_points: int = MAX_PLOT_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """The points to draw for a curve: all of them, or the min and max of equal buckets.

    A curve of at most ``max_points`` values is returned as it is (index, value). A longer
    one is cut into ``max_points // 2`` buckets of consecutive indices, and each bucket
    gives its smallest and its largest finite value at their own indices, in index order:
    drawn at figure resolution this is the same picture (every spike kept), and drawing
    stays fast for any length. A bucket without a finite value gives one NaN, a gap, as
    non-finite values give in a full plot.

    Returns:
        ``(x, y)`` arrays of equal length.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.size <= max_points:
        return np.arange(y.size), y
    edges = np.linspace(0, y.size, max_points // 2 + 1).astype(np.int64)
    xs: list[int] = []
    ys: list[float] = []
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        bucket = y[start:stop]
        finite = np.isfinite(bucket)
        if not finite.any():
            xs.append(int(start))
            ys.append(math.nan)
            continue
        low = int(np.argmin(np.where(finite, bucket, np.inf)))
        high = int(np.argmax(np.where(finite, bucket, -np.inf)))
        for k in sorted({low, high}):
            xs.append(int(start) + k)
            ys.append(float(bucket[k]))
    return np.asarray(xs), np.asarray(ys)


def plot_loss_curves(
    d_losses: Sequence[float],
    g_losses: Sequence[float],
    plot_file: str | os.PathLike,
    title: str = "FAGAN training losses",
) -> Path:
    """Plot discriminator and generator losses against the feedback index.

    Drawn on Matplotlib's Agg canvas (no display, no pyplot state) and written to a
    temporary file beside ``plot_file`` that is then moved into place. The format comes
    from the extension (any Matplotlib supports, e.g. ``.png``, ``.pdf``, ``.svg``); a
    name without an extension is written as PNG. A curve of more than
    :data:`MAX_PLOT_POINTS` values is drawn as its :func:`envelope`.

    Args:
        d_losses: Discriminator loss per feedback.
        g_losses: Generator loss per feedback.
        plot_file: Destination image; parent directories are created.
        title: Figure title.

    Returns:
        The path written.

    Raises:
        FaganError: If the extension is not a format Matplotlib can write, or the file
            cannot be written there (a parent that is a file, a folder in its place).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plot_file = Path(plot_file)
    fmt = _plot_format(plot_file)

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(*envelope(d_losses), label="discriminator loss", linewidth=1)
    axes.plot(*envelope(g_losses), label="generator loss", linewidth=1)
    axes.set_xlabel("feedback index")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()

    try:
        atomic_write(plot_file, lambda tmp: figure.savefig(tmp, format=fmt))
    except OSError as error:
        raise FaganError(f"cannot write {plot_file}: {error.strerror or error}") from None
    return plot_file


def plot_losses(loss_file: str | os.PathLike, plot_file: str | os.PathLike) -> Path:
    """Plot a ``loss.log`` (see :func:`read_loss_log`) to an image file.

    The counterpart of the original project's ``generate_loss_plots.py --loss_file F
    --plot_file P``.

    Args:
        loss_file: The ``d_loss<TAB>g_loss`` log.
        plot_file: Destination image (PNG or any extension Matplotlib supports).

    Returns:
        The path written.

    Raises:
        FaganError: If the log cannot be read, the format is unsupported or the plot
            cannot be written (checked before the log is read).
    """
    _plot_format(Path(plot_file))
    d_losses, g_losses = read_loss_log(loss_file)
    finite = sum(
        math.isfinite(d) and math.isfinite(g) for d, g in zip(d_losses, g_losses, strict=True)
    )
    title = f"FAGAN training losses ({len(d_losses)} feedbacks"
    title += ")" if finite == len(d_losses) else f", {len(d_losses) - finite} non-finite)"
    return plot_loss_curves(d_losses, g_losses, plot_file, title=title)
