"""Image-set metrics: SWD (no download needed), FID, KID and Inception Score.

A small registry, :data:`METRICS`, maps each metric name to a :class:`MetricSpec` whose
``compute(real_u8, fake_u8, opts)`` takes one :class:`MetricOptions` (every metric gets the
same object, as in stylegan2-ada-pytorch's ``metric_main``) and returns a JSON-ready dict:

- ``swd``: ``{"levels": {"64": x, "32": y, "16": z}, "avg": a, "n_images": n}`` (x 1e3),
  plus ``"floor"`` (same shape, real vs real) with ``opts.swd_floor``.
- ``fid``: ``{"value": x}``
- ``kid``: ``{"mean": x, "std": y}``
- ``is``: ``{"mean": x, "std": y}`` (fake images only; ``real_u8`` may be ``None``)

Images are uint8 arrays or tensors (N, 3, H, W). The Inception metrics need an InceptionV3
weights file (see :mod:`fagan.metrics.inception`) or a ready ``opts.extractor``; precomputed
``real_features`` / ``fake_features`` / ``fake_logits`` in the options skip the network.
:func:`compute_metrics` runs several metrics with one Inception pass per image set.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fagan.errors import FaganError
from fagan.metrics.inception import (
    InceptionFeatures,
    fid_from_features,
    inception_score_from_logits,
    is_torchscript_file,
    kid_from_features,
    no_logits_message,
    resolve_weights_path,
)
from fagan.metrics.swd import swd as _swd
from fagan.metrics.swd import swd_floor as _swd_floor
from fagan.options import FLAG, POSITIVE_INT, SEED, check_fields, choice, option

__all__ = [
    "METRICS",
    "MetricOptions",
    "MetricSpec",
    "check_inception_weights",
    "compute_metrics",
    "needs_inception",
    "parse_metric_list",
]

Images = torch.Tensor | np.ndarray


@dataclass(frozen=True, eq=False)
class MetricOptions:
    """Everything a metric may use; every metric function receives one.

    Change a copy with ``dataclasses.replace(opts, seed=3)``. Numbers are checked by
    :meth:`validate` (called by :func:`compute_metrics`).

    Attributes:
        device: Where the Inception network runs.
        batch_size: Images per Inception forward pass.
        seed: Seed of SWD's patches and directions, KID's subsets and IS's shuffle.
        progress: Progress bars on stderr.
        inception_weights: InceptionV3 weights file (``None``: the environment variable,
            then the torch hub cache; see :func:`fagan.metrics.inception.resolve_weights_path`).
        inception_precision: ``fp32`` or ``bf16`` for the Inception network.
        extractor: A ready network (load it once for many evaluations); overrides
            ``inception_weights``, ``device`` and ``batch_size``.
        real_features: Precomputed real Inception features (N, 2048).
        fake_features: Precomputed generated-image features (M, 2048).
        fake_logits: Precomputed generated-image logits (M, 1008), for IS.
        swd_floor: With SWD, also measure the real-vs-real floor.
        swd_patches_per_image: SWD neighbourhoods per image and pyramid level.
        swd_patch_size: SWD neighbourhood side.
        swd_dir_repeats: SWD batches of random directions.
        swd_dirs_per_repeat: SWD directions per batch.
        kid_subsets: KID subsets.
        kid_subset_size: KID samples per subset.
        is_splits: Inception Score splits.
    """

    device: str | torch.device = "cpu"
    batch_size: int = option(64, POSITIVE_INT, "images per Inception forward pass", cli=False)
    seed: int = option(0, SEED, "seed of the metrics' random draws", cli=False)
    progress: bool = option(False, FLAG, "progress bars", cli=False)
    inception_weights: str | os.PathLike[str] | None = None
    inception_precision: str = option(
        "fp32", choice("fp32", "bf16"), "precision of the Inception network", cli=False
    )
    extractor: InceptionFeatures | None = None
    real_features: np.ndarray | None = None
    fake_features: np.ndarray | None = None
    fake_logits: np.ndarray | None = None
    swd_floor: bool = option(False, FLAG, "measure the real-vs-real SWD floor", cli=False)
    swd_patches_per_image: int = option(128, POSITIVE_INT, "SWD patches per image", cli=False)
    swd_patch_size: int = option(7, POSITIVE_INT, "SWD patch side", cli=False)
    swd_dir_repeats: int = option(4, POSITIVE_INT, "SWD direction batches", cli=False)
    swd_dirs_per_repeat: int = option(128, POSITIVE_INT, "SWD directions per batch", cli=False)
    kid_subsets: int = option(100, POSITIVE_INT, "KID subsets", cli=False)
    kid_subset_size: int = option(1000, POSITIVE_INT, "KID subset size", cli=False)
    is_splits: int = option(10, POSITIVE_INT, "Inception Score splits", cli=False)

    def validate(self) -> MetricOptions:
        """Checks every number; returns ``self``.

        Raises:
            FaganError: naming the first invalid option.
        """
        check_fields(self)
        return self

    def get_extractor(self) -> InceptionFeatures:
        """``extractor``, or a network loaded from ``inception_weights``."""
        if self.extractor is not None:
            return self.extractor
        return InceptionFeatures(
            self.inception_weights,
            device=self.device,
            batch_size=self.batch_size,
            progress=self.progress,
            precision=self.inception_precision,
        )


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    Attributes:
        name: Registry name (as on the command line).
        needs_inception: Whether it needs the InceptionV3 network.
        needs_logits: Whether it needs the network's classifier (logits), not only features.
        compute: ``compute(real_u8, fake_u8, opts) -> dict`` (JSON-ready).
        description: One-line description.
    """

    name: str
    needs_inception: bool
    needs_logits: bool
    compute: Callable[[Images | None, Images | None, MetricOptions], dict[str, Any]]
    description: str


