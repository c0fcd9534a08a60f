"""Animations: GIF and MP4 writing, frame loading, and a training run's progress GIF.

Frames are ``HxWx3`` uint8 arrays or paths of images, all the same size, given as a list
or as a :class:`FrameSource` that produces them on demand (a latent walk generates its
frames batch by batch). Frames are streamed to the writers one at a time: GIFs are
written with Pillow (one shared palette, taken from up to 16 evenly spaced frames read
first, so unchanged regions do not flicker; Pillow keeps each frame as one byte per
pixel until it writes the file), MP4s with ``imageio-ffmpeg`` when it is installed
(``pip install 'fagan[video]'``). :func:`make_progress_gif` animates the
``gen_<epoch>_<batch>.png`` grids that training saves (see :mod:`fagan.sample`) in
training order.
"""

from __future__ import annotations

import math
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from fagan.errors import FaganError
from fagan.fileio import atomic_write, check_output_file
from fagan.sample import evenly_spaced

__all__ = [
    "MAX_ANIMATION_PIXELS",
    "MAX_FPS",
    "MAX_FRAME_PIXELS",
    "MIN_FPS",
    "FrameSource",
    "check_fps",
    "ffmpeg_available",
    "make_progress_gif",
    "sample_dir_frames",
    "write_animation",
    "write_gif",
    "write_mp4",
]

#: Training sample grids are named ``gen_<epoch>_<batch>.png``.
SAMPLE_NAME_RE = re.compile(r"^gen_(\d+)_(\d+)\.png$")

#: Frames per second accepted by the writers (GIF delays are whole hundredths of a second).
MIN_FPS, MAX_FPS = 0.1, 100.0
#: Most pixels in one frame (4096 x 4096).
MAX_FRAME_PIXELS = 1 << 24
#: Most pixels in one animation, all frames together (the GIF writer holds a byte each).
MAX_ANIMATION_PIXELS = 1 << 30
#: Frames whose colours make the GIF's one palette.
PALETTE_FRAMES = 16

#: What PIL and its format plugins raise for a file that is not a readable image.
_UNREADABLE: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

Frame = np.ndarray | str | os.PathLike


@runtime_checkable
class FrameSource(Protocol):
    """Frames produced on demand, read twice: a few at random for the palette, then all.

    ``frames_at`` returns ``HxWx3`` uint8 arrays for the given indices (ascending);
    iterating yields every frame in order. Both give the same frame for an index.
    """

    def __len__(self) -> int: ...

    def frames_at(self, indices: Sequence[int]) -> list[np.ndarray]: ...

    def __iter__(self) -> Iterator[np.ndarray]: ...


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
    try:
        for entry in sample_dir.iterdir():
            match = SAMPLE_NAME_RE.match(entry.name)
            if match and entry.is_file():
                keyed.append(((int(match.group(1)), int(match.group(2)), entry.name), entry))
    except OSError as error:
        raise FaganError(f"cannot list {sample_dir}: {error.strerror or error}") from None
    if not keyed:
        raise FaganError(f"no gen_<epoch>_<batch>.png sample grids in {sample_dir}")
    keyed.sort(key=lambda item: item[0])
    return [entry for _, entry in keyed]


