"""Latent-space walks: spherical interpolation through the latents of chosen seeds.

The key latents are :func:`fagan.latents.latents_for_seeds` (one ``torch.Generator`` per
seed, so the key frame of seed ``s`` is the first image of ``fagan generate --seed s``
with the same truncation), joined by :func:`fagan.latents.interpolation_path`
(``steps`` slerp points per segment; key ``k`` is frame ``k * steps``). Frames are
generated in batches with the generator in eval mode, turned into bytes with
:func:`fagan.sample.to_uint8`, and written as a GIF, an MP4 beside it where
imageio-ffmpeg works, and optionally a strip PNG of the key frames (or of ``N`` evenly
spaced frames).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fagan.animation import write_gif, write_mp4
from fagan.errors import FaganError
from fagan.generate import generate_batches
from fagan.latents import interpolation_path, latents_for_seeds
from fagan.networks import Generator
from fagan.sample import evenly_spaced, to_uint8, write_strip

__all__ = [
    "Interpolation",
    "InterpolationFiles",
    "interpolate",
    "parse_seeds",
    "write_interpolation",
]


@dataclass
class Interpolation:
    """The frames of one walk.

    Attributes:
        images: generated frames (M, 3, S, S), float in [-1, 1], on the CPU.
        latents: the latent of every frame (M, latent_size).
        key_indices: the frame index of each seed's key frame, in seed order.
        seeds: the seeds, in order.
    """

    images: Tensor
    latents: Tensor
    key_indices: list[int]
    seeds: list[int]

    def frames_u8(self) -> list:
        """Frames as ``HxWx3`` uint8 numpy arrays (the bytes written to the GIF/MP4)."""
        return list(to_uint8(self.images).permute(0, 2, 3, 1).numpy())


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
        FaganError: on a part that is not a whole number or fewer than two seeds.
    """
    seeds: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        try:
            seeds.append(int(part))
        except ValueError:
            raise FaganError(f"seeds must be whole numbers separated by commas, got {part!r} "
                             f"in {text!r}") from None
    if len(seeds) < 2:
        raise FaganError(f"an interpolation needs at least two seeds, got {text!r}")
    return seeds


def interpolate(
    generator: Generator,
    seeds: Sequence[int],
    *,
    steps: int = 16,
    loop: bool = False,
    truncation: float | None = None,
    batch_size: int = 64,
) -> Interpolation:
    """Generates the frames of a spherical walk through the seeds' latents.

    Args:
        generator: the network (put in eval mode here and left so).
        seeds: two or more seeds; their latents are the key frames.
        steps: frames per segment between consecutive seeds (``>= 1``).
        loop: go back to the first seed at the end (a seamless loop, ``K * steps``
            frames); otherwise the last seed closes the walk (``(K-1) * steps + 1``).
        truncation: truncate the key latents to ``|z| <= truncation``.
        batch_size: frames per forward pass.

    Returns:
        The frames, their latents and the key frame indices.

    Raises:
        FaganError: fewer than two seeds, bad steps, truncation or batch size.
    """
    seeds = [int(s) for s in seeds]
    if batch_size < 1:
        raise FaganError(f"batch size must be at least 1, got {batch_size}")
    keys = latents_for_seeds(seeds, generator.latent_size, truncation)
    path = interpolation_path(keys, steps, loop=loop)
    generator.eval()
    images = torch.cat(list(generate_batches(generator, path, batch_size)))
    return Interpolation(images, path, [k * steps for k in range(len(seeds))], seeds)


def write_interpolation(
    walk: Interpolation,
    output: str | os.PathLike[str],
    *,
    fps: float = 16.0,
    mp4: bool = True,
    strip: str | os.PathLike[str] | None = None,
    strip_frames: int | None = None,
) -> InterpolationFiles:
    """Writes a walk as a GIF (and an MP4 beside it), plus an optional strip image.

    Args:
        walk: the frames, from :func:`interpolate`.
        output: a ``.gif`` (the MP4 goes beside it with an ``.mp4`` suffix) or an
            ``.mp4`` (the GIF goes beside it).
        fps: frames per second.
        mp4: also write the MP4 where imageio-ffmpeg works (an ``.mp4`` output always
            asks for it).
        strip: a PNG of frames side by side: the key frames, or ``strip_frames``
            evenly spaced frames (first and last included).
        strip_frames: number of evenly spaced frames in the strip (default: the keys).

    Returns:
        The paths written.

    Raises:
        FaganError: an output that is not .gif/.mp4, a strip that is not .png, bad fps.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise FaganError(f"the animation must end in .gif or .mp4, got {output}")
    if strip is not None and Path(strip).suffix.lower() != ".png":
        raise FaganError(f"the strip image must end in .png, got {strip}")
    if strip_frames is not None and strip_frames < 1:
        raise FaganError(f"the strip needs at least one frame, got {strip_frames}")
    frames = walk.frames_u8()
    gif = write_gif(frames, output.with_suffix(".gif"), fps=fps)
    video = write_mp4(frames, output.with_suffix(".mp4"), fps=fps) if mp4 or suffix == ".mp4" \
        else None
    strip_path: Path | None = None
    shown: list[int] = []
    if strip is not None:
        indices = list(range(len(frames)))
        shown = walk.key_indices if strip_frames is None else evenly_spaced(indices, strip_frames)
        strip_path = write_strip(walk.images[shown], strip)
    return InterpolationFiles(gif, video, strip_path, len(frames), list(shown))