# ----------------------------------------------------------------------------- Inception inputs
def _with_inception(
    real_u8: Images | None,
    fake_u8: Images | None,
    opts: MetricOptions,
    *,
    real: bool,
    fake: bool,
    logits: bool,
) -> MetricOptions:
    """``opts`` with the features (and logits) the caller needs filled in, one pass per set.

    Loads the network at most once (kept in the returned options' ``extractor``).
    """
    missing_real = real and opts.real_features is None
    missing_fake = (fake and opts.fake_features is None) or (logits and opts.fake_logits is None)
    if not (missing_real or missing_fake):
        return opts
    if missing_real and real_u8 is None:
        raise FaganError("FID/KID need real images or real features")
    if missing_fake and fake_u8 is None:
        raise FaganError("no fake images or fake features given")
    extractor = opts.get_extractor()
    if logits and opts.fake_logits is None:
        extractor.require_logits()
    changes: dict[str, Any] = {"extractor": extractor}
    if missing_real:
        changes["real_features"], _ = extractor(real_u8, name="real")  # type: ignore[arg-type]
    if missing_fake:
        f, lg = extractor(fake_u8, name="fake")  # type: ignore[arg-type]
        changes["fake_features"] = opts.fake_features if opts.fake_features is not None else f
        changes["fake_logits"] = opts.fake_logits if opts.fake_logits is not None else lg
    return dataclasses.replace(opts, **changes)


# ----------------------------------------------------------------------------- the metrics
def _swd_compute(
    real_u8: Images | None, fake_u8: Images | None, opts: MetricOptions
) -> dict[str, Any]:
    if real_u8 is None or fake_u8 is None:
        raise FaganError("SWD needs real and generated images")
    kw: dict[str, Any] = {
        "patches_per_image": opts.swd_patches_per_image,
        "patch_size": opts.swd_patch_size,
        "dir_repeats": opts.swd_dir_repeats,
        "dirs_per_repeat": opts.swd_dirs_per_repeat,
        "progress": opts.progress,
    }
    out: dict[str, Any] = _swd(real_u8, fake_u8, seed=opts.seed, **kw)
    out["n_images"] = int(min(len(real_u8), len(fake_u8)))
    if opts.swd_floor:
        out["floor"] = _swd_floor(real_u8, seed=opts.seed, **kw)
    return out


