"""The image sets every metric takes: uint8 (N, 3, H, W), checked once here."""

from __future__ import annotations

import numpy as np
import torch

from fagan.errors import FaganError


def as_uint8_images(x: object, name: str) -> torch.Tensor:
    """Checks an image batch and returns it as a uint8 tensor (N, 3, H, W).

    Args:
        x: a torch tensor or numpy array.
        name: what the images are (``real``, ``fake``), for messages.

    Raises:
        FaganError: for another type, dtype or shape.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise FaganError(
            f"{name} images must be a torch tensor or numpy array, got {type(x).__name__}"
        )
    if x.dtype != torch.uint8:
        raise FaganError(f"{name} images must be uint8 in [0, 255], got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise FaganError(f"{name} images must have shape (N, 3, H, W), got {tuple(x.shape)}")
    return x
