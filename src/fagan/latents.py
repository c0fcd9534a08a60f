"""Latent vectors: seeded draws, the truncation trick, and spherical interpolation.

Every draw happens on the CPU with an explicit :class:`torch.Generator`, so the same
seed gives the same latent on every machine: :func:`truncated_normal` draws a batch from
one generator, :func:`latents_for_seeds` one latent per seed (each from its own
generator), and :func:`slerp` / :func:`interpolation_path` walk between latents along
great circles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from fagan.errors import FaganError

__all__ = [
    "interpolation_path",
    "latents_for_seeds",
    "seeded_generator",
    "slerp",
    "truncated_normal",
]

#: Rejection rounds in :func:`truncated_normal` before the inverse-CDF fallback.
_MAX_REJECTION_ROUNDS = 64

#: Cosine above which :func:`slerp` treats two vectors as parallel and interpolates linearly.
_PARALLEL_DOT = 0.9995


def _check_latent_shape(n: int, dim: int) -> None:
    """Raise :class:`FaganError` unless ``n >= 0`` latents of size ``dim >= 1`` are asked for."""
    if n < 0:
        raise FaganError(f"number of latents must be 0 or more, got {n}")
    if dim < 1:
        raise FaganError(f"latent size must be at least 1, got {dim}")


def truncated_normal(
    n: int, dim: int, truncation: float | None, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``(n, dim)`` standard normal latents, optionally truncated to ``[-t, t]``.

    With ``truncation=None`` this is exactly ``torch.randn(n, dim, generator=generator)``.
    With ``t > 0`` every entry outside ``[-t, t]`` is redrawn from the standard normal
    until it falls inside, which samples the exact truncated normal (the "truncation
    trick"). After a bounded number of rounds (only reached for very small ``t``) the
    remaining entries are drawn by inverse CDF from the same generator, which is the same
    distribution. The result is deterministic given the generator's state.

    Args:
        n: Number of latents.
        dim: Latent size.
        truncation: Truncation threshold ``t > 0``, or ``None`` for no truncation.
        generator: CPU generator that supplies all randomness.

    Returns:
        A float32 CPU tensor shaped ``(n, dim)``.

    Raises:
        FaganError: If ``truncation`` is not positive, or ``n``/``dim`` are invalid.
    """
    _check_latent_shape(n, dim)
    z = torch.randn(n, dim, generator=generator)
    if truncation is None:
        return z
    t = float(truncation)
    if not (t > 0 and math.isfinite(t)):
        raise FaganError(f"truncation must be a positive number, got {truncation!r}")
    flat = z.view(-1)
    outside = (flat.abs() > t).nonzero().squeeze(1)
    for _ in range(_MAX_REJECTION_ROUNDS):
        if outside.numel() == 0:
            return z
        flat[outside] = torch.randn(outside.numel(), generator=generator)
        outside = outside[flat[outside].abs() > t]
    if outside.numel():
        # Inverse CDF on [Phi(-t), Phi(t)], in float64 for accuracy in the tails.
        lo = torch.special.ndtr(torch.tensor(-t, dtype=torch.float64))
        u = torch.rand(outside.numel(), generator=generator, dtype=torch.float64)
        draw = torch.special.ndtri(lo + u * (1.0 - 2.0 * lo))
        flat[outside] = draw.clamp(-t, t).to(flat.dtype)
    return z


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded with ``seed``.

    Raises:
        FaganError: If ``seed`` is not an integer or lies outside the range PyTorch
            accepts (``-2**63`` to ``2**64 - 1``).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise FaganError(f"seeds must be integers, got {seed!r}")
    generator = torch.Generator(device="cpu")
    try:
        return generator.manual_seed(int(seed))
    except (RuntimeError, OverflowError, ValueError):
        raise FaganError(
            f"seed {seed} is out of range (PyTorch accepts -2**63 to 2**64 - 1)"
        ) from None


