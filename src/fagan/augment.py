"""Batch-level, differentiable augmentation for GAN training.

:func:`diff_augment` implements DiffAugment (Zhao, Liu, Lin, Zhu and Han, 2020,
"Differentiable Augmentation for Data-Efficient GAN Training"): the same random, differentiable
transformations are applied to real and generated batches before the discriminator sees them,
so the generator is trained through them. It follows the semantics of the authors' reference
code for channels-first batches in ``[-1, 1]``:

* ``color``: per-sample brightness (add ``U(-0.5, 0.5)``), then saturation (scale the
  deviation from the per-pixel channel mean by ``U(0, 2)``), then contrast (scale the deviation
  from the per-sample mean by ``U(0.5, 1.5)``);
* ``translation``: shift each sample by a whole number of pixels in ``[-r, r]`` per axis, with
  ``r = round(0.125 * side)``, filling the uncovered border with zeros;
* ``cutout``: zero one square of side ``round(0.5 * side)`` per sample, centred uniformly at
  random, clipped at the image border.

Every random number is drawn from the ``generator`` argument, so a run that saves and restores
its generator's state reproduces its augmentations exactly.
"""

from __future__ import annotations

import torch

from fagan.errors import FaganError

__all__ = ["POLICIES", "diff_augment", "parse_policy", "random_hflip", "random_hflip_"]

#: The policy names :func:`diff_augment` accepts.
POLICIES: tuple[str, ...] = ("color", "translation", "cutout")

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _rand(
    shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform ``[0, 1)`` numbers drawn on the generator's device, returned on ``x``'s."""
    device = generator.device if generator is not None else x.device
    r = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return r.to(device=x.device, dtype=x.dtype)


def _randint(
    low: int, high: int, shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Integers in ``[low, high)`` drawn on the generator's device, returned on ``x``'s."""
    device = generator.device if generator is not None else x.device
    r = torch.randint(low, high, shape, generator=generator, device=device, dtype=torch.long)
    return r.to(x.device)


def _brightness(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return x + (_rand((x.shape[0], 1, 1, 1), x, g) - 0.5)


def _saturation(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, g) * 2.0) + mean


def _contrast(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, g) + 0.5) + mean


def _translation(
    x: torch.Tensor, g: torch.Generator | None, ratio: float = TRANSLATION_RATIO
) -> torch.Tensor:
    """``out[b, :, i, j] = x[b, :, i + dy_b, j + dx_b]`` where inside the image, else 0."""
    b, c, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _randint(-max_dy, max_dy + 1, (b, 1), x, g)
    dx = _randint(-max_dx, max_dx + 1, (b, 1), x, g)
    rows = torch.arange(h, device=x.device).unsqueeze(0) + dy  # (B, H) source rows
    cols = torch.arange(w, device=x.device).unsqueeze(0) + dx  # (B, W) source columns
    inside = ((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1)
    rows = rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w)
    cols = cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w)
    shifted = x.gather(2, rows).gather(3, cols)
    return shifted * inside.unsqueeze(1).to(x.dtype)


def _cutout(
    x: torch.Tensor, g: torch.Generator | None, ratio: float = CUTOUT_RATIO
) -> torch.Tensor:
    """Zero a ``round(ratio * H) x round(ratio * W)`` box per sample, clipped at the border.

    As in the reference code, the box centre is uniform over ``[0, H]`` (``[0, H - 1]`` for
    an odd box side) and the box spans ``centre - side // 2`` to ``centre - side // 2 + side``.
    """
    b, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    centre_y = _randint(0, h + (1 - size_h % 2), (b, 1), x, g)
    centre_x = _randint(0, w + (1 - size_w % 2), (b, 1), x, g)
    top = centre_y - size_h // 2
    left = centre_x - size_w // 2
    ys = torch.arange(h, device=x.device).unsqueeze(0)
    xs = torch.arange(w, device=x.device).unsqueeze(0)
    in_rows = (ys >= top) & (ys < top + size_h)  # (B, H)
    in_cols = (xs >= left) & (xs < left + size_w)  # (B, W)
    keep = ~(in_rows.unsqueeze(2) & in_cols.unsqueeze(1))  # (B, H, W)
    return x * keep.unsqueeze(1).to(x.dtype)


_OPS = {
    "color": (_brightness, _saturation, _contrast),
    "translation": (_translation,),
    "cutout": (_cutout,),
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """Split a comma-separated DiffAugment policy and check its names.

    Args:
        policy: Such as ``"color,translation,cutout"``; blanks around names are ignored and
            an empty string means no augmentation.

    Returns:
        The policy names, in order.

    Raises:
        FaganError: If a name is not one of :data:`POLICIES`.
    """
    names = tuple(part.strip().lower() for part in policy.split(",") if part.strip())
    unknown = [name for name in names if name not in _OPS]
    if unknown:
        raise FaganError(
            f"unknown augmentation {unknown[0]!r} in policy {policy!r}; "
            f"valid ones are: {', '.join(POLICIES)}"
        )
    return names


def diff_augment(
    x: torch.Tensor,
    policy: str = "color,translation,cutout",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply DiffAugment to a batch, differentiably.

    Args:
        x: Images of shape ``(B, C, H, W)``, nominally in ``[-1, 1]``.
        policy: Comma-separated names from :data:`POLICIES`, applied in the order given.
        generator: The source of all random numbers (on any device: numbers are drawn on its
            device and moved to ``x``'s); None uses torch's default generator for ``x``'s
            device.

    Returns:
        The augmented batch, same shape, dtype and device as ``x``. The output is not clamped:
        the color ops may leave ``[-1, 1]``, as in the reference code.

    Raises:
        FaganError: If the policy names an unknown augmentation.
        ValueError: If ``x`` is not four-dimensional.
    """
    names = parse_policy(policy)
    if x.dim() != 4:
        raise ValueError(f"diff_augment expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    for name in names:
        for op in _OPS[name]:
            x = op(x, generator)
    return x


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a batch left-right with probability 0.5, differentiably.

    Args:
        x: Images of shape ``(B, C, H, W)``.
        generator: The source of the coin flips (see :func:`diff_augment`).

    Returns:
        The batch, each sample either as is or mirrored.

    Raises:
        ValueError: If ``x`` is not four-dimensional.
    """
    if x.dim() != 4:
        raise ValueError(f"random_hflip expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    flip = _rand((x.shape[0],), x, generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_hflip_(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`random_hflip` in place, for a batch that owns its memory (no autograd).

    The same coin flips from the same ``generator`` give the same images as
    :func:`random_hflip`; on the CPU only the flipped images are rewritten (about half
    the batch) instead of building a mirrored copy of all of it and selecting.

    Returns:
        ``x``, flipped where its coin came up.
    """
    if x.dim() != 4:
        raise ValueError(f"random_hflip_ expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    flip = _rand((x.shape[0],), x, generator) < 0.5
    if x.device.type != "cpu":  # no host synchronisation for the row list
        return x.copy_(torch.where(flip[:, None, None, None], x.flip(3), x))
    rows = flip.nonzero().squeeze(1)
    if rows.numel():
        x.index_copy_(0, rows, x.index_select(0, rows).flip(3))
    return x
