"""Tests for fagan.sample: bytes from generator output, grids, strips and single PNGs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid as tv_make_grid

from fagan.errors import FaganError
from fagan.sample import (
    evenly_spaced,
    grid_uint8,
    make_grid,
    save_grid,
    save_individual,
    to_uint8,
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


def test_to_uint8_exact_values_and_clamping() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0, -3.0, 7.5, 0.5, -0.5, float("nan")])
    out = to_uint8(x)
    assert out.dtype == torch.uint8
    # 0.5 -> 191.25 -> 191; -0.5 -> 63.75 -> 64; 0 -> 127.5 -> 128 (half to even).
    assert out.tolist() == [0, 128, 255, 0, 255, 191, 64, 0]


def test_to_uint8_matches_formula_on_random_input() -> None:
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 1.5
    expected = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(to_uint8(x), expected)


# ----------------------------------------------------------------------------- grids


def test_save_grid_layout_matches_torchvision(tmp_path: Path) -> None:
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


@pytest.mark.parametrize(
    ("n", "c", "nrow", "padding", "pad_value"),
    [
        (1, 3, 8, 2, 0),
        (2, 3, 8, 2, 0),
        (7, 3, 3, 2, 0),
        (10, 1, 3, 2, 0),
        (5, 4, 2, 0, 0),
        (6, 3, 4, 3, 255),
        (9, 3, 1, 2, 7),
    ],
)
def test_make_grid_equals_torchvision(
    n: int, c: int, nrow: int, padding: int, pad_value: int
) -> None:
    g = torch.Generator().manual_seed(n * 10 + c)
    images = torch.randint(0, 256, (n, c, 5, 7), generator=g, dtype=torch.uint8)
    ours = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    ref = tv_make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert torch.equal(ours, ref)


def test_save_grid_known_pixel_values(tmp_path: Path) -> None:
    images = torch.full((4, 3, 4, 4), -1.0)
    images[0, 0] = 1.0  # first image pure red
    images[3] = 0.0  # last image mid grey
    got = _read_png(save_grid(images, tmp_path / "g.png"))
    assert got.shape == (2 * 6 + 2, 2 * 6 + 2, 3)  # nrow = int(sqrt(4)) = 2
    assert got[0, 0].tolist() == [0, 0, 0]  # padding
    assert got[2, 2].tolist() == [255, 0, 0]  # top-left pixel of image 0
    assert got[2 + 6, 2 + 6].tolist() == [128, 128, 128]  # image 3 (row 1, col 1)


def test_save_grid_default_nrow_non_square_and_grey(tmp_path: Path) -> None:
    got = _read_png(save_grid(_images(10, c=1, h=8, w=8), tmp_path / "g.png"))
    # int(sqrt(10)) = 3 per row -> 4 rows.
    assert got.shape == (4 * 10 + 2, 3 * 10 + 2, 3)


def test_grid_uint8_is_the_saved_grid(tmp_path: Path) -> None:
    images = _images(6, h=5, w=7)
    grid = grid_uint8(images, nrow=4)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 * 7 + 2, 4 * 9 + 2)
    saved = _read_png(save_grid(images, tmp_path / "g.png", nrow=4))
    np.testing.assert_array_equal(saved, grid.permute(1, 2, 0).numpy())


@pytest.mark.parametrize(
    ("images", "nrow", "message"),
    [
        (torch.zeros(2, 3, 4), None, "1, 3 or 4 image channels"),
        (torch.zeros(2, 3), None, r"shaped \(N, C, H, W\)"),
        (torch.zeros(0, 3, 4, 4), None, "batch is empty"),
        (torch.zeros(4, 3, 4, 4), 0, "images per row"),
        ([[0.0]], None, "expected a tensor"),
    ],
)
def test_save_grid_rejects_bad_input(
    tmp_path: Path, images: object, nrow: int | None, message: str
) -> None:
    with pytest.raises(FaganError, match=message):
        save_grid(images, tmp_path / "bad.png", nrow=nrow)  # type: ignore[arg-type]
    assert not (tmp_path / "bad.png").exists()


def test_write_strip_is_single_row(tmp_path: Path) -> None:
    with Image.open(write_strip(_images(5, h=8, w=6), tmp_path / "s.png")) as image:
        assert image.size == (5 * 8 + 2, 8 + 4)


# ----------------------------------------------------------------------------- individual


def test_save_individual_names_and_values(tmp_path: Path) -> None:
    images = _images(3, h=6, w=5)
    paths = save_individual(images, tmp_path / "out", start_index=7)
    assert [p.name for p in paths] == ["000007.png", "000008.png", "000009.png"]
    expected = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for path, exp, image in zip(paths, expected, images, strict=True):
        got = _read_png(path)
        assert got.shape == (6, 5, 3)
        np.testing.assert_array_equal(got, exp)
        back = torch.from_numpy(got).permute(2, 0, 1).float() / 127.5 - 1
        assert (back - image).abs().max() <= 1 / 127.5 + 1e-6


def test_save_individual_rejects_a_negative_start(tmp_path: Path) -> None:
    with pytest.raises(FaganError, match="start index"):
        save_individual(_images(1), tmp_path, start_index=-1)


def test_written_images_get_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        grid = save_grid(torch.zeros(4, 3, 8, 8), tmp_path / "grid.png")
        single = save_individual(torch.zeros(1, 3, 8, 8), tmp_path / "one")[0]
    finally:
        os.umask(mask)
    for path in (grid, single):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert not [p for p in tmp_path.rglob(".*")]


# ----------------------------------------------------------------------------- evenly_spaced


@pytest.mark.parametrize(
    ("n", "count", "expected"),
    [
        (10, 4, [0, 3, 6, 9]),
        (3, 5, [0, 1, 2]),
        (5, 1, [4]),
        (0, 3, []),
        (4, 2, [0, 3]),
    ],
)
def test_evenly_spaced_small_cases(n: int, count: int, expected: list[int]) -> None:
    assert evenly_spaced(list(range(n)), count) == expected


def test_evenly_spaced_keeps_first_and_last_and_caps_count() -> None:
    picked = evenly_spaced(list(range(300)), 120)
    assert len(picked) == 120 and picked[0] == 0 and picked[-1] == 299
    assert picked == sorted(set(picked))
