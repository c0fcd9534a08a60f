"""Measuring a generator (or a folder of generated images) against real images.

Two entry points:

* :func:`evaluate_generator` -- for code, such as the training loop's ``--eval_every``:
  a generator and real images already in memory in, a JSON-ready dict out.
* :func:`run_evaluation` -- for ``fagan evaluate``: reads the real folder (and the
  generated folder or the generator file), caches the real images' Inception features
  per folder, and adds a ``meta`` entry.

Results have one key per metric, as :func:`fagan.metrics.compute_metrics` gives them
(``swd``: ``{"levels": {"64": .., "32": .., "16": ..}, "avg": .., "n_images": ..}`` x 1e3;
``fid``: ``{"value": ..}``; ``kid`` and ``is``: ``{"mean": .., "std": ..}``), plus
``swd_floor`` (same shape as ``swd``: two disjoint halves of the real images against
each other, the noise floor of the estimate) when SWD is measured with the floor on.
:func:`flatten_results` turns that into ``{"swd_avg": .., "swd_64": .., "fid": ..}``
for logs.

Images are compared as uint8 (N, 3, S, S). Real (and generated-folder) images go through
:class:`fagan.data.ImageFolderDataset`'s decoding (RGB, EXIF orientation, shorter side
resized to S with antialiased bilinear, centre crop) and :func:`fagan.sample.to_uint8`,
which returns an image already S x S byte for byte.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fagan.data import ImageFolderDataset
from fagan.errors import FaganError
from fagan.generate import generate_batches, make_latents
from fagan.metrics import METRICS, compute_metrics, needs_inception, parse_metric_list
from fagan.metrics.inception import (
    DEFAULT_STATS_DIR,
    InceptionFeatures,
    cached_real_features,
    fingerprint_image_dir,
    resolve_weights_path,
)
from fagan.metrics.swd import MIN_RESOLUTION
from fagan.sample import to_uint8

__all__ = [
    "DEFAULT_FOLDER_IMAGE_SIZE",
    "MAX_DEFAULT_SAMPLES",
    "evaluate_generator",
    "evaluate_images",
    "flatten_results",
    "format_table",
    "generate_u8",
    "load_image_folder",
    "run_evaluation",
]

#: Image side when two folders are compared and no --image_size is given.
DEFAULT_FOLDER_IMAGE_SIZE = 64
#: Generated images by default: as many as there are real images, at most this many.
MAX_DEFAULT_SAMPLES = 10_000


# --------------------------------------------------------------------------- images
def load_image_folder(
    folder: str | os.PathLike[str], image_size: int, *, progress: bool = False
) -> Tensor:
    """Reads every readable image under ``folder`` as uint8 (N, 3, S, S).

    Decoding is the training data's (:class:`fagan.data.ImageFolderDataset`); files that
    cannot be read are left out with a warning (never replaced by a neighbour, so no image
    is counted twice).

    Args:
        folder: the images folder (nested folders are searched).
        image_size: the side S.
        progress: show a progress bar on stderr.

    Raises:
        FaganError: missing folder, no images, none readable.
    """
    from tqdm.auto import tqdm

    dataset = ImageFolderDataset(folder, image_size)
    images: list[Tensor] = []
    for index in tqdm(range(len(dataset)), desc=f"reading {Path(folder).name}", unit="img",
                      disable=not progress, leave=False):
        path = dataset.paths[index]
        if any(path == bad for bad, _ in dataset.skipped):
            continue  # found unreadable while an earlier file was replaced
        before = len(dataset.skipped)
        image = dataset[index]
        if len(dataset.skipped) > before:
            continue  # this file is unreadable: the dataset handed back another one
        images.append(to_uint8(image))
    if not images:
        raise FaganError(f"no readable images in {folder}")
    return torch.stack(images)


@torch.no_grad()
def generate_u8(
    generator: nn.Module,
    num_samples: int,
    *,
    seed: int = 0,
    truncation: float | None = None,
    batch_size: int = 64,
) -> Tensor:
    """``num_samples`` images of ``generator`` as uint8 (N, 3, S, S) on the CPU.

    The latents are :func:`fagan.generate.make_latents` (``num_samples``, ``seed``,
    ``truncation``): the images ``fagan generate`` writes with the same flags. The
    generator runs in eval mode and is put back in its former mode; no global random
    state is touched.
    """
    if num_samples < 1:
        raise FaganError(f"the number of generated images must be at least 1, got {num_samples}")
    if batch_size < 1:
        raise FaganError(f"batch size must be at least 1, got {batch_size}")
    latent_size = getattr(generator, "latent_size", None)
    if not isinstance(latent_size, int):
        raise FaganError("evaluate_generator needs a fagan Generator (with a latent_size)")
    latents = make_latents(num_samples, latent_size, seed, truncation)
    was_training = generator.training
    generator.eval()
    try:
        batches = [to_uint8(images) for images in
                   generate_batches(generator, latents, batch_size)]  # type: ignore[arg-type]
    finally:
        generator.train(was_training)
    return torch.cat(batches)


# --------------------------------------------------------------------------- metrics
def _metric_options(names: Sequence[str], opts: dict[str, Any]) -> dict[str, Any]:
    """The options some selected metric takes (compute_metrics refuses the others).

    Options only unselected metrics take, and None values, are dropped; an option no
    metric takes at all is a mistake.

    Raises:
        TypeError: on an option no registered metric takes.
    """
    def takes(name: str) -> set[str]:
        return set(inspect.signature(METRICS[name].compute).parameters) - {"real_u8", "fake_u8"}

    unknown = set(opts) - set().union(*(takes(n) for n in METRICS))
    if unknown:
        raise TypeError(f"options no metric takes: {sorted(unknown)}")
    accepted = set().union(*(takes(n) for n in names))
    return {k: v for k, v in opts.items() if k in accepted and v is not None}


def evaluate_images(
    real_u8: Tensor | np.ndarray | None,
    fake_u8: Tensor | np.ndarray,
    metrics: str | Sequence[str] = ("swd",),
    *,
    swd_floor: bool = True,
    **opts: Any,
) -> dict[str, Any]:
    """Metrics of two uint8 image sets, one key per metric (plus ``swd_floor``).

    Args:
        real_u8: real images (N, 3, S, S); may be None when no selected metric needs
            real pixels (``is`` only, or ``fid``/``kid`` with ``real_features`` given).
        fake_u8: generated images (M, 3, S, S).
        metrics: names or a comma-separated string (``swd``, ``fid``, ``kid``, ``is``).
        swd_floor: with SWD, also measure the real-vs-real floor (``swd_floor`` key).
        **opts: options of :func:`fagan.metrics.compute_metrics` (``weights_path``,
            ``device``, ``batch_size``, ``progress``, ``extractor``, ``real_features``,
            ``seed``, ...); options only unselected metrics take, and None values,
            are ignored.

    Raises:
        FaganError: unknown metrics, missing weights, bad images.
        TypeError: an option no metric takes.
    """
    names = parse_metric_list(metrics)
    kw = _metric_options(names, opts)
    if "swd" in names and swd_floor:
        kw["floor"] = True
    results: dict[str, Any] = dict(compute_metrics(names, real_u8, fake_u8, **kw))
    if "swd" in results and "floor" in results["swd"]:
        results["swd_floor"] = results["swd"].pop("floor")
    return results


def evaluate_generator(
    generator: nn.Module,
    real_images_u8: Tensor | np.ndarray | None,
    metrics: str | Sequence[str] = ("swd",),
    num_samples: int | None = None,
    seed: int = 0,
    *,
    truncation: float | None = None,
    batch_size: int = 64,
    swd_floor: bool = False,
    **opts: Any,
) -> dict[str, Any]:
    """Generates images and measures them against real ones (for ``--eval_every``).

    The same ``seed`` gives the same latents at every call, so successive evaluations
    during training differ only by the weights. The generator is switched to eval mode
    for the generation and put back in its former mode; no global random state is used.

    Example (in a training loop, with the real images read once)::

        real = load_image_folder(images_dir, image_size)          # uint8 (N, 3, S, S)
        scores = evaluate_generator(ema, real, ("swd",), num_samples=len(real))
        log(flatten_results(scores))                               # {"swd_avg": ..}

    Args:
        generator: a :class:`fagan.networks.Generator` (unwrapped from DDP/compile).
        real_images_u8: real images, uint8 (N, 3, S, S) with S the generator's size;
            None only when no selected metric needs real pixels (see
            :func:`evaluate_images`).
        metrics: names or a comma-separated string.
        num_samples: images to generate; default the number of real images (1000
            without real images).
        seed: seed of the latents (:func:`fagan.generate.make_latents`).
        truncation: truncate latents to ``|z| <= truncation``.
        batch_size: images per generator (and Inception) forward pass.
        swd_floor: also measure the real-vs-real SWD floor (constant for fixed real
            images: measure it once, not at every evaluation).
        **opts: options of :func:`fagan.metrics.compute_metrics`, such as
            ``weights_path``, ``device``, ``progress`` (default False), a ready
            ``extractor`` (:class:`fagan.metrics.inception.InceptionFeatures`, to load
            Inception once for many evaluations) and ``real_features`` (the real images'
            Inception features, to compute them once).

    Returns:
        ``{"swd": {"levels": {..}, "avg": .., "n_images": ..}, "fid": {"value": ..}, ...}``
        (plus ``swd_floor`` when asked), JSON-ready.

    Raises:
        FaganError: unknown metrics, missing Inception weights, sizes that differ.
    """
    names = parse_metric_list(metrics)
    image_size = getattr(generator, "image_size", None)
    if real_images_u8 is not None:
        shape = tuple(real_images_u8.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise FaganError(f"real images must have shape (N, 3, S, S), got {shape}")
        if image_size is not None and shape[-2:] != (image_size, image_size):
            raise FaganError(f"the real images are {shape[-2]}x{shape[-1]} but the generator "
                             f"makes {image_size}x{image_size} images")
    if num_samples is None:
        num_samples = len(real_images_u8) if real_images_u8 is not None else 1000
    opts.setdefault("progress", False)
    opts["batch_size"] = batch_size
    if needs_inception(names) and opts.get("extractor") is None:
        # fail on missing weights before generating anything
        opts["extractor"] = InceptionFeatures(
            opts.get("weights_path"), device=opts.get("device", "cpu"),
            batch_size=batch_size, progress=opts["progress"])
    fake = generate_u8(generator, num_samples, seed=seed, truncation=truncation,
                       batch_size=batch_size)
    return evaluate_images(real_images_u8, fake, names, swd_floor=swd_floor, **opts)


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """One number per key, for logs and TensorBoard.

    ``swd`` -> ``swd_avg``, ``swd_<level>``; ``swd_floor`` -> ``swd_floor_avg``,
    ``swd_floor_<level>``; ``fid`` -> ``fid``; ``kid``/``is`` -> ``kid_mean``,
    ``kid_std``, ``is_mean``, ``is_std``. ``meta`` and counts are left out.
    """
    flat: dict[str, float] = {}
    for name, value in results.items():
        if name == "meta" or not isinstance(value, dict):
            continue
        if "levels" in value:
            flat[f"{name}_avg"] = float(value["avg"])
            for level, distance in value["levels"].items():
                flat[f"{name}_{level}"] = float(distance)
        elif set(value) == {"value"}:
            flat[name] = float(value["value"])
        else:
            for key, number in value.items():
                if isinstance(number, (int, float)) and key != "n_images":
                    flat[f"{name}_{key}"] = float(number)
    return flat


def format_table(results: dict[str, Any]) -> str:
    """A readable table of the metrics (SWD with its real-vs-real floor beside it)."""
    rows: list[tuple[str, str, str]] = []
    floor = results.get("swd_floor")
    if "swd" in results:
        swd = results["swd"]
        rows.append(("SWD x1e3 (avg)", f"{swd['avg']:.3f}",
                     f"{floor['avg']:.3f}" if floor else ""))
        for level, value in swd["levels"].items():
            rows.append((f"  level {level}x{level}", f"{value:.3f}",
                         f"{floor['levels'][level]:.3f}" if floor else ""))
    if "fid" in results:
        rows.append(("FID", f"{results['fid']['value']:.3f}", ""))
    if "kid" in results:
        kid = results["kid"]
        rows.append(("KID", f"{kid['mean']:.5f} +- {kid['std']:.5f}", ""))
    if "is" in results:
        score = results["is"]
        rows.append(("Inception Score", f"{score['mean']:.3f} +- {score['std']:.3f}", ""))
    header = ("metric", "value", "real-vs-real floor" if floor else "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "-" * len(max(lines, key=len)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command
def _weights_tag(path: Path) -> str:
    """Part of the real-feature cache key: which weights file (name, size, mtime)."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
                          ).hexdigest()[:16]


