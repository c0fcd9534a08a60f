"""Tests for fagan.animation: sample-grid frames, GIFs, MP4s and the progress animation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

import fagan.animation as animation
from fagan.animation import (
    ffmpeg_available,
    make_progress_gif,
    sample_dir_frames,
    write_gif,
    write_mp4,
)
from fagan.errors import FaganError
from fagan.sample import save_grid


def _images(n: int, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


def _distinct_frames(k: int, h: int = 20, w: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(k)]


# ----------------------------------------------------------------------------- frames


def test_sample_dir_frames_numeric_order(tmp_path: Path) -> None:
    names = ["gen_10_1.png", "gen_2_10.png", "gen_1_5.png", "gen_9_100.png", "gen_2_9.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    for other in ["loss.log", "gen_1_5.jpg", "gen_x_1.png", "real.png", "gen_3.png"]:
        (tmp_path / other).write_bytes(b"")
    (tmp_path / "gen_4_4.png").mkdir()  # a directory with a frame-like name is ignored
    got = [p.name for p in sample_dir_frames(tmp_path)]
    assert got == ["gen_1_5.png", "gen_2_9.png", "gen_2_10.png", "gen_9_100.png", "gen_10_1.png"]


@pytest.mark.parametrize(("subdir", "message"), [("", "no gen_"), ("missing", "not found")])
def test_sample_dir_frames_errors(tmp_path: Path, subdir: str, message: str) -> None:
    with pytest.raises(FaganError, match=message):
        sample_dir_frames(tmp_path / subdir)


# ----------------------------------------------------------------------------- GIF


def test_write_gif_frames_size_loop(tmp_path: Path) -> None:
    path = write_gif(_distinct_frames(4), tmp_path / "a" / "x.gif", fps=5, loop=0)
    with Image.open(path) as image:
        assert image.n_frames == 4
        assert image.size == (30, 20)
        assert image.info["loop"] == 0
        assert image.info["duration"] == 200
    import imageio.v3 as iio

    assert iio.imread(path, index=None).shape[:3] == (4, 20, 30)


def test_write_gif_from_paths(tmp_path: Path) -> None:
    paths = []
    for i, frame in enumerate(_distinct_frames(2)):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(frame).save(paths[-1])
    with Image.open(write_gif(paths, tmp_path / "p.gif", loop=3)) as image:
        assert image.n_frames == 2
        assert image.info["loop"] == 3


def test_write_gif_takes_grey_frames_as_rgb(tmp_path: Path) -> None:
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    with Image.open(write_gif([grey, grey[:, :, None]], tmp_path / "g.gif")) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert rgb.shape == (12, 10, 3)
    assert np.abs(rgb - grey[:, :, None]).max() <= 8


@pytest.mark.parametrize(
    ("frames", "kwargs", "message"),
    [
        ("mismatched", {}, "same size"),
        ("none", {}, "no frames"),
        ("two", {"fps": 0}, "frames per second"),
        ("two", {"fps": float("nan")}, "frames per second"),
        ("two", {"loop": -1}, "loop count"),
        ("float", {}, "must be uint8"),
    ],
)
def test_write_gif_rejects_bad_input(
    tmp_path: Path, frames: str, kwargs: dict, message: str
) -> None:
    given = {
        "mismatched": [_distinct_frames(1)[0], _distinct_frames(1, h=21)[0]],
        "none": [],
        "two": _distinct_frames(2),
        "float": [np.zeros((4, 4, 3), dtype=np.float32)],
    }[frames]
    with pytest.raises(FaganError, match=message):
        write_gif(given, tmp_path / "bad.gif", **kwargs)
    assert not (tmp_path / "bad.gif").exists()


def test_write_gif_names_an_unreadable_frame_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(FaganError, match="cannot read frame image .*broken.png"):
        write_gif([tmp_path / "broken.png"], tmp_path / "x.gif")


def test_gif_frames_share_a_palette_so_unchanged_pixels_do_not_flicker(tmp_path: Path) -> None:
    y, x = np.mgrid[0:48, 0:48]
    base = np.stack([x * 5, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)  # many colours
    changed = base.copy()
    changed[:8, :8] = [255, 0, 0]
    path = write_gif([base, changed, base], tmp_path / "a.gif", fps=5)
    with Image.open(path) as gif:
        decoded = [
            np.asarray(f.convert("RGB"), dtype=np.int16) for f in ImageSequence.Iterator(gif)
        ]
    assert len(decoded) == 3
    outside = np.ones((48, 48), dtype=bool)
    outside[:8, :8] = False
    assert np.array_equal(decoded[0][outside], decoded[1][outside])
    assert np.abs(decoded[0] - base.astype(np.int16)).mean() < 4
    assert np.abs(decoded[1][:8, :8] - np.array([255, 0, 0])).max() <= 8


# ----------------------------------------------------------------------------- progress


def test_make_progress_gif(tmp_path: Path) -> None:
    sample_dir = tmp_path / "samples"
    for epoch, batch, seed in [(1, 10, 0), (1, 2, 1), (2, 1, 2)]:
        save_grid(_images(4, seed=seed), sample_dir / f"gen_{epoch}_{batch}.png")
    out = make_progress_gif(sample_dir, tmp_path / "progress.gif", fps=2)
    with Image.open(out) as image:
        assert image.n_frames == 3
        assert image.size == (2 * 10 + 2, 2 * 10 + 2)
    with pytest.raises(FaganError, match=r"\.gif or \.mp4"):
        make_progress_gif(sample_dir, tmp_path / "progress.png")


def test_make_progress_gif_keeps_at_most_max_frames(tmp_path: Path) -> None:
    sample_dir = tmp_path / "samples"
    for batch in range(7):
        save_grid(_images(1, seed=batch), sample_dir / f"gen_1_{batch}.png")
    with Image.open(make_progress_gif(sample_dir, tmp_path / "p.gif", max_frames=3)) as image:
        first = np.asarray(image.convert("RGB"))
        assert image.n_frames == 3
    with Image.open(sample_dir / "gen_1_0.png") as grid:
        assert np.abs(first.astype(np.int16) - np.asarray(grid.convert("RGB"))).mean() < 8


# ----------------------------------------------------------------------------- MP4


@pytest.mark.skipif(not ffmpeg_available(), reason="imageio-ffmpeg not installed")
def test_write_mp4(tmp_path: Path) -> None:
    import imageio_ffmpeg

    # Odd sizes are padded to even ones for yuv420p.
    path = write_mp4(_distinct_frames(6, h=21, w=31), tmp_path / "v.mp4", fps=6)
    assert path is not None and path.stat().st_size > 0
    n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert n_frames == 6

    sample_dir = tmp_path / "samples"
    for i in range(3):
        save_grid(_images(4, seed=i), sample_dir / f"gen_1_{i}.png")
    out = make_progress_gif(sample_dir, tmp_path / "prog.mp4", fps=3)
    assert out == tmp_path / "prog.mp4" and out.stat().st_size > 0
    assert (tmp_path / "prog.gif").exists()


def test_write_mp4_without_ffmpeg_returns_none(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(animation, "ffmpeg_available", lambda: False)
    assert write_mp4(_distinct_frames(2), tmp_path / "v.mp4") is None
    assert not (tmp_path / "v.mp4").exists()


def test_progress_mp4_without_ffmpeg_warns_and_keeps_the_gif(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(animation, "ffmpeg_available", lambda: False)
    sample_dir = tmp_path / "samples"
    save_grid(_images(4), sample_dir / "gen_1_1.png")
    with pytest.warns(UserWarning, match="MP4 skipped"):
        out = make_progress_gif(sample_dir, tmp_path / "prog.mp4")
    assert out == tmp_path / "prog.gif" and out.is_file()
    assert not (tmp_path / "prog.mp4").exists()
