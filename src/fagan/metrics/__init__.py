"""Image-set metrics: SWD (no download needed), FID, KID and Inception Score.

A small registry, :data:`METRICS`, maps each metric name to a :class:`MetricSpec` whose
``compute(real_u8, fake_u8, **opts)`` returns a JSON-ready dict:

- ``swd``: ``{"levels": {"64": x, "32": y, "16": z}, "avg": a, "n_images": n}`` (x 1e3),
  plus ``"floor"`` (same shape, real vs real) with ``floor=True``.
- ``fid``: ``{"value": x}``
- ``kid``: ``{"mean": x, "std": y}``
- ``is``: ``{"mean": x, "std": y}`` (fake images only; ``real_u8`` may be ``None``)

Images are uint8 arrays or tensors (N, 3, H, W). The Inception metrics need the InceptionV3
weights file (see :mod:`fagan.metrics.inception`); they accept ``weights_path``,
``device``, ``batch_size``, ``progress``, a ready ``extractor`` and precomputed
``real_features`` / ``fake_features`` / ``fake_logits``. :func:`compute_metrics` runs
several metrics with one Inception pass per image set.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fagan.errors import FaganError
from fagan.metrics.inception import (
    InceptionFeatures,
    fid_from_features,
    inception_score_from_logits,
    kid_from_features,
)
from fagan.metrics.swd import swd as _swd
from fagan.metrics.swd import swd_floor as _swd_floor

__all__ = [
    "METRICS",
    "MetricSpec",
    "compute_metrics",
    "needs_inception",
    "parse_metric_list",
]

Images = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    Attributes:
        name: Registry name (as on the command line).
        needs_inception: Whether it needs the InceptionV3 weights file.
        compute: ``compute(real_u8, fake_u8, **opts) -> dict`` (JSON-ready).
        description: One-line description.
    """

    name: str
    needs_inception: bool
    compute: Callable[..., dict[str, Any]]
    description: str


def _swd_compute(
    real_u8: Images,
    fake_u8: Images,
    *,
    seed: int = 0,
    patches_per_image: int = 128,
    patch_size: int = 7,
    dir_repeats: int = 4,
    dirs_per_repeat: int = 128,
    batch: int = 256,
    progress: bool = False,
    floor: bool = False,
) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "patches_per_image": patches_per_image,
        "patch_size": patch_size,
        "dir_repeats": dir_repeats,
        "dirs_per_repeat": dirs_per_repeat,
        "batch": batch,
        "progress": progress,
    }
    out: dict[str, Any] = _swd(real_u8, fake_u8, seed=seed, **kw)
    out["n_images"] = int(min(len(real_u8), len(fake_u8)))
    if floor:
        out["floor"] = _swd_floor(real_u8, seed=seed, **kw)
    return out


def _extractor(
    extractor: InceptionFeatures | None,
    weights_path: str | os.PathLike[str] | None,
    device: str | torch.device,
    batch_size: int,
    progress: bool,
) -> InceptionFeatures:
    if extractor is not None:
        return extractor
    return InceptionFeatures(weights_path, device=device, batch_size=batch_size, progress=progress)


