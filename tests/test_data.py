"""Tests for fagan.data and fagan.sources: decoding, sources and labels, the training data
(in memory, streamed, cached), the LFW faces, the resumable sampler and the loader."""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fagan.data import (
    DEMO_REPEATS,
    IMAGE_EXTENSIONS,
    ImageFolderDataset,
    LFWFaces,
    ResumableSampler,
    build_loader,
    center_crop,
    check_dataset_path,
    find_images,
    lfw_faces_uint8,
    memory_budget,
    open_dataset,
    open_source,
    open_training_data,
    read_image,
    resize_shorter_side,
    to_square_uint8,
    uint8_to_float,
)
from fagan.errors import FaganError

S = 16


def _solid(
    color: tuple[int, ...], mode: str = "RGB", size: tuple[int, int] = (40, 30)
) -> Image.Image:
    return Image.new(mode, size, color)


def _bands(width: int, height: int, colors: list[tuple[int, int, int]]) -> Image.Image:
    """Equal bands along the longer side: left to right if wide, top to bottom if tall."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    step = max(width, height) // len(colors)
    for i, c in enumerate(colors):
        if width >= height:
            arr[:, i * step : (i + 1) * step] = c
        else:
            arr[i * step : (i + 1) * step, :] = c
    return Image.fromarray(arr)


def _noise_jpeg(path: Path, size: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
    return path.read_bytes()


@pytest.fixture
def good_folder(tmp_path: Path) -> Path:
    """One readable image of each kind, one in a nested folder."""
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    _solid((255, 0, 0)).save(root / "a_red.png")
    _solid((0, 0, 255)).save(root / "b_blue.jpg", quality=95)
    _solid((128,), "L").save(root / "c_gray.png")
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette([0, 255, 0, 255, 0, 0] + [0] * (254 * 3))  # 0: green, 1: red
    pal.paste(1, (0, 15, 40, 30))  # bottom half red (opaque), top half green (transparent)
    pal.save(root / "d_palette.png", transparency=0)
    _solid((0, 255, 0, 0), "RGBA").save(root / "e_clear.PNG")  # fully transparent
    _solid((0, 255, 255, 0), "CMYK").save(root / "f_cmyk.jpg", quality=95)  # red in CMYK
    _solid((0, 255, 0)).save(root / "sub" / "g_green.webp", lossless=True)
    _solid((1,), "1").save(root / "i_bilevel.png")
    _solid((64, 255), "LA").save(root / "j_la.png")
    _solid((0, 255, 0)).save(root / "k_green.TIFF")
    _solid((200,), "L").save(root / "l_gray.pgm")
    _solid((0, 0, 0), size=(20, 20)).save(root / "sub" / "deeper" / "h_black.bmp")
    (root / "notes.txt").write_text("not an image, and not an image suffix")
    (root / "._a_red.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    return root


# --------------------------------------------------------------------------------------------
# find_images
# --------------------------------------------------------------------------------------------


def test_extensions_cover_the_documented_formats() -> None:
    for ext in ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"):
        assert f".{ext}" in IMAGE_EXTENSIONS


def test_find_images_is_sorted_nested_and_case_insensitive(good_folder: Path) -> None:
    found = find_images(good_folder)
    rel = [p.relative_to(good_folder).as_posix() for p in found]
    assert found == sorted(found)
    assert "e_clear.PNG" in rel
    assert "sub/g_green.webp" in rel and "sub/deeper/h_black.bmp" in rel
    assert "notes.txt" not in rel and "._a_red.png" not in rel
    assert len(found) == 12
    flat = find_images(good_folder, recursive=False)
    assert len(flat) == 10 and all(p.parent == good_folder for p in flat)


def test_find_images_errors(tmp_path: Path) -> None:
    with pytest.raises(FaganError, match="does not exist"):
        find_images(tmp_path / "nope")
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(FaganError, match="not a folder"):
        find_images(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FaganError, match=str(empty)):
        find_images(empty)


# --------------------------------------------------------------------------------------------
# ImageFolderDataset
# --------------------------------------------------------------------------------------------


def test_every_mode_gives_rgb_in_range(good_folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder gives no warnings at all
        ds = ImageFolderDataset(good_folder, S)
    assert len(ds) == 12 and ds.skipped == []
    assert [p.name for p in ds.paths] == [p.name for p in find_images(good_folder)]
    items = {p.stem: ds[i] for i, p in enumerate(ds.paths)}
    for name, x in items.items():
        assert x.shape == (3, S, S), name
        assert x.dtype == torch.float32, name
        assert x.min() >= -1.0 and x.max() <= 1.0, name

    def mean_rgb(name: str) -> list[float]:
        return items[name].mean(dim=(1, 2)).tolist()

    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, S, S)
    assert torch.allclose(items["a_red"], red, atol=1e-6)  # float resize: exact up to rounding
    assert mean_rgb("b_blue") == pytest.approx([-1, -1, 1], abs=0.03)
    gray = 128 / 255 * 2 - 1
    assert torch.allclose(items["c_gray"], torch.full((3, S, S), gray), atol=1e-6)
    # transparent pixels are composited over white
    assert torch.allclose(items["d_palette"][:, :6], torch.ones(3, 6, S), atol=1e-6)
    assert torch.allclose(items["d_palette"][:, -6:], red[:, -6:], atol=1e-6)
    assert torch.allclose(items["e_clear"], torch.ones(3, S, S), atol=1e-6)
    assert mean_rgb("f_cmyk") == pytest.approx([1, -1, -1], abs=0.03)
    assert torch.allclose(items["g_green"], torch.tensor([-1.0, 1.0, -1.0])[:, None, None])
    assert torch.allclose(items["h_black"], -torch.ones(3, S, S), atol=1e-6)
    assert torch.allclose(items["i_bilevel"], torch.ones(3, S, S), atol=1e-6)
    assert torch.allclose(items["j_la"], torch.full((3, S, S), 64 / 255 * 2 - 1), atol=1e-6)
    assert torch.allclose(items["k_green"], items["g_green"], atol=1e-6)
    assert torch.allclose(items["l_gray"], torch.full((3, S, S), 200 / 255 * 2 - 1), atol=1e-6)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((20, 20), 32768, dtype=np.uint16)  # half of full scale
    Image.fromarray(arr).save(tmp_path / "deep.png")
    ds = ImageFolderDataset(tmp_path, S)
    level = round(32768 / 65535 * 255)  # 128, where clipping would give 255
    assert torch.equal(ds[0], torch.full((3, S, S), float(level)).mul_(2 / 255).sub_(1.0))


@pytest.mark.parametrize(
    ("width", "height"), [(3 * S, S), (6 * S, 2 * S), (S, 3 * S), (2 * S, 6 * S)]
)
def test_non_square_images_are_resized_then_centre_cropped(
    tmp_path: Path, width: int, height: int
) -> None:
    _bands(width, height, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]).save(tmp_path / "bands.png")
    x = ImageFolderDataset(tmp_path, S)[0]
    assert x.shape == (3, S, S)
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]
    if max(width, height) == 3 * S:  # no resize: the crop is exactly the middle band
        assert torch.equal(x, green.expand(3, S, S))
    else:  # halved first: only the crop's outermost lines may blend with the red/blue bands
        inner = x[:, :, 1:-1] if width > height else x[:, 1:-1, :]
        assert torch.allclose(inner, green.expand_as(inner), atol=1e-5)
        assert not torch.allclose(x, green.expand_as(x), atol=1e-3)


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [
        (250, 250, 64),
        (218, 178, 64),
        (178, 218, 64),
        (40, 30, 16),
        (5, 4, 16),
        (31, 97, 32),
        (64, 64, 64),
        (333, 101, 48),
    ],
)
def test_resize_and_crop_equal_torchvision(height: int, width: int, size: int) -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    t = torch.rand(3, height, width, generator=torch.Generator().manual_seed(height + width))
    ours = resize_shorter_side(t, size)
    ref = TF.resize(t, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert ours.shape == ref.shape and min(ours.shape[-2:]) == size
    assert torch.equal(ours, ref)
    cropped = center_crop(ours, size)
    assert torch.equal(cropped, TF.center_crop(ref, [size, size]))
    assert cropped.shape == (3, size, size)


def test_training_never_imports_torchvision() -> None:
    """torchvision costs a training process ~165 MB and ~1 s; nothing on that path needs it."""
    import subprocess
    import sys

    code = (
        "import sys, fagan.train, fagan.cli, fagan.generate, fagan.data, fagan.sample, "
        "fagan.prepare, fagan.sources; "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_small_images_are_upscaled(tmp_path: Path) -> None:
    _solid((0, 255, 0), size=(5, 4)).save(tmp_path / "tiny.png")
    x = ImageFolderDataset(tmp_path, S)[0]
    assert x.shape == (3, S, S)
    assert torch.allclose(x, torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, S, S))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = _bands(2 * S, S, [(255, 0, 0), (0, 0, 255)])  # red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down: show rotated by 180 degrees
    img.save(tmp_path / "rot.png", exif=exif)
    x = ImageFolderDataset(tmp_path, 2 * S)[0]
    # the rotation puts blue on the left
    assert x[:, :, : S - 1].mean(dim=(1, 2)).tolist() == pytest.approx([-1, -1, 1], abs=1e-5)


def test_bad_files_are_skipped_with_one_summary_warning(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    for i in range(3):
        _solid((255, 0, 0) if i % 2 == 0 else (0, 0, 255)).save(root / f"good{i}.png")
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_text("hello, I am not a png")
    full = _noise_jpeg(tmp_path / "whole.jpg")
    (root / "trunc.jpg").write_bytes(full[: len(full) // 2])

    with pytest.warns(UserWarning, match=r"skipped 2 of 6 files") as record:
        ds = ImageFolderDataset(root, S)
    summary = [str(w.message) for w in record if "skipped" in str(w.message)]
    assert len(summary) == 1
    assert "zero.jpg: zero bytes" in summary[0] and "text.png: not an image" in summary[0]
    assert str(root) in summary[0]
    assert len(ds) == 4  # the truncated jpeg passes the header check
    assert {p.name for p, _ in ds.skipped} == {"zero.jpg", "text.png"}

    with pytest.warns(UserWarning, match="trunc.jpg") as record:
        items = [ds[i] for i in range(len(ds))]
    assert sum("trunc.jpg" in str(w.message) for w in record) == 1
    assert {p.name for p, _ in ds.skipped} == {"zero.jpg", "text.png", "trunc.jpg"}
    trunc_index = [p.name for p in ds.paths].index("trunc.jpg")
    # the truncated file's slot is filled by the next readable image (wrapping around)
    assert torch.equal(items[trunc_index], items[(trunc_index + 1) % len(ds)])
    for x in items:
        assert x.shape == (3, S, S)
        # every item is one of the solid red/blue images
        assert torch.allclose(x.abs(), torch.ones(3, S, S), atol=1e-6)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the truncated file is not warned about again
        again = [ds[i] for i in range(len(ds))]
    assert all(torch.equal(a, b) for a, b in zip(items, again, strict=True))

    # standard iteration (the legacy __getitem__ protocol) ends cleanly
    assert len(list(iter(ds))) == len(ds)


def test_folder_of_only_bad_files_raises(tmp_path: Path) -> None:
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("nope")
    with pytest.warns(UserWarning), pytest.raises(FaganError, match="no readable images"):
        ImageFolderDataset(tmp_path, S)


def test_folder_where_nothing_decodes_raises_instead_of_looping(tmp_path: Path) -> None:
    full = _noise_jpeg(tmp_path / "whole.jpg")
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(full[: len(full) // 2])
    (tmp_path / "copy.jpg").write_bytes(full[: len(full) // 3])
    ds = ImageFolderDataset(tmp_path, S)
    assert len(ds) == 2
    with pytest.warns(UserWarning), pytest.raises(FaganError, match="could be decoded"):
        ds[0]


def test_empty_and_missing_folders_raise(tmp_path: Path) -> None:
    with pytest.raises(FaganError, match="no image files"):
        ImageFolderDataset(tmp_path, S)
    with pytest.raises(FaganError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", S)
    with pytest.raises(FaganError, match="image size"):
        ImageFolderDataset(tmp_path, 0)


def test_index_out_of_range(good_folder: Path) -> None:
    ds = ImageFolderDataset(good_folder, S)
    assert torch.equal(ds[-1], ds[len(ds) - 1])
    with pytest.raises(IndexError):
        ds[len(ds)]


# --------------------------------------------------------------------------------------------
# LFWFaces and open_dataset
# --------------------------------------------------------------------------------------------


def test_lfw_faces_match_an_independent_computation() -> None:
    from skimage.data import lfw_subset

    ds = LFWFaces(image_size=32)
    assert len(ds) == 100
    x = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0

    def expected_bytes(row: int, size: int) -> torch.Tensor:
        face = torch.tensor(lfw_subset()[row], dtype=torch.float64)[None, None]
        resized = torch.nn.functional.interpolate(
            face, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0, 0]
        return (resized.clamp(0, 1) * 255).round()

    u8 = lfw_faces_uint8(32)
    assert u8.shape == (100, 32, 32, 3) and u8.dtype == np.uint8
    for row in (0, 99):
        # float32 vs float64 resizing may round a value that sits on .5 the other way
        diff = (torch.from_numpy(u8[row, :, :, 0]).double() - expected_bytes(row, 32)).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
        assert (u8[row] == u8[row, :, :, :1]).all()  # grey in all three channels
    assert torch.equal(x, torch.from_numpy(u8[0]).permute(2, 0, 1).float() * (2 / 255) - 1)
    with pytest.raises(IndexError):
        ds[100]

    small = LFWFaces(image_size=8)  # downsampling uses the antialiased kernel
    assert small[0].shape == (3, 8, 8)
    assert torch.equal(LFWFaces(8).images, small.images)


def test_lfw_items_are_copies() -> None:
    ds = LFWFaces(8)
    x = ds[3]
    x.zero_()
    assert not torch.equal(ds[3], x)


def test_open_dataset(good_folder: Path) -> None:
    demo = open_dataset(None, 16)
    assert len(demo) == 100 and torch.equal(demo[7], LFWFaces(16)[7])
    ds = open_dataset(str(good_folder), 16)
    per_file = ImageFolderDataset(good_folder, 16)
    assert len(ds) == 12
    for i in range(12):  # decoded once or one by one: the same values
        assert torch.equal(ds[i], per_file[i])
    with pytest.raises(FaganError):
        open_dataset(str(good_folder / "missing"), 16)


# --------------------------------------------------------------------------------------------
# ResumableSampler
# --------------------------------------------------------------------------------------------


def _epoch(sampler: ResumableSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    a = ResumableSampler(100, batch_size=8, seed=7)
    b = ResumableSampler(100, batch_size=8, seed=7)
    assert a.batches_per_epoch == 12 and len(a) == 96
    e0 = _epoch(a, 0)
    assert e0 == _epoch(b, 0)
    assert len(e0) == 96 and len(set(e0)) == 96 and set(e0) <= set(range(100))
    e1 = _epoch(a, 1)
    assert e1 != e0
    assert _epoch(a, 0) == e0  # going back reproduces the order
    assert _epoch(ResumableSampler(100, batch_size=8, seed=8), 0) != e0
    # unaffected by torch's global generator
    torch.manual_seed(123)
    assert _epoch(b, 1) == e1
    unshuffled = ResumableSampler(10, batch_size=3, seed=0, shuffle=False)
    assert list(unshuffled) == list(range(9))


def test_sampler_data_percentage() -> None:
    full = ResumableSampler(200, batch_size=10, seed=1)
    half = ResumableSampler(200, batch_size=10, seed=1, data_percentage=50)
    assert full.batches_per_epoch == 20 and half.batches_per_epoch == 10
    assert len(half) == 100
    h = _epoch(half, 3)
    assert h == _epoch(full, 3)[:100]  # the first half of the same permutation
    tiny = ResumableSampler(200, batch_size=10, seed=1, data_percentage=1)
    assert tiny.batches_per_epoch == 1  # at least one batch
    with pytest.raises(FaganError, match="percentage"):
        ResumableSampler(200, batch_size=10, seed=1, data_percentage=0)
    with pytest.raises(FaganError, match="percentage"):
        ResumableSampler(200, batch_size=10, seed=1, data_percentage=150)


def test_sampler_two_ranks_are_disjoint_and_cover_the_single_rank_epoch() -> None:
    kwargs = {"batch_size": 4, "seed": 5, "world_size": 2}
    r0 = ResumableSampler(50, rank=0, **kwargs)
    r1 = ResumableSampler(50, rank=1, **kwargs)
    assert r0.batches_per_epoch == r1.batches_per_epoch == 6  # 50 // 8
    for epoch in (0, 1):
        i0, i1 = _epoch(r0, epoch), _epoch(r1, epoch)
        assert len(i0) == len(i1) == 24
        assert not set(i0) & set(i1)
        single = _epoch(ResumableSampler(50, batch_size=8, seed=5), epoch)
        assert sorted(i0 + i1) == sorted(single)
        for b in range(6):  # global batch b is split over the ranks' batch b
            assert sorted(i0[4 * b : 4 * b + 4] + i1[4 * b : 4 * b + 4]) == sorted(
                single[8 * b : 8 * b + 8]
            )
    with pytest.raises(FaganError, match="rank"):
        ResumableSampler(50, rank=2, **kwargs)


def test_sampler_resume_yields_exactly_the_tail() -> None:
    s = ResumableSampler(64, batch_size=4, seed=11, data_percentage=75)
    full = _epoch(s, 2)
    assert len(full) == 48
    for k in (0, 1, 5, 12):
        s.set_epoch(2)
        s.set_start_batch(k)
        assert len(s) == 48 - 4 * k
        assert list(s) == full[4 * k :]
        assert len(s) == 48  # the skip applies to one iteration only
        assert list(s) == full
    s.set_epoch(2)
    s.set_start_batch(3)
    s.set_epoch(3)  # a new epoch cancels a pending skip
    assert len(list(s)) == 48
    with pytest.raises(FaganError, match="resume"):
        s.set_start_batch(13)


def test_sampler_too_few_images() -> None:
    with pytest.raises(FaganError, match="7 images is fewer than one batch of 8"):
        ResumableSampler(7, batch_size=8, seed=0)
    with pytest.raises(FaganError, match="12 images is fewer than one batch of 16"):
        ResumableSampler(12, batch_size=8, seed=0, world_size=2)
    ok = ResumableSampler(8, batch_size=8, seed=0)
    assert ok.batches_per_epoch == 1


def test_sampler_without_drop_last_pads_ranks_equally() -> None:
    s = ResumableSampler(10, batch_size=4, seed=0, drop_last=False)
    assert s.batches_per_epoch == 3 and sorted(s) == list(range(10))
    ranks = [
        ResumableSampler(11, batch_size=4, seed=0, drop_last=False, rank=r, world_size=2)
        for r in range(2)
    ]
    got = [list(r) for r in ranks]
    assert len(got[0]) == len(got[1]) == 6
    assert set(got[0]) | set(got[1]) == set(range(11))


# --------------------------------------------------------------------------------------------
# build_loader
# --------------------------------------------------------------------------------------------


def test_loader_batches_are_identical_with_and_without_workers(good_folder: Path) -> None:
    ds = ImageFolderDataset(good_folder, 8)
    batches = {}
    for workers in (0, 2):
        sampler = ResumableSampler(len(ds), batch_size=2, seed=3)
        loader = build_loader(ds, sampler, 2, workers)
        assert loader.drop_last and len(loader) == 6
        got = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            got.extend(batch.clone() for batch in loader)
        sampler.set_epoch(1)
        sampler.set_start_batch(2)
        got.extend(batch.clone() for batch in loader)  # resumed: the last four of epoch 1
        batches[workers] = got
    assert len(batches[0]) == 6 + 6 + 4
    for a, b in zip(batches[0], batches[2], strict=True):
        assert a.shape == (2, 3, 8, 8) and torch.equal(a, b)
    resumed, epoch1 = batches[0][12:], batches[0][6:12]
    assert all(torch.equal(a, b) for a, b in zip(resumed, epoch1[2:], strict=True))


def test_loader_leaves_the_global_generator_alone() -> None:
    ds = LFWFaces(8)
    loader = build_loader(ds, ResumableSampler(len(ds), batch_size=10, seed=0), 10, 0)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)


def test_loader_validates_arguments() -> None:
    ds = LFWFaces(8)
    sampler = ResumableSampler(len(ds), batch_size=10, seed=0)
    with pytest.raises(FaganError, match="workers"):
        build_loader(ds, sampler, 10, -1)
    with pytest.raises(ValueError, match="batch size"):
        build_loader(ds, sampler, 5, 0)


def test_large_jpeg_reduced_decoding_matches_full_decoding(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:150, 0:200]
    arr = np.stack([xx * 255 // 199, yy * 255 // 149, (xx + yy) * 255 // 348], axis=2)
    img = Image.fromarray(arr.astype(np.uint8))
    (tmp_path / "j").mkdir()
    (tmp_path / "p").mkdir()
    img.save(tmp_path / "j" / "big.jpg", quality=95)
    Image.open(tmp_path / "j" / "big.jpg").save(tmp_path / "p" / "big.png")  # same pixels
    from_jpeg = ImageFolderDataset(tmp_path / "j", S)[0]
    from_png = ImageFolderDataset(tmp_path / "p", S)[0]
    assert from_jpeg.shape == from_png.shape == (3, S, S)
    assert (from_jpeg - from_png).abs().mean() < 0.02


# --------------------------------------------------------------------------------------------
# The one pixel path, and hardening against bad files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "size"), [(40, 30, 16), (16, 16, 16), (9, 31, 8)])
def test_to_square_uint8_rounds_the_float_resize_and_crop(
    height: int, width: int, size: int
) -> None:
    rng = np.random.default_rng(height * width)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    got = to_square_uint8(arr, size)
    assert got.shape == (size, size, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    t = torch.from_numpy(arr).permute(2, 0, 1).double() / 255
    ref = center_crop(resize_shorter_side(t, size), size)
    assert np.abs(got.astype(int) - (ref * 255).round().permute(1, 2, 0).numpy()).max() <= 1
    if (height, width) == (size, size):
        assert np.array_equal(got, arr)  # already the size: the same bytes
    stretched = to_square_uint8(arr, size, crop="none")  # the whole image, squeezed
    assert stretched.shape == (size, size, 3)
    full = torch.nn.functional.interpolate(
        t[None], size=(size, size), mode="bilinear", antialias=True
    )[0]
    assert np.abs(stretched.astype(int) - (full * 255).round().permute(1, 2, 0).numpy()).max() <= 1


def test_non_finite_float_images_are_skipped(tmp_path: Path) -> None:
    data = np.full((S, S), 0.5, dtype=np.float32)
    data[3, 4] = np.nan
    Image.fromarray(data, mode="F").save(tmp_path / "nan.tif")
    data[3, 4] = np.inf
    Image.fromarray(data, mode="F").save(tmp_path / "inf.tif")
    data[3, 4] = 0.25
    Image.fromarray(data, mode="F").save(tmp_path / "fine.tif")
    for name in ("nan.tif", "inf.tif"):
        with pytest.raises(ValueError, match="non-finite"):
            read_image(tmp_path / name, S)
    with pytest.warns(UserWarning, match=r"skipped 2 of 3 files .*non-finite") as record:
        data_ = open_training_data(tmp_path, S, progress=False)
    assert sum("skipped" in str(w.message) for w in record) == 1
    assert data_.num_images == 1 and len(data_.skipped) == 2
    pixels = data_.uint8_images([0]).numpy()[0]
    assert pixels[3, 4].tolist() == [64, 64, 64] and pixels.max() == 128  # 0.25, 0.5
    assert "2 of 3 files skipped" in data_.describe()


def _png_bomb(path: Path, side: int) -> None:
    """A valid greyscale PNG of side x side zero pixels, a few hundred KB on disk."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_refused_before_decoding(tmp_path: Path) -> None:
    _png_bomb(tmp_path / "bomb.png", 13000)  # 169 MP, under PIL's own 179 MP error
    assert (tmp_path / "bomb.png").stat().st_size < 400_000
    with pytest.raises(ValueError, match="13000x13000 pixels is more than the 64 MP limit"):
        read_image(tmp_path / "bomb.png", 64)
    _solid((0, 255, 0), size=(64, 64)).save(tmp_path / "ok.png")
    with pytest.warns(UserWarning, match=r"bomb.png: 13000x13000 pixels"):
        data_ = open_training_data(tmp_path, 64, progress=False)
    assert data_.num_images == 1


