"""Training data: decoded once, gathered per batch on the device; the resumable sampler.

Sources (:mod:`fagan.sources`): an images folder (class sub-folders give labels), a dataset
zip in StyleGAN2-ADA's convention (``fagan prepare`` writes one), or, with no source
given, the 100 LFW faces embedded in scikit-image (the demo).

:func:`open_training_data` decodes a source once, in parallel over the CPU cores, into
one uint8 array ``(N, S, S, 3)`` (pixels from :func:`fagan.sources.to_square_uint8`, the
function ``fagan prepare`` writes with); :meth:`TrainingData.batches` gathers
``array[indices]`` for the indices a :class:`ResumableSampler` yields and turns them into
float ``[-1, 1]`` on the training device, with no loader processes and no decoding per
epoch. Arrays of :data:`CACHE_MIN_BYTES` or more live in a memory-mapped ``.npy`` cache
file (:func:`default_cache_dir`), written once (the first process takes a file lock) and
mapped read-only by every process, so the ranks of one ``torchrun`` job share one copy and
later runs start without decoding. Data larger than the memory budget
(:func:`memory_budget`) is streamed instead, decoded per batch by data-loader workers.

Everything is deterministic. Datasets draw no random numbers; the demo's random flip
draws from the generator the training loop passes in; :class:`ResumableSampler` derives
each epoch's order from ``(seed, epoch)`` alone, so a run resumed mid-epoch sees exactly
the batches it would have seen had it never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import warnings
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from fagan.errors import FaganError
from fagan.fileio import atomic_write
from fagan.sources import (  # noqa: F401  (_decode, _DECODE_ERRORS, _to_model_tensor: attention maps)
    _DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    ImageSource,
    _check_image_size,
    _decode,
    _describe_error,
    _mixed_sizes,
    _to_model_tensor,
    _zip_image_sizes,
    center_crop,
    check_dataset_path,
    decode_images,
    find_images,
    open_source,
    read_image,
    resize_shorter_side,
    skip_summary,
    to_square_uint8,
    uint8_to_float,
)

__all__ = [
    "CACHE_MIN_BYTES",
    "DEMO_REPEATS",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "decode_image",
    "Batch",
    "ImageArray",
    "ImageFolderDataset",
    "ImageSource",
    "LFWFaces",
    "ResumableSampler",
    "TrainingData",
    "build_loader",
    "center_crop",
    "check_dataset_path",
    "default_cache_dir",
    "find_images",
    "lfw_faces_uint8",
    "load_images",
    "memory_budget",
    "open_dataset",
    "open_source",
    "open_training_data",
    "read_image",
    "resize_shorter_side",
    "to_square_uint8",
    "uint8_to_float",
]

#: One epoch of the embedded demo goes through its 100 faces this many times.
DEMO_REPEATS = 32

#: Decoded arrays at least this large are cached on disk (memory-mapped, shared).
CACHE_MIN_BYTES = 32 * 2**20

#: Default memory budget: this share of the machine's physical memory.
MEMORY_FRACTION = 0.5

#: Environment variables: the cache folder, and the memory budget (bytes, or 500M, 8G...).
CACHE_ENV = "FAGAN_DATA_CACHE"
MEMORY_ENV = "FAGAN_DATA_MEMORY"

#: Version of the cache files' layout; part of their key.
_CACHE_FORMAT = 1

#: Folders with more files than this get a progress bar while they are checked.
_PROGRESS_THRESHOLD = 5000

# --------------------------------------------------------------------------------------------
# Decoding a whole source into one array (cached on disk when large)
# --------------------------------------------------------------------------------------------


@dataclass
class ImageArray:
    """A source decoded once.

    Attributes:
        images: ``(N, S, S, 3)`` uint8 (a read-only memory map when it comes from the cache).
        labels: ``(N,)`` int64 class labels, or None.
        class_names: The classes' names by label, or None.
        skipped: ``(name, reason)`` of every file left out.
        total: The number of image files in the source.
        stored_size: For a zip, the ``(width, height)`` all its images have.
        cache_path: The ``.npy`` file ``images`` maps, or None.
    """

    images: np.ndarray
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    stored_size: tuple[int, int] | None = None
    cache_path: Path | None = None


def _decode_to_array(
    source: ImageSource, image_size: int, *, workers: int | None, progress: bool | None
) -> ImageArray:
    """Decode every image of ``source`` into an in-memory array (unusable files skipped)."""
    n, s = len(source), image_size
    out = np.empty((n, s, s, 3), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    first: tuple[tuple[int, int], int] | None = None
    items = decode_images(
        source, s, workers=workers, progress=progress, desc=f"decoding {source.path.name}"
    )
    with closing(items):  # an error stops the workers at once
        for item in items:
            if item.image is None:
                skipped.append((source.names[item.index], item.reason or "unusable"))
                continue
            if source.kind == "zip" and item.stored_size is not None:
                if first is None:
                    first = (item.stored_size, item.index)
                elif item.stored_size != first[0]:
                    raise _mixed_sizes(
                        source,
                        source.names[item.index],
                        item.stored_size,
                        source.names[first[1]],
                        first[0],
                    )
            out[len(kept)] = item.image
            kept.append(item.index)
    if not kept:
        raise FaganError(
            f"no usable images in {source.path}: " + skip_summary(source.path, skipped, n)
        )
    labels = None if source.labels is None else source.labels[np.asarray(kept)]
    images = out if len(kept) == n else out[: len(kept)].copy()
    return ImageArray(
        images, labels, source.class_names, skipped, n, first[0] if first is not None else None
    )


def default_cache_dir() -> Path:
    """Where decoded datasets are cached: ``$FAGAN_DATA_CACHE`` or ``~/.cache/fagan/data``.

    Each dataset is one ``<name>-<S>px-<key>.npy`` (the uint8 images, memory-mapped by every
    training process) with a ``.json`` beside it (labels, class names, skipped files) and a
    ``.lock``. The key covers the source's path, its size and modification time (a zip) or
    every file's (a folder), the image size and the format, so a changed source is decoded
    again. Old entries are never removed automatically; deleting the folder is safe while
    no training runs.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "fagan" / "data"


