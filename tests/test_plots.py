"""Tests for fagan.plots: reading loss.log and stats.jsonl, drawing the loss curves."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from fagan.errors import FaganError
from fagan.plots import plot_loss_curves, plot_losses, read_loss_log, read_stats_jsonl


def test_read_loss_log_truncated_and_blank_lines(tmp_path: Path) -> None:
    log = tmp_path / "loss.log"
    log.write_text("1.5\t0.5\n\n1.25\t0.75\n1.0\t1.\n0.9\t")
    d, g = read_loss_log(log)
    assert d == [1.5, 1.25, 1.0]
    assert g == [0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5\t0.5\nabc\t0.1\n1.0\t1.0\n", r"loss\.log, line 2"),
        ("1.5\t0.5\n0.9\n", "line 2"),  # complete (newline-ended) but malformed last line
        ("\n\n", "no loss entries"),
    ],
)
def test_read_loss_log_errors(tmp_path: Path, text: str, message: str) -> None:
    log = tmp_path / "loss.log"
    log.write_text(text)
    with pytest.raises(FaganError, match=message):
        read_loss_log(log)


def test_read_loss_log_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FaganError, match="not found"):
        read_loss_log(tmp_path / "missing.log")


def test_read_stats_jsonl_skips_blank_and_partial_last_lines(tmp_path: Path) -> None:
    stats = tmp_path / "stats.jsonl"
    stats.write_text('{"step": 1, "d": 0.5}\n\n{"step": 2, "d": 0.4}\n{"step": 3, "d"')
    assert read_stats_jsonl(stats) == [{"step": 1, "d": 0.5}, {"step": 2, "d": 0.4}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"step": 1}\n[1, 2]\n', "line 2: expected a JSON object"),
        ('{"step": 1}\n{oops\n{"step": 3}\n', "line 2: not valid JSON"),
    ],
)
def test_read_stats_jsonl_errors(tmp_path: Path, text: str, message: str) -> None:
    stats = tmp_path / "stats.jsonl"
    stats.write_text(text)
    with pytest.raises(FaganError, match=message):
        read_stats_jsonl(stats)


def test_plot_losses_writes_png_and_svg(tmp_path: Path) -> None:
    log = tmp_path / "loss.log"
    log.write_text("".join(f"{2 / (i + 1)}\t{math.sin(i)}\n" for i in range(50)) + "0.1\t0.")
    out = plot_losses(log, tmp_path / "plots" / "loss.png")
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (800, 500)
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]
    svg = plot_losses(log, tmp_path / "loss.svg")
    assert svg.read_text().lstrip().startswith("<?xml")
    with pytest.raises(FaganError, match="cannot write a plot"):
        plot_losses(log, tmp_path / "loss.xyz")


def test_plots_get_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        plot = plot_loss_curves([1.0, 0.5], [0.2, 0.3], tmp_path / "loss.png")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(plot.stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