def test_large_images_are_decoded_reduced(tmp_path: Path) -> None:
    from fagan.data import _decode

    side = 5000  # 25 MP, allowed: decoded at a whole-factor reduction
    yy = np.arange(side)[:, None] * 255 // side
    Image.fromarray(np.broadcast_to(yy, (side, side)).astype(np.uint8)).save(tmp_path / "b.png")
    arr = _decode(tmp_path / "b.png", 64)
    assert 128 <= arr.shape[0] < 256 and arr.shape[:2] == (arr.shape[1], arr.shape[1])
    out = read_image(tmp_path / "b.png", 64)
    expected = (np.arange(64) + 0.5) * 255 / 64  # a vertical ramp survives the reduction
    assert np.abs(out[:, 0, 0].astype(float) - expected).max() < 3


def test_truncated_png_is_skipped_once(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    np.random.seed(0)
    Image.fromarray(np.random.randint(0, 256, (40, 40, 3), dtype=np.uint8)).save(full)
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        _solid((255, 0, 0)).save(root / f"good{i}.png")
    (root / "trunc.png").write_bytes(full.read_bytes()[:600])
    # decoded once for training: one warning, counted once, never used
    with pytest.warns(UserWarning) as record:
        data_ = open_training_data(root, S, progress=False)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "skipped 1 of 4 files" in messages[0]
    assert "trunc.png: truncated" in messages[0]
    assert data_.num_images == 3 and data_.skipped == [("trunc.png", "truncated")]
    # the per-file dataset finds it at its header check, not among the usable images
    with pytest.warns(UserWarning) as record:
        ds = ImageFolderDataset(root, S)
    assert len(record) == 1 and len(ds) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [ds[i] for i in range(len(ds))]


def test_check_dataset_path_says_what_the_path_is(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(
        FaganError,
        match=r"photo.jpg is not a folder or a dataset zip "
        r"\(a file that is not a zip\)",
    ):
        check_dataset_path(tmp_path / "photo.jpg")
    (tmp_path / "cut.zip").write_bytes(b"PK\x03\x04 and then nothing")
    with pytest.raises(
        FaganError,
        match=r"cut.zip is not a folder or a dataset zip "
        r"\(a truncated or damaged zip\)",
    ):
        check_dataset_path(tmp_path / "cut.zip")
    with pytest.raises(FaganError, match="does not exist"):
        check_dataset_path(tmp_path / "missing")
    assert check_dataset_path(tmp_path) == tmp_path


# --------------------------------------------------------------------------------------------
# Sources and labels
# --------------------------------------------------------------------------------------------


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_class_sub_folders_give_labels(tmp_path: Path) -> None:
    for name, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / name).mkdir()
        for i in range(2 if name == "cat" else 3):
            _solid(color).save(tmp_path / name / f"{i}.png")
    source = open_source(tmp_path)
    assert source.class_names == ("cat", "dog")
    assert source.labels.tolist() == [0, 0, 1, 1, 1]
    assert open_source(tmp_path, labels="none").labels is None
    data_ = open_training_data(tmp_path, S, progress=False)
    assert data_.labels.tolist() == [0, 0, 1, 1, 1] and data_.class_names == ("cat", "dog")
    assert data_.label_counts() == {0: 2, 1: 3}
    assert "2 classes: cat 2, dog 3" in data_.describe()
    # red images carry label 0, blue ones label 1
    batch = next(data_.batches(ResumableSampler(5, batch_size=5, seed=1)))
    reds = batch.images[:, 0].mean(dim=(1, 2)) > 0
    assert batch.labels.tolist() == (~reds).long().tolist()
    # one sub-folder (CelebA's img_align_celeba) or loose images: no classes
    single = tmp_path / "single"
    (single / "img_align_celeba").mkdir(parents=True)
    _solid((1, 2, 3)).save(single / "img_align_celeba" / "a.png")
    assert open_source(single).labels is None


def test_zip_labels_are_checked(tmp_path: Path) -> None:
    png = _png_bytes((10, 20, 30))
    members = {"00000/img00000000.png": png, "00000/img00000001.png": png}

    def zip_with(meta: str | None, name: str = "d.zip") -> Path:
        extra = {} if meta is None else {"dataset.json": meta.encode()}
        return _write_zip(tmp_path / name, {**members, **extra})

    assert open_source(zip_with(None)).labels is None
    assert open_source(zip_with('{"labels": null}')).labels is None
    good = (
        '{"labels": [["00000/img00000000.png", 3], ["00000/img00000001.png", 1]], '
        '"class_names": ["a", "b", "c", "d"]}'
    )
    source = open_source(zip_with(good))
    assert source.labels.tolist() == [3, 1] and source.class_names == ("a", "b", "c", "d")
    for meta, message in [
        ("{labels: oops", r"dataset.json is not valid JSON"),
        ('["labels"]', r'must be a JSON object with a "labels" entry'),
        (
            '{"labels": [["00000/img00000000.png", 1.5], ["00000/img00000001.png", 0]]}',
            r"the label of 00000/img00000000.png is 1.5, not a whole number",
        ),
        (
            '{"labels": [["00000/img00000000.png", "cat"], ["00000/img00000001.png", 0]]}',
            r'the label of 00000/img00000000.png is "cat"',
        ),
        (
            '{"labels": [["00000/img00000000.png", 0], ["00000/img00000001.png", 0], '
            '["00000/img00000009.png", 1]]}',
            r"names 1 file\(s\) that are not images in the zip \(e.g. 00000/img00000009.png\)",
        ),
        (
            '{"labels": [["00000/img00000000.png", 0]]}',
            r"has no label for 1 image\(s\) \(e.g. 00000/img00000001.png\)",
        ),
        (
            '{"labels": [["00000/img00000000.png", 0], ["00000/img00000001.png", 2]], '
            '"class_names": ["a"]}',
            r'"class_names" must be a list of names',
        ),
    ]:
        with pytest.raises(FaganError, match=message):
            open_source(zip_with(meta))
    with pytest.raises(FaganError, match="holds no images"):
        open_source(_write_zip(tmp_path / "empty.zip", {"readme.txt": b"hi"}))


def test_zip_images_of_mixed_sizes_are_refused(tmp_path: Path) -> None:
    path = _write_zip(
        tmp_path / "mixed.zip",
        {
            "00000/img00000000.png": _png_bytes((1, 2, 3), (8, 8)),
            "00000/img00000001.png": _png_bytes((1, 2, 3), (8, 8)),
            "00000/img00000002.png": _png_bytes((1, 2, 3), (16, 16)),
        },
    )
    message = (
        r"mixed.zip: images of mixed sizes: 00000/img00000002.png is 16x16 but "
        r"00000/img00000000.png is 8x8"
    )
    with pytest.raises(FaganError, match=message):
        open_training_data(path, 8, progress=False)
    with pytest.raises(FaganError, match=message):  # streaming checks the headers first
        open_training_data(path, 8, max_memory=0, progress=False)


def test_zip_of_another_size_is_resized_consistently(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    arrays = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(3)]
    members = {}
    for i, a in enumerate(arrays):
        import io

        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="PNG")
        members[f"00000/img{i:08d}.png"] = buffer.getvalue()
    data_ = open_training_data(_write_zip(tmp_path / "z.zip", members), 16, progress=False)
    assert "(resized from 24x24)" in data_.describe()
    for i, a in enumerate(arrays):
        assert np.array_equal(data_.uint8_images([i])[0].numpy(), to_square_uint8(a, 16))