def latents_for_seeds(
    seeds: Sequence[int], dim: int, truncation: float | None = None
) -> torch.Tensor:
    """Draw one latent per seed, each from its own ``torch.Generator`` seeded with it.

    A seed therefore always gives the same latent (and so the same image from a given
    generator), whatever other seeds it is drawn with.

    Args:
        seeds: Integer seeds, one per latent.
        dim: Latent size.
        truncation: Optional truncation threshold, see :func:`truncated_normal`.

    Returns:
        A float32 CPU tensor shaped ``(len(seeds), dim)``.

    Raises:
        FaganError: If a seed is not an integer PyTorch accepts, or for invalid
            ``dim``/``truncation``.
    """
    _check_latent_shape(len(seeds), dim)
    rows = [truncated_normal(1, dim, truncation, seeded_generator(seed)) for seed in seeds]
    if not rows:
        return torch.empty(0, dim)
    return torch.cat(rows, dim=0)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherically interpolate between (batches of) vectors along the last dimension.

    Uses the angle ``omega`` between the directions of ``a`` and ``b`` and returns
    ``sin((1 - t) omega) / sin(omega) * a + sin(t omega) / sin(omega) * b``, which for unit
    vectors stays on the unit sphere. Where the vectors are nearly parallel (cosine above
    0.9995) or either is zero it falls back to linear interpolation; nearly opposite
    vectors have no unique great circle and are also interpolated linearly. ``t = 0``
    returns ``a`` and ``t = 1`` returns ``b`` exactly.

    Args:
        a: Tensor shaped ``(..., D)``.
        b: Tensor broadcastable with ``a``.
        t: Interpolation weight(s), a float or a tensor broadcastable with ``a[..., :1]``
            (e.g. shape ``(N, 1)`` for one weight per row).

    Returns:
        The interpolated vectors, shaped like ``a`` and ``b`` broadcast together.
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a = a.to(dtype)
    b = b.to(dtype)
    t = torch.as_tensor(t, dtype=dtype, device=a.device)
    a_norm = a.norm(dim=-1, keepdim=True)
    b_norm = b.norm(dim=-1, keepdim=True)
    eps = torch.finfo(dtype).tiny
    cos = ((a / a_norm.clamp_min(eps)) * (b / b_norm.clamp_min(eps))).sum(-1, keepdim=True)
    cos = cos.clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin_omega = torch.sin(omega)
    degenerate = (cos.abs() > _PARALLEL_DOT) | (a_norm == 0) | (b_norm == 0)
    safe_sin = torch.where(degenerate, torch.ones_like(sin_omega), sin_omega)
    w_a = torch.where(degenerate, 1.0 - t, torch.sin((1.0 - t) * omega) / safe_sin)
    w_b = torch.where(degenerate, t, torch.sin(t * omega) / safe_sin)
    out = w_a * a + w_b * b
    # Make the endpoints exact even where a weight is off by rounding.
    out = torch.where(t == 0, a.expand_as(out), out)
    out = torch.where(t == 1, b.expand_as(out), out)
    return out


def interpolation_path(
    latents: torch.Tensor, steps_per_segment: int, loop: bool = False
) -> torch.Tensor:
    """Build a smooth path through key latents by slerping between consecutive ones.

    Each segment from key ``k`` to key ``k + 1`` contributes ``steps_per_segment`` points
    at ``t = 0, 1/s, ..., (s-1)/s``, so key ``k`` sits at row ``k * steps_per_segment``.
    Without ``loop`` the last key is appended, giving ``(K - 1) * s + 1`` rows. With
    ``loop`` a final segment returns toward the first key without repeating it, giving
    ``K * s`` rows that cycle seamlessly when played on repeat.

    Args:
        latents: Key latents shaped ``(K, D)`` with ``K >= 2``.
        steps_per_segment: Points per segment ``s >= 1``.
        loop: Whether to close the path back to the first key.

    Returns:
        A tensor shaped ``(M, D)``.

    Raises:
        FaganError: If there are fewer than two keys, the shape is wrong or
            ``steps_per_segment`` is less than 1.
    """
    if latents.dim() != 2:
        raise FaganError(f"expected latents shaped (K, D), got shape {tuple(latents.shape)}")
    if latents.shape[0] < 2:
        raise FaganError(
            f"an interpolation needs at least two latents (seeds), got {latents.shape[0]}"
        )
    if steps_per_segment < 1:
        raise FaganError(f"steps per segment must be at least 1, got {steps_per_segment}")
    starts = latents
    ends = torch.roll(latents, shifts=-1, dims=0)
    if not loop:
        starts, ends = starts[:-1], ends[:-1]
    t = torch.arange(steps_per_segment, dtype=torch.float64) / steps_per_segment
    # (segments, steps, D)
    path = slerp(starts[:, None, :], ends[:, None, :], t[None, :, None])
    path = path.reshape(-1, latents.shape[1]).to(latents.dtype)
    if not loop:
        path = torch.cat([path, latents[-1:]], dim=0)
    return path
