"""Training data: image folders, the embedded LFW demo faces, and a resumable sampler.

Everything in this module is deterministic. Datasets never draw random numbers (batch-level
augmentation lives in :mod:`fagan.augment` and runs in the training loop with its own
:class:`torch.Generator`), and :class:`ResumableSampler` derives each epoch's order from
``(seed, epoch)`` alone, so a run resumed mid-epoch sees exactly the batches it would have
seen had it never stopped.

Images are returned as float32 tensors of shape ``(3, S, S)`` with values in ``[-1, 1]``.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import warnings
from collections.abc import Iterator, Sized
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from fagan.errors import FaganError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "LFWFaces",
    "ResumableSampler",
    "build_loader",
    "find_images",
    "open_dataset",
]

#: File-name suffixes (lower case, with the dot) treated as images; matched case-insensitively.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)

#: Folders with more files than this get a progress bar while they are checked.
_PROGRESS_THRESHOLD = 5000

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


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise FaganError(f"image size must be a positive whole number, got {image_size!r}")
    return image_size


# --------------------------------------------------------------------------------------------
# Finding and decoding files
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


def _header_problem(path: Path) -> str | None:
    """Cheaply check that ``path`` looks like an image; return why not, or None if it does."""
    try:
        if path.stat().st_size == 0:
            return "zero bytes"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError:
        return "too many pixels"
    except _DECODE_ERRORS as exc:
        return f"unreadable ({exc})"
    if width < 1 or height < 1:
        return "empty image"
    return None


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """Convert any PIL image to an ``(H, W, 3)`` array: uint8, or float32 in ``[0, 1]``.

    Transparent pixels are composited over white. 16-bit and 32-bit greyscale are scaled
    (``Image.convert("L")`` would clip them): ``I;16`` by 1/65535; ``I`` by 1/65535 when any
    value exceeds 255 and by 1/255 otherwise; ``F`` as is when its maximum is at most 1 and by
    1/255 otherwise.
    """
    mode = im.mode
    if mode in _HIGH_BIT_MODES:
        arr = np.asarray(im).astype(np.float32)
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


def _decode(path: Path, image_size: int) -> np.ndarray:
    """Decode ``path`` to an RGB array, applying its EXIF orientation.

    JPEGs are decoded at a reduced DCT scale when that still leaves both sides at least
    ``image_size`` pixels (``Image.draft``), which makes large photos much faster to read.
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft(None, (image_size, image_size))
        im.load()
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION)
        except _DECODE_ERRORS:  # malformed EXIF: keep the pixels as stored
            orientation = None
        fix = _ORIENTATION_FIX.get(orientation) if isinstance(orientation, int) else None
        out = im.transpose(fix) if fix is not None else im
        return _pil_to_array(out)


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
        t.unsqueeze(0), size=(new_h, new_w), mode="bilinear", align_corners=False,
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
    return t[..., top:top + size, left:left + size]


def _to_model_tensor(arr: np.ndarray, image_size: int) -> torch.Tensor:
    """Resize the shorter side, centre-crop, and scale an ``(H, W, 3)`` array to ``[-1, 1]``."""
    t = torch.from_numpy(arr).permute(2, 0, 1)
    t = t.to(torch.float32).div_(255.0) if t.dtype == torch.uint8 else t.to(torch.float32)
    if min(t.shape[-2:]) != image_size:
        t = resize_shorter_side(t, image_size)
    if tuple(t.shape[-2:]) != (image_size, image_size):
        t = center_crop(t, image_size)
    return t.mul(2.0).sub_(1.0).clamp_(-1.0, 1.0).contiguous()


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class ImageFolderDataset(Dataset[torch.Tensor]):
    """The images in a folder (and its sub-folders), as ``(3, S, S)`` tensors in ``[-1, 1]``.

    Each image is converted to RGB (greyscale is repeated over the channels, palettes are
    expanded, CMYK is converted, and any transparency is composited over white), rotated by
    its EXIF orientation, resized so its shorter side is ``image_size`` (bilinear, antialiased),
    centre-cropped to a square, and scaled from ``[0, 1]`` to ``[-1, 1]``. No randomness.

    Unreadable files are dropped, never fatal. With ``check=True`` every file's header is
    checked when the dataset is built (with a progress bar for more than 5000 files): empty
    files and files PIL cannot identify are dropped and summarised in one warning. Files that
    pass the header check but fail to decode (a truncated JPEG, say) are found on first read:
    the item is replaced by the next readable image (wrapping around), the file is remembered
    in this process's skip set, and a warning is given once per file. Data-loader workers
    each keep their own skip set, so :attr:`skipped` in the main process lists only what the
    main process found.

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
        examples = "; ".join(f"{self._name(p)}: {why}" for p, why in self.skipped[:3])
        more = "; ..." if len(self.skipped) > 3 else ""
        return (
            f"skipped {len(self.skipped)} of {total} files in {self.root} that are not "
            f"readable images (e.g. {examples}{more})"
        )

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
                reason = f"cannot decode ({exc})"
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


class LFWFaces(Dataset[torch.Tensor]):
    """The 100 embedded LFW faces of :func:`skimage.data.lfw_subset`, for demos and tests.

    ``lfw_subset()`` holds 200 greyscale 25x25 crops; rows 0-99 are faces and rows 100-199 are
    not, so only the first 100 are used. Each is resized to ``image_size`` (bilinear,
    antialiased, ``align_corners=False``), repeated over three channels, and scaled to
    ``[-1, 1]``. All 100 are computed once, at construction. No files, no randomness.

    Attributes:
        image_size: The side ``S`` of the square images returned.
        images: All faces, float32 of shape ``(100, 3, S, S)``.
        paths: Always empty (the faces ship inside scikit-image).
        skipped: Always empty.
    """

    NUM_FACES = 100

    def __init__(self, image_size: int = 32) -> None:
        """Load and resize the faces.

        Args:
            image_size: The side of the square images returned.

        Raises:
            FaganError: If ``image_size`` is not a positive integer.
        """
        from skimage.data import lfw_subset

        self.image_size = _check_image_size(image_size)
        faces = np.asarray(lfw_subset()[: self.NUM_FACES], dtype=np.float32)
        x = torch.from_numpy(faces).unsqueeze(1)  # (100, 1, 25, 25) in [0, 1]
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
        x = x.clamp(0.0, 1.0).mul(2.0).sub(1.0)
        self.images: torch.Tensor = x.repeat(1, 3, 1, 1).contiguous()
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


def open_dataset(images_dir: str | os.PathLike[str] | None, image_size: int) -> Dataset:
    """Open the training images: a folder, or the embedded LFW faces when none is given.

    Args:
        images_dir: The images folder, or None for :class:`LFWFaces`.
        image_size: The side of the square images returned.

    Returns:
        An :class:`ImageFolderDataset` or an :class:`LFWFaces`.

    Raises:
        FaganError: As :class:`ImageFolderDataset` does.
    """
    if images_dir is None:
        return LFWFaces(image_size)
    return ImageFolderDataset(images_dir, image_size)


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
            raise FaganError(
                f"cannot resume at batch {k!r}: an epoch has {self._batches} batches"
            )
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
    )