# --------------------------------------------------------------------------------------------
# Training data: batches in memory and streamed, the cache
# --------------------------------------------------------------------------------------------


def _epoch_batches(data_, sampler: ResumableSampler, epoch: int, start: int = 0) -> list:
    sampler.set_epoch(epoch)
    sampler.set_start_batch(start)
    return list(data_.batches(sampler))


def test_batches_follow_the_sampler_in_memory_and_streamed(good_folder: Path) -> None:
    memory = open_training_data(good_folder, 8, progress=False)
    streamed = open_training_data(good_folder, 8, max_memory=0, num_workers=2, progress=False)
    assert memory.in_memory and not streamed.in_memory and len(memory) == len(streamed) == 12
    try:
        for data_ in (memory, streamed):
            sampler = ResumableSampler(len(data_), batch_size=4, seed=3)
            batches = _epoch_batches(data_, sampler, 1)
            assert len(batches) == 3
            order = list(sampler)  # epoch 1 again
            for b, batch in enumerate(batches):
                assert batch.images.shape == (4, 3, 8, 8) and batch.images.dtype == torch.float32
                assert batch.labels is None
                expected = uint8_to_float(data_.uint8_images(order[4 * b : 4 * b + 4]))
                assert torch.equal(batch.images, expected)
            resumed = _epoch_batches(data_, sampler, 1, start=2)
            assert len(resumed) == 1 and torch.equal(resumed[0].images, batches[2].images)
        for a, b in zip(
            _epoch_batches(memory, ResumableSampler(12, batch_size=4, seed=5), 0),
            _epoch_batches(streamed, ResumableSampler(12, batch_size=4, seed=5), 0),
            strict=True,
        ):
            assert torch.equal(a.images, b.images)
    finally:
        streamed.close()