def _cache_key(source: ImageSource, image_size: int) -> str:
    ident = {
        "format": _CACHE_FORMAT,
        "kind": source.kind,
        "size": image_size,
        "path": os.path.realpath(source.path),
        "labelled": source.labels is not None,
    }
    digest = hashlib.sha256()
    if source.kind == "zip":
        ident["file"] = list(source.stamp[:2])
        digest.update(json.dumps(ident, sort_keys=True).encode())
    else:
        digest.update(json.dumps(ident, sort_keys=True).encode())
        for name in source.names:
            st = os.stat(os.path.join(source.path, name))
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _read_cache(npy: Path, meta_path: Path, image_size: int) -> ImageArray | None:
    """The cached array and its labels, or None if absent or incomplete."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if (
        images.dtype != np.uint8
        or images.shape[1:] != (image_size, image_size, 3)
        or images.shape[0] != meta.get("count")
    ):
        return None
    labels = None if meta.get("labels") is None else np.asarray(meta["labels"], dtype=np.int64)
    names = meta.get("class_names")
    return ImageArray(
        images,
        labels,
        None if names is None else tuple(names),
        [tuple(s) for s in meta.get("skipped", [])],
        int(meta.get("total", len(images))),
        None if meta.get("stored_size") is None else tuple(meta["stored_size"]),
        npy,
    )


def _write_cache(array: ImageArray, npy: Path, meta_path: Path) -> None:
    meta = {
        "count": len(array.images),
        "total": array.total,
        "labels": None if array.labels is None else array.labels.tolist(),
        "class_names": None if array.class_names is None else list(array.class_names),
        "skipped": [list(s) for s in array.skipped],
        "stored_size": array.stored_size,
    }
    atomic_write(npy, lambda tmp: np.save(tmp, array.images))
    atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(meta), encoding="utf-8"))


def load_images(
    source: ImageSource,
    image_size: int,
    *,
    workers: int | None = None,
    progress: bool | None = None,
    cache: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageArray:
    """Decode a source once into a uint8 array, through the disk cache when it is large.

    With the cache, the first process to take the entry's file lock decodes and writes it
    (atomically: a temporary file renamed into place); every process, that one included,
    then maps it read-only, so processes on one machine share one copy in the page cache.
    A cache that cannot be written (read-only or full disk) is reported and skipped.

    Args:
        source: The images.
        image_size: The side ``S``.
        workers: Decoding processes (default: the usable cores).
        progress: Show a progress bar (None: when stderr is a terminal).
        cache: Use the disk cache; None: when the array is :data:`CACHE_MIN_BYTES` or more.
        cache_dir: The cache folder (default :func:`default_cache_dir`).

    Raises:
        FaganError: If no image is usable, or a zip's images differ in size.
    """
    size = _check_image_size(image_size)
    if cache is None:
        cache = len(source) * size * size * 3 >= CACHE_MIN_BYTES
    if not cache:
        array = _decode_to_array(source, size, workers=workers, progress=progress)
    else:
        array = _load_through_cache(
            source, size, workers, progress, Path(cache_dir) if cache_dir else default_cache_dir()
        )
    if array.skipped:
        warnings.warn(
            skip_summary(source.path, array.skipped, array.total), UserWarning, stacklevel=2
        )
    return array


def _load_through_cache(
    source: ImageSource, size: int, workers: int | None, progress: bool | None, folder: Path
) -> ImageArray:
    from filelock import FileLock, Timeout

    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.path.name)[:60]
    base = folder / f"{stem}-{size}px-{_cache_key(source, size)}"
    npy, meta_path = Path(f"{base}.npy"), Path(f"{base}.json")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{base}.lock")
        lock.acquire()
    except (OSError, Timeout) as exc:
        warnings.warn(
            f"cannot use the data cache in {folder} ({exc}); decoding into this process's memory",
            UserWarning,
            stacklevel=3,
        )
        return _decode_to_array(source, size, workers=workers, progress=progress)
    try:
        found = _read_cache(npy, meta_path, size)
        if found is not None:
            return found
        array = _decode_to_array(source, size, workers=workers, progress=progress)
        try:
            _write_cache(array, npy, meta_path)
        except OSError as exc:
            warnings.warn(
                f"cannot write the data cache {npy} ({exc.strerror or exc}); keeping "
                "the images in this process's memory",
                UserWarning,
                stacklevel=3,
            )
            return array
        return _read_cache(npy, meta_path, size) or array
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------
# The embedded demo faces
# --------------------------------------------------------------------------------------------


def lfw_faces_uint8(image_size: int = 32) -> np.ndarray:
    """The 100 faces of :func:`skimage.data.lfw_subset` as ``(100, S, S, 3)`` uint8.

    ``lfw_subset()`` holds 200 greyscale 25x25 crops in ``[0, 1]``; rows 0-99 are faces and
    rows 100-199 are not. Each face is resized to ``S`` (bilinear, antialiased,
    ``align_corners=False``, in float32), rounded to bytes and repeated over three channels.
    """
    from skimage.data import lfw_subset

    size = _check_image_size(image_size)
    faces = np.asarray(lfw_subset()[: LFWFaces.NUM_FACES], dtype=np.float32)
    x = torch.from_numpy(faces).unsqueeze(1)  # (100, 1, 25, 25) in [0, 1]
    x = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    u8 = x.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)  # (100, 1, S, S)
    return u8.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous().numpy()


class LFWFaces(Dataset[torch.Tensor]):
    """The 100 embedded LFW faces (:func:`lfw_faces_uint8`) as ``(3, S, S)`` floats in ``[-1, 1]``.

    Attributes:
        image_size: The side ``S`` of the square images returned.
        images: All faces, float32 of shape ``(100, 3, S, S)``.
        paths: Always empty (the faces ship inside scikit-image).
        skipped: Always empty.
    """

    NUM_FACES = 100

    def __init__(self, image_size: int = 32) -> None:
        """Load and resize the faces.

        Raises:
            FaganError: If ``image_size`` is not a positive integer.
        """
        self.image_size = _check_image_size(image_size)
        u8 = torch.from_numpy(lfw_faces_uint8(self.image_size))
        self.images: torch.Tensor = uint8_to_float(u8).contiguous()
        self.paths: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []

    def __len__(self) -> int:
        """Always 100."""
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return face ``index`` (a copy, so callers may modify it)."""
        return self.images[index].clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, images={len(self)})"


