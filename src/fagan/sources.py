"""Image sources: folders and dataset zips, their labels, and the one pixel path.

A source (:func:`open_source`) is a folder of images (flat, nested, or one sub-folder per
class: the ImageFolder convention) or a dataset zip in NVlabs/stylegan2-ada-pytorch's
convention: PNGs named ``00000/img00000000.png`` and a ``dataset.json`` holding
``{"labels": [["00000/img00000000.png", 6], ...]}`` (or ``"labels": null``), written by
``fagan prepare`` or by StyleGAN2-ADA's ``dataset_tool.py``.

Every image goes through one function, :func:`to_square_uint8`, after :func:`read_image`'s
decoding (RGB, EXIF orientation applied, transparency composited over white, 16-bit and
float greys scaled, only as many pixels decoded as the target size can use): the shorter
side resized to ``S`` (antialiased bilinear, in float32), the centre square cropped, the
result rounded to bytes. ``fagan prepare`` and the training data both use it, so a zip
prepared from a folder holds exactly the bytes training from that folder sees.

Files that are not usable images (unreadable, truncated, above :data:`MAX_IMAGE_PIXELS`,
holding NaN or infinite values) are skipped and counted, never fatal one by one;
:func:`decode_images` decodes a whole source in parallel over the CPU cores.
"""

from __future__ import annotations

import functools
import io
import json
import multiprocessing
import os
import signal
import struct
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from fagan.errors import FaganError

__all__ = [
    "CROPS",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MAX_MEMBER_BYTES",
    "Decoded",
    "ImageSource",
    "center_crop",
    "check_dataset_path",
    "decode_images",
    "default_workers",
    "find_images",
    "open_source",
    "read_image",
    "resize_shorter_side",
    "skip_summary",
    "to_square_uint8",
    "uint8_to_float",
]

#: File-name suffixes (lower case, with the dot) treated as images; matched case-insensitively.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)

#: Images with more pixels than this (after JPEG's reduced-scale decoding) are skipped: a
#: 20 KB PNG can declare 13000 x 13000 pixels, 0.5 GB as bytes and 2 GB as floats.
MAX_IMAGE_PIXELS = 64_000_000

#: Zip members larger than this uncompressed are skipped (a zip bomb, not an image).
MAX_MEMBER_BYTES = 256 * 2**20

#: Fewer images than this are decoded in the calling process (no worker pool).
_POOL_THRESHOLD = 256

#: Exceptions that mean "this file is not a decodable image" (PIL plugins raise a variety).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes PIL.UnidentifiedImageError and "image file is truncated"
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    zipfile.BadZipFile,
    Image.DecompressionBombError,
)

#: EXIF orientation tag value -> the transpose that undoes it.
_EXIF_ORIENTATION = 0x0112
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: Modes holding more than 8 bits per pixel, which ``Image.convert`` would clip, not scale.
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
#: Modes :meth:`PIL.Image.Image.reduce` averages correctly (not palettes or bilevel).
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})

CROPS = ("center", "none")


class _BadImage(ValueError):
    """A file that is not a usable image; the message says why."""


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise FaganError(f"image size must be a positive whole number, got {image_size!r}")
    return image_size


def _check_crop(crop: str) -> str:
    if crop not in CROPS:
        raise FaganError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    return crop


# --------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------


def find_images(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """List the image files under a folder, in a deterministic (sorted) order.

    The original project read one flat folder; nested folders are accepted too. Files are
    recognised by suffix (:data:`IMAGE_EXTENSIONS`, any case). Hidden files and folders (names
    starting with ``.``, such as macOS ``._photo.jpg`` resource forks) are ignored. Symbolic
    links to folders are followed, each real folder visited once.

    Args:
        root: The folder to search.
        recursive: Also search sub-folders.

    Returns:
        The image paths (``root`` joined with the relative path), sorted.

    Raises:
        FaganError: If ``root`` is missing, is not a folder, or holds no image files.
    """
    root = Path(root)
    if not root.exists():
        raise FaganError(f"images folder {root} does not exist")
    if not root.is_dir():
        raise FaganError(f"images folder {root} is not a folder")

    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        if recursive:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        else:
            dirnames[:] = []
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name))
    if not found:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        where = "or its sub-folders " if recursive else ""
        raise FaganError(f"no image files in {root} {where}(looked for {kinds})")
    return sorted(found)


