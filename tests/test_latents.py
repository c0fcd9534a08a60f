"""Tests for fagan.latents: seeded and truncated latents, slerp, interpolation paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fagan.errors import FaganError
from fagan.latents import (
    interpolation_path,
    latents_for_seeds,
    seeded_generator,
    slerp,
    truncated_normal,
)


def test_truncated_normal_bounds_and_determinism() -> None:
    z = truncated_normal(500, 64, 0.5, torch.Generator().manual_seed(0))
    assert z.shape == (500, 64) and z.dtype == torch.float32
    assert z.abs().max() <= 0.5
    # Not degenerate: spread over the interval, mean near 0.
    assert z.abs().max() > 0.49 and abs(z.mean().item()) < 0.01
    z2 = truncated_normal(500, 64, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(z, z2)


def test_truncated_normal_tiny_truncation_uses_the_fallback_and_stays_inside() -> None:
    tiny = truncated_normal(50, 16, 1e-3, torch.Generator().manual_seed(0))
    assert tiny.abs().max() <= 1e-3
    assert torch.equal(tiny, truncated_normal(50, 16, 1e-3, torch.Generator().manual_seed(0)))


def test_truncated_normal_none_is_randn() -> None:
    z = truncated_normal(4, 8, None, torch.Generator().manual_seed(5))
    assert torch.equal(z, torch.randn(4, 8, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("truncation", [0.0, -1.0, float("inf"), float("nan")])
def test_truncated_normal_rejects_a_bad_truncation(truncation: float) -> None:
    with pytest.raises(FaganError, match="truncation must be a positive number"):
        truncated_normal(4, 8, truncation, torch.Generator())


@pytest.mark.parametrize(
    ("n", "dim", "message"),
    [
        (-1, 8, "number of latents"),
        (4, 0, "latent size"),
    ],
)
def test_truncated_normal_rejects_a_bad_shape(n: int, dim: int, message: str) -> None:
    with pytest.raises(FaganError, match=message):
        truncated_normal(n, dim, None, torch.Generator())


def test_latents_for_seeds_independent() -> None:
    a = latents_for_seeds([1, 3], 16)
    b = latents_for_seeds([3, 7], 16)
    assert a.shape == (2, 16)
    assert torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1])
    t = latents_for_seeds([3, 7], 16, truncation=0.7)
    assert t.abs().max() <= 0.7
    assert torch.equal(t[0], latents_for_seeds([3], 16, truncation=0.7)[0])
    assert torch.equal(a[1], torch.randn(1, 16, generator=torch.Generator().manual_seed(3))[0])
    assert latents_for_seeds([], 16).shape == (0, 16)


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        (1.5, "seeds must be integers"),
        (True, "seeds must be integers"),
        ("3", "seeds must be integers"),
        (2**64, "out of range"),
        (-(2**63) - 1, "out of range"),
    ],
)
def test_latents_for_seeds_rejects_bad_seeds(seed: object, message: str) -> None:
    with pytest.raises(FaganError, match=message):
        latents_for_seeds([0, seed], 8)  # type: ignore[list-item]


@pytest.mark.parametrize("seed", [0, 2**64 - 1, -(2**63), np.int64(7)])
def test_seeded_generator_accepts_pytorchs_whole_range(seed: int) -> None:
    expected = torch.Generator().manual_seed(int(seed)).initial_seed()
    assert seeded_generator(seed).initial_seed() == expected


def test_slerp_endpoints_and_norm() -> None:
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


def test_slerp_of_parallel_vectors_is_linear_without_nans() -> None:
    a = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator()), dim=1)
    torch.testing.assert_close(slerp(a, a * 2, 0.5), a * 1.5)
    torch.testing.assert_close(slerp(torch.zeros(4, 8), a, 0.25), a * 0.25)


def test_interpolation_path_passes_through_the_keys() -> None:
    keys = latents_for_seeds([1, 2, 3], 8)
    path = interpolation_path(keys, 5)
    assert path.shape == (11, 8)
    for k in range(3):
        torch.testing.assert_close(path[5 * k], keys[k], rtol=0, atol=1e-6)


def test_interpolation_path_loop_cycles_smoothly() -> None:
    keys = latents_for_seeds([1, 2, 3], 8)
    looped = interpolation_path(keys, 4, loop=True)
    assert looped.shape == (12, 8)
    for k in range(3):
        torch.testing.assert_close(looped[4 * k], keys[k], rtol=0, atol=1e-6)
    # Consecutive points move smoothly (no jumps larger than a segment's chord / 2).
    steps = (looped - torch.roll(looped, -1, 0)).norm(dim=1)
    assert steps.max() < (keys - torch.roll(keys, -1, 0)).norm(dim=1).max() / 2


@pytest.mark.parametrize(
    ("keys", "steps", "message"),
    [
        (torch.zeros(1, 8), 4, "at least two latents"),
        (torch.zeros(3, 8), 0, "steps per segment"),
        (torch.zeros(3, 8, 1), 4, r"shaped \(K, D\)"),
    ],
)
def test_interpolation_path_rejects_bad_input(keys: torch.Tensor, steps: int, message: str) -> None:
    with pytest.raises(FaganError, match=message):
        interpolation_path(keys, steps)
