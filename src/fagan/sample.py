"""Turning generator output into image files: grids, strips and single PNGs.

Generators produce float images in ``[-1, 1]`` laid out NCHW. Every image written by this
module goes through :func:`to_uint8`, which maps a value ``x`` to the byte::

    round((clamp(x, -1, 1) + 1) * 127.5)

so ``-1 -> 0``, ``0 -> 128`` (127.5 rounds half to even) and ``1 -> 255``. This is the
same mapping, to within one level, as the original project's
``torchvision.utils.save_image(..., normalize=True, range=(-1, 1))``.

Sample grids follow the original project's conventions: a grid of ``int(sqrt(N))``
images per row with 2 pixels of black padding (the layout of
:func:`torchvision.utils.make_grid`), saved during training as ``gen_<epoch>_<batch>.png``.
GIFs and videos are written by :mod:`fagan.animation`, latents drawn by
:mod:`fagan.latents`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fagan.errors import FaganError
from fagan.fileio import atomic_write

__all__ = [
    "evenly_spaced",
    "grid_uint8",
    "grid_uint8_batches",
    "make_grid",
    "save_grid",
    "save_individual",
    "to_uint8",
    "write_grid",
    "write_strip",
]


# --------------------------------------------------------------------------------------
# Atomic file writing
# --------------------------------------------------------------------------------------


def _write_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Atomically write an ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` uint8 array as PNG."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Convert generator output in ``[-1, 1]`` to bytes.

    The mapping is exactly ``((x.clamp(-1, 1) + 1) * 127.5).round()`` computed in float32
    (``round`` is half-to-even, so ``0 -> 128``); values outside ``[-1, 1]`` are clamped
    and NaN becomes 0. The result is detached and on the CPU.

    Args:
        images: Float tensor of any shape, typically NCHW.

    Returns:
        A ``torch.uint8`` tensor of the same shape with values in ``[0, 255]``.
    """
    x = images.detach().to(device="cpu", dtype=torch.float32)
    x = torch.nan_to_num(x, nan=-1.0)
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def _as_nchw(images: torch.Tensor) -> torch.Tensor:
    """Validate generator output and return it as a 4-D NCHW tensor."""
    if not isinstance(images, torch.Tensor):
        raise FaganError(f"expected a tensor of images, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise FaganError(f"expected images shaped (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise FaganError("there are no images to save (the batch is empty)")
    if images.shape[1] not in (1, 3, 4):
        raise FaganError(
            f"expected 1, 3 or 4 image channels, got {images.shape[1]} "
            f"(shape {tuple(images.shape)})"
        )
    return images


def make_grid(
    images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: int | float = 0
) -> torch.Tensor:
    """:func:`torchvision.utils.make_grid`'s layout of a (N, C, H, W) batch, as (C', H', W').

    ``nrow`` images per row, ``padding`` pixels of ``pad_value`` around and between them,
    one image returned as it is, single-channel images repeated to RGB. The same layout
    as torchvision's (a test checks it), written out here so that training never
    imports torchvision (its memory and start-up cost: ``benchmarks/RESULTS.md``).
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[0] == 1:
        return images[0]
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = -(-count // columns)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full(
        (channels, cell_h * rows + padding, cell_w * columns + padding), pad_value
    )
    for index in range(count):
        y, x = divmod(index, columns)
        top, left = y * cell_h + padding, x * cell_w + padding
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def grid_uint8(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """A batch of images laid out as one ``(3 or 4, H, W)`` uint8 grid (see :func:`save_grid`).

    Args:
        images: Float tensor in ``[-1, 1]`` shaped ``(N, C, H, W)`` (or one ``(C, H, W)``
            image) with ``C`` in 1, 3, 4.
        nrow: Images per row; defaults to ``int(sqrt(N))`` like the original project
            (at least 1).

    Raises:
        FaganError: If the tensor is not a batch of images or ``nrow`` is not positive.
    """
    images = _as_nchw(images)
    if nrow is None:
        nrow = max(1, int(math.sqrt(images.shape[0])))
    if nrow < 1:
        raise FaganError(f"images per row must be at least 1, got {nrow}")
    return make_grid(to_uint8(images), nrow=nrow, padding=2, pad_value=0)


def grid_uint8_batches(
    batches: Iterable[torch.Tensor], count: int, nrow: int | None = None
) -> torch.Tensor:
    """:func:`grid_uint8` of images that arrive batch by batch, without holding them all.

    Each batch is turned into bytes and copied into the grid as it comes, so memory is
    the uint8 grid plus one batch: the way to lay out more images than fit through one
    forward pass (``generator(z).float() for z in latents.split(batch_size)``). The
    result equals ``grid_uint8(torch.cat(list(batches)), nrow)``.

    Args:
        batches: float tensors in ``[-1, 1]`` shaped ``(B, C, H, W)``, all of one image
            shape, ``count`` images in all.
        count: how many images the batches hold.
        nrow: images per row; defaults to ``int(sqrt(count))`` (at least 1).

    Raises:
        FaganError: a batch that is not images, images of different shapes, a count
            that does not match, or ``nrow`` not positive.
    """
    if count < 1:
        raise FaganError("there are no images to save (the batch is empty)")
    if nrow is None:
        nrow = max(1, int(math.sqrt(count)))
    if nrow < 1:
        raise FaganError(f"images per row must be at least 1, got {nrow}")
    padding = 2
    grid: torch.Tensor | None = None
    shape: tuple[int, ...] = ()
    columns = min(nrow, count)
    done = 0
    for batch in batches:
        images = to_uint8(_as_nchw(batch))
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if grid is None:
            shape = tuple(images.shape[1:])
            channels, height, width = shape
            if count == 1:
                grid = images.new_zeros(shape)
            else:
                rows = -(-count // columns)
                grid = images.new_zeros(
                    (
                        channels,
                        (height + padding) * rows + padding,
                        (width + padding) * columns + padding,
                    )
                )
        if tuple(images.shape[1:]) != shape:
            raise FaganError(
                f"images of shape {tuple(images.shape[1:])} after images of "
                f"shape {shape}: a grid needs images of one shape"
            )
        if done + images.shape[0] > count:
            raise FaganError(f"more than the {count} images announced for the grid")
        for image in images:
            if count == 1:
                grid.copy_(image)
            else:
                y, x = divmod(done, columns)
                top, left = y * (shape[1] + padding) + padding, x * (shape[2] + padding) + padding
                grid[:, top : top + shape[1], left : left + shape[2]] = image
            done += 1
    if grid is None or done != count:
        raise FaganError(f"the grid was announced {count} images but got {done}")
    return grid


def write_grid(grid: torch.Tensor, path: str | os.PathLike) -> Path:
    """Atomically write a :func:`grid_uint8` grid as a PNG; returns the path."""
    return _write_png(grid.permute(1, 2, 0).numpy(), path)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Save a batch of images as one PNG grid.

    The layout is :func:`torchvision.utils.make_grid`'s: ``nrow`` images per row, 2 pixels
    of black padding around and between them (a single image is written unpadded, as
    torchvision does), single-channel images shown as grey RGB. The file is written to a
    temporary file beside ``path`` and moved into place, so a reader never sees half a PNG.

    Args:
        images: Float tensor in ``[-1, 1]`` shaped ``(N, C, H, W)`` (or one ``(C, H, W)``
            image) with ``C`` in 1, 3, 4.
        path: Destination file; parent directories are created.
        nrow: Images per row; defaults to ``int(sqrt(N))`` like the original project
            (at least 1).

    Returns:
        The path written.

    Raises:
        FaganError: If the tensor is not a batch of images or ``nrow`` is not positive.
    """
    return write_grid(grid_uint8(images, nrow), path)


def write_strip(images: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a batch of images side by side as a single row (a grid with ``nrow = N``).

    Args:
        images: Float tensor in ``[-1, 1]`` shaped ``(N, C, H, W)``.
        path: Destination PNG; parent directories are created.

    Returns:
        The path written.
    """
    images = _as_nchw(images)
    return save_grid(images, path, nrow=images.shape[0])


def save_individual(
    images: torch.Tensor, out_dir: str | os.PathLike, start_index: int = 0
) -> list[Path]:
    """Save each image of a batch as its own PNG named by a 6-digit index.

    Image ``i`` of the batch is written to ``out_dir/{start_index + i:06d}.png``, so
    successive batches can be written into one directory by advancing ``start_index``.

    Args:
        images: Float tensor in ``[-1, 1]`` shaped ``(N, C, H, W)`` with ``C`` in 1, 3, 4.
        out_dir: Directory to write into (created if missing).
        start_index: Index of the first image.

    Returns:
        The paths written, in batch order.

    Raises:
        FaganError: If the tensor is not a batch of images or ``start_index`` is negative.
    """
    images = _as_nchw(images)
    if start_index < 0:
        raise FaganError(f"start index must be 0 or more, got {start_index}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = to_uint8(images).permute(0, 2, 3, 1).numpy()
    return [
        _write_png(array, out_dir / f"{start_index + i:06d}.png") for i, array in enumerate(arrays)
    ]


def evenly_spaced(items: list, count: int) -> list:
    """At most ``count`` items of ``items``, evenly spaced, first and last included."""
    if len(items) <= count:
        return list(items)
    if count < 2:
        return list(items[-1:])
    picks = sorted({round(k * (len(items) - 1) / (count - 1)) for k in range(count)})
    return [items[k] for k in picks]