def check_dataset_path(path: str | os.PathLike[str], flag: str = "--images_dir") -> Path:
    """Check that ``path`` is an images folder or a zip file, and say what it is if not.

    Args:
        path: The path given.
        flag: The option that gave it, for the message.

    Returns:
        The path.

    Raises:
        FaganError: If the path is missing, or is a file that is not a zip (one that is
            truncated or damaged, say).
    """
    p = Path(path)
    if p.is_dir():
        return p
    if not p.exists():
        raise FaganError(f"{flag}: {p} does not exist")
    if not p.is_file():
        raise FaganError(f"{flag}: {p} is not a folder or a dataset zip")
    if not zipfile.is_zipfile(p):
        what = (
            "a truncated or damaged zip"
            if p.suffix.lower() == ".zip"
            else "a file that is not a zip"
        )
        raise FaganError(f"{flag}: {p} is not a folder or a dataset zip ({what})")
    return p


# --------------------------------------------------------------------------------------------
# Decoding one image
# --------------------------------------------------------------------------------------------


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """Convert any PIL image to an ``(H, W, 3)`` array: uint8, or float32 in ``[0, 1]``.

    Transparent pixels are composited over white. 16-bit and 32-bit greyscale are scaled
    (``Image.convert("L")`` would clip them): ``I;16`` by 1/65535; ``I`` by 1/65535 when any
    value exceeds 255 and by 1/255 otherwise; ``F`` as is when its maximum is at most 1 and by
    1/255 otherwise.

    Raises:
        _BadImage: If a float image holds NaN or infinite values.
    """
    mode = im.mode
    if mode in _HIGH_BIT_MODES:
        arr = np.asarray(im).astype(np.float32)
        if not np.isfinite(arr).all():
            raise _BadImage("non-finite pixel values (NaN or infinity)")
        peak = float(arr.max()) if arr.size else 0.0
        if mode.startswith("I;16") or (mode == "I" and peak > 255):
            arr /= 65535.0
        elif mode == "I" or peak > 1.0:
            arr /= 255.0
        arr = np.clip(arr, 0.0, 1.0)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    elif mode != "RGB":
        rgb = im.convert("RGB")
    else:
        rgb = im
    return np.array(rgb, dtype=np.uint8)  # a writable copy, for torch.from_numpy


def _decode_sized(
    source: str | os.PathLike[str] | IO[bytes], image_size: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image to an RGB array; also return its stored ``(width, height)``.

    Only as many pixels as ``image_size`` can use are decoded: JPEGs at a reduced DCT scale
    (``Image.draft``) and other images box-reduced (``Image.reduce``) by whole factors that
    keep the shorter side at least ``2 * image_size``. Images above
    :data:`MAX_IMAGE_PIXELS` (after the JPEG reduction) are refused before decoding.

    Raises:
        _BadImage: For too many pixels or non-finite values.
        Exception: Any of ``_DECODE_ERRORS`` for files PIL cannot read.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as im:
            stored = im.size
            if im.format == "JPEG":
                im.draft(None, (image_size, image_size))
            width, height = im.size
            if width < 1 or height < 1:
                raise _BadImage("empty image")
            if width * height > MAX_IMAGE_PIXELS:
                raise _BadImage(
                    f"{width}x{height} pixels is more than the "
                    f"{MAX_IMAGE_PIXELS // 1_000_000} MP limit"
                )
            im.load()
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION)
            except _DECODE_ERRORS:  # malformed EXIF: keep the pixels as stored
                orientation = None
            out: Image.Image = im
            factor = min(width, height) // (2 * image_size)
            if factor >= 2 and out.mode in _REDUCIBLE_MODES:
                out = out.reduce(factor)
            fix = _ORIENTATION_FIX.get(orientation) if isinstance(orientation, int) else None
            if fix is not None:
                out = out.transpose(fix)
            return _pil_to_array(out), stored


def _decode(source: str | os.PathLike[str] | IO[bytes], image_size: int) -> np.ndarray:
    """Decode an image to an ``(H, W, 3)`` RGB array (see :func:`_decode_sized`)."""
    return _decode_sized(source, image_size)[0]


