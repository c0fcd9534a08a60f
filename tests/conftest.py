"""Shared fixtures: small folders of real face images made from a package-shipped dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_lfw_faces(folder: Path, size: int, count: int = 100, start: int = 0) -> Path:
    """Writes scikit-image's LFW faces (rows ``start``.. of 0-99) as RGB PNGs of ``size``."""
    from skimage.data import lfw_subset

    faces = lfw_subset()[start : start + count]  # (N, 25, 25) grayscale in [0, 1]
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


def train_small_run(tmp: Path, *, max_steps: int, seed: int) -> Path:
    """A small32 run of a few steps on 100 real 32x32 faces; returns its folder
    (``models/`` with GAN_GEN_1.pth, training_state.pth, ...; ``samples/``)."""
    from fagan.train import TrainOptions, train

    faces = write_lfw_faces(tmp / "faces32", 32)
    train(
        TrainOptions(
            images_dir=str(faces),
            generator_config="small32",
            discriminator_config="small32",
            model_dir=str(tmp / "models"),
            sample_dir=str(tmp / "samples"),
            batch_size=8,
            num_workers=0,
            device="cpu",
            tensorboard=False,
            feedback_factor=1,
            num_epochs=1,
            max_steps=max_steps,
            num_samples=4,
            seed=seed,
        )
    )
    return tmp