def _load_frame(frame: Frame, index: int) -> np.ndarray:
    """Return one animation frame as an ``HxWx3`` uint8 array."""
    if isinstance(frame, (str, os.PathLike)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                opened = Image.open(frame)
            with opened as image:
                width, height = image.size
                if width * height > MAX_FRAME_PIXELS:
                    raise FaganError(
                        f"frame image {frame} is {width}x{height}: frames have at "
                        f"most {MAX_FRAME_PIXELS:,} pixels"
                    )
                array = np.asarray(image.convert("RGB"))
        except _UNREADABLE as exc:
            raise FaganError(f"cannot read frame image {frame}: {exc}") from None
        if array.size == 0:
            raise FaganError(f"frame image {frame} has no pixels")
        return array
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise FaganError(f"frame {index} must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise FaganError(f"frame {index} must be shaped (H, W, 3), got {tuple(np.shape(frame))}")
    if array.shape[0] * array.shape[1] == 0:
        raise FaganError(f"frame {index} has no pixels (shape {tuple(array.shape)})")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _describe(frame: Frame, index: int) -> str:
    if isinstance(frame, (str, os.PathLike)):
        return f"frame {index} ({frame})"
    return f"frame {index}"


class _ListFrames:
    """A list of frames (arrays or image paths) as a :class:`FrameSource`, read lazily.

    Every frame is checked against frame 0's size as it is read.
    """

    def __init__(self, frames: Sequence[Frame]) -> None:
        if len(frames) == 0:
            raise FaganError("cannot write an animation with no frames")
        self._frames = frames
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    def _read(self, index: int) -> np.ndarray:
        if self._size is None and index != 0:
            self._read(0)
        array = _load_frame(self._frames[index], index)
        if self._size is None:
            self._size = (array.shape[0], array.shape[1])
        elif array.shape[:2] != self._size:
            height, width = self._size
            raise FaganError(
                f"{_describe(self._frames[index], index)} is {array.shape[1]}x{array.shape[0]} "
                f"but {_describe(self._frames[0], 0)} is {width}x{height}; all frames must be "
                "the same size"
            )
        return array

    def frames_at(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [self._read(index) for index in indices]

    def __iter__(self) -> Iterator[np.ndarray]:
        for index in range(len(self._frames)):
            yield self._read(index)


def _as_source(frames: Sequence[Frame] | FrameSource) -> FrameSource:
    if isinstance(frames, FrameSource):
        if len(frames) == 0:
            raise FaganError("cannot write an animation with no frames")
        return frames
    return _ListFrames(frames)


def check_fps(fps: float) -> float:
    """``fps`` as a float when it lies in [:data:`MIN_FPS`, :data:`MAX_FPS`].

    Raises:
        FaganError: otherwise (including NaN, infinities and non-numbers).
    """
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float, np.integer, np.floating))
        or not math.isfinite(fps)
        or not MIN_FPS <= fps <= MAX_FPS
    ):
        raise FaganError(
            f"frames per second must be a number from {MIN_FPS:g} to {MAX_FPS:g}, got {fps!r}"
        )
    return float(fps)


def _check_loop(loop: int) -> int:
    if isinstance(loop, bool) or not isinstance(loop, (int, np.integer)) or not 0 <= loop <= 65535:
        raise FaganError(f"GIF loop count must be 0 (forever) to 65535, got {loop!r}")
    return int(loop)


def _first_frames(source: FrameSource, count: int) -> list[np.ndarray]:
    """Frame 0 and up to ``count - 1`` more evenly spaced ones; checks the animation's size."""
    picks = evenly_spaced(list(range(len(source))), count)
    arrays = source.frames_at(picks)
    height, width = arrays[0].shape[:2]
    if len(source) * height * width > MAX_ANIMATION_PIXELS:
        raise FaganError(
            f"{len(source):,} frames of {width}x{height} make "
            f"{len(source) * height * width:,} pixels; an animation has at most "
            f"{MAX_ANIMATION_PIXELS:,}"
        )
    return arrays


def _palette(arrays: list[np.ndarray]) -> Image.Image:
    """One 256-colour palette from a mosaic of frames (stacked top to bottom)."""
    return Image.fromarray(np.concatenate(arrays)).quantize(256, method=Image.Quantize.MEDIANCUT)


def _save_gif(
    tmp: Path, frames: Iterator[np.ndarray], palette: Image.Image, fps: float, loop: int
) -> None:
    """Pillow's animated GIF of ``frames``, each quantized to ``palette`` as it arrives."""
    quantized = (
        Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE)
        for frame in frames
    )
    first = next(quantized)
    first.save(
        tmp,
        format="GIF",
        save_all=True,
        append_images=quantized,
        duration=max(1, round(1000.0 / fps)),
        loop=loop,
        optimize=False,
    )


