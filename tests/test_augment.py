"""Tests for fagan.augment: DiffAugment and random horizontal flips."""

from __future__ import annotations

import pytest
import torch

from fagan.augment import POLICIES, diff_augment, parse_policy, random_hflip, random_hflip_
from fagan.errors import FaganError


def _batch(b: int = 6, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g) * 2 - 1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", ["color,translation,cutout", "color", "translation", "cutout"])
def test_same_seed_same_output(policy: str) -> None:
    x = _batch()
    a = diff_augment(x, policy, generator=_gen(1))
    b = diff_augment(x, policy, generator=_gen(1))
    c = diff_augment(x, policy, generator=_gen(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_randomness_comes_only_from_the_generator() -> None:
    x = _batch()
    torch.manual_seed(0)
    a = diff_augment(x, generator=_gen(3))
    torch.manual_seed(99)
    b = diff_augment(x, generator=_gen(3))
    assert torch.equal(a, b)
    # and the global generator is not advanced
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    diff_augment(x, generator=_gen(3))
    random_hflip(x, _gen(3))
    assert torch.equal(torch.rand(2), expected)


def test_generator_state_carries_on_between_calls() -> None:
    x = _batch()
    g = _gen(4)
    first = diff_augment(x, generator=g)
    second = diff_augment(x, generator=g)
    assert not torch.equal(first, second)
    g2 = _gen(4)
    diff_augment(x, generator=g2)
    assert torch.equal(diff_augment(x, generator=g2), second)


def test_gradients_flow() -> None:
    x = _batch().requires_grad_(True)
    y = random_hflip(diff_augment(x, generator=_gen(0)), _gen(1))
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_cutout_zeroes_one_box_of_half_the_side() -> None:
    b, h, w = 64, 16, 12
    x = torch.ones(b, 3, h, w)
    y = diff_augment(x, "cutout", generator=_gen(0))
    assert torch.equal(y[:, 0:1].expand_as(y), y)  # the same mask on every channel
    zero = y[:, 0] == 0
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    full = 0
    for mask in zero:
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        assert len(rows) > 0 and len(cols) > 0  # the box always overlaps the image
        # a single solid rectangle ...
        assert int(mask.sum()) == len(rows) * len(cols)
        assert rows.tolist() == list(range(int(rows[0]), int(rows[-1]) + 1))
        assert cols.tolist() == list(range(int(cols[0]), int(cols[-1]) + 1))
        # ... of at most half the side, smaller only where it is cut by the border
        assert len(rows) <= h // 2 and len(cols) <= w // 2
        if len(rows) < h // 2:
            assert rows[0] == 0 or rows[-1] == h - 1
        if len(cols) < w // 2:
            assert cols[0] == 0 or cols[-1] == w - 1
        full += int(mask.sum()) == (h // 2) * (w // 2)
    # a centre is uniform over [0, side], so about (9/17) * (7/13) of boxes lie wholly inside
    assert b // 8 < full < b // 2
    assert 0.12 < zero.float().mean() <= 0.25


def test_translation_shifts_whole_images_and_fills_with_zero() -> None:
    b, h, w = 32, 16, 16
    x = _batch(b, 3, h, w) * 0.5 + 0.6  # strictly positive, so the zero fill is visible
    y = diff_augment(x, "translation", generator=_gen(0))
    shifts = set()
    for i in range(b):
        match = None
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expected = torch.zeros(3, h, w)
                src = x[i, :, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
                expected[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)] = src
                if torch.equal(y[i], expected):
                    match = (dy, dx)
        assert match is not None, f"sample {i} is not a shift of at most 2 pixels"
        shifts.add(match)
    assert len(shifts) > 5  # shifts vary over the batch


def test_color_is_per_sample_and_keeps_shape() -> None:
    x = _batch(8)
    y = diff_augment(x, "color", generator=_gen(0))
    assert y.shape == x.shape
    # a constant image stays constant under brightness/saturation/contrast (per channel)
    flat = torch.full((4, 3, 8, 8), 0.25)
    z = diff_augment(flat, "color", generator=_gen(0))
    assert torch.allclose(z, z[:, :, :1, :1].expand_as(z))
    assert not torch.allclose(z[0], z[1])


def test_policy_parsing() -> None:
    assert parse_policy("color, translation ,cutout") == ("color", "translation", "cutout")
    assert parse_policy("") == ()
    x = _batch()
    assert torch.equal(diff_augment(x, "", generator=_gen(0)), x)
    with pytest.raises(FaganError, match="valid ones are: color, translation, cutout"):
        diff_augment(x, "color,zoom", generator=_gen(0))
    assert POLICIES == ("color", "translation", "cutout")
    with pytest.raises(ValueError):
        diff_augment(x[0], generator=_gen(0))


def test_half_precision_and_non_square() -> None:
    x = _batch(4, 3, 8, 20).to(torch.bfloat16)
    y = diff_augment(x, generator=_gen(0))
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


def test_random_hflip() -> None:
    x = _batch(64)
    y = random_hflip(x, _gen(0))
    assert torch.equal(y, random_hflip(x, _gen(0)))
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_random_hflip_in_place_equals_the_copying_flip(memory_format: torch.memory_format) -> None:
    x = torch.randn(16, 3, 8, 8).contiguous(memory_format=memory_format)
    expected = random_hflip(x, _gen(5))
    y = x.clone()
    out = random_hflip_(y, _gen(5))
    assert out is y and torch.equal(y, expected)
    assert not torch.equal(expected, x)  # some rows flipped
    assert any(torch.equal(expected[i], x[i]) for i in range(16))  # and some not
