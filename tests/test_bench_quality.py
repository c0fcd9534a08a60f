"""Tests for benchmarks/bench_quality.py and the dcgan64 architecture it compares against.

The helpers (cell selection, the held-out split, compositing, statistics, tables) are
tested directly; one slow test runs the script end to end on a micro budget (a few
steps on real 64x64 faces) through the real ``fagan`` command line.
"""

from __future__ import annotations

import importlib
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_lfw_faces
from PIL import Image

from fagan.config import (
    ConvSpec,
    FullAttentionSpec,
    SelfAttentionSpec,
    load_config,
    resolve_config_path,
)
from fagan.networks import Discriminator, Generator

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bq():
    """The benchmark script as a module."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_quality")
    finally:
        sys.path.remove(str(BENCHMARKS))


# --------------------------------------------------------------------------- dcgan64
def _convs(name: str, role: str) -> list[ConvSpec]:
    return [
        layer
        for layer in load_config(resolve_config_path(name, role)).layers
        if isinstance(layer, ConvSpec)
    ]


@pytest.mark.parametrize("role", ["gen", "dis"])
def test_dcgan64_is_sagan64_without_attention(role: str) -> None:
    spec = load_config(resolve_config_path("dcgan64", role))
    assert not any(
        isinstance(layer, (SelfAttentionSpec, FullAttentionSpec)) for layer in spec.layers
    )
    # the same convolutions, widths, norms and activations as sagan64's
    assert _convs("dcgan64", role) == _convs("sagan64", role)
    assert all(c.spectral_norm for c in _convs("dcgan64", role)[:-1])


def test_dcgan64_builds_and_maps_shapes() -> None:
    gen = Generator(load_config(resolve_config_path("dcgan64", "gen")))
    dis = Discriminator(load_config(resolve_config_path("dcgan64", "dis")))
    images = gen(torch.randn(2, 128))
    assert images.shape == (2, 3, 64, 64)
    assert images.abs().max() <= 1  # tanh
    assert dis(images).numel() == 2
    assert [c.out_channels for c in _convs("dcgan64", "gen")] == [512, 256, 128, 64, 3]


# --------------------------------------------------------------------------- helpers
def test_select_cells_by_name_and_pattern(bq) -> None:
    cells = bq.all_cells(bq.ARCHS, bq.LOSSES, (0, 1, 2))
    assert len(cells) == 18
    assert [c.name for c in bq.select_cells(cells, "fagan64-hinge-s0")] == ["fagan64-hinge-s0"]
    chosen = [c.name for c in bq.select_cells(cells, "dcgan64-*-s1, sagan64-hinge-s2")]
    assert chosen == ["sagan64-hinge-s2", "dcgan64-hinge-s1", "dcgan64-relativistic-hinge-s1"]
    assert len(bq.select_cells(cells, None)) == 18
    with pytest.raises(bq.BenchError, match="matches no cell"):
        bq.select_cells(cells, "fagan64-hinge-s7")


def test_holdout_keeps_skin_tone_groups_together(bq, tmp_path: Path) -> None:
    names = []
    for base in range(40):
        stem = f"1f4{base:02x}"
        names.append(f"{stem}.png")
        if base % 3 == 0:  # an emoji with the five skin tones
            names += [f"{stem}-1f3f{tone}.png" for tone in "bcdef"]
    paths = [tmp_path / n for n in sorted(names)]
    train, heldout = bq.split_holdout(paths, tmp_path, 0.25)
    assert set(train).isdisjoint(heldout) and len(train) + len(heldout) == len(paths)
    assert abs(len(heldout) - 0.25 * len(paths)) <= 5  # whole groups: at most one over
    held_groups = {bq.group_key(p, tmp_path) for p in heldout}
    assert held_groups.isdisjoint({bq.group_key(p, tmp_path) for p in train})
    assert bq.split_holdout(paths, tmp_path, 0.25) == (train, heldout)  # deterministic
    assert train == sorted(train) and heldout == sorted(heldout)


def test_composite_on_white(bq) -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgba.putpixel((1, 1), (200, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    out = bq.composite_on_white(rgba)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (200, 0, 0)
    assert all(abs(v - 127) <= 1 for v in out.getpixel((2, 2)))
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    flat = bq.composite_on_white(palette)
    assert [flat.getpixel((0, 0)), flat.getpixel((1, 0))] == [(255, 255, 255), (9, 9, 9)]


def test_read_stats_keeps_the_latest_record_of_a_step(bq, tmp_path: Path) -> None:
    lines = [
        {"step": 1, "d_loss": 1.0, "g_loss": 2.0, "time": 1.0},
        {"step": 2, "eval": {"swd_avg": 50.0, "swd_64": 1.0}},
        {"step": 4, "eval": {"swd_avg": 40.0}},
        {"step": 4, "eval": {"swd_avg": 42.0}},  # logged again after a resume
        {"step": 6, "eval": {"swd_avg": 46.0}},
        {"step": 8, "eval": {"swd_avg": 44.0}},
        {"step": 8, "d_loss": 0.5, "g_loss": 1.5, "time": 9.0},
    ]
    (tmp_path / "stats.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    track, last = bq.read_stats(tmp_path)
    assert track == [[2, 50.0], [4, 42.0], [6, 46.0], [8, 44.0]]
    assert last == {"step": 8, "d_loss": 0.5, "g_loss": 1.5, "time": 9.0}
    assert bq.late_rise(track) == 0.0  # 46 -> 44 only improves
    assert bq.late_rise([[1, 9.0], [2, 5.0], [3, 6.0], [4, 4.0], [5, 7.5], [6, 7.0]]) == 3.5
    assert bq.late_rise(track[:1]) is None


def _result(
    bq, arch: str, loss: str, seed: int, fid: float, swd: float, diverged: bool = False
) -> dict:
    train = {
        "wall_s": 60.0 + seed,
        "diverged": diverged,
        "s_per_step": 0.5,
        "swd_track": [[1, 9.0], [2, 8.0], [3, 7.0], [4, 7.0 + seed]],
    }
    metrics = (
        {}
        if diverged
        else {"heldout": {"fid": fid, "swd": swd}, "train": {"fid": fid - 1, "swd": swd - 1}}
    )
    return {
        "cell": bq.Cell(arch, loss, seed).name,
        "arch": arch,
        "loss": loss,
        "seed": seed,
        "train": train,
        "metrics": metrics,
    }


def test_summary_claims_and_tables(bq) -> None:
    results = [
        _result(bq, "fagan64", "hinge", 0, 100.0, 50.0),
        _result(bq, "fagan64", "hinge", 1, 110.0, 54.0),
        _result(bq, "fagan64", "hinge", 2, 0, 0, diverged=True),
        _result(bq, "sagan64", "hinge", 0, 120.0, 60.0),
        _result(bq, "sagan64", "hinge", 1, 124.0, 62.0),
    ]
    rows = {(r["arch"], r["loss"]): r for r in bq.summarize(results)}
    fagan = rows[("fagan64", "hinge")]
    assert fagan["diverged"] == 1 and fagan["seeds"] == [0, 1, 2]
    assert fagan["metrics"]["fid_heldout"] == {
        "mean": 105.0,
        "std": pytest.approx(statistics.stdev([100, 110])),
        "min": 100.0,
        "max": 110.0,
        "n": 2,
    }
    assert fagan["metrics"]["swd_train"]["mean"] == 51.0
    assert fagan["swd_late_rise"]["mean"] == 0.5  # rises 0 and 1
    lines = bq.claims(list(rows.values()))
    se = math.sqrt(statistics.stdev([100, 110]) ** 2 / 2 + statistics.stdev([120, 124]) ** 2 / 2)
    assert f"fagan64 - sagan64 = -17.00 +- {se:.2f} (beyond 2 SE)" in lines[1]
    floors = {"heldout": {"fid": 20.0, "swd": 10.0}, "train": {"fid": 15.0, "swd": 8.0}}
    (header, summary), (cell_header, cells) = bq.tables(results, floors)
    assert header[3:7] == [
        "FID vs held-out",
        "FID vs train",
        "SWD x1e3 vs held-out",
        "SWD x1e3 vs train",
    ]
    assert summary[0][:4] == ["fagan64", "hinge", "0,1,2", "105.00 +- 7.07"]
    assert summary[-1][:7] == ["real vs real", "(floor)", "-", "20.00", "15.00", "10.00", "8.00"]
    assert cells[2][:3] == ["fagan64-hinge-s2", "diverged", "diverged"]


def test_bad_flags_exit_2_with_one_line(
    bq, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, needle in (
        (["--cells", "nothing-*"], "matches no cell"),
        (["--seeds", "a,b"], "--seeds"),
        (["--holdout", "1.5"], "--holdout"),
        (["--metrics", "swd,lpips"], "--metrics"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            bq.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert needle in err[-1] and err[-1].startswith("bench_quality: error:")
    assert bq.main(["--images_dir", "/nonexistent/images", "--work_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "bench_quality: error: --images_dir /nonexistent/images is not a folder"
    )


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_micro_cell_end_to_end_and_resume(
    bq, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faces = write_lfw_faces(tmp_path / "faces", 64, count=48)
    not_weights = tmp_path / "inception.pt"
    not_weights.write_text("not a weights file")
    out_json, results_md = tmp_path / "quality.json", tmp_path / "RESULTS.md"
    argv = [
        "--images_dir",
        str(faces),
        "--cells",
        "dcgan64-h*-s0",
        "--steps",
        "2",
        "--batch_size",
        "4",
        "--track_every",
        "1",
        "--track_samples",
        "8",
        "--eval_samples",
        "12",
        "--inception_weights",
        str(not_weights),
        "--work_dir",
        str(tmp_path / "work"),
        "--grid_dir",
        str(tmp_path / "grids"),
        "--output_json",
        str(out_json),
        "--results_md",
        str(results_md),
    ]
    assert bq.main(argv) == 0
    printed = capsys.readouterr().out
    # the refused weights file: one notice, then SWD only
    assert "notice: FID/KID skipped, SWD only: fagan evaluate refused the Inception" in printed
    assert "SWD x1e3 vs held-out" in printed and "real vs real" in printed
    payload = json.loads(out_json.read_text())
    assert payload["metrics"] == ["swd"]
    assert payload["dataset"]["n_train"] + payload["dataset"]["n_heldout"] == 48
    assert [c["cell"] for c in payload["cells"]] == ["dcgan64-hinge-s0"]
    for cell in payload["cells"]:
        for real in ("heldout", "train"):
            swd = cell["metrics"][real]
            assert swd["swd"] > 0 and {"swd_64", "swd_32", "swd_16"} <= set(swd)
        assert [step for step, _ in cell["train"]["swd_track"]] == [1, 2]
        assert bq.late_rise(cell["train"]["swd_track"]) is None  # one point in the 2nd half
        assert cell["eval_samples"] == 12
        with Image.open(tmp_path / "grids" / f"{cell['cell']}.png") as grid:
            assert grid.size[0] > 6 * 64
    for real in ("heldout", "train"):
        assert payload["floors"][real]["swd"] > 0 and payload["floors"][real]["swd_floor"] > 0
    assert payload["summary"][0]["metrics"]["swd_heldout"]["n"] == 1
    section = results_md.read_text()
    assert "**Partial: 1 of the 12 cells** (dcgan64-hinge-s0)" in section
    assert "| dcgan64 | hinge | 0 |" in section and "| real vs real | (floor) |" in section

    # a rerun skips the finished cell and reports the same numbers
    first = {c["cell"]: c["metrics"] for c in payload["cells"]}
    assert bq.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == 1 and "training 2 steps" not in printed
    again = json.loads(out_json.read_text())
    assert {c["cell"]: c["metrics"] for c in again["cells"]} == first