def _fid_compute(
    real_u8: Images | None, fake_u8: Images | None, opts: MetricOptions
) -> dict[str, Any]:
    opts = _with_inception(real_u8, fake_u8, opts, real=True, fake=True, logits=False)
    return {"value": fid_from_features(opts.real_features, opts.fake_features)}  # type: ignore[arg-type]


def _kid_compute(
    real_u8: Images | None, fake_u8: Images | None, opts: MetricOptions
) -> dict[str, Any]:
    opts = _with_inception(real_u8, fake_u8, opts, real=True, fake=True, logits=False)
    mean, std = kid_from_features(
        opts.real_features,
        opts.fake_features,  # type: ignore[arg-type]
        subsets=opts.kid_subsets,
        subset_size=opts.kid_subset_size,
        seed=opts.seed,
    )
    return {"mean": mean, "std": std}


def _is_compute(
    real_u8: Images | None, fake_u8: Images | None, opts: MetricOptions
) -> dict[str, Any]:
    del real_u8  # the Inception Score only looks at generated images
    opts = _with_inception(None, fake_u8, opts, real=False, fake=False, logits=True)
    mean, std = inception_score_from_logits(
        opts.fake_logits,
        splits=opts.is_splits,  # type: ignore[arg-type]
        seed=opts.seed,
    )
    return {"mean": mean, "std": std}


#: Registered metrics by name.
METRICS: dict[str, MetricSpec] = {
    "swd": MetricSpec(
        "swd",
        False,
        False,
        _swd_compute,
        "sliced Wasserstein distance on Laplacian-pyramid patches (x1e3)",
    ),
    "fid": MetricSpec("fid", True, False, _fid_compute, "Fréchet Inception Distance"),
    "kid": MetricSpec(
        "kid", True, False, _kid_compute, "Kernel Inception Distance (unbiased MMD^2)"
    ),
    "is": MetricSpec("is", True, True, _is_compute, "Inception Score of the generated images"),
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


def check_inception_weights(
    names: Sequence[str], weights: str | os.PathLike[str] | None
) -> Path | None:
    """The weights file the named metrics need, checked without loading the network.

    Resolves it with :func:`fagan.metrics.inception.resolve_weights_path`, and refuses a
    TorchScript feature network (no classifier) when the Inception Score is asked for.

    Returns:
        The file, or ``None`` when no named metric needs Inception.

    Raises:
        FaganError: no weights file, or one that cannot give what is asked.
    """
    if not needs_inception(names):
        return None
    path = resolve_weights_path(weights)
    if any(METRICS[n].needs_logits for n in names) and is_torchscript_file(path):
        raise FaganError(no_logits_message(str(path)))
    return path


def compute_metrics(
    names: str | Sequence[str],
    real_u8: Images | None,
    fake_u8: Images | None,
    opts: MetricOptions | None = None,
    **changes: Any,
) -> dict[str, dict[str, Any]]:
    """Compute several metrics, sharing one Inception pass per image set.

    Args:
        names: Metric names, or a comma-separated string.
        real_u8: Real images, uint8 (N, 3, H, W); may be ``None`` when only ``is`` is
            asked or ``opts.real_features`` is given.
        fake_u8: Generated images, uint8 (N, 3, H, W); may be ``None`` when only
            Inception metrics are asked and their features (and logits) are given.
        opts: The options every metric receives (default ``MetricOptions()``).
        **changes: Fields of ``opts`` to change (``seed=3``), as ``dataclasses.replace``.

    Returns:
        ``{name: result}`` in the order asked.

    Raises:
        FaganError: On unknown metric names, missing weights, bad options or images.
        TypeError: On a keyword that is no :class:`MetricOptions` field.
    """
    selected = parse_metric_list(names)
    opts = dataclasses.replace(opts or MetricOptions(), **changes).validate()
    if needs_inception(selected):
        fid_kid = any(n in ("fid", "kid") for n in selected)
        opts = _with_inception(
            real_u8,
            fake_u8,
            opts,
            real=fid_kid,
            fake=fid_kid,
            logits=any(METRICS[n].needs_logits for n in selected),
        )
    return {n: METRICS[n].compute(real_u8, fake_u8, opts) for n in selected}