def decode_image(path: str | os.PathLike[str], image_size: int) -> torch.Tensor:
    """One image file as the training data decodes it: ``(3, S, S)`` float in [-1, 1].

    Raises:
        FaganError: the file is missing, unreadable, or not a usable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FaganError(f"image not found: {path}")
    try:
        return _to_model_tensor(_decode(path, image_size), image_size)
    except _DECODE_ERRORS as exc:
        raise FaganError(f"cannot read image {path}: {_describe_error(exc)}") from None


# --------------------------------------------------------------------------------------------
# The per-file dataset (evaluation, attention maps, and the benchmark's reference path)
# --------------------------------------------------------------------------------------------


def _header_problem(path: Path) -> str | None:
    """Cheaply check that ``path`` looks like an image; return why not, or None if it does.

    PNGs are also read through once (chunk checksums, no decompression), which finds
    truncated files.
    """
    try:
        if path.stat().st_size == 0:
            return "zero bytes"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
                if im.format == "PNG":
                    im.verify()
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError:
        return "too many pixels"
    except _DECODE_ERRORS as exc:
        return _describe_error(exc)
    if width < 1 or height < 1:
        return "empty image"
    return None


class ImageFolderDataset(Dataset[torch.Tensor]):
    """The images in a folder (and its sub-folders), decoded one by one on access.

    Items are ``(3, S, S)`` float tensors in ``[-1, 1]``: :func:`read_image`'s bytes (the
    pixels training uses) scaled by :func:`uint8_to_float`. Training decodes a folder once
    instead (:func:`open_training_data`); this per-file form serves evaluation and the
    data benchmark's reference path.

    Unreadable files are dropped, never fatal. With ``check=True`` every file's header is
    checked when the dataset is built (PNGs are also checked for truncation; a progress bar
    shows for more than 5000 files): empty, truncated and foreign files are dropped and
    summarised in one warning. Files that pass the check but fail to decode (a truncated
    JPEG, an image above :data:`MAX_IMAGE_PIXELS`) are found on first read: the item is
    replaced by the next readable image (wrapping around), the file is remembered in this
    process's skip set, and a warning is given once per file.

    Attributes:
        root: The folder given.
        image_size: The side ``S`` of the square images returned.
        paths: The files that passed the check (all image files when ``check=False``).
        skipped: ``(path, reason)`` for every file found unreadable so far.
    """

    def __init__(
        self, root: str | os.PathLike[str], image_size: int, *, check: bool = True
    ) -> None:
        """Find the images under ``root`` and, if ``check``, drop the unreadable ones.

        Args:
            root: The images folder.
            image_size: The side of the square images returned.
            check: Check every file's header now (cheap: no pixels are decoded).

        Raises:
            FaganError: If the folder is missing, holds no image files, or holds no readable
                ones, or if ``image_size`` is not a positive integer.
        """
        self.root = Path(root)
        self.image_size = _check_image_size(image_size)
        candidates = find_images(self.root)
        self.skipped: list[tuple[Path, str]] = []
        self._bad: set[Path] = set()
        if check:
            kept: list[Path] = []
            bar = tqdm(
                candidates,
                desc="checking images",
                unit="file",
                disable=len(candidates) <= _PROGRESS_THRESHOLD,
                leave=False,
            )
            for path in bar:
                problem = _header_problem(path)
                if problem is None:
                    kept.append(path)
                else:
                    self.skipped.append((path, problem))
                    self._bad.add(path)
            self.paths: list[Path] = kept
            if self.skipped:
                warnings.warn(self._skip_summary(len(candidates)), UserWarning, stacklevel=2)
        else:
            self.paths = candidates
        if not self.paths:
            raise FaganError(f"no readable images in {self.root}")

    def _skip_summary(self, total: int) -> str:
        named = [(self._name(p), why) for p, why in self.skipped]
        return skip_summary(self.root, named, total)

    def _name(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def __len__(self) -> int:
        """The number of files that passed the header check."""
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return image ``index``, or the next readable one if it cannot be decoded.

        Raises:
            IndexError: If ``index`` is out of range.
            FaganError: If no file in the dataset can be decoded.
        """
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"image index {index} out of range for {n} images")
        index %= n
        for step in range(n):
            path = self.paths[(index + step) % n]
            if path in self._bad:
                continue
            try:
                arr = _decode(path, self.image_size)
            except _DECODE_ERRORS as exc:
                reason = _describe_error(exc)
                self._bad.add(path)
                self.skipped.append((path, reason))
                warnings.warn(
                    f"skipping {path}: {reason}; using the next image instead",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            return _to_model_tensor(arr, self.image_size)
        raise FaganError(f"no readable images in {self.root}: none of {n} files could be decoded")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, image_size={self.image_size}, "
            f"images={len(self.paths)}, skipped={len(self.skipped)})"
        )


