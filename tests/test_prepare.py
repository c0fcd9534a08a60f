"""fagan prepare and dataset zips: StyleGAN2-ADA's format read back independently, labels,
training from a zip (same pixels and weights as from the folder, exact resume), bad input."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_lfw_faces
from PIL import Image

from fagan.data import open_training_data
from fagan.errors import FaganError
from fagan.prepare import archive_name, prepare_dataset

SRC = str(Path(__file__).resolve().parents[1] / "src")


# --------------------------------------------------------------------------- the format
def read_stylegan_zip(path: Path) -> tuple[list[str], np.ndarray, np.ndarray | None, dict]:
    """Reads a dataset zip as stylegan2-ada-pytorch's training/dataset.py does.

    Image members are the files with an image extension, sorted; pixels are PIL's; labels
    come from dataset.json's ``"labels"`` pairs looked up by file name. Independent of fagan.
    """
    with zipfile.ZipFile(path) as zf:
        names = sorted(
            n
            for n in zf.namelist()
            if os.path.splitext(n)[1].lower() in Image.registered_extensions()
        )
        images = np.stack([np.array(Image.open(io.BytesIO(zf.read(n)))) for n in names])
        meta = json.loads(zf.read("dataset.json")) if "dataset.json" in zf.namelist() else {}
    labels = meta.get("labels")
    if labels is not None:
        by_name = dict(labels)
        labels = np.array([by_name[n.replace("\\", "/")] for n in names]).astype(np.int64)
    return names, images, labels, meta


def write_stylegan_zip(path: Path, images: list[np.ndarray], labels: list[int] | None) -> Path:
    """Writes a dataset zip as stylegan2-ada-pytorch's dataset_tool.py does (not fagan's)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        entries = []
        for idx, image in enumerate(images):
            idx_str = f"{idx:08d}"
            name = f"{idx_str[:5]}/img{idx_str}.png"
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="png", compress_level=0, optimize=False)
            zf.writestr(name, buffer.getbuffer())
            entries.append([name, None if labels is None else labels[idx]])
        meta = {"labels": entries if labels is not None else None}
        zf.writestr("dataset.json", json.dumps(meta))
    return path


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def write_digits(folder: Path, per_class: int = 6, size: int = 24) -> Path:
    """scikit-learn's 8x8 handwritten digits, upscaled, one sub-folder per digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in range(10):
        sub = folder / f"digit_{digit}"
        sub.mkdir(parents=True)
        rows = np.flatnonzero(digits.target == digit)[:per_class]
        for k, row in enumerate(rows):
            grey = (digits.images[row] * 255 / 16).round().astype(np.uint8)
            Image.fromarray(grey).resize((size, size), Image.BICUBIC).save(sub / f"{k}.png")
    return folder


def test_flat_folder_is_written_in_stylegan_format(tmp_path: Path) -> None:
    faces = write_lfw_faces(tmp_path / "faces", 32, count=40)
    result = prepare_dataset(faces, tmp_path / "faces.zip", 32)
    assert result.count == 40 and result.class_names is None and not result.skipped
    names, images, labels, meta = read_stylegan_zip(tmp_path / "faces.zip")
    assert names == [f"00000/img{i:08d}.png" for i in range(40)]
    assert labels is None and meta == {"labels": None}
    # already 32x32: the very pixels of the source files, in sorted order
    sources = sorted(faces.glob("*.png"))
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    for image, source in zip(images, sources, strict=True):
        assert np.array_equal(image, rgb(source))
    with zipfile.ZipFile(tmp_path / "faces.zip") as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
        assert zf.namelist()[-1] == "dataset.json"
    assert archive_name(123456) == "00123/img00123456.png"


def test_resized_pixels_match_torchvision(tmp_path: Path) -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    folder = tmp_path / "wide"
    folder.mkdir()
    rng = np.random.default_rng(1)
    originals = [rng.integers(0, 256, (30, 45, 3), dtype=np.uint8) for _ in range(4)]
    for i, a in enumerate(originals):
        Image.fromarray(a).save(folder / f"{i}.png")
    prepare_dataset(folder, tmp_path / "out.zip", 16)
    _, images, _, _ = read_stylegan_zip(tmp_path / "out.zip")
    for image, a in zip(images, originals, strict=True):
        t = torch.from_numpy(a).permute(2, 0, 1).float() / 255
        t = TF.center_crop(TF.resize(t, [16], InterpolationMode.BILINEAR, antialias=True), [16])
        expected = (t * 255).round().permute(1, 2, 0).numpy()
        assert np.abs(image.astype(float) - expected).max() <= 1
    # --crop none keeps the whole (stretched) picture
    prepare_dataset(folder, tmp_path / "none.zip", 16, crop="none")
    _, stretched, _, _ = read_stylegan_zip(tmp_path / "none.zip")
    t = torch.from_numpy(originals[0]).permute(2, 0, 1).float() / 255
    whole = TF.resize(t, [16, 16], InterpolationMode.BILINEAR, antialias=True)
    assert (
        np.abs(stretched[0].astype(float) - (whole * 255).round().permute(1, 2, 0).numpy()).max()
        <= 1
    )


def test_class_folders_give_labels_and_a_zip_keeps_them(tmp_path: Path) -> None:
    digits = write_digits(tmp_path / "digits")
    result = prepare_dataset(digits, tmp_path / "digits.zip", 16)
    assert result.class_names == tuple(f"digit_{d}" for d in range(10))
    assert result.label_counts == [6] * 10
    assert "10 classes (digit_0 6, digit_1 6" in result.summary()
    names, images, labels, meta = read_stylegan_zip(tmp_path / "digits.zip")
    assert labels.tolist() == [d for d in range(10) for _ in range(6)]
    assert meta["class_names"] == [f"digit_{d}" for d in range(10)]
    assert images.shape == (60, 16, 16, 3)
    assert all(isinstance(pair, list) and len(pair) == 2 for pair in meta["labels"])
    # a zip as the source: its labels and class names go on, at another resolution
    again = prepare_dataset(tmp_path / "digits.zip", tmp_path / "digits8.zip", 8)
    _, small, labels8, meta8 = read_stylegan_zip(tmp_path / "digits8.zip")
    assert again.count == 60 and labels8.tolist() == labels.tolist()
    assert meta8["class_names"] == meta["class_names"] and small.shape == (60, 8, 8, 3)
    # training data reads the same labels
    data = open_training_data(tmp_path / "digits.zip", 16, progress=False)
    assert data.labels.tolist() == labels.tolist()
    assert data.class_names == tuple(meta["class_names"])
    assert "10 classes: digit_0 6, digit_1 6" in data.describe()
    # --labels none: an unlabelled zip
    prepare_dataset(digits, tmp_path / "plain.zip", 16, labels="none")
    assert read_stylegan_zip(tmp_path / "plain.zip")[2] is None


def test_stylegan_zip_labels_without_class_names(tmp_path: Path) -> None:
    images = [np.full((8, 8, 3), 40 * k, dtype=np.uint8) for k in range(4)]
    source = write_stylegan_zip(tmp_path / "sg.zip", images, labels=[2, 0, 2, 1])
    data = open_training_data(source, 8, progress=False)
    assert data.labels.tolist() == [2, 0, 2, 1] and data.class_names is None
    assert "3 classes: 0 1, 1 1, 2 2" in data.describe()
    result = prepare_dataset(source, tmp_path / "ours.zip", 8)
    assert result.class_names == ("0", "1", "2") and result.label_counts == [1, 1, 2]
    _, back, labels, _ = read_stylegan_zip(tmp_path / "ours.zip")
    assert labels.tolist() == [2, 0, 2, 1] and np.array_equal(back, np.stack(images))


def test_output_is_deterministic_limited_and_replaced_only_when_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):  # enough for a worker pool; two flat halves: compressible
        image = np.empty((12, 10, 3), dtype=np.uint8)
        image[:, :5], image[:, 5:] = rng.integers(0, 256, (2, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    a = prepare_dataset(folder, tmp_path / "a.zip", 8, workers=2)
    b = prepare_dataset(folder, tmp_path / "b.zip", 8, workers=1)
    assert a.count == b.count == 300
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with pytest.raises(FaganError, match="a.zip exists; pass --overwrite"):
        prepare_dataset(folder, tmp_path / "a.zip", 8)
    limited = prepare_dataset(folder, tmp_path / "a.zip", 8, max_images=7, overwrite=True)
    names, images, _, _ = read_stylegan_zip(tmp_path / "a.zip")
    assert limited.count == 7 and len(names) == 7
    assert np.array_equal(images, read_stylegan_zip(tmp_path / "b.zip")[1][:7])
    smaller = prepare_dataset(folder, tmp_path / "c.zip", 8, compress_level=9)
    assert smaller.bytes < b.bytes
    assert np.array_equal(
        read_stylegan_zip(tmp_path / "c.zip")[1], read_stylegan_zip(tmp_path / "b.zip")[1]
    )


def test_an_interrupted_write_leaves_no_zip(tmp_path: Path, monkeypatch) -> None:
    faces = write_lfw_faces(tmp_path / "faces", 16, count=20)
    out = tmp_path / "out" / "faces.zip"
    real_writestr = zipfile.ZipFile.writestr
    calls = []

    def failing_writestr(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real_writestr(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(OSError, match="No space left"):
        prepare_dataset(faces, out, 16)
    assert list(out.parent.iterdir()) == []  # neither the zip nor a temporary file
    monkeypatch.setattr(zipfile.ZipFile, "writestr", real_writestr)
    prepare_dataset(faces, out, 16)
    before = out.read_bytes()
    calls.clear()
    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(OSError):
        prepare_dataset(faces, out, 8, overwrite=True)
    assert out.read_bytes() == before  # the previous zip, untouched
    assert [p.name for p in out.parent.iterdir()] == ["faces.zip"]


# --------------------------------------------------------------------------- training
def run_options(tmp: Path, images: Path, name: str, **overrides):
    from fagan.train import TrainOptions

    values = dict(
        images_dir=str(images),
        generator_config="small32",
        discriminator_config="small32",
        model_dir=str(tmp / name / "models"),
        sample_dir=str(tmp / name / "samples"),
        batch_size=8,
        num_workers=0,
        device="cpu",
        tensorboard=False,
        feedback_factor=1,
        num_epochs=3,
        num_samples=4,
        seed=2,
    )
    values.update(overrides)
    return TrainOptions(**values)


def assert_same_weights(a, b) -> None:
    for net_a, net_b in (
        (a.generator, b.generator),
        (a.discriminator, b.discriminator),
        (a.ema_generator, b.ema_generator),
    ):
        sa, sb = net_a.state_dict(), net_b.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def test_folder_and_zips_train_alike_and_resume_exactly(tmp_path: Path) -> None:
    from fagan.train import train

    faces = write_lfw_faces(tmp_path / "faces", 32, count=24)  # 3 batches of 8 per epoch
    sources = sorted(faces.glob("*.png"))
    theirs = write_stylegan_zip(
        tmp_path / "theirs.zip", [rgb(p) for p in sources], labels=[k % 3 for k in range(24)]
    )
    ours = tmp_path / "ours.zip"
    prepare_dataset(faces, ours, 32)
    pixels = [
        open_training_data(p, 32, progress=False).uint8_images(range(24))
        for p in (faces, theirs, ours)
    ]
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[0], pixels[2])

    from_folder = train(run_options(tmp_path, faces, "folder", max_steps=5))
    from_zip = train(run_options(tmp_path, theirs, "zip", max_steps=5))
    assert from_folder.step == from_zip.step == 5
    assert_same_weights(from_folder, from_zip)
    first = train(run_options(tmp_path, theirs, "split", max_steps=2))
    assert first.step == 2
    resumed = train(run_options(tmp_path, theirs, "split", max_steps=5, resume=True))
    assert resumed.step == 5 and resumed.epoch == 2  # crossed an epoch boundary
    assert_same_weights(from_zip, resumed)
    # and the weights moved between step 2 and step 5: not two untouched networks
    assert not torch.equal(
        first.generator.state_dict()["model.0.value_conv.weight"],
        from_zip.generator.state_dict()["model.0.value_conv.weight"],
    )


# --------------------------------------------------------------------------- bad input
def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _png(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 100, 50)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_input_gives_one_line_and_status_2(tmp_path: Path) -> None:
    from test_data import _png_bomb

    png = _png()
    two = {"00000/img00000000.png": png, "00000/img00000001.png": png}
    good = _zip(tmp_path / "good.zip", {**two, "dataset.json": b'{"labels": null}'})
    whole = good.read_bytes()
    (tmp_path / "truncated.zip").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a zip")
    _zip(tmp_path / "json.zip", {**two, "dataset.json": b'{"labels": [["00000/img0'})
    _zip(
        tmp_path / "missing.zip",
        {
            **two,
            "dataset.json": json.dumps(
                {
                    "labels": [
                        ["00000/img00000000.png", 0],
                        ["00000/img00000001.png", 1],
                        ["00000/img00000002.png", 1],
                    ]
                }
            ).encode(),
        },
    )
    _zip(
        tmp_path / "float.zip",
        {
            **two,
            "dataset.json": json.dumps(
                {"labels": [["00000/img00000000.png", 0.5], ["00000/img00000001.png", 1]]}
            ).encode(),
        },
    )
    _zip(tmp_path / "mixed.zip", {**two, "00000/img00000002.png": _png(16)})
    (tmp_path / "bombs").mkdir()
    _png_bomb(tmp_path / "bombs" / "bomb.png", 13000)
    (tmp_path / "empty").mkdir()
    (tmp_path / "exists.zip").write_bytes(whole)

    def prepare(source: str, output: str = "out.zip", *extra: str) -> list[str]:
        return [
            "prepare",
            "--source",
            str(tmp_path / source),
            "--output",
            str(tmp_path / output),
            "--resolution",
            "8",
            *extra,
        ]

    def train(images: str) -> list[str]:
        return [
            "train",
            "--images_dir",
            str(tmp_path / images),
            "--device",
            "cpu",
            "--generator_config",
            "small32",
            "--discriminator_config",
            "small32",
            "--model_dir",
            str(tmp_path / "run" / "models"),
            "--sample_dir",
            str(tmp_path / "run" / "samples"),
        ]

    cases = [
        (
            prepare("truncated.zip"),
            r"truncated.zip is not a folder or a dataset zip \(a "
            r"truncated or damaged zip\)",
        ),
        (
            prepare("photo.jpg"),
            r"photo.jpg is not a folder or a dataset zip \(a file that is "
            r"not a zip\)",
        ),
        (train("photo.jpg"), r"--images_dir: .*photo.jpg is not a folder or a dataset zip"),
        (train("truncated.zip"), r"truncated.zip is not a folder or a dataset zip"),
        (train("json.zip"), r"json.zip: dataset.json is not valid JSON"),
        (
            train("missing.zip"),
            r"missing.zip: dataset.json names 1 file\(s\) that are not "
            r"images in the zip \(e.g. 00000/img00000002.png\)",
        ),
        (
            train("float.zip"),
            r"float.zip: dataset.json: the label of 00000/img00000000.png "
            r"is 0.5, not a whole number",
        ),
        (
            train("mixed.zip"),
            r"mixed.zip: images of mixed sizes: 00000/img00000002.png is "
            r"16x16 but 00000/img00000000.png is 8x8",
        ),
        (
            prepare("bombs"),
            r"no usable images in .*bombs: skipped 1 of 1 files .*bomb.png: "
            r"13000x13000 pixels is more than the 64 MP limit",
        ),
        (prepare("empty"), r"no image files in .*empty"),
        (prepare("good.zip", "exists.zip"), r"exists.zip exists; pass --overwrite"),
        (prepare("good.zip", "out.tar"), r"--output must be a .zip file"),
    ]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fagan", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for argv, _ in cases
    ]
    for (argv, pattern), proc in zip(cases, procs, strict=True):
        _, stderr = proc.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (argv, stderr)
        assert len(lines) == 1, (argv, stderr)
        assert lines[0].startswith(f"fagan {argv[0]}: error: "), lines[0]
        assert re.search(pattern, lines[0]), (pattern, lines[0])
    # nothing written: no zip, no temporary file, no run folder
    assert not (tmp_path / "out.zip").exists() and not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert (tmp_path / "exists.zip").read_bytes() == whole
