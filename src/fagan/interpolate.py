"""Latent-space walks: spherical interpolation through the latents of chosen seeds.

The key latents are :func:`fagan.latents.latents_for_seeds` (one ``torch.Generator`` per
seed, so the key frame of seed ``s`` is the first image of ``fagan generate --seed s``
with the same truncation), joined by :func:`fagan.latents.interpolation_path`
(``steps`` slerp points per segment; key ``k`` is frame ``k * steps``). A walk is
generated lazily: :func:`interpolate` checks its size and computes its latents, and
:func:`write_interpolation` generates the frames batch by batch (the generator in eval
mode, bytes by :func:`fagan.sample.to_uint8`) while streaming them to a GIF, an MP4
beside it where imageio-ffmpeg works, and optionally a strip PNG of the key frames (or of
``N`` evenly spaced frames). Memory stays bounded by a few batches plus the GIF writer's
byte per pixel, and a walk has at most :data:`MAX_FRAMES` frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fagan.animation import (
    MAX_ANIMATION_PIXELS,
    check_fps,
    ffmpeg_available,
    write_animation,
)
from fagan.errors import FaganError
from fagan.fileio import check_output_file
from fagan.generate import check_batch_size, generate_batches
from fagan.latents import interpolation_path, latents_for_seeds
from fagan.networks import Generator
from fagan.sample import evenly_spaced, make_grid, to_uint8, write_grid

__all__ = [
    "MAX_FRAMES",
    "MAX_STRIP_FRAMES",
    "Interpolation",
    "InterpolationFiles",
    "interpolate",
    "parse_seeds",
    "write_interpolation",
]

#: Most frames in one walk.
MAX_FRAMES = 10_000
#: Most frames side by side in a strip image.
MAX_STRIP_FRAMES = 256
#: Bytes of generated frames kept from the palette pass for the writing pass.
_CACHE_BYTES = 64 << 20


class Interpolation:
    """The frames of one walk, generated on demand in fixed batches.

    Frame ``i`` is always generated in batch ``i // batch_size`` (the same latents in
    the same forward pass), so reading a frame twice gives the same bytes. It is a
    :class:`fagan.animation.FrameSource`: :meth:`frames_at` for a few frames (their
    batches are kept, up to 64 MiB, for the pass that follows), iteration for all of
    them in order.

    Attributes:
        generator: the network (in eval mode).
        latents: the latent of every frame (M, latent_size).
        key_indices: the frame index of each seed's key frame, in seed order.
        seeds: the seeds, in order.
        batch_size: frames per forward pass.
        label: the class of every frame, for a class-conditional generator (else None).
    """

    def __init__(
        self,
        generator: Generator,
        latents: Tensor,
        key_indices: list[int],
        seeds: list[int],
        batch_size: int,
        label: int | None = None,
    ) -> None:
        self.generator = generator
        self.latents = latents
        self.key_indices = key_indices
        self.seeds = seeds
        self.batch_size = batch_size
        self.label = label
        self._kept: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def _batch_images(self, batch: int) -> Tensor:
        start = batch * self.batch_size
        chunk = self.latents[start : start + self.batch_size]
        return next(generate_batches(self.generator, chunk, self.batch_size, label=self.label))

    def _batch_u8(self, batch: int) -> np.ndarray:
        """Batch ``batch`` as uint8 (B, H, W, 3)."""
        return to_uint8(self._batch_images(batch)).permute(0, 2, 3, 1).numpy()

    def frames_at(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The frames at ``indices`` as ``HxWx3`` uint8 arrays."""
        arrays = []
        generated: dict[int, np.ndarray] = {}
        for index in indices:
            batch = index // self.batch_size
            if batch not in generated:
                generated[batch] = self._kept.get(batch, None)
                if generated[batch] is None:
                    generated[batch] = self._batch_u8(batch)
                    if (
                        sum(a.nbytes for a in self._kept.values()) + generated[batch].nbytes
                        <= _CACHE_BYTES
                    ):
                        self._kept[batch] = generated[batch]
            arrays.append(generated[batch][index % self.batch_size].copy())
        return arrays

    def __iter__(self) -> Iterator[np.ndarray]:
        """Every frame in order, as ``HxWx3`` uint8 arrays, one batch generated at a time."""
        batches = -(-len(self) // self.batch_size)
        for batch in range(batches):
            frames = self._kept.pop(batch, None)
            if frames is None:
                frames = self._batch_u8(batch)
            yield from frames

    @property
    def images(self) -> Tensor:
        """All frames (M, 3, S, S), float in [-1, 1], on the CPU (generated here, all held)."""
        batches = generate_batches(self.generator, self.latents, self.batch_size, label=self.label)
        return torch.cat(list(batches))

    def frames_u8(self) -> list[np.ndarray]:
        """All frames as ``HxWx3`` uint8 numpy arrays (the bytes written to the GIF/MP4)."""
        return list(iter(self))


@dataclass
class InterpolationFiles:
    """What :func:`write_interpolation` wrote.

    Attributes:
        gif: the GIF.
        mp4: the MP4, or None when it was not asked for or ffmpeg is unavailable.
        strip: the strip PNG, or None.
        num_frames: frames in the animation.
        strip_frames: frame indices shown in the strip (empty without a strip).
    """

    gif: Path
    mp4: Path | None
    strip: Path | None
    num_frames: int
    strip_frames: list[int]


def parse_seeds(text: str) -> list[int]:
    """Parses ``"1,5,9"`` into ``[1, 5, 9]``.

    Raises:
        FaganError: on a part that is not a whole number, fewer than two seeds, or more
            than a walk can have frames.
    """
    seeds: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if len(seeds) >= MAX_FRAMES:
            raise FaganError(f"an interpolation takes at most {MAX_FRAMES:,} seeds")
        try:
            seeds.append(int(part))
        except ValueError:
            shown = part if len(part) <= 40 else part[:40] + "..."
            raise FaganError(
                f"seeds must be whole numbers separated by commas, got {shown!r}"
            ) from None
    if len(seeds) < 2:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise FaganError(f"an interpolation needs at least two seeds, got {shown!r}")
    return seeds


def walk_length(num_seeds: int, steps: int, loop: bool) -> int:
    """Frames of a walk through ``num_seeds`` keys: ``K * steps`` looped, else ``(K-1) * steps + 1``."""
    return num_seeds * steps if loop else (num_seeds - 1) * steps + 1


def interpolate(
    generator: Generator,
    seeds: Sequence[int],
    *,
    steps: int = 16,
    loop: bool = False,
    truncation: float | None = None,
    batch_size: int = 64,
    label: int | None = None,
) -> Interpolation:
    """A spherical walk through the seeds' latents, its frames generated when read.

    Every bound is checked here, before any frame is generated: at most
    :data:`MAX_FRAMES` frames and :data:`fagan.animation.MAX_ANIMATION_PIXELS` pixels.

    Args:
        generator: the network (put in eval mode here and left so).
        seeds: two or more seeds; their latents are the key frames.
        steps: frames per segment between consecutive seeds (``>= 1``).
        loop: go back to the first seed at the end (a seamless loop, ``K * steps``
            frames); otherwise the last seed closes the walk (``(K-1) * steps + 1``).
        truncation: truncate the key latents to ``|z| <= truncation``.
        batch_size: frames per forward pass.
        label: the class of every frame: required by a class-conditional generator,
            refused by an unconditional one.

    Returns:
        The walk: its latents and key frame indices, and its frames on demand.

    Raises:
        FaganError: fewer than two seeds, bad steps, too many frames, bad truncation or
            batch size, a seed PyTorch does not accept, a class missing, out of range
            or given to an unconditional generator.
    """
    seeds = [int(s) for s in seeds]
    check_batch_size(batch_size)
    num_classes = int(getattr(generator, "num_classes", None) or 0)
    if label is None and num_classes:
        raise FaganError(
            f"the generator is class-conditional ({num_classes} classes): give a class"
        )
    if label is not None and not 0 <= label < num_classes:
        raise FaganError(
            f"class {label} is out of range (0 to {num_classes - 1})"
            if num_classes
            else "the generator is unconditional: it takes no class"
        )
    if len(seeds) < 2:
        raise FaganError(f"an interpolation needs at least two seeds, got {len(seeds)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise FaganError(f"--steps must be a whole number >= 1, got {steps!r}")
    frames = walk_length(len(seeds), steps, loop)
    if frames > MAX_FRAMES:
        raise FaganError(
            f"{len(seeds)} seeds with --steps {steps} make {frames:,} frames; a "
            f"walk has at most {MAX_FRAMES:,} (give fewer steps or seeds)"
        )
    size = getattr(generator, "image_size", 0)
    if frames * size * size > MAX_ANIMATION_PIXELS:
        raise FaganError(
            f"{frames:,} frames of {size}x{size} make {frames * size * size:,} "
            f"pixels; an animation has at most {MAX_ANIMATION_PIXELS:,} (give "
            "fewer steps or seeds)"
        )
    keys = latents_for_seeds(seeds, generator.latent_size, truncation)
    path = interpolation_path(keys, steps, loop=loop)
    generator.eval()
    keys_at = [k * steps for k in range(len(seeds))]
    return Interpolation(generator, path, keys_at, seeds, batch_size, label)


class _Collect:
    """A frame source passed through, keeping copies of the frames at ``wanted``."""

    def __init__(self, source: Interpolation, wanted: Sequence[int]) -> None:
        self.source = source
        self.wanted = set(wanted)
        self.kept: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.source)

    def frames_at(self, indices: Sequence[int]) -> list[np.ndarray]:
        return self.source.frames_at(indices)

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, frame in enumerate(self.source):
            if index in self.wanted:
                self.kept[index] = frame.copy()
            yield frame


def write_interpolation(
    walk: Interpolation,
    output: str | os.PathLike[str],
    *,
    fps: float = 16.0,
    mp4: bool = True,
    strip: str | os.PathLike[str] | None = None,
    strip_frames: int | None = None,
) -> InterpolationFiles:
    """Generates a walk's frames and writes them as a GIF (and an MP4 beside it), one pass.

    Every argument and output path is checked before the first frame is generated.

    Args:
        walk: the walk, from :func:`interpolate`.
        output: a ``.gif`` (the MP4 goes beside it with an ``.mp4`` suffix) or an
            ``.mp4`` (the GIF goes beside it).
        fps: frames per second, from :data:`fagan.animation.MIN_FPS` to
            :data:`fagan.animation.MAX_FPS`.
        mp4: also write the MP4 where imageio-ffmpeg works (an ``.mp4`` output always
            asks for it).
        strip: a PNG of frames side by side: the key frames, or ``strip_frames``
            evenly spaced frames (first and last included); at most
            :data:`MAX_STRIP_FRAMES`.
        strip_frames: number of evenly spaced frames in the strip (default: the keys).

    Returns:
        The paths written.

    Raises:
        FaganError: an output that is not .gif/.mp4 or cannot be written, a strip that is
            not .png or too long, fps out of range.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise FaganError(f"the animation must end in .gif or .mp4, got {output}")
    if strip is not None and Path(strip).suffix.lower() != ".png":
        raise FaganError(f"the strip image must end in .png, got {strip}")
    if strip_frames is not None and not 1 <= strip_frames <= MAX_STRIP_FRAMES:
        raise FaganError(f"--strip_frames must be from 1 to {MAX_STRIP_FRAMES}, got {strip_frames}")
    fps = check_fps(fps)
    shown: list[int] = []
    if strip is not None:
        shown = (
            list(walk.key_indices)
            if strip_frames is None
            else evenly_spaced(list(range(len(walk))), strip_frames)
        )
        if len(shown) > MAX_STRIP_FRAMES:
            raise FaganError(
                f"the strip would show {len(shown)} key frames, more than "
                f"{MAX_STRIP_FRAMES}: give --strip_frames"
            )
        check_output_file(strip)
    gif_path = output.with_suffix(".gif")
    mp4_path = output.with_suffix(".mp4") if mp4 or suffix == ".mp4" else None
    check_output_file(gif_path)
    if mp4_path is not None:
        check_output_file(mp4_path)
        if not ffmpeg_available():
            mp4_path = None
    source = _Collect(walk, shown)
    gif, video = write_animation(source, gif_path, mp4_path, fps=fps)
    assert gif is not None
    strip_path: Path | None = None
    if strip is not None:
        frames = torch.from_numpy(np.stack([source.kept[i] for i in shown])).permute(0, 3, 1, 2)
        strip_path = write_grid(make_grid(frames, nrow=len(shown), padding=2, pad_value=0), strip)
    return InterpolationFiles(gif, video, strip_path, len(walk), list(shown))
