"""Turning generator output into files: image grids, single images, GIFs, videos, latents.

Generators produce float images in ``[-1, 1]`` laid out NCHW. Every image written by this
module goes through :func:`to_uint8`, which maps a value ``x`` to the byte::

    round((clamp(x, -1, 1) + 1) * 127.5)

so ``-1 -> 0``, ``0 -> 128`` (127.5 rounds half to even) and ``1 -> 255``. This is the
same mapping, to within one level, as the original project's
``torchvision.utils.save_image(..., normalize=True, range=(-1, 1))``.

Sample grids follow the original project's conventions: a grid of ``int(sqrt(N))``
images per row with 2 pixels of black padding (the layout of
:func:`torchvision.utils.make_grid`), saved during training as ``gen_<epoch>_<batch>.png``.
:func:`make_progress_gif` turns a directory of those into an animation.

Latent helpers (:func:`truncated_normal`, :func:`latents_for_seeds`, :func:`slerp`,
:func:`interpolation_path`) always draw on the CPU with an explicit
:class:`torch.Generator`, so the same seed gives the same latent on every machine.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fagan.errors import FaganError
from fagan.fileio import atomic_write

__all__ = [
    "ffmpeg_available",
    "grid_uint8",
    "interpolation_path",
    "latents_for_seeds",
    "make_grid",
    "make_progress_gif",
    "sample_dir_frames",
    "save_grid",
    "save_individual",
    "slerp",
    "to_uint8",
    "truncated_normal",
    "write_gif",
    "write_grid",
    "write_mp4",
    "write_strip",
]

#: Training sample grids are named ``gen_<epoch>_<batch>.png``.
SAMPLE_NAME_RE = re.compile(r"^gen_(\d+)_(\d+)\.png$")

#: Rejection rounds in :func:`truncated_normal` before the inverse-CDF fallback.
_MAX_REJECTION_ROUNDS = 64

#: Cosine above which :func:`slerp` treats two vectors as parallel and interpolates linearly.
_PARALLEL_DOT = 0.9995

Frame = np.ndarray | str | os.PathLike


# --------------------------------------------------------------------------------------
# Atomic file writing
# --------------------------------------------------------------------------------------


def _write_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Atomically write an ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` uint8 array as PNG."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Convert generator output in ``[-1, 1]`` to bytes.

    The mapping is exactly ``((x.clamp(-1, 1) + 1) * 127.5).round()`` computed in float32
    (``round`` is half-to-even, so ``0 -> 128``); values outside ``[-1, 1]`` are clamped
    and NaN becomes 0. The result is detached and on the CPU.

    Args:
        images: Float tensor of any shape, typically NCHW.

    Returns:
        A ``torch.uint8`` tensor of the same shape with values in ``[0, 255]``.
    """
    x = images.detach().to(device="cpu", dtype=torch.float32)
    x = torch.nan_to_num(x, nan=-1.0)
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def _as_nchw(images: torch.Tensor) -> torch.Tensor:
    """Validate generator output and return it as a 4-D NCHW tensor."""
    if not isinstance(images, torch.Tensor):
        raise FaganError(f"expected a tensor of images, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise FaganError(f"expected images shaped (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise FaganError("there are no images to save (the batch is empty)")
    if images.shape[1] not in (1, 3, 4):
        raise FaganError(
            f"expected 1, 3 or 4 image channels, got {images.shape[1]} "
            f"(shape {tuple(images.shape)})"
        )
    return images


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2,
              pad_value: int | float = 0) -> torch.Tensor:
    """:func:`torchvision.utils.make_grid`'s layout of a (N, C, H, W) batch, as (C', H', W').

    ``nrow`` images per row, ``padding`` pixels of ``pad_value`` around and between them,
    one image returned as it is, single-channel images repeated to RGB. The same layout
    as torchvision's (a test checks it), written out here so that training never
    imports torchvision (~165 MB of memory and ~1 s of start-up).
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[0] == 1:
        return images[0]
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = -(-count // columns)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full((channels, cell_h * rows + padding, cell_w * columns + padding),
                           pad_value)
    for index in range(count):
        y, x = divmod(index, columns)
        top, left = y * cell_h + padding, x * cell_w + padding
        grid[:, top:top + height, left:left + width] = images[index]
    return grid


def grid_uint8(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """A batch of images laid out as one ``(3 or 4, H, W)`` uint8 grid (see :func:`save_grid`).

    Args:
        images: Float tensor in ``[-1, 1]`` shaped ``(N, C, H, W)`` (or one ``(C, H, W)``
            image) with ``C`` in 1, 3, 4.
        nrow: Images per row; defaults to ``int(sqrt(N))`` like the original project
            (at least 1).

    Raises:
        FaganError: If the tensor is not a batch of images or ``nrow`` is not positive.
    """
    images = _as_nchw(images)
    if nrow is None:
        nrow = max(1, int(math.sqrt(images.shape[0])))
    if nrow < 1:
        raise FaganError(f"images per row must be at least 1, got {nrow}")
    return make_grid(to_uint8(images), nrow=nrow, padding=2, pad_value=0)


def write_grid(grid: torch.Tensor, path: str | os.PathLike) -> Path:
    """Atomically write a :func:`grid_uint8` grid as a PNG; returns the path."""
    return _write_png(grid.permute(1, 2, 0).numpy(), path)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Save a batch of images as one PNG grid.

    The layout is :func:`torchvision.utils.make_grid`'s: ``nrow`` images per row, 2 pixels
    of black padding around and between them (a single image is written unpadded, as
    torchvision does), single-channel images shown as grey RGB. The file is written to a
    temporary file beside ``path`` and moved into place, so a reader never sees half a PNG.

    Args:
        images: Float tensor in ``[-1, 1]`` shaped ``(N, C, H, W)`` (or one ``(C, H, W)``
            image) with ``C`` in 1, 3, 4.
        path: Destination file; parent directories are created.
        nrow: Images per row; defaults to ``int(sqrt(N))`` like the original project
            (at least 1).

    Returns:
        The path written.

    Raises:
        FaganError: If the tensor is not a batch of images or ``nrow`` is not positive.
    """
    return write_grid(grid_uint8(images, nrow), path)


def write_strip(images: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a batch of images side by side as a single row (a grid with ``nrow = N``).

    Args:
        images: Float tensor in ``[-1, 1]`` shaped ``(N, C, H, W)``.
        path: Destination PNG; parent directories are created.

    Returns:
        The path written.
    """
    images = _as_nchw(images)
    return save_grid(images, path, nrow=images.shape[0])


def save_individual(
    images: torch.Tensor, out_dir: str | os.PathLike, start_index: int = 0
) -> list[Path]:
    """Save each image of a batch as its own PNG named by a 6-digit index.

    Image ``i`` of the batch is written to ``out_dir/{start_index + i:06d}.png``, so
    successive batches can be written into one directory by advancing ``start_index``.

    Args:
        images: Float tensor in ``[-1, 1]`` shaped ``(N, C, H, W)`` with ``C`` in 1, 3, 4.
        out_dir: Directory to write into (created if missing).
        start_index: Index of the first image.

    Returns:
        The paths written, in batch order.

    Raises:
        FaganError: If the tensor is not a batch of images or ``start_index`` is negative.
    """
    images = _as_nchw(images)
    if start_index < 0:
        raise FaganError(f"start index must be 0 or more, got {start_index}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = to_uint8(images).permute(0, 2, 3, 1).numpy()
    return [
        _write_png(array, out_dir / f"{start_index + i:06d}.png") for i, array in enumerate(arrays)
    ]


# --------------------------------------------------------------------------------------
# Animations
# --------------------------------------------------------------------------------------


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
    256-colour palette, so unchanged regions do not flicker. Pillow merges consecutive identical frames into one longer frame,
    so the file may hold fewer frames than given while playing for the same time.

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


def evenly_spaced(items: list, count: int) -> list:
    """At most ``count`` items of ``items``, evenly spaced, first and last included."""
    if len(items) <= count:
        return list(items)
    if count < 2:
        return list(items[-1:])
    picks = sorted({round(k * (len(items) - 1) / (count - 1)) for k in range(count)})
    return [items[k] for k in picks]


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


# --------------------------------------------------------------------------------------
# Latents
# --------------------------------------------------------------------------------------


def _check_latent_shape(n: int, dim: int) -> None:
    if n < 0:
        raise FaganError(f"number of latents must be 0 or more, got {n}")
    if dim < 1:
        raise FaganError(f"latent size must be at least 1, got {dim}")


def truncated_normal(
    n: int, dim: int, truncation: float | None, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``(n, dim)`` standard normal latents, optionally truncated to ``[-t, t]``.

    With ``truncation=None`` this is exactly ``torch.randn(n, dim, generator=generator)``.
    With ``t > 0`` every entry outside ``[-t, t]`` is redrawn from the standard normal
    until it falls inside, which samples the exact truncated normal (the "truncation
    trick"). After a bounded number of rounds (only reached for very small ``t``) the
    remaining entries are drawn by inverse CDF from the same generator, which is the same
    distribution. The result is deterministic given the generator's state.

    Args:
        n: Number of latents.
        dim: Latent size.
        truncation: Truncation threshold ``t > 0``, or ``None`` for no truncation.
        generator: CPU generator that supplies all randomness.

    Returns:
        A float32 CPU tensor shaped ``(n, dim)``.

    Raises:
        FaganError: If ``truncation`` is not positive, or ``n``/``dim`` are invalid.
    """
    _check_latent_shape(n, dim)
    z = torch.randn(n, dim, generator=generator)
    if truncation is None:
        return z
    t = float(truncation)
    if not (t > 0 and math.isfinite(t)):
        raise FaganError(f"truncation must be a positive number, got {truncation!r}")
    flat = z.view(-1)
    outside = (flat.abs() > t).nonzero().squeeze(1)
    for _ in range(_MAX_REJECTION_ROUNDS):
        if outside.numel() == 0:
            return z
        flat[outside] = torch.randn(outside.numel(), generator=generator)
        outside = outside[flat[outside].abs() > t]
    if outside.numel():
        # Inverse CDF on [Phi(-t), Phi(t)], in float64 for accuracy in the tails.
        lo = torch.special.ndtr(torch.tensor(-t, dtype=torch.float64))
        u = torch.rand(outside.numel(), generator=generator, dtype=torch.float64)
        draw = torch.special.ndtri(lo + u * (1.0 - 2.0 * lo))
        flat[outside] = draw.clamp(-t, t).to(flat.dtype)
    return z


def latents_for_seeds(
    seeds: Sequence[int], dim: int, truncation: float | None = None
) -> torch.Tensor:
    """Draw one latent per seed, each from its own ``torch.Generator`` seeded with it.

    A seed therefore always gives the same latent (and so the same image from a given
    generator), whatever other seeds it is drawn with.

    Args:
        seeds: Integer seeds, one per latent.
        dim: Latent size.
        truncation: Optional truncation threshold, see :func:`truncated_normal`.

    Returns:
        A float32 CPU tensor shaped ``(len(seeds), dim)``.

    Raises:
        FaganError: If a seed is not an integer PyTorch accepts, or for invalid
            ``dim``/``truncation``.
    """
    _check_latent_shape(len(seeds), dim)
    rows = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise FaganError(f"seeds must be integers, got {seed!r}")
        generator = torch.Generator(device="cpu")
        try:
            generator.manual_seed(int(seed))
        except (RuntimeError, OverflowError) as exc:
            raise FaganError(f"seed {seed} is out of range for PyTorch: {exc}") from exc
        rows.append(truncated_normal(1, dim, truncation, generator))
    if not rows:
        return torch.empty(0, dim)
    return torch.cat(rows, dim=0)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherically interpolate between (batches of) vectors along the last dimension.

    Uses the angle ``omega`` between the directions of ``a`` and ``b`` and returns
    ``sin((1 - t) omega) / sin(omega) * a + sin(t omega) / sin(omega) * b``, which for unit
    vectors stays on the unit sphere. Where the vectors are nearly parallel (cosine above
    0.9995) or either is zero it falls back to linear interpolation; nearly opposite
    vectors have no unique great circle and are also interpolated linearly. ``t = 0``
    returns ``a`` and ``t = 1`` returns ``b`` exactly.

    Args:
        a: Tensor shaped ``(..., D)``.
        b: Tensor broadcastable with ``a``.
        t: Interpolation weight(s), a float or a tensor broadcastable with ``a[..., :1]``
            (e.g. shape ``(N, 1)`` for one weight per row).

    Returns:
        The interpolated vectors, shaped like ``a`` and ``b`` broadcast together.
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a = a.to(dtype)
    b = b.to(dtype)
    t = torch.as_tensor(t, dtype=dtype, device=a.device)
    a_norm = a.norm(dim=-1, keepdim=True)
    b_norm = b.norm(dim=-1, keepdim=True)
    eps = torch.finfo(dtype).tiny
    cos = ((a / a_norm.clamp_min(eps)) * (b / b_norm.clamp_min(eps))).sum(-1, keepdim=True)
    cos = cos.clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin_omega = torch.sin(omega)
    degenerate = (cos.abs() > _PARALLEL_DOT) | (a_norm == 0) | (b_norm == 0)
    safe_sin = torch.where(degenerate, torch.ones_like(sin_omega), sin_omega)
    w_a = torch.where(degenerate, 1.0 - t, torch.sin((1.0 - t) * omega) / safe_sin)
    w_b = torch.where(degenerate, t, torch.sin(t * omega) / safe_sin)
    out = w_a * a + w_b * b
    # Make the endpoints exact even where a weight is off by rounding.
    out = torch.where(t == 0, a.expand_as(out), out)
    out = torch.where(t == 1, b.expand_as(out), out)
    return out


def interpolation_path(
    latents: torch.Tensor, steps_per_segment: int, loop: bool = False
) -> torch.Tensor:
    """Build a smooth path through key latents by slerping between consecutive ones.

    Each segment from key ``k`` to key ``k + 1`` contributes ``steps_per_segment`` points
    at ``t = 0, 1/s, ..., (s-1)/s``, so key ``k`` sits at row ``k * steps_per_segment``.
    Without ``loop`` the last key is appended, giving ``(K - 1) * s + 1`` rows. With
    ``loop`` a final segment returns toward the first key without repeating it, giving
    ``K * s`` rows that cycle seamlessly when played on repeat.

    Args:
        latents: Key latents shaped ``(K, D)`` with ``K >= 2``.
        steps_per_segment: Points per segment ``s >= 1``.
        loop: Whether to close the path back to the first key.

    Returns:
        A tensor shaped ``(M, D)``.

    Raises:
        FaganError: If there are fewer than two keys, the shape is wrong or
            ``steps_per_segment`` is less than 1.
    """
    if latents.dim() != 2:
        raise FaganError(f"expected latents shaped (K, D), got shape {tuple(latents.shape)}")
    if latents.shape[0] < 2:
        raise FaganError(
            f"an interpolation needs at least two latents (seeds), got {latents.shape[0]}"
        )
    if steps_per_segment < 1:
        raise FaganError(f"steps per segment must be at least 1, got {steps_per_segment}")
    starts = latents
    ends = torch.roll(latents, shifts=-1, dims=0)
    if not loop:
        starts, ends = starts[:-1], ends[:-1]
    t = torch.arange(steps_per_segment, dtype=torch.float64) / steps_per_segment
    # (segments, steps, D)
    path = slerp(starts[:, None, :], ends[:, None, :], t[None, :, None])
    path = path.reshape(-1, latents.shape[1]).to(latents.dtype)
    if not loop:
        path = torch.cat([path, latents[-1:]], dim=0)
    return path
