"""Tests for fagan.sample (grids, frames, animations, latents) and fagan.plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid as tv_make_grid

from fagan.errors import FaganError
from fagan.plots import plot_losses, read_loss_log, read_stats_jsonl
from fagan.sample import (
    ffmpeg_available,
    interpolation_path,
    latents_for_seeds,
    make_grid,
    make_progress_gif,
    sample_dir_frames,
    save_grid,
    save_individual,
    slerp,
    to_uint8,
    truncated_normal,
    write_gif,
    write_mp4,
    write_strip,
)


def _images(n: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 2 - 1


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(np.int16)


# ----------------------------------------------------------------------------- to_uint8


def test_to_uint8_exact_values_and_clamping():
    x = torch.tensor([-1.0, 0.0, 1.0, -3.0, 7.5, 0.5, -0.5, float("nan")])
    out = to_uint8(x)
    assert out.dtype == torch.uint8
    # 0.5 -> 191.25 -> 191; -0.5 -> 63.75 -> 64; 0 -> 127.5 -> 128 (half to even).
    assert out.tolist() == [0, 128, 255, 0, 255, 191, 64, 0]


def test_to_uint8_matches_formula_on_random_input():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 1.5
    expected = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(to_uint8(x), expected)


# ----------------------------------------------------------------------------- save_grid


def test_save_grid_layout_matches_torchvision(tmp_path):
    images = _images(64)
    path = save_grid(images, tmp_path / "nested" / "gen_1_1.png")
    assert path == tmp_path / "nested" / "gen_1_1.png"
    got = _read_png(path)
    # 8 x 8 grid of 32 px tiles with 2 px padding: 8 * 34 + 2 = 274.
    assert got.shape == (274, 274, 3)

    ref = tv_make_grid(images, nrow=8, padding=2, normalize=True, value_range=(-1, 1))
    assert tuple(ref.shape[1:]) == got.shape[:2]
    ref_bytes = (ref * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(got - ref_bytes.astype(np.int16)).max() <= 1
    # No temp files left behind.
    assert [p.name for p in path.parent.iterdir()] == ["gen_1_1.png"]


@pytest.mark.parametrize(("n", "c", "nrow", "padding", "pad_value"), [
    (1, 3, 8, 2, 0), (2, 3, 8, 2, 0), (7, 3, 3, 2, 0), (10, 1, 3, 2, 0), (5, 4, 2, 0, 0),
    (6, 3, 4, 3, 255), (9, 3, 1, 2, 7),
])
def test_make_grid_equals_torchvision(n, c, nrow, padding, pad_value):
    g = torch.Generator().manual_seed(n * 10 + c)
    images = torch.randint(0, 256, (n, c, 5, 7), generator=g, dtype=torch.uint8)
    ours = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    ref = tv_make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert torch.equal(ours, ref)


def test_save_grid_known_pixel_values(tmp_path):
    images = torch.full((4, 3, 4, 4), -1.0)
    images[0, 0] = 1.0  # first image pure red
    images[3] = 0.0  # last image mid grey
    got = _read_png(save_grid(images, tmp_path / "g.png"))
    assert got.shape == (2 * 6 + 2, 2 * 6 + 2, 3)  # nrow = int(sqrt(4)) = 2
    assert got[0, 0].tolist() == [0, 0, 0]  # padding
    assert got[2, 2].tolist() == [255, 0, 0]  # top-left pixel of image 0
    assert got[2 + 6, 2 + 6].tolist() == [128, 128, 128]  # image 3 (row 1, col 1)


def test_save_grid_default_nrow_non_square_and_grey(tmp_path):
    got = _read_png(save_grid(_images(10, c=1, h=8, w=8), tmp_path / "g.png"))
    # int(sqrt(10)) = 3 per row -> 4 rows.
    assert got.shape == (4 * 10 + 2, 3 * 10 + 2, 3)
    with pytest.raises(FaganError):
        save_grid(torch.zeros(2, 3, 4), tmp_path / "bad.png")


def test_write_strip_is_single_row(tmp_path):
    with Image.open(write_strip(_images(5, h=8, w=6), tmp_path / "s.png")) as image:
        assert image.size == (5 * 8 + 2, 8 + 4)


# ----------------------------------------------------------------------------- individual


def test_save_individual_names_and_values(tmp_path):
    images = _images(3, h=6, w=5)
    paths = save_individual(images, tmp_path / "out", start_index=7)
    assert [p.name for p in paths] == ["000007.png", "000008.png", "000009.png"]
    expected = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for path, exp in zip(paths, expected, strict=True):
        got = _read_png(path)
        assert got.shape == (6, 5, 3)
        np.testing.assert_array_equal(got, exp)
        back = torch.from_numpy(got).permute(2, 0, 1).float() / 127.5 - 1
        assert (back - images[paths.index(path)]).abs().max() <= 1 / 127.5 + 1e-6
    with pytest.raises(FaganError):
        save_individual(images, tmp_path, start_index=-1)


# ----------------------------------------------------------------------------- frames


def test_sample_dir_frames_numeric_order(tmp_path):
    names = ["gen_10_1.png", "gen_2_10.png", "gen_1_5.png", "gen_9_100.png", "gen_2_9.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    for other in ["loss.log", "gen_1_5.jpg", "gen_x_1.png", "real.png", "gen_3.png"]:
        (tmp_path / other).write_bytes(b"")
    (tmp_path / "gen_4_4.png").mkdir()  # a directory with a frame-like name is ignored
    got = [p.name for p in sample_dir_frames(tmp_path)]
    assert got == ["gen_1_5.png", "gen_2_9.png", "gen_2_10.png", "gen_9_100.png", "gen_10_1.png"]


def test_sample_dir_frames_errors(tmp_path):
    with pytest.raises(FaganError, match="no gen_"):
        sample_dir_frames(tmp_path)
    with pytest.raises(FaganError, match="not found"):
        sample_dir_frames(tmp_path / "missing")


def _distinct_frames(k: int, h: int = 20, w: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(k)]


def test_write_gif_frames_size_loop(tmp_path):
    path = write_gif(_distinct_frames(4), tmp_path / "a" / "x.gif", fps=5, loop=0)
    with Image.open(path) as image:
        assert image.n_frames == 4
        assert image.size == (30, 20)
        assert image.info["loop"] == 0
        assert image.info["duration"] == 200
    import imageio.v3 as iio

    assert iio.imread(path, index=None).shape[:3] == (4, 20, 30)


def test_write_gif_from_paths_and_errors(tmp_path):
    frames = _distinct_frames(2)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(frame).save(paths[-1])
    with Image.open(write_gif(paths, tmp_path / "p.gif", loop=3)) as image:
        assert image.n_frames == 2
        assert image.info["loop"] == 3
    with pytest.raises(FaganError, match="same size"):
        write_gif([frames[0], _distinct_frames(1, h=21)[0]], tmp_path / "bad.gif")
    with pytest.raises(FaganError):
        write_gif([], tmp_path / "empty.gif")
    with pytest.raises(FaganError):
        write_gif(frames, tmp_path / "f.gif", fps=0)
    assert not (tmp_path / "bad.gif").exists()


def test_make_progress_gif(tmp_path):
    sample_dir = tmp_path / "samples"
    for epoch, batch, seed in [(1, 10, 0), (1, 2, 1), (2, 1, 2)]:
        save_grid(_images(4, h=8, w=8, seed=seed), sample_dir / f"gen_{epoch}_{batch}.png")
    out = make_progress_gif(sample_dir, tmp_path / "progress.gif", fps=2)
    with Image.open(out) as image:
        assert image.n_frames == 3
        assert image.size == (2 * 10 + 2, 2 * 10 + 2)
    with pytest.raises(FaganError):
        make_progress_gif(sample_dir, tmp_path / "progress.png")


@pytest.mark.skipif(not ffmpeg_available(), reason="imageio-ffmpeg not installed")
def test_write_mp4(tmp_path):
    import imageio_ffmpeg

    # Odd sizes are padded to even ones for yuv420p.
    path = write_mp4(_distinct_frames(6, h=21, w=31), tmp_path / "v.mp4", fps=6)
    assert path is not None and path.stat().st_size > 0
    n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert n_frames == 6

    sample_dir = tmp_path / "samples"
    for i in range(3):
        save_grid(_images(4, h=8, w=8, seed=i), sample_dir / f"gen_1_{i}.png")
    out = make_progress_gif(sample_dir, tmp_path / "prog.mp4", fps=3)
    assert out == tmp_path / "prog.mp4" and out.stat().st_size > 0
    assert (tmp_path / "prog.gif").exists()


def test_write_mp4_without_ffmpeg_returns_none(tmp_path, monkeypatch):
    import fagan.sample as sample

    monkeypatch.setattr(sample, "ffmpeg_available", lambda: False)
    assert sample.write_mp4(_distinct_frames(2), tmp_path / "v.mp4") is None
    assert not (tmp_path / "v.mp4").exists()


# ----------------------------------------------------------------------------- latents


def test_truncated_normal_bounds_and_determinism():
    z = truncated_normal(500, 64, 0.5, torch.Generator().manual_seed(0))
    assert z.shape == (500, 64) and z.dtype == torch.float32
    assert z.abs().max() <= 0.5
    # Not degenerate: spread over the interval, mean near 0.
    assert z.abs().max() > 0.49 and abs(z.mean().item()) < 0.01
    z2 = truncated_normal(500, 64, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(z, z2)
    # Tiny truncation exercises the bounded fallback and still stays inside.
    tiny = truncated_normal(50, 16, 1e-3, torch.Generator().manual_seed(0))
    assert tiny.abs().max() <= 1e-3
    assert torch.equal(tiny, truncated_normal(50, 16, 1e-3, torch.Generator().manual_seed(0)))


def test_truncated_normal_none_is_randn_and_errors():
    z = truncated_normal(4, 8, None, torch.Generator().manual_seed(5))
    assert torch.equal(z, torch.randn(4, 8, generator=torch.Generator().manual_seed(5)))
    for bad in (0.0, -1.0):
        with pytest.raises(FaganError):
            truncated_normal(4, 8, bad, torch.Generator())


def test_latents_for_seeds_independent():
    a = latents_for_seeds([1, 3], 16)
    b = latents_for_seeds([3, 7], 16)
    assert a.shape == (2, 16)
    assert torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1])
    t = latents_for_seeds([3, 7], 16, truncation=0.7)
    assert t.abs().max() <= 0.7
    assert torch.equal(t[0], latents_for_seeds([3], 16, truncation=0.7)[0])
    assert torch.equal(a[1], torch.randn(1, 16, generator=torch.Generator().manual_seed(3))[0])


# ----------------------------------------------------------------------------- slerp


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 32, generator=g)
    b = torch.randn(10, 32, generator=g)
    assert torch.equal(slerp(a, b, 0.0), a)
    assert torch.equal(slerp(a, b, 1.0), b)
    ua, ub = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    mid = slerp(ua, ub, 0.5)
    torch.testing.assert_close(mid.norm(dim=1), torch.ones(10))
    # Midpoint is equidistant (in angle) from both ends.
    torch.testing.assert_close((mid * ua).sum(1), (mid * ub).sum(1))
    # Parallel vectors fall back to lerp without NaNs.
    par = slerp(ua, ua * 2, 0.5)
    torch.testing.assert_close(par, ua * 1.5)


def test_interpolation_path_shape_and_keys():
    keys = latents_for_seeds([1, 2, 3], 8)
    path = interpolation_path(keys, 5)
    assert path.shape == (11, 8)
    for k in range(3):
        torch.testing.assert_close(path[5 * k], keys[k], rtol=0, atol=1e-6)
    looped = interpolation_path(keys, 4, loop=True)
    assert looped.shape == (12, 8)
    for k in range(3):
        torch.testing.assert_close(looped[4 * k], keys[k], rtol=0, atol=1e-6)
    # Consecutive points move smoothly (no jumps larger than a segment's chord / 2).
    steps = (looped - torch.roll(looped, -1, 0)).norm(dim=1)
    assert steps.max() < (keys - torch.roll(keys, -1, 0)).norm(dim=1).max() / 2
    with pytest.raises(FaganError):
        interpolation_path(keys[:1], 4)
    with pytest.raises(FaganError):
        interpolation_path(keys, 0)


# ----------------------------------------------------------------------------- plots


def test_read_loss_log_truncated_and_blank_lines(tmp_path):
    log = tmp_path / "loss.log"
    log.write_text("1.5\t0.5\n\n1.25\t0.75\n1.0\t1.\n0.9\t")
    d, g = read_loss_log(log)
    assert d == [1.5, 1.25, 1.0]
    assert g == [0.5, 0.75, 1.0]


def test_read_loss_log_errors(tmp_path):
    log = tmp_path / "loss.log"
    log.write_text("1.5\t0.5\nabc\t0.1\n1.0\t1.0\n")
    with pytest.raises(FaganError, match=r"loss\.log, line 2"):
        read_loss_log(log)
    log.write_text("1.5\t0.5\n0.9\n")  # complete (newline-ended) but malformed last line
    with pytest.raises(FaganError, match="line 2"):
        read_loss_log(log)
    log.write_text("\n\n")
    with pytest.raises(FaganError, match="no loss entries"):
        read_loss_log(log)
    with pytest.raises(FaganError, match="not found"):
        read_loss_log(tmp_path / "missing.log")


def test_read_stats_jsonl(tmp_path):
    stats = tmp_path / "stats.jsonl"
    stats.write_text('{"step": 1, "d": 0.5}\n\n{"step": 2, "d": 0.4}\n{"step": 3, "d"')
    assert read_stats_jsonl(stats) == [{"step": 1, "d": 0.5}, {"step": 2, "d": 0.4}]
    stats.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(FaganError, match="line 2"):
        read_stats_jsonl(stats)
    stats.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(FaganError, match="line 2"):
        read_stats_jsonl(stats)


def test_plot_losses_writes_png(tmp_path):
    log = tmp_path / "loss.log"
    log.write_text("".join(f"{2 / (i + 1)}\t{math.sin(i)}\n" for i in range(50)) + "0.1\t0.")
    out = plot_losses(log, tmp_path / "plots" / "loss.png")
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size[0] > 0 and image.size[1] > 0
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]
    svg = plot_losses(log, tmp_path / "loss.svg")
    assert svg.read_text().lstrip().startswith("<?xml")
    with pytest.raises(FaganError, match="cannot write a plot"):
        plot_losses(log, tmp_path / "loss.xyz")


def test_evenly_spaced_keeps_first_and_last_and_caps_count() -> None:
    from fagan.sample import evenly_spaced

    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced([1, 2, 3], 5) == [1, 2, 3]
    picked = evenly_spaced(list(range(300)), 120)
    assert len(picked) == 120 and picked[0] == 0 and picked[-1] == 299
    assert picked == sorted(set(picked))
    assert evenly_spaced(list(range(5)), 1) == [4]


def test_written_images_and_plots_get_the_usual_permissions(tmp_path) -> None:
    import os
    import stat

    from fagan.plots import plot_loss_curves
    from fagan.sample import save_grid

    mask = os.umask(0o022)
    try:
        grid = save_grid(torch.zeros(4, 3, 8, 8), tmp_path / "grid.png")
        plot = plot_loss_curves([1.0, 0.5], [0.2, 0.3], tmp_path / "loss.png")
    finally:
        os.umask(mask)
    for path in (grid, plot):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_gif_frames_share_a_palette_so_unchanged_pixels_do_not_flicker(tmp_path) -> None:
    from PIL import ImageSequence

    from fagan.sample import write_gif

    y, x = np.mgrid[0:48, 0:48]
    base = np.stack([x * 5, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)  # many colours
    changed = base.copy()
    changed[:8, :8] = [255, 0, 0]
    path = write_gif([base, changed, base], tmp_path / "a.gif", fps=5)
    with Image.open(path) as gif:
        decoded = [np.asarray(f.convert("RGB"), dtype=np.int16)
                   for f in ImageSequence.Iterator(gif)]
    assert len(decoded) == 3
    outside = np.ones((48, 48), dtype=bool)
    outside[:8, :8] = False
    assert np.array_equal(decoded[0][outside], decoded[1][outside])
    assert np.abs(decoded[0] - base.astype(np.int16)).mean() < 4
    assert np.abs(decoded[1][:8, :8] - np.array([255, 0, 0])).max() <= 8