def test_batches_layout_and_values() -> None:
    demo = open_training_data(None, 8, channels_last=True)
    assert len(demo) == 100 * DEMO_REPEATS and demo.repeat == DEMO_REPEATS and demo.hflip
    sampler = ResumableSampler(len(demo), batch_size=16, seed=0, shuffle=False)
    gen = torch.Generator().manual_seed(1)
    batch = next(demo.batches(sampler, gen))
    x = batch.images
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    plain = uint8_to_float(torch.from_numpy(lfw_faces_uint8(8)[:16]))
    flipped = [torch.equal(x[i], plain[i].flip(2)) for i in range(16)]
    assert all(torch.equal(x[i], plain[i]) or flipped[i] for i in range(16))
    assert 0 < sum(flipped) < 16  # each image mirrored with probability 1/2
    # index i is face i mod 100: the second pass of an epoch repeats the faces
    assert torch.equal(demo.uint8_images([3]), torch.from_numpy(lfw_faces_uint8(8)[3:4]))
    # bytes back to floats: the exact inverse of sample.to_uint8
    from fagan.sample import to_uint8

    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(1, 16, 16, 3)
    assert torch.equal(to_uint8(uint8_to_float(u8)), u8.permute(0, 3, 1, 2))


def test_cache_is_written_once_and_mapped(tmp_path: Path, good_folder: Path) -> None:
    cache = tmp_path / "cache"
    first = open_training_data(good_folder, 8, cache=True, cache_dir=cache, progress=False)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 3 and files[0].startswith("imgs-8px-")
    assert [Path(f).suffix for f in files] == [".json", ".lock", ".npy"]
    npy = cache / files[2]
    assert first.cache_path == npy and str(npy) in first.describe()
    stamp = npy.stat().st_mtime_ns
    second = open_training_data(good_folder, 8, cache=True, cache_dir=cache, progress=False)
    assert npy.stat().st_mtime_ns == stamp  # read, not written again
    assert isinstance(second.images.base, np.memmap) and not second.images.flags.writeable
    assert np.array_equal(second.images, first.images)
    assert np.array_equal(second.images, open_training_data(good_folder, 8).images)
    # a changed source is a new entry
    _solid((9, 9, 9)).save(good_folder / "z_new.png")
    third = open_training_data(good_folder, 8, cache=True, cache_dir=cache, progress=False)
    assert third.num_images == 13 and third.cache_path != npy
    assert len(list(cache.glob("*.npy"))) == 2