# --------------------------------------------------------------------------------------------
# Sampling and loading
# --------------------------------------------------------------------------------------------


class ResumableSampler(Sampler[int]):
    """Deterministic, shardable, resumable index order for a map-style dataset.

    The order of epoch ``e`` is a function of ``(seed, e)`` only (a ``torch.Generator`` seeded
    with ``seed * 1_000_003 + e``) and is the same on every rank. Each epoch uses the first
    ``data_percentage`` percent of that order, truncated (with ``drop_last``) to whole global
    batches of ``batch_size * world_size``; rank ``r`` takes every ``world_size``-th index
    starting at ``r``, so global batch ``b`` is split across the ranks' batch ``b`` and every
    rank gets the same number of batches.

    With ``drop_last=False`` nothing is truncated: when ``world_size > 1`` the order is padded
    by wrapping around (as :class:`torch.utils.data.DistributedSampler` does) so that the
    ranks still yield equally many indices, and the last batch may be short.

    To resume mid-epoch: ``set_epoch(e)`` then ``set_start_batch(k)``; the next iteration
    yields exactly what the uninterrupted one would have yielded after its first ``k``
    batches. The skip stays in force until :meth:`set_epoch` is called or an iteration runs
    to the end.

    Attributes:
        dataset_len: The number of items in the dataset.
        batch_size: The per-rank batch size.
        seed: The run's seed.
        shuffle: Whether each epoch is a fresh permutation (else ``0, 1, 2, ...``).
        drop_last: Whether to keep only whole global batches.
        data_percentage: The share of the data used per epoch, in percent.
        rank: This process's rank.
        world_size: The number of ranks.
    """

    def __init__(
        self,
        dataset_len: int,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
        data_percentage: float = 100.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Validate the settings and fix the epoch size.

        Args:
            dataset_len: The number of items in the dataset.
            batch_size: The per-rank batch size.
            seed: The run's seed.
            shuffle: Use a fresh permutation each epoch.
            drop_last: Keep only whole global batches.
            data_percentage: The share of the data to use each epoch, in ``(0, 100]``.
            rank: This process's rank, in ``[0, world_size)``.
            world_size: The number of ranks.

        Raises:
            FaganError: If a setting is out of range, or if ``drop_last`` and the dataset
                holds fewer items than one global batch.
        """
        if isinstance(dataset_len, bool) or not isinstance(dataset_len, int) or dataset_len < 1:
            raise FaganError(f"the dataset must hold at least one image, got {dataset_len!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FaganError(f"batch size must be a positive whole number, got {batch_size!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise FaganError(f"world size must be a positive whole number, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise FaganError(f"rank must be in [0, {world_size}), got {rank!r}")
        pct = float(data_percentage)
        if not 0.0 < pct <= 100.0:
            raise FaganError(f"data percentage must be in (0, 100], got {data_percentage!r}")

        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.data_percentage = pct
        self.rank = rank
        self.world_size = world_size
        self._epoch = 0
        self._start_batch = 0

        global_batch = batch_size * world_size
        wanted = int(dataset_len * pct / 100.0)
        if drop_last:
            if dataset_len < global_batch:
                raise FaganError(f"{dataset_len} images is fewer than one batch of {global_batch}")
            self._batches = max(1, wanted // global_batch)
            self._used = self._batches * global_batch
            self._per_rank = self._batches * batch_size
        else:
            self._used = max(1, wanted)
            self._per_rank = -(-self._used // world_size)
            self._batches = -(-self._per_rank // batch_size)

    @property
    def epoch(self) -> int:
        """The epoch whose order the next iteration yields."""
        return self._epoch

    @property
    def start_batch(self) -> int:
        """How many of this rank's batches the next iteration skips."""
        return self._start_batch

    @property
    def batches_per_epoch(self) -> int:
        """This rank's number of batches in a whole (not resumed) epoch."""
        return self._batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to yield next, and cancel any pending skip.

        Args:
            epoch: The epoch number (any integer; usually counting from 0).
        """
        self._epoch = int(epoch)
        self._start_batch = 0

    def set_start_batch(self, k: int) -> None:
        """Make the next iteration skip this rank's first ``k`` batches of the epoch.

        Args:
            k: Batches already done in this epoch, in ``[0, batches_per_epoch]``.

        Raises:
            FaganError: If ``k`` is out of range (say, the data changed since the checkpoint).
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self._batches:
            raise FaganError(f"cannot resume at batch {k!r}: an epoch has {self._batches} batches")
        self._start_batch = k

    def _epoch_indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed((self.seed * 1_000_003 + self._epoch) % (1 << 64))
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        used = order[: self._used]
        padded_len = self._per_rank * self.world_size
        while len(used) < padded_len:  # only without drop_last
            used += used[: padded_len - len(used)]
        return used[self.rank : padded_len : self.world_size]

    def __iter__(self) -> Iterator[int]:
        """Yield this rank's indices for the current epoch, after any skipped batches."""
        start = self._start_batch
        epoch = self._epoch
        yield from self._epoch_indices()[start * self.batch_size :]
        if self._start_batch == start and self._epoch == epoch:
            self._start_batch = 0  # the resumed epoch is done; a re-run starts afresh

    def __len__(self) -> int:
        """The number of indices the next (or current) iteration yields on this rank."""
        return max(0, self._per_rank - self._start_batch * self.batch_size)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dataset_len={self.dataset_len}, batch_size={self.batch_size}, "
            f"seed={self.seed}, epoch={self._epoch}, start_batch={self._start_batch}, "
            f"batches_per_epoch={self._batches}, rank={self.rank}, world_size={self.world_size})"
        )


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's generators in a data-loader worker from torch's seed.

    PyTorch seeds each worker's torch generator with ``base_seed + worker_id``, where the base
    seed comes from the loader's own generator; this carries that seed over to the others.
    """
    seed = torch.initial_seed() % (1 << 32)
    random.seed(seed)
    np.random.seed(seed)


def _init_worker(worker_id: int) -> None:
    """Seed a data-loader worker and leave Ctrl-C and SIGTERM to the main process.

    A terminal's Ctrl-C (and a job scheduler's SIGTERM) reaches every process of the group.
    A worker killed by it would make the main process fail with a traceback mid-step; instead
    the main process stops after the current step, saves its state and shuts the workers
    down itself (they also exit on their own when the main process is gone).
    """
    _seed_worker(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_loader(
    dataset: Dataset,
    sampler: Sampler[int],
    batch_size: int,
    num_workers: int,
    *,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """Wrap a dataset and a sampler in a deterministic :class:`~torch.utils.data.DataLoader`.

    The loader never shuffles (the sampler decides the order), drops a short last batch
    exactly when the sampler does (``sampler.drop_last``, default False), keeps its workers
    alive between epochs, seeds them deterministically and has them ignore SIGINT and SIGTERM
    (the main process handles those and shuts them down). It has its own generator, seeded
    from ``sampler.seed``, so starting an epoch never consumes torch's global random state.

    Args:
        dataset: A map-style dataset.
        sampler: The index order, usually a :class:`ResumableSampler`.
        batch_size: Items per batch; must match ``sampler.batch_size`` where it has one.
        num_workers: Worker processes (0 loads in the calling process).
        pin_memory: Return batches in pinned memory (for faster copies to a GPU).
        collate_fn: Makes a batch of items (default: PyTorch's, stacking tensors).

    Returns:
        The data loader.

    Raises:
        FaganError: If ``num_workers`` or ``batch_size`` is out of range.
        ValueError: If ``batch_size`` differs from the sampler's.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise FaganError(f"number of workers must be 0 or more, got {num_workers!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FaganError(f"batch size must be a positive whole number, got {batch_size!r}")
    sampler_batch = getattr(sampler, "batch_size", None)
    if sampler_batch is not None and sampler_batch != batch_size:
        raise ValueError(f"batch size {batch_size} differs from the sampler's {sampler_batch}")
    if isinstance(dataset, Sized) and len(dataset) == 0:
        raise FaganError("the dataset holds no images")
    generator = torch.Generator()
    generator.manual_seed(int(getattr(sampler, "seed", 0)) % (1 << 64))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=bool(getattr(sampler, "drop_last", False)),
        persistent_workers=num_workers > 0,
        worker_init_fn=_init_worker if num_workers > 0 else None,
        generator=generator,
        collate_fn=collate_fn,
    )