def _features(
    given: np.ndarray | None,
    images: Images | None,
    name: str,
    get_extractor: Callable[[], InceptionFeatures],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Given features, or (features, logits) of ``images``."""
    if given is not None:
        return np.asarray(given), None
    if images is None:
        raise FaganError(f"no {name} images or {name} features given")
    return get_extractor()(images, name=name)


def _fid_compute(
    real_u8: Images | None,
    fake_u8: Images | None,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    progress: bool = True,
    extractor: InceptionFeatures | None = None,
    real_features: np.ndarray | None = None,
    fake_features: np.ndarray | None = None,
) -> dict[str, Any]:
    cache: list[InceptionFeatures] = []

    def get() -> InceptionFeatures:
        if not cache:
            cache.append(_extractor(extractor, weights_path, device, batch_size, progress))
        return cache[0]

    fr, _ = _features(real_features, real_u8, "real", get)
    ff, _ = _features(fake_features, fake_u8, "fake", get)
    return {"value": fid_from_features(fr, ff)}


def _kid_compute(
    real_u8: Images | None,
    fake_u8: Images | None,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    progress: bool = True,
    extractor: InceptionFeatures | None = None,
    real_features: np.ndarray | None = None,
    fake_features: np.ndarray | None = None,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    cache: list[InceptionFeatures] = []

    def get() -> InceptionFeatures:
        if not cache:
            cache.append(_extractor(extractor, weights_path, device, batch_size, progress))
        return cache[0]

    fr, _ = _features(real_features, real_u8, "real", get)
    ff, _ = _features(fake_features, fake_u8, "fake", get)
    mean, std = kid_from_features(fr, ff, subsets=subsets, subset_size=subset_size, seed=seed)
    return {"mean": mean, "std": std}


def _is_compute(
    real_u8: Images | None,
    fake_u8: Images | None,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    progress: bool = True,
    extractor: InceptionFeatures | None = None,
    fake_logits: np.ndarray | None = None,
    splits: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    del real_u8  # the Inception Score only looks at generated images
    if fake_logits is None:
        if fake_u8 is None:
            raise FaganError("no fake images or fake logits given")
        ext = _extractor(extractor, weights_path, device, batch_size, progress)
        _, fake_logits = ext(fake_u8, name="fake")
    mean, std = inception_score_from_logits(fake_logits, splits=splits, seed=seed)
    return {"mean": mean, "std": std}


#: Registered metrics by name.
METRICS: dict[str, MetricSpec] = {
    "swd": MetricSpec(
        "swd",
        False,
        _swd_compute,
        "sliced Wasserstein distance on Laplacian-pyramid patches (x1e3)",
    ),
    "fid": MetricSpec("fid", True, _fid_compute, "Fréchet Inception Distance"),
    "kid": MetricSpec("kid", True, _kid_compute, "Kernel Inception Distance (unbiased MMD^2)"),
    "is": MetricSpec("is", True, _is_compute, "Inception Score of the generated images"),
}


def parse_metric_list(text: str | Sequence[str]) -> list[str]:
    """Parse ``"swd,fid"`` (or a list of names) into known metric names.

    Names are case-insensitive, whitespace is ignored and duplicates are dropped (first
    occurrence kept).

    Args:
        text: Comma-separated names, or a sequence of names (each may contain commas).

    Returns:
        Metric names in the given order.

    Raises:
        FaganError: On an unknown name or an empty list.
    """
    parts = [text] if isinstance(text, str) else list(text)
    names: list[str] = []
    for part in parts:
        for raw in str(part).split(","):
            name = raw.strip().lower()
            if not name:
                continue
            if name not in METRICS:
                raise FaganError(
                    f"unknown metric {raw.strip()!r}; valid metrics: {', '.join(METRICS)}"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise FaganError(f"no metrics given; valid metrics: {', '.join(METRICS)}")
    return names


def needs_inception(names: Sequence[str]) -> bool:
    """Whether any of the named metrics needs the Inception weights."""
    return any(METRICS[n].needs_inception for n in names)


def compute_metrics(
    names: str | Sequence[str], real_u8: Images | None, fake_u8: Images | None, **opts: Any
) -> dict[str, dict[str, Any]]:
    """Compute several metrics, sharing one Inception pass per image set.

    Each option goes to the metrics whose ``compute`` accepts it (e.g. ``seed`` to swd,
    kid and is; ``subsets`` to kid; ``weights_path`` to the Inception metrics).

    Args:
        names: Metric names, or a comma-separated string.
        real_u8: Real images, uint8 (N, 3, H, W); may be ``None`` when only ``is`` is
            asked or ``real_features`` is given.
        fake_u8: Generated images, uint8 (N, 3, H, W).
        **opts: Options of the metrics' ``compute`` functions.

    Returns:
        ``{name: result}`` in the order asked.

    Raises:
        FaganError: On unknown metric names, missing weights or bad images.
        TypeError: On an option no selected metric accepts.
    """
    selected = parse_metric_list(names)
    accepted = {
        n: set(inspect.signature(METRICS[n].compute).parameters) - {"real_u8", "fake_u8"}
        for n in selected
    }
    unknown = set(opts) - set().union(*accepted.values())
    if unknown:
        raise TypeError(f"options not accepted by {selected}: {sorted(unknown)}")

    shared = dict(opts)
    if needs_inception(selected):
        ext = _extractor(
            opts.get("extractor"),
            opts.get("weights_path"),
            opts.get("device", "cpu"),
            opts.get("batch_size", 50),
            opts.get("progress", True),
        )
        shared["extractor"] = ext
        if any(n in ("fid", "kid") for n in selected) and opts.get("real_features") is None:
            if real_u8 is None:
                raise FaganError("FID/KID need real images or real features")
            shared["real_features"], _ = ext(real_u8, name="real")
        if opts.get("fake_features") is None or (
            "is" in selected and opts.get("fake_logits") is None
        ):
            if fake_u8 is None:
                raise FaganError("no fake images given")
            f, lg = ext(fake_u8, name="fake")
            if shared.get("fake_features") is None:
                shared["fake_features"] = f
            if shared.get("fake_logits") is None:
                shared["fake_logits"] = lg

    results: dict[str, dict[str, Any]] = {}
    for n in selected:
        kw = {k: v for k, v in shared.items() if k in accepted[n]}
        results[n] = METRICS[n].compute(real_u8, fake_u8, **kw)
    return results
