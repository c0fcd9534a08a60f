"""Animations: GIF and MP4 writing, frame loading, and a training run's progress GIF.

Frames are ``HxWx3`` uint8 arrays or paths of images, all the same size. GIFs are
written with Pillow (one shared palette, so unchanged regions do not flicker); MP4s
with ``imageio-ffmpeg`` when it is installed (``pip install 'fagan[video]'``).
:func:`make_progress_gif` animates the ``gen_<epoch>_<batch>.png`` grids that training
saves (see :mod:`fagan.sample`) in training order.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fagan.errors import FaganError
from fagan.fileio import atomic_write
from fagan.sample import evenly_spaced

__all__ = [
    "ffmpeg_available",
    "make_progress_gif",
    "sample_dir_frames",
    "write_gif",
    "write_mp4",
]

#: Training sample grids are named ``gen_<epoch>_<batch>.png``.
SAMPLE_NAME_RE = re.compile(r"^gen_(\d+)_(\d+)\.png$")

Frame = np.ndarray | str | os.PathLike


def sample_dir_frames(sample_dir: str | os.PathLike) -> list[Path]:
    """List a training sample directory's ``gen_<epoch>_<batch>.png`` grids in order.

    Files are ordered numerically by ``(epoch, batch)``, so ``gen_2_10.png`` follows
    ``gen_2_9.png`` and ``gen_10_1.png`` follows ``gen_9_100.png``. Other files are ignored.

    Args:
        sample_dir: Directory holding the training samples.

    Returns:
        The sample grid paths in training order.

    Raises:
        FaganError: If the directory does not exist or holds no sample grids.
    """
    sample_dir = Path(sample_dir)
    if not sample_dir.is_dir():
        raise FaganError(f"sample directory not found: {sample_dir}")
    keyed = []
    for entry in sample_dir.iterdir():
        match = SAMPLE_NAME_RE.match(entry.name)
        if match and entry.is_file():
            keyed.append(((int(match.group(1)), int(match.group(2)), entry.name), entry))
    if not keyed:
        raise FaganError(f"no gen_<epoch>_<batch>.png sample grids in {sample_dir}")
    keyed.sort(key=lambda item: item[0])
    return [entry for _, entry in keyed]


def _load_frame(frame: Frame, index: int) -> np.ndarray:
    """Return one animation frame as an ``HxWx3`` uint8 array."""
    if isinstance(frame, (str, os.PathLike)):
        try:
            with Image.open(frame) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise FaganError(f"cannot read frame image {frame}: {exc}") from exc
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise FaganError(f"frame {index} must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise FaganError(f"frame {index} must be shaped (H, W, 3), got {tuple(np.shape(frame))}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _describe(frame: Frame, index: int) -> str:
    if isinstance(frame, (str, os.PathLike)):
        return f"frame {index} ({frame})"
    return f"frame {index}"


def _load_frames(frames: Sequence[Frame]) -> list[np.ndarray]:
    """Load all frames, checking that there is at least one and that sizes agree."""
    if len(frames) == 0:
        raise FaganError("cannot write an animation with no frames")
    arrays = [_load_frame(frame, i) for i, frame in enumerate(frames)]
    height, width = arrays[0].shape[:2]
    for i, array in enumerate(arrays):
        if array.shape[:2] != (height, width):
            raise FaganError(
                f"{_describe(frames[i], i)} is {array.shape[1]}x{array.shape[0]} but "
                f"{_describe(frames[0], 0)} is {width}x{height}; all frames must be the same size"
            )
    return arrays


def _check_fps(fps: float) -> float:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise FaganError(f"frames per second must be a positive number, got {fps!r}")
    return float(fps)


def write_gif(
    frames: Sequence[Frame], path: str | os.PathLike, fps: float = 4, loop: int = 0
) -> Path:
    """Write frames as an animated GIF (Pillow), atomically.

    GIF stores frame delays in hundredths of a second, so the delay is
    ``round(1000 / fps)`` ms rounded again by Pillow to 10 ms. All frames share one
    256-colour palette, so unchanged regions do not flicker. Pillow merges consecutive
    identical frames into one longer frame, so the file may hold fewer frames than given
    while playing for the same time.

    Args:
        frames: ``HxWx3`` uint8 arrays (``HxW`` and ``HxWx1`` are taken as grey, an alpha
            channel is dropped) or paths of images, all the same size.
        path: Destination ``.gif``; parent directories are created.
        fps: Frames per second.
        loop: Times to play the animation; 0 means forever.

    Returns:
        The path written.

    Raises:
        FaganError: If there are no frames, frames differ in size or are not uint8 images,
            ``fps`` is not positive or ``loop`` is negative.
    """
    fps = _check_fps(fps)
    if loop < 0:
        raise FaganError(f"GIF loop count must be 0 (forever) or more, got {loop}")
    stack = np.stack(_load_frames(frames))
    duration_ms = max(1, round(1000.0 / fps))
    # One palette for every frame (from a mosaic of up to 16 of them): colours stay
    # put from frame to frame instead of flickering with per-frame palettes.
    picks = evenly_spaced(list(range(len(stack))), 16)
    palette = Image.fromarray(np.concatenate([stack[k] for k in picks])).quantize(
        256, method=Image.Quantize.MEDIANCUT
    )
    images = [
        Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE)
        for frame in stack
    ]

    def write(tmp: Path) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=duration_ms, loop=int(loop), optimize=False)

    return atomic_write(path, write)


def ffmpeg_available() -> bool:
    """Return whether ``imageio-ffmpeg`` is importable and can find an ffmpeg binary."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001 - any failure means "no usable ffmpeg"
        return False
    return True