def run_evaluation(
    real_dir: str | os.PathLike[str],
    *,
    fake_dir: str | os.PathLike[str] | None = None,
    generator_file: str | os.PathLike[str] | None = None,
    generator_config: str | None = None,
    metrics: str | Sequence[str] = ("swd",),
    num_samples: int | None = None,
    seed: int = 0,
    truncation: float | None = None,
    image_size: int | None = None,
    inception_weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    swd_floor: bool = True,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Everything ``fagan evaluate`` does but printing: read, generate, measure.

    Cheap checks come first (metric names, the Inception weights file, image size), so
    a missing weights file is reported before any image is read or generated.

    Args:
        real_dir: folder of real images.
        fake_dir: folder of generated images (exclusive with ``generator_file``).
        generator_file: generator weights or a training state (EMA used).
        generator_config: its architecture (optional for a training state).
        metrics: names or a comma-separated string.
        num_samples: generated images (default: as many as real ones, at most 10,000).
        seed: seed of the generated latents.
        truncation: truncate the latents to ``|z| <= truncation``.
        image_size: side S the images are compared at: the generator's (it must agree),
            else 64 for two folders.
        inception_weights: the InceptionV3 weights file (default: environment variable,
            then the torch hub cache).
        device: where the generator and Inception run.
        batch_size: images per generator and Inception forward pass.
        cache_dir: folder of cached real Inception features (default
            ``~/.cache/fagan/stats``).
        swd_floor: measure the real-vs-real SWD floor.
        progress: progress bars on stderr (default: when stderr is a terminal).
        log: receives one-line progress messages.

    Returns:
        The results of :func:`evaluate_images` plus ``meta``.

    Raises:
        FaganError: for every bad input.
    """
    say = log or (lambda _message: None)
    if progress is None:
        progress = sys.stderr.isatty()
    names = parse_metric_list(metrics)
    if (fake_dir is None) == (generator_file is None):
        raise FaganError("give either a folder of generated images (--fake_dir) or a "
                         "generator (--generator_file)")
    if fake_dir is not None and (num_samples is not None or truncation is not None):
        raise FaganError("--num_samples and --truncation apply to a generator, not to --fake_dir")
    weights = resolve_weights_path(inception_weights) if needs_inception(names) else None

    generator = None
    if generator_file is not None:
        from fagan.generate import load_generator

        generator = load_generator(generator_file, generator_config, device=device)
        if image_size is not None and image_size != generator.image_size:
            raise FaganError(f"--image_size {image_size} differs from the generator's output "
                             f"size {generator.image_size}")
        image_size = generator.image_size
    size = image_size or DEFAULT_FOLDER_IMAGE_SIZE
    if "swd" in names and (size < MIN_RESOLUTION or size & (size - 1)):
        raise FaganError(f"SWD needs a power-of-two image size >= {MIN_RESOLUTION}, got {size} "
                         "(choose another --image_size or leave out swd)")

    extractor = None
    if weights is not None:
        extractor = InceptionFeatures(weights, device=device, batch_size=batch_size,
                                      progress=progress)

    real_cache: list[Tensor] = []

    def real_images() -> Tensor:
        if not real_cache:
            say(f"reading real images from {real_dir} at {size}x{size}")
            real_cache.append(load_image_folder(real_dir, size, progress=progress))
        return real_cache[0]

    real_features = None
    cache_file = None
    if extractor is not None and ("fid" in names or "kid" in names):
        key = fingerprint_image_dir(real_dir, image_size=size, weights_name=extractor.weights_name,
                                    extra=f"fagan-evaluate-v1|{_weights_tag(weights)}")
        cached = cached_real_features(
            key, lambda: {"features": extractor(real_images(), name="real")[0]}, cache_dir)
        real_features = cached["features"]
        cache_file = Path(cache_dir if cache_dir is not None else DEFAULT_STATS_DIR
                          ).expanduser() / f"{key}.npz"
    needs_real_pixels = "swd" in names or ("fid" in names or "kid" in names) and (
        real_features is None)
    real = real_images() if needs_real_pixels else None
    n_real = len(real) if real is not None else (
        len(real_features) if real_features is not None else None)
    if n_real is None:  # IS only: count what would be compared, for the record
        n_real = len(ImageFolderDataset(real_dir, size).paths)

    if generator is not None:
        n = num_samples or min(n_real, MAX_DEFAULT_SAMPLES)
        say(f"generating {n} images at {size}x{size} (seed {seed})")
        fake = generate_u8(generator, n, seed=seed, truncation=truncation,
                           batch_size=batch_size)
        fake_source = str(generator_file)
    else:
        say(f"reading generated images from {fake_dir} at {size}x{size}")
        fake = load_image_folder(fake_dir, size, progress=progress)  # type: ignore[arg-type]
        fake_source = str(fake_dir)

    say(f"measuring {', '.join(names)}")
    results = evaluate_images(real, fake, names, swd_floor=swd_floor, extractor=extractor,
                              real_features=real_features, progress=progress)
    results["meta"] = {
        "real_dir": str(real_dir),
        "fake_source": fake_source,
        "fake_kind": "generator" if generator is not None else "folder",
        "n_real": int(n_real),
        "n_fake": int(len(fake)),
        "image_size": int(size),
        "metrics": names,
        "seed": seed if generator is not None else None,
        "truncation": truncation,
        "inception_weights": str(weights) if weights is not None else None,
        "real_features_cache": str(cache_file) if cache_file is not None else None,
    }
    return results