# --------------------------------------------------------------------------------------------
# Training data: what the training loop iterates over
# --------------------------------------------------------------------------------------------


def _parse_bytes(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise FaganError(f"${MEMORY_ENV} must be a size such as 8G, 500M or 0, got {text!r}")
    return int(value * units[unit])


def memory_budget() -> int:
    """How many bytes of decoded images are kept in memory before streaming instead.

    ``$FAGAN_DATA_MEMORY`` (bytes, or with a unit: ``500M``, ``8G``; ``0`` always streams),
    else :data:`MEMORY_FRACTION` of the machine's physical memory.

    Raises:
        FaganError: If ``$FAGAN_DATA_MEMORY`` is not a size.
    """
    env = os.environ.get(MEMORY_ENV)
    if env:
        return _parse_bytes(env)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        total = 8 * 2**30
    return int(total * MEMORY_FRACTION)


class _StreamDataset(Dataset[tuple[np.ndarray, int]]):
    """Images decoded on access (by data-loader workers): ``((S, S, 3) uint8 array, label)``.

    An unusable file is replaced by the next usable one (wrapping around) and warned
    about once per process. Labels are -1 for unlabelled sources.
    """

    def __init__(self, source: ImageSource, image_size: int) -> None:
        self.source, self.image_size = source, image_size
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        n = len(self.source)
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                image, _ = self.source.read(j, self.image_size)
            except _DECODE_ERRORS as exc:
                self._bad.add(j)
                warnings.warn(
                    f"skipping {self.source.where(j)}: {_describe_error(exc)}; using "
                    "the next image instead",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            label = -1 if self.source.labels is None else int(self.source.labels[j])
            return image, label
        raise FaganError(f"no usable images in {self.source.path}: none of {n} could be decoded")


def _collate_arrays(items: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """A streamed batch as NumPy arrays ``(B, S, S, 3)`` and ``(B,)``.

    Arrays travel from a loader worker through its pipe; tensors would go through shared
    memory, whose per-batch handshake costs more CPU than copying 32 small images.
    """
    images = np.stack([image for image, _ in items])
    labels = np.array([label for _, label in items], dtype=np.int64)
    return images, labels


class _Repeated(Dataset[Any]):
    """A dataset presented ``times`` times per epoch (index ``i`` is item ``i mod len``)."""

    def __init__(self, base: Dataset[Any], times: int) -> None:
        self.base, self.times = base, times
        self._n = len(base)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._n * self.times

    def __getitem__(self, index: int) -> Any:
        return self.base[index % self._n]


class _FloatView(Dataset[torch.Tensor]):
    """The images of a :class:`TrainingData` (each once) as ``(3, S, S)`` floats in ``[-1, 1]``."""

    def __init__(self, data: TrainingData) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.num_images

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        u8 = self.data.uint8_images([index % len(self)])
        return uint8_to_float(u8[0]).contiguous()


class Batch(NamedTuple):
    """A training batch on the training device.

    Attributes:
        images: ``(B, 3, S, S)`` float32 in ``[-1, 1]``, in the data's memory format.
        labels: ``(B,)`` int64 class labels, or None for unlabelled data.
    """

    images: torch.Tensor
    labels: torch.Tensor | None


class TrainingData:
    """The training images, decoded once (or streamed), and how an epoch presents them.

    ``len()`` is the number of items an epoch samples from: the images times
    :attr:`repeat`. :meth:`batches` turns a sampler's indices into batches (:class:`Batch`)
    on the device: from memory it gathers ``images[indices]`` (uint8), moves the bytes to the
    device and converts them there; when streaming, data-loader workers decode each batch.
    Both give the same values for the same indices.

    Attributes:
        image_size: The side ``S``.
        num_images: The distinct images.
        repeat: How many times an epoch goes through them (32 for the demo, else 1).
        hflip: Whether each image is mirrored with probability 1/2 in every batch (the demo).
        labels: ``(num_images,)`` int64 class labels, or None.
        class_names: The classes' names by label, or None.
        source: What the images are, for messages.
        in_memory: True when decoded into memory; False when streamed.
        cache_path: The memory-mapped cache file, or None.
        skipped: ``(name, reason)`` of the files left out.
        total_files: The image files the source held.
        device: The training device.
        memory_format: The layout of the batches.
    """

    def __init__(
        self,
        *,
        image_size: int,
        source: str,
        device: torch.device,
        images: np.ndarray | None = None,
        stream: _StreamDataset | None = None,
        labels: np.ndarray | None = None,
        class_names: tuple[str, ...] | None = None,
        repeat: int = 1,
        hflip: bool = False,
        channels_last: bool = False,
        num_workers: int = 0,
        skipped: Sequence[tuple[str, str]] = (),
        total_files: int | None = None,
        cache_path: Path | None = None,
        note: str = "",
    ) -> None:
        """Use :func:`open_training_data` rather than this."""
        if (images is None) == (stream is None):
            raise ValueError("give images or stream, not both")
        self.image_size = image_size
        self.source = source
        self.device = device
        # a plain view of a memory map: np.memmap's indexing adds Python work to every gather
        self._images = images.view(np.ndarray) if isinstance(images, np.memmap) else images
        self._stream = stream
        self.num_images = len(images) if images is not None else len(stream)  # type: ignore[arg-type]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.class_names = class_names
        self.repeat = repeat
        self.hflip = hflip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.num_workers = num_workers
        self.skipped = list(skipped)
        self.total_files = (
            self.num_images + len(self.skipped) if total_files is None else total_files
        )
        self.cache_path = cache_path
        self.in_memory = images is not None
        self._note = note
        self._loader: DataLoader | None = None
        self._loader_sampler: Sampler[int] | None = None

    def __len__(self) -> int:
        """Items per epoch before any ``data_percentage``: images times :attr:`repeat`."""
        return self.num_images * self.repeat

    @property
    def images(self) -> np.ndarray | None:
        """The decoded ``(num_images, S, S, 3)`` uint8 array (read-only when mapped from the
        cache), or None when streaming."""
        return self._images

    @property
    def base(self) -> Dataset[torch.Tensor]:
        """The images, each once, as a map-style dataset of ``(3, S, S)`` floats (evaluation)."""
        return _FloatView(self)

    def uint8_images(self, indices: Sequence[int]) -> torch.Tensor:
        """Images ``indices`` (each in ``[0, num_images)``) as ``(K, S, S, 3)`` uint8 on the CPU."""
        idx = np.asarray(indices, dtype=np.int64)
        if self._images is not None:
            return torch.from_numpy(self._images[idx])
        assert self._stream is not None
        return torch.from_numpy(np.stack([self._stream[int(i)][0] for i in idx]))

    def _to_device(
        self, u8: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> Batch:
        if self.device.type == "cuda":
            u8 = u8 if u8.is_pinned() else u8.pin_memory()
        u8 = u8.to(self.device, non_blocking=True)
        x = uint8_to_float(u8, self.memory_format)
        if self.hflip:
            from fagan.augment import random_hflip_

            x = random_hflip_(x, generator)  # x is this batch's own copy
        if labels is not None:
            labels = labels.to(self.device, non_blocking=True)
        return Batch(x, labels)

    def batches(
        self, sampler: Sampler[int], generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """One epoch's batches, in the order ``sampler`` yields indices.

        Indices are grouped into batches of ``sampler.batch_size``; a short last group is
        dropped when ``sampler.drop_last`` is set. Index ``i`` is image ``i mod num_images``.

        Args:
            sampler: The index order, usually a :class:`ResumableSampler` over ``len(self)``.
            generator: Draws the random flips when :attr:`hflip` is set.

        Yields:
            The batches.
        """
        batch_size = int(getattr(sampler, "batch_size", 1))
        drop_last = bool(getattr(sampler, "drop_last", False))
        if self._images is None:
            yield from self._streamed(sampler, batch_size, generator)
            return
        indices = iter(sampler)
        while True:
            chunk = list(islice(indices, batch_size))
            if not chunk or (drop_last and len(chunk) < batch_size):
                break
            idx = np.asarray(chunk, dtype=np.int64) % self.num_images
            u8 = torch.from_numpy(self._images[idx])  # a gathered copy: (B, S, S, 3)
            labels = None if self.labels is None else torch.from_numpy(self.labels[idx])
            yield self._to_device(u8, labels, generator)

    def _streamed(
        self, sampler: Sampler[int], batch_size: int, generator: torch.Generator | None
    ) -> Iterator[Batch]:
        if self._loader is None or self._loader_sampler is not sampler:
            self.close()
            dataset: Dataset[Any] = self._stream  # type: ignore[assignment]
            if self.repeat > 1:
                dataset = _Repeated(dataset, self.repeat)
            self._loader = build_loader(
                dataset, sampler, batch_size, self.num_workers, collate_fn=_collate_arrays
            )
            self._loader_sampler = sampler
        for images, labels in self._loader:
            yield self._to_device(
                torch.from_numpy(images),
                None if self.labels is None else torch.from_numpy(labels),
                generator,
            )

    def close(self) -> None:
        """Shut down streaming workers now (they ignore SIGTERM; see :func:`build_loader`)."""
        loader, self._loader = self._loader, None
        if loader is None:
            return
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None

    def label_counts(self) -> dict[int, int]:
        """Images per class label (empty for unlabelled data)."""
        if self.labels is None:
            return {}
        counts = np.bincount(np.asarray(self.labels), minlength=len(self.class_names or ()))
        return {label: int(c) for label, c in enumerate(counts)}

    def describe(self) -> str:
        """One line for the training log: source, count, size, where the pixels live, labels."""
        s = self.image_size
        text = f"data: {self.source}: {self.num_images:,} images at {s}x{s}{self._note}"
        if self.in_memory:
            assert self._images is not None
            text += f", in memory ({self._images.nbytes / 2**20:,.1f} MB"
            text += f", shared through {self.cache_path})" if self.cache_path else ")"
        else:
            text += f", streamed by {self.num_workers} loader worker(s)"
        if self.skipped:
            text += f"; {len(self.skipped)} of {self.total_files:,} files skipped as unusable"
        counts = self.label_counts()
        if not counts:
            text += "; unlabelled"
        else:
            names = self.class_names or tuple(str(k) for k in counts)
            shown = ", ".join(f"{names[k]} {c:,}" for k, c in list(counts.items())[:12])
            more = ", ..." if len(counts) > 12 else ""
            text += f"; {len(counts)} classes: {shown}{more}"
        if self.repeat > 1:
            text += f"; each epoch goes through them {self.repeat} times"
        if self.hflip:
            text += ", randomly mirrored"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, images={self.num_images}, "
            f"image_size={self.image_size}, in_memory={self.in_memory}, "
            f"repeat={self.repeat})"
        )


def open_training_data(
    images_dir: str | os.PathLike[str] | None,
    image_size: int,
    device: torch.device | str = "cpu",
    *,
    num_workers: int = 3,
    channels_last: bool = False,
    labels: str = "auto",
    max_memory: int | None = None,
    cache: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> TrainingData:
    """Open the training images: a folder, a dataset zip, or the demo faces when None.

    Folders and zips are decoded once into memory (:func:`load_images`, through the disk
    cache when large) unless the decoded images would exceed ``max_memory``; then they are
    streamed by ``num_workers`` data-loader workers. The demo's 100 faces are repeated
    :data:`DEMO_REPEATS` times per epoch and randomly mirrored.

    Args:
        images_dir: An images folder, a dataset zip, or None for the demo faces.
        image_size: The side ``S`` of the training images.
        device: Where batches go.
        num_workers: Data-loader workers when streaming.
        channels_last: Lay batches out channels-last.
        labels: ``"auto"`` (class sub-folders or ``dataset.json``) or ``"none"``.
        max_memory: Bytes of decoded images kept in memory (default :func:`memory_budget`).
        cache: Use the disk cache (default: for arrays of :data:`CACHE_MIN_BYTES` or more).
        cache_dir: The cache folder (default :func:`default_cache_dir`).
        workers: Processes decoding into memory (default: the usable cores).
        progress: Show progress bars (None: when stderr is a terminal).

    Raises:
        FaganError: For a missing or unusable source (see :func:`open_source`,
            :func:`load_images`).
    """
    size = _check_image_size(image_size)
    device = torch.device(device)
    common: dict[str, Any] = {
        "image_size": size,
        "device": device,
        "channels_last": channels_last,
        "num_workers": num_workers,
    }
    if images_dir is None:
        return TrainingData(
            images=lfw_faces_uint8(size),
            repeat=DEMO_REPEATS,
            hflip=True,
            source="the embedded demo faces (scikit-image's LFW subset)",
            **common,
        )
    source = open_source(images_dir, labels)
    kind = "dataset zip" if source.kind == "zip" else "folder"
    budget = memory_budget() if max_memory is None else max_memory
    needed = len(source) * size * size * 3
    if needed > budget:
        if source.kind == "zip":
            _zip_image_sizes(source, progress)
        note = (
            f" ({needed / 2**20:,.0f} MB decoded, over the memory budget of "
            f"{budget / 2**20:,.0f} MB)"
        )
        return TrainingData(
            stream=_StreamDataset(source, size),
            labels=source.labels,
            class_names=source.class_names,
            source=f"{kind} {source.path}",
            note=note,
            **common,
        )
    array = load_images(
        source, size, workers=workers, progress=progress, cache=cache, cache_dir=cache_dir
    )
    note = ""
    if array.stored_size is not None and array.stored_size != (size, size):
        note = f" (resized from {array.stored_size[0]}x{array.stored_size[1]})"
    return TrainingData(
        images=array.images,
        labels=array.labels,
        class_names=array.class_names,
        source=f"{kind} {source.path}",
        skipped=array.skipped,
        total_files=array.total,
        cache_path=array.cache_path,
        note=note,
        **common,
    )


def open_dataset(images_dir: str | os.PathLike[str] | None, image_size: int) -> Dataset:
    """The training images, each once, as a map-style dataset of ``(3, S, S)`` floats.

    Args:
        images_dir: An images folder, a dataset zip, or None for the demo faces.
        image_size: The side of the square images returned.

    Raises:
        FaganError: As :func:`open_training_data` does.
    """
    return open_training_data(images_dir, image_size, progress=False).base