def write_mp4(frames: Sequence[Frame], path: str | os.PathLike, fps: float = 4) -> Path | None:
    """Write frames as an H.264 MP4 with ``imageio-ffmpeg``, if it is installed.

    Frames with an odd width or height are padded with one black row/column on the
    bottom/right, because the yuv420p pixel format needs even sizes.

    Args:
        frames: ``HxWx3`` uint8 arrays or image paths, all the same size.
        path: Destination ``.mp4``; parent directories are created.
        fps: Frames per second.

    Returns:
        The path written, or ``None`` (and nothing is written) when ffmpeg is not
        available; see :func:`ffmpeg_available`.

    Raises:
        FaganError: If there are no frames, frames differ in size, ``fps`` is not
            positive, or ffmpeg fails.
    """
    fps = _check_fps(fps)
    if not ffmpeg_available():
        return None
    import imageio_ffmpeg

    arrays = _load_frames(frames)
    height, width = arrays[0].shape[:2]
    pad_h, pad_w = height % 2, width % 2

    def write(tmp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width + pad_w, height + pad_h),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        writer.send(None)  # prime the generator
        try:
            for array in arrays:
                if pad_h or pad_w:
                    array = np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)))
                writer.send(np.ascontiguousarray(array))
        finally:
            writer.close()

    try:
        return atomic_write(path, write)
    except (OSError, RuntimeError) as exc:
        raise FaganError(f"ffmpeg could not write {path}: {exc}") from exc


def make_progress_gif(
    sample_dir: str | os.PathLike,
    output: str | os.PathLike,
    fps: float = 4,
    mp4: bool = False,
    max_frames: int = 120,
) -> Path:
    """Animate a training run's sample grids in training order.

    The GIF is always written: at ``output`` when it ends in ``.gif``, otherwise beside it
    with a ``.gif`` suffix. An MP4 is also written (with an ``.mp4`` suffix) when
    ``output`` ends in ``.mp4`` or ``mp4`` is true, provided ffmpeg is available; when it
    is not, a warning is issued and only the GIF is written.

    Args:
        sample_dir: Directory holding ``gen_<epoch>_<batch>.png`` grids.
        output: Destination ending in ``.gif`` or ``.mp4``.
        fps: Frames per second.
        mp4: Also write an MP4 beside a ``.gif`` output.
        max_frames: At most this many grids, evenly spaced over training (the first and
            the last always among them), so that long runs give files of sensible size.

    Returns:
        The MP4's path when ``output`` ends in ``.mp4`` and it was written, else the GIF's.

    Raises:
        FaganError: If ``output`` has another suffix, the directory holds no sample grids
            or the grids differ in size.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise FaganError(f"animation output must end in .gif or .mp4, got {output}")
    frames = evenly_spaced(sample_dir_frames(sample_dir), max_frames)
    gif_path = output if suffix == ".gif" else output.with_suffix(".gif")
    gif = write_gif(frames, gif_path, fps=fps)
    if suffix == ".mp4" or mp4:
        video = write_mp4(frames, output.with_suffix(".mp4"), fps=fps)
        if video is None:
            warnings.warn(
                "MP4 skipped: imageio-ffmpeg is not installed (pip install 'fagan[video]'); "
                f"wrote {gif} only",
                stacklevel=2,
            )
        elif suffix == ".mp4":
            return video
    return gif


