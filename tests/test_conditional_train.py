"""Class-conditional training (``fagan train --conditioning``) on a small labelled set.

The set: scikit-learn's handwritten digits (8x8 grey) of a few classes, upscaled to 32x32
RGB PNGs in one sub-folder per class. The tests check what a conditional run writes
(training state and per-epoch network files with conditioning and class names, grids
with one row per class), that the loaders rebuild the conditional networks from those
files, that resume is bitwise exact, that bad requests are one-line errors, and (slow)
that the trained generator's images do depend on the class asked for.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fagan.attention_maps import load_discriminator
from fagan.checkpoint import (
    NETWORK_FILE_FORMAT,
    is_network_file,
    load_file,
    load_training_state,
    network_file,
    network_state_dict,
    validate_training_state,
)
from fagan.errors import FaganError
from fagan.generate import load_generator
from fagan.train import StopReason, TrainOptions, train

CLASSES = (0, 1, 7)  # digits that look unlike each other


def write_digits(folder: Path, classes=CLASSES, per_class: int = 16, size: int = 32) -> Path:
    """scikit-learn's digits of ``classes``, ``per_class`` each, as RGB PNGs of ``size`` in
    one sub-folder per class (named by the digit)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in classes:
        images = digits.images[digits.target == digit][:per_class]  # (n, 8, 8) in [0, 16]
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            grey = Image.fromarray((image * (255 / 16)).round().astype(np.uint8))
            picture = grey.resize((size, size), Image.BICUBIC).convert("RGB")
            picture.save(folder / str(digit) / f"{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 images of the digits 0, 1 and 7 (16 each), 32x32 RGB, one folder per class."""
    return write_digits(tmp_path_factory.mktemp("digits"))


def options(tmp: Path, images: Path | None, **overrides) -> TrainOptions:
    """A few CPU steps of small32 on ``images`` (48 images, batch 8: 6 batches an epoch)."""
    values = dict(
        images_dir=None if images is None else str(images),
        generator_config="small32",
        discriminator_config="small32",
        model_dir=str(tmp / "models"),
        sample_dir=str(tmp / "samples"),
        conditioning="projection",
        batch_size=8,
        num_workers=0,
        device="cpu",
        tensorboard=False,
        feedback_factor=1,
        num_epochs=1,
        num_samples=12,
        seed=1,
    )
    values.update(overrides)
    return TrainOptions(**values)


# --------------------------------------------------------------------------- checkpoint contract
@pytest.mark.parametrize("scheme", ["projection", "concat"])
def test_conditional_run_writes_its_conditioning_and_classes(
    tmp_path: Path, digits: Path, scheme: str
) -> None:
    result = train(options(tmp_path, digits, conditioning=scheme, max_steps=2))
    assert result.stopped is StopReason.MAX_STEPS
    models = tmp_path / "models"
    expected = {"num_classes": 3, "conditioning": scheme, "embedding_dim": None}

    state = load_training_state(models / "training_state.pth")
    assert state["conditioning"] == expected
    assert state["conditioning"] == result.generator.conditioning_options
    assert state["class_names"] == ["0", "1", "7"]
    assert state["options"]["conditioning"] == scheme
    # the grid: 12 samples over 3 classes -> 3 rows of the same 4 latents
    assert state["fixed_labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(state["fixed_latents"][:4], state["fixed_latents"][8:])

    for name, role in (
        ("GAN_GEN_1.pth", "generator"),
        ("GAN_GEN_EMA_1.pth", "generator"),
        ("GAN_DIS_1.pth", "discriminator"),
    ):
        saved = load_file(models / name)
        assert is_network_file(saved) and saved["format"] == NETWORK_FILE_FORMAT
        assert set(saved) == {
            "format",
            "role",
            "weights",
            "config",
            "latent_size",
            "image_size",
            "conditioning",
            "class_names",
        }
        assert (saved["role"], saved["latent_size"], saved["image_size"]) == (role, 128, 32)
        assert saved["conditioning"] == expected and saved["class_names"] == ["0", "1", "7"]
        net = result.generator if name == "GAN_GEN_1.pth" else None
        net = result.discriminator if role == "discriminator" else net
        if net is not None:
            weights = network_state_dict(saved, role)
            assert weights.keys() == net.state_dict().keys()
            assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())

    z = torch.randn(3, 128, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    for source in ("GAN_GEN_EMA_1.pth", "training_state.pth"):  # both: the EMA generator
        generator = load_generator(models / source)
        assert generator.conditioning_options == expected
        assert generator.class_names == ("0", "1", "7")
        with torch.no_grad():
            assert torch.equal(generator(z, y), result.ema_generator.eval()(z, y))
    discriminator = load_discriminator(models / "GAN_DIS_1.pth")
    assert discriminator.class_names == ("0", "1", "7")
    assert discriminator.num_classes == 3 and discriminator.conditioning == scheme
    with pytest.raises(FaganError, match="holds 'discriminator' weights, not generator"):
        load_generator(models / "GAN_DIS_1.pth")


def test_unconditional_run_keeps_plain_weights_files(tmp_path: Path, digits: Path) -> None:
    result = train(options(tmp_path, digits, conditioning="none", max_steps=1))
    models = tmp_path / "models"
    saved = load_file(models / "GAN_GEN_1.pth")
    assert not is_network_file(saved)
    assert saved.keys() == result.generator.state_dict().keys()  # a plain state dict
    state = load_file(models / "training_state.pth")
    assert state["conditioning"] is None and state["class_names"] is None
    assert "fixed_labels" not in state
    generator = load_generator(models / "training_state.pth")
    assert generator.class_names is None and generator.num_classes is None


def test_old_training_states_without_the_keys_load_as_unconditional(
    tmp_path: Path, digits: Path
) -> None:
    train(options(tmp_path, digits, conditioning="none", max_steps=1))
    state = load_file(tmp_path / "models" / "training_state.pth")
    for key in ("conditioning", "class_names"):
        del state[key]
    validate_training_state(state, "old.pth")
    torch.save(state, tmp_path / "old.pth")
    assert load_generator(tmp_path / "old.pth").class_names is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"conditioning": {"num_classes": 3}}, "expected None or a mapping of num_classes"),
        ({"class_names": ["0", "1"]}, "expected a list of 3 class names"),
        ({"class_names": None}, "expected a list of 3 class names"),
        ({"fixed_labels": torch.tensor([0, 1, 5] * 4)}, "labels outside \\[0, 3\\)"),
        ({"fixed_labels": torch.zeros(5, dtype=torch.int64)}, "one label per fixed latent"),
    ],
)
def test_validation_names_the_wrong_conditioning_field(
    tmp_path: Path, digits: Path, change: dict, message: str
) -> None:
    train(options(tmp_path, digits, max_steps=1))
    state = load_file(tmp_path / "models" / "training_state.pth")
    validate_training_state(state, "run.pth")
    state.update(change)
    with pytest.raises(FaganError, match=message):
        validate_training_state(state, "run.pth")


def test_network_file_builder_refuses_inconsistent_metadata() -> None:
    weights = {"w": torch.zeros(1)}
    options_ = {"num_classes": 2, "conditioning": "projection", "embedding_dim": None}
    made = network_file("generator", weights, "architecture: []", 8, options_, ["a", "b"])
    assert made["format"] == NETWORK_FILE_FORMAT and "image_size" not in made
    with pytest.raises(ValueError, match="role"):
        network_file("critic", weights, "", 8, options_, ["a", "b"])
    with pytest.raises(ValueError, match="list of 2 class names"):
        network_file("generator", weights, "", 8, options_, ["a"])