def resize_shorter_side(t: torch.Tensor, size: int) -> torch.Tensor:
    """A float (C, H, W) image resized so its shorter side is ``size`` (bilinear, antialiased).

    The same computation as ``torchvision.transforms.v2.functional.resize(t, [size],
    antialias=True)`` (the longer side becomes ``int(size * long / short)``), done with
    :func:`torch.nn.functional.interpolate` directly: importing torchvision costs a
    training process ~165 MB of memory and ~1 s of start-up for this one call.
    """
    height, width = t.shape[-2:]
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if height <= width else (new_long, size)
    if (new_h, new_w) == (height, width):
        return t
    out = torch.nn.functional.interpolate(
        t.unsqueeze(0),
        size=(new_h, new_w),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return out.squeeze(0)


def center_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window of a (C, H, W) image with both sides >= size.

    Offsets rounded as ``torchvision.transforms.v2.functional.center_crop`` rounds them.
    """
    height, width = t.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return t[..., top : top + size, left : left + size]


def to_square_uint8(arr: np.ndarray, image_size: int, crop: str = "center") -> np.ndarray:
    """The one pixel path of training data and ``fagan prepare``: an ``(S, S, 3)`` uint8 image.

    ``crop="center"`` resizes the shorter side to ``S`` (:func:`resize_shorter_side`) and
    takes the central square (:func:`center_crop`); ``crop="none"`` resizes the whole image
    to ``S`` x ``S`` (a non-square image is stretched). Resizing is done in float32 and
    rounded to the nearest byte; an image already ``S`` x ``S`` in uint8 is returned as is.

    Args:
        arr: An ``(H, W, 3)`` image, uint8 or float in ``[0, 1]`` (as :func:`read_image`
            decodes it).
        image_size: The side ``S``.
        crop: ``"center"`` or ``"none"``.

    Returns:
        A C-contiguous ``(S, S, 3)`` uint8 array.
    """
    size = image_size
    if arr.dtype == np.uint8 and arr.shape[:2] == (size, size):
        return np.ascontiguousarray(arr)
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)  # (3, H, W)
    t = t.to(torch.float32).div_(255.0) if t.dtype == torch.uint8 else t.to(torch.float32)
    if crop == "none":
        if tuple(t.shape[-2:]) != (size, size):
            t = torch.nn.functional.interpolate(
                t.unsqueeze(0),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            ).squeeze(0)
    else:
        if min(t.shape[-2:]) != size:
            t = resize_shorter_side(t, size)
        if tuple(t.shape[-2:]) != (size, size):
            t = center_crop(t, size)
    u8 = t.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
    return u8.permute(1, 2, 0).contiguous().numpy()  # (S, S, 3)


def uint8_to_float(
    images: torch.Tensor, memory_format: torch.memory_format = torch.preserve_format
) -> torch.Tensor:
    """Bytes ``(..., H, W, 3)`` to float32 ``(..., 3, H, W)`` in ``[-1, 1]``: ``u * (2/255) - 1``.

    The inverse of :func:`fagan.sample.to_uint8` byte for byte. One multiplication and one
    subtraction per value (no fused multiply-add), so the values are the same on every
    device and in every layout. The default result is laid out channels-last in memory (the
    bytes' own order); ``memory_format`` converts and reorders in one pass.
    """
    x = images.movedim(-1, -3).to(torch.float32, memory_format=memory_format)
    return x.mul_(2.0 / 255.0).sub_(1.0)


def read_image(
    source: str | os.PathLike[str] | IO[bytes], image_size: int, crop: str = "center"
) -> np.ndarray:
    """Read one image file as training sees it: an ``(S, S, 3)`` uint8 array.

    Args:
        source: A path or a binary file object.
        image_size: The side ``S``.
        crop: ``"center"`` or ``"none"`` (see :func:`to_square_uint8`).

    Raises:
        Exception: One of ``_DECODE_ERRORS`` (``_BadImage`` among them) if the file is not a
            usable image.
    """
    return to_square_uint8(_decode(source, image_size), image_size, crop)


def _to_model_tensor(arr: np.ndarray, image_size: int) -> torch.Tensor:
    """:func:`to_square_uint8` of an ``(H, W, 3)`` array as a ``(3, S, S)`` float in ``[-1, 1]``."""
    u8 = torch.from_numpy(to_square_uint8(arr, image_size))
    return uint8_to_float(u8).contiguous()


def _describe_error(exc: BaseException) -> str:
    """A short reason for a file that failed to decode."""
    if isinstance(exc, _BadImage):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels ({exc})"
    if isinstance(exc, zipfile.BadZipFile):
        return f"damaged in the zip ({exc})"
    if isinstance(exc, OSError) and exc.errno is not None:  # missing, no permission, ...
        return f"cannot read ({exc.strerror or exc})"
    text = str(exc) or type(exc).__name__
    if "truncated" in text:
        return "truncated"
    return f"cannot decode ({text})"


# --------------------------------------------------------------------------------------------
# Sources: a folder or a dataset zip, with optional class labels
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _zip_handle(path: str, stamp: tuple[int, int, int], pid: int) -> zipfile.ZipFile:
    """This process's open handle on a zip (keyed by pid: a forked child opens its own)."""
    del stamp, pid  # part of the cache key only
    return zipfile.ZipFile(path)


def _file_stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass(frozen=True)
class ImageSource:
    """The image files of a folder or a dataset zip, in a fixed order, with their labels.

    Attributes:
        path: The folder or zip.
        kind: ``"folder"`` or ``"zip"``.
        names: The images' paths relative to the folder, or the zip's member names; sorted.
        labels: One whole-number class label per image, or None (unlabelled).
        class_names: The classes' names by label, or None.
        stamp: The zip's (size, mtime, inode) when opened, so that stale handles are not used.
    """

    path: Path
    kind: str
    names: tuple[str, ...]
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    stamp: tuple[int, int, int] = (0, 0, 0)

    def __len__(self) -> int:
        return len(self.names)

    def where(self, index: int) -> str:
        """A name for image ``index`` in messages."""
        return f"{self.path}/{self.names[index]}" if self.kind == "folder" else self.names[index]

    def open(self, index: int) -> IO[bytes]:
        """Image ``index``'s bytes as a binary file (the caller closes it).

        Raises:
            _BadImage: For an empty file, or a zip member that is encrypted or too large
                uncompressed.
            OSError: For a file that cannot be read.
            zipfile.BadZipFile: For a member whose data is damaged.
        """
        name = self.names[index]
        if self.kind == "folder":
            handle = open(os.path.join(self.path, name), "rb")  # closed by the caller
            if os.fstat(handle.fileno()).st_size == 0:
                handle.close()
                raise _BadImage("zero bytes")
            return handle
        zf = _zip_handle(str(self.path), self.stamp, os.getpid())
        info = zf.getinfo(name)
        if info.file_size == 0:
            raise _BadImage("zero bytes")
        if info.flag_bits & 0x1:
            raise _BadImage("encrypted in the zip")
        if info.file_size > MAX_MEMBER_BYTES:
            raise _BadImage(
                f"{info.file_size / 2**20:.0f} MB uncompressed, more than the "
                f"{MAX_MEMBER_BYTES // 2**20} MB limit for one image"
            )
        return io.BytesIO(zf.read(info))

    def read(
        self, index: int, image_size: int, crop: str = "center"
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``index`` as ``(S, S, 3)`` uint8, and its stored ``(width, height)``.

        Raises:
            Exception: One of ``_DECODE_ERRORS`` if it is not a usable image.
        """
        with self.open(index) as handle:
            arr, stored = _decode_sized(handle, image_size)
        return to_square_uint8(arr, image_size, crop), stored

    def subset(self, count: int) -> ImageSource:
        """The first ``count`` images."""
        labels = None if self.labels is None else self.labels[:count]
        return ImageSource(
            self.path, self.kind, self.names[:count], labels, self.class_names, self.stamp
        )


def _class_labels(root: Path, names: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """Labels from class sub-folders: every image in a sub-folder, two sub-folders or more.

    The ImageFolder convention: the first path component is the class; classes are numbered
    in sorted order of their folder names. One sub-folder (such as CelebA's
    ``img_align_celeba``) or images directly in ``root`` mean no classes.
    """
    parts = [name.split("/", 1) for name in names]
    if any(len(p) == 1 for p in parts):
        return None
    classes = sorted({p[0] for p in parts})
    if len(classes) < 2:
        return None
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[p[0]] for p in parts], dtype=np.int64), tuple(classes)


def _zip_labels(
    path: Path, zf: zipfile.ZipFile, names: Sequence[str]
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Read and check a dataset zip's ``dataset.json`` (StyleGAN2-ADA's format)."""
    if "dataset.json" not in zf.NameToInfo:
        return None, None
    where = f"{path}: dataset.json"
    try:
        meta = json.loads(zf.read("dataset.json").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FaganError(f"{where} is not valid JSON ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FaganError(f"{where} cannot be read ({exc})") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise FaganError(f'{where} must be a JSON object with a "labels" entry')
    entries = meta["labels"]
    if entries is None:
        return None, None
    if not isinstance(entries, list):
        raise FaganError(f'{where}: "labels" must be a list of [file name, label] pairs or null')
    by_name: dict[str, int] = {}
    for k, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise FaganError(
                f"{where}: label entry {k} is not a [file name, label] pair: "
                f"{json.dumps(entry)[:80]}"
            )
        name, label = entry
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise FaganError(
                f"{where}: the label of {name} is {json.dumps(label)[:40]}, not a "
                "whole number >= 0 (fagan reads class labels)"
            )
        by_name[name.replace("\\", "/")] = label
    present = set(names)
    unknown = sorted(n for n in by_name if n not in present)
    if unknown:
        raise FaganError(
            f"{where} names {len(unknown)} file(s) that are not images in the zip "
            f"(e.g. {unknown[0]})"
        )
    unlabelled = [n for n in names if n not in by_name]
    if unlabelled:
        raise FaganError(
            f"{where} has no label for {len(unlabelled)} image(s) (e.g. {unlabelled[0]})"
        )
    labels = np.array([by_name[n] for n in names], dtype=np.int64)
    class_names = meta.get("class_names")
    if class_names is not None:
        if not (
            isinstance(class_names, list)
            and all(isinstance(c, str) for c in class_names)
            and len(class_names) > int(labels.max(initial=-1))
        ):
            raise FaganError(
                f'{where}: "class_names" must be a list of names, one for each '
                f"label 0..{int(labels.max(initial=0))}"
            )
        return labels, tuple(class_names)
    return labels, None


def open_source(
    path: str | os.PathLike[str], labels: str = "auto", flag: str = "--images_dir"
) -> ImageSource:
    """List the images of a folder or dataset zip, and read their labels.

    Args:
        path: An images folder or a dataset zip.
        labels: ``"auto"`` (class sub-folders, or the zip's ``dataset.json``) or ``"none"``.
        flag: The option that gave ``path``, for messages.

    Returns:
        The source, its images sorted by name.

    Raises:
        FaganError: If the path is missing or not a folder or zip, the zip is damaged, holds
            no images or has a malformed ``dataset.json``, or the folder holds no images.
    """
    if labels not in ("auto", "none"):
        raise FaganError(f"labels must be auto or none, got {labels!r}")
    p = check_dataset_path(path, flag)
    if p.is_dir():
        files = find_images(p)
        names = tuple(f.relative_to(p).as_posix() for f in files)
        found = _class_labels(p, names) if labels == "auto" else None
        if found is None:
            return ImageSource(p, "folder", names)
        return ImageSource(p, "folder", names, found[0], found[1])
    try:
        stamp = _file_stamp(p)
        zf = _zip_handle(str(p), stamp, os.getpid())
        infos = zf.infolist()
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        ValueError,
        EOFError,
        struct.error,
    ) as exc:
        raise FaganError(f"{flag}: {p} is not a readable zip ({exc})") from None
    names = tuple(
        sorted(
            info.filename
            for info in infos
            if not info.is_dir()
            and not info.filename.startswith("__MACOSX/")
            and not os.path.basename(info.filename).startswith(".")
            and os.path.splitext(info.filename)[1].lower() in IMAGE_EXTENSIONS
        )
    )
    if not names:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise FaganError(f"{flag}: {p} holds no images (looked for {kinds})")
    if labels == "none":
        return ImageSource(p, "zip", names, stamp=stamp)
    found_labels, class_names = _zip_labels(p, zf, names)
    return ImageSource(p, "zip", names, found_labels, class_names, stamp)


# --------------------------------------------------------------------------------------------
# Decoding many images, in parallel
# --------------------------------------------------------------------------------------------


class Decoded(NamedTuple):
    """One image of a source, decoded (``image`` None and ``reason`` set when unusable)."""

    index: int
    image: np.ndarray | bytes | None
    stored_size: tuple[int, int] | None
    reason: str | None


@dataclass(frozen=True)
class _DecodeJob:
    source: ImageSource
    image_size: int
    crop: str
    png_level: int | None  # None: return arrays; else PNG-encode at this zlib level

    def __call__(self, index: int) -> Decoded:
        try:
            image, stored = self.source.read(index, self.image_size, self.crop)
        except _DECODE_ERRORS as exc:
            return Decoded(index, None, None, _describe_error(exc))
        if self.png_level is None:
            return Decoded(index, image, stored, None)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=self.png_level)
        return Decoded(index, buffer.getvalue(), stored, None)


_POOL_JOB: list[_DecodeJob] = []  # the job of this pool worker (set by its initializer)


def _pool_init(job: _DecodeJob) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _POOL_JOB[:] = [job]


def _pool_run(indices: list[int]) -> list[Decoded]:
    job = _POOL_JOB[0]
    return [job(i) for i in indices]


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def decode_images(
    source: ImageSource,
    image_size: int,
    crop: str = "center",
    *,
    workers: int | None = None,
    png_level: int | None = None,
    progress: bool | None = None,
    desc: str = "decoding",
) -> Iterator[Decoded]:
    """Decode every image of ``source`` (in parallel), yielding the results in order.

    Images go through :meth:`ImageSource.read` (:func:`to_square_uint8`) in worker
    processes (``fork`` where available, so start-up is instant), in chunks; unusable files
    come back with ``image`` None and a reason instead of raising. Stopping the iteration
    early stops the workers.

    Args:
        source: The images.
        image_size: The side ``S`` of the square images.
        crop: ``"center"`` or ``"none"``.
        workers: Worker processes (default: the usable cores); 0 or 1 decodes here.
        png_level: If given, each image comes back PNG-encoded at this zlib level (0-9).
        progress: Show a progress bar (None: when stderr is a terminal).
        desc: The progress bar's label.
    """
    job = _DecodeJob(source, image_size, _check_crop(crop), png_level)
    n = len(source)
    workers = default_workers() if workers is None else workers
    bar = tqdm(
        total=n,
        desc=desc,
        unit="img",
        disable=None if progress is None else not progress,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    try:
        if workers <= 1 or n < _POOL_THRESHOLD:
            for index in range(n):
                bar.update(1)
                yield job(index)
            return
        chunk = max(8, min(256, n // (workers * 16)))
        chunks = [list(range(s, min(n, s + chunk))) for s in range(0, n, chunk)]
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(
            min(workers, len(chunks)), mp_context=context, initializer=_pool_init, initargs=(job,)
        ) as pool:
            try:
                for results in pool.map(_pool_run, chunks):
                    bar.update(len(results))
                    yield from results
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def skip_summary(
    where: str | os.PathLike[str], skipped: Sequence[tuple[str, str]], total: int
) -> str:
    """One line: how many of ``total`` files were skipped, with up to three examples."""
    examples = "; ".join(f"{name}: {why}" for name, why in skipped[:3])
    more = "; ..." if len(skipped) > 3 else ""
    return (
        f"skipped {len(skipped)} of {total} files in {where} that are not usable images "
        f"(e.g. {examples}{more})"
    )


def _mixed_sizes(
    source: ImageSource, name: str, size: tuple[int, int], first_name: str, first: tuple[int, int]
) -> FaganError:
    return FaganError(
        f"{source.path}: images of mixed sizes: {name} is {size[0]}x{size[1]} but {first_name} "
        f"is {first[0]}x{first[1]}; a dataset zip holds images of one size (fagan prepare "
        "writes one from any images)"
    )


def _zip_image_sizes(source: ImageSource, progress: bool | None) -> None:
    """Check from their headers that a zip's images all have one size (for streaming).

    Raises:
        FaganError: Naming the first image whose size differs from the first one's.
    """
    zf = _zip_handle(str(source.path), source.stamp, os.getpid())
    first: tuple[tuple[int, int], str] | None = None
    for name in tqdm(
        source.names,
        desc="checking image sizes",
        unit="img",
        leave=False,
        disable=None if progress is None else not progress,
        file=sys.stderr,
    ):
        try:
            with zf.open(name) as member:
                head = member.read(24)
                if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                    size = struct.unpack(">II", head[16:24])
                else:
                    with Image.open(zf.open(name)) as im:
                        size = im.size
        except _DECODE_ERRORS:
            continue  # found (and skipped) when streamed
        if first is None:
            first = (size, name)
        elif size != first[0]:
            raise _mixed_sizes(source, name, size, first[1], first[0])