def _open_in_child(args: tuple[str, str, str]) -> tuple[str, bytes]:
    folder, cache, _ = args
    data_ = open_training_data(folder, 8, cache=True, cache_dir=cache, progress=False, workers=1)
    return str(data_.cache_path), data_.images.tobytes()


def test_processes_share_one_cache_entry(tmp_path: Path, good_folder: Path) -> None:
    import multiprocessing

    cache = tmp_path / "cache"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(
            _open_in_child, [(str(good_folder), str(cache), str(i)) for i in range(3)]
        )
    assert len({path for path, _ in results}) == 1 and len({b for _, b in results}) == 1
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob(".*"))  # no temp left


def test_memory_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAGAN_DATA_MEMORY", "1.5G")
    assert memory_budget() == int(1.5 * 2**30)
    monkeypatch.setenv("FAGAN_DATA_MEMORY", "0")
    assert memory_budget() == 0
    monkeypatch.setenv("FAGAN_DATA_MEMORY", "lots")
    with pytest.raises(FaganError, match="FAGAN_DATA_MEMORY must be a size"):
        memory_budget()
    monkeypatch.delenv("FAGAN_DATA_MEMORY")
    assert 0 < memory_budget() < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_decoding_in_parallel_gives_the_same_bytes(tmp_path: Path) -> None:
    from fagan.data import load_images

    rng = np.random.default_rng(0)
    for i in range(300):  # above the size that starts a worker pool
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
            tmp_path / f"{i:03d}.png"
        )
    source = open_source(tmp_path)
    pooled = load_images(source, 8, workers=2, progress=False).images
    serial = load_images(source, 8, workers=1, progress=False).images
    assert pooled.shape == (300, 8, 8, 3) and np.array_equal(pooled, serial)