class _Mp4Sink:
    """An ``imageio-ffmpeg`` H.264 writer fed one frame at a time (odd sizes padded)."""

    def __init__(self, tmp: Path, path: Path, height: int, width: int, fps: float) -> None:
        import imageio_ffmpeg

        self._path = path
        self._pad = (height % 2, width % 2)
        self._writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width + self._pad[1], height + self._pad[0]),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        self._guard(self._writer.send, None)  # prime the generator

    def _guard(self, call: Callable, *args: object) -> None:
        try:
            call(*args)
        except (OSError, RuntimeError) as exc:
            raise FaganError(f"ffmpeg could not write {self._path}: {exc}") from None

    def send(self, array: np.ndarray) -> None:
        if any(self._pad):
            array = np.pad(array, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)))
        self._guard(self._writer.send, np.ascontiguousarray(array))

    def close(self) -> None:
        self._guard(self._writer.close)


def write_animation(
    frames: Sequence[Frame] | FrameSource,
    gif_path: str | os.PathLike | None,
    mp4_path: str | os.PathLike | None = None,
    *,
    fps: float = 4,
    loop: int = 0,
) -> tuple[Path | None, Path | None]:
    """Writes frames as a GIF and/or an MP4 in one pass, one frame at a time, atomically.

    Every argument and output path is checked before the first frame is read. The GIF
    is :func:`write_gif`'s, the MP4 :func:`write_mp4`'s; the MP4 is skipped (``None``)
    when ffmpeg is not available.

    Args:
        frames: arrays or image paths (a list), or a :class:`FrameSource`.
        gif_path: the ``.gif`` to write, or None.
        mp4_path: the ``.mp4`` to write, or None.
        fps: frames per second, from :data:`MIN_FPS` to :data:`MAX_FPS`.
        loop: times the GIF plays; 0 means forever.

    Returns:
        The GIF's and the MP4's paths (None for one not written).

    Raises:
        FaganError: no frames, frames that differ in size or are not uint8 images, too
            many pixels, ``fps`` or ``loop`` out of range, an output that cannot be
            written, ffmpeg failing.
    """
    fps = check_fps(fps)
    loop = _check_loop(loop)
    gif = None if gif_path is None else check_output_file(gif_path)
    mp4 = None if mp4_path is None else check_output_file(mp4_path)
    source = _as_source(frames)
    if mp4 is not None and not ffmpeg_available():
        mp4 = None
    if gif is None and mp4 is None:
        return None, None
    firsts = _first_frames(source, PALETTE_FRAMES if gif is not None else 1)
    palette = _palette(firsts) if gif is not None else None
    height, width = firsts[0].shape[:2]
    del firsts

    def write_both(gif_tmp: Path | None, mp4_tmp: Path | None) -> None:
        with ExitStack() as stack:
            sink = None
            if mp4_tmp is not None:
                sink = _Mp4Sink(mp4_tmp, mp4, height, width, fps)
                stack.callback(sink.close)

            def stream() -> Iterator[np.ndarray]:
                for array in source:
                    if sink is not None:
                        sink.send(array)
                    yield array

            if gif_tmp is not None:
                _save_gif(gif_tmp, stream(), palette, fps, loop)
            else:
                for _ in stream():
                    pass

    if mp4 is None:
        atomic_write(gif, lambda tmp: write_both(tmp, None))
    elif gif is None:
        atomic_write(mp4, lambda tmp: write_both(None, tmp))
    else:
        atomic_write(
            mp4, lambda mp4_tmp: atomic_write(gif, lambda gif_tmp: write_both(gif_tmp, mp4_tmp))
        )
    return gif, mp4


