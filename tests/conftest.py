"""Shared fixtures: small folders of real face images made from a package-shipped dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_lfw_faces(folder: Path, size: int, count: int = 100, start: int = 0) -> Path:
    """Writes scikit-image's LFW faces (rows ``start``.. of 0-99) as RGB PNGs of ``size``."""
    from skimage.data import lfw_subset

    faces = lfw_subset()[start:start + count]  # (N, 25, 25) grayscale in [0, 1]
    folder.mkdir(parents=True, exist_ok=True)
    for index, face in enumerate(faces):
        image = Image.fromarray((face * 255).round().astype(np.uint8)).convert("RGB")
        image.resize((size, size), Image.BICUBIC).save(folder / f"face_{start + index:03d}.png")
    return folder


@pytest.fixture(scope="session")
def faces32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 real 32x32 face images."""
    return write_lfw_faces(tmp_path_factory.mktemp("faces32"), 32)


@pytest.fixture(scope="session")
def faces64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 real 64x64 face images."""
    return write_lfw_faces(tmp_path_factory.mktemp("faces64"), 64)