def write_gif(
    frames: Sequence[Frame] | FrameSource, path: str | os.PathLike, fps: float = 4, loop: int = 0
) -> Path:
    """Write frames as an animated GIF (Pillow), atomically, one frame at a time.

    GIF stores frame delays in hundredths of a second, so the delay is
    ``round(1000 / fps)`` ms rounded again by Pillow to 10 ms. All frames share one
    256-colour palette (from a mosaic of up to 16 evenly spaced frames), so unchanged
    regions do not flicker. Pillow merges consecutive identical frames into one longer
    frame, so the file may hold fewer frames than given while playing for the same time.

    Args:
        frames: ``HxWx3`` uint8 arrays (``HxW`` and ``HxWx1`` are taken as grey, an alpha
            channel is dropped) or paths of images, all the same size; or a
            :class:`FrameSource`.
        path: Destination ``.gif``; parent directories are created.
        fps: Frames per second, from :data:`MIN_FPS` to :data:`MAX_FPS`.
        loop: Times to play the animation; 0 means forever.

    Returns:
        The path written.

    Raises:
        FaganError: If there are no frames, frames differ in size or are not uint8 images,
            ``fps`` is out of range, ``loop`` is negative, or ``path`` cannot be written.
    """
    gif, _ = write_animation(frames, path, None, fps=fps, loop=loop)
    assert gif is not None
    return gif


def ffmpeg_available() -> bool:
    """Return whether ``imageio-ffmpeg`` is importable and can find an ffmpeg binary."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001 - any failure means "no usable ffmpeg"
        return False
    return True


def write_mp4(
    frames: Sequence[Frame] | FrameSource, path: str | os.PathLike, fps: float = 4
) -> Path | None:
    """Write frames as an H.264 MP4 with ``imageio-ffmpeg``, if it is installed.

    Frames are sent to ffmpeg one at a time. Frames with an odd width or height are
    padded with one black row/column on the bottom/right, because the yuv420p pixel
    format needs even sizes.

    Args:
        frames: ``HxWx3`` uint8 arrays or image paths, all the same size; or a
            :class:`FrameSource`.
        path: Destination ``.mp4``; parent directories are created.
        fps: Frames per second, from :data:`MIN_FPS` to :data:`MAX_FPS`.

    Returns:
        The path written, or ``None`` (and nothing is written) when ffmpeg is not
        available; see :func:`ffmpeg_available`.

    Raises:
        FaganError: If there are no frames, frames differ in size, ``fps`` is out of
            range, ``path`` cannot be written, or ffmpeg fails.
    """
    _, mp4 = write_animation(frames, None, path, fps=fps)
    return mp4


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
        fps: Frames per second, from :data:`MIN_FPS` to :data:`MAX_FPS`.
        mp4: Also write an MP4 beside a ``.gif`` output.
        max_frames: At most this many grids, evenly spaced over training (the first and
            the last always among them), so that long runs give files of sensible size.

    Returns:
        The MP4's path when ``output`` ends in ``.mp4`` and it was written, else the GIF's.

    Raises:
        FaganError: If ``output`` has another suffix or cannot be written, ``fps`` is out
            of range, the directory holds no sample grids or the grids differ in size or
            cannot be read.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise FaganError(f"animation output must end in .gif or .mp4, got {output}")
    fps = check_fps(fps)
    gif_path = output if suffix == ".gif" else output.with_suffix(".gif")
    want_mp4 = suffix == ".mp4" or mp4
    check_output_file(gif_path)
    if want_mp4:
        check_output_file(output.with_suffix(".mp4"))
    frames = evenly_spaced(sample_dir_frames(sample_dir), max_frames)
    gif, video = write_animation(
        frames, gif_path, output.with_suffix(".mp4") if want_mp4 else None, fps=fps
    )
    assert gif is not None
    if want_mp4 and video is None:
        warnings.warn(
            "MP4 skipped: imageio-ffmpeg is not installed (pip install 'fagan[video]'); "
            f"wrote {gif} only",
            stacklevel=2,
        )
    elif suffix == ".mp4" and video is not None:
        return video
    return gif
