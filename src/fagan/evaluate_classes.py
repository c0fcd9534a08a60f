"""Measuring a class-conditional generator: the whole set, and each class on its own.

Against labelled real images (a folder with one sub-folder per class, or a dataset zip
whose ``dataset.json`` has labels), :func:`evaluate_conditional` gives

* the unconditional numbers (every metric asked), of generated images whose classes
  follow the real images' class frequencies. The labels are stratified, not drawn: of
  ``num_samples`` images class ``c`` gets ``num_samples x`` its share of the real images
  (largest remainders, so the counts add up). The latents are one stream from ``seed``
  (:func:`fagan.generate.make_latents`), cut in class order: every image has its own
  latent;
* per class (``classes`` entry): SWD, FID and KID of that class's generated images
  against that class's real images (intra-class FID/KID); the Inception Score is a
  whole-set metric and is not computed per class;
* their unweighted mean over the measured classes (``class_mean`` entry).

Inception features are computed once per image set and cut by class, so intra-class
FID and KID cost no second pass.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fagan.classes import abbreviate, class_label, generator_classes
from fagan.errors import FaganError
from fagan.generate import generate_batches, make_latents
from fagan.metrics import METRICS, MetricOptions, compute_metrics, parse_metric_list
from fagan.sample import to_uint8

__all__ = [
    "CLASS_METRICS",
    "MIN_CLASS_IMAGES",
    "class_means",
    "evaluate_conditional",
    "match_classes",
    "stratified_counts",
]

#: The metrics measured per class.
CLASS_METRICS = ("swd", "fid", "kid")
#: Fewest real and generated images a measured class may have (FID and KID need two).
MIN_CLASS_IMAGES = 2
#: Fewer images than this make a class's SWD mostly noise (a warning).
_FEW_SWD_IMAGES = 16


def match_classes(
    num_classes: int,
    generator_names: Sequence[str] | None,
    labels: np.ndarray,
    data_names: Sequence[str] | None,
    source: str = "the real images",
) -> np.ndarray:
    """The real images' labels as the generator's class indices.

    By name when both the generator and the data name their classes (every name on
    one side must be on the other, in any order); otherwise by index, and the data must
    have as many classes as the generator.

    Args:
        num_classes: the generator's classes.
        generator_names: their names, or None.
        labels: the real images' labels (N,), in the data's numbering.
        data_names: the data's class names by label, or None.
        source: the real images, for messages.

    Returns:
        (N,) int64 labels in ``[0, num_classes)``.

    Raises:
        FaganError: classes that do not match, in one line saying how.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if generator_names and data_names:
        missing = [n for n in generator_names if n not in data_names]
        unknown = [n for n in data_names if n not in generator_names]
        if missing or unknown or len(set(data_names)) != len(data_names):
            parts = []
            if missing:
                parts.append(f"not in the real images: {abbreviate(missing)}")
            if unknown:
                parts.append(f"not classes of the generator: {abbreviate(unknown)}")
            if not parts:
                parts.append("the real images repeat a class name")
            raise FaganError(
                f"{source}: the classes do not match the generator's by name ("
                + "; ".join(parts)
                + ")"
            )
        order = {name: index for index, name in enumerate(generator_names)}
        mapping = np.array([order[name] for name in data_names], dtype=np.int64)
        return mapping[labels]
    data_count = len(data_names) if data_names else int(labels.max(initial=-1)) + 1
    if data_count != num_classes:
        raise FaganError(
            f"{source} have {data_count} class(es) and the generator {num_classes}: the "
            "classes do not match"
        )
    return labels


def stratified_counts(class_counts: Sequence[int], total: int) -> np.ndarray:
    """``total`` split over classes in proportion to ``class_counts`` (largest remainders).

    Example: counts (50, 30, 20) and total 7 give (4, 2, 1).
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if total < 0 or counts.sum() <= 0:
        raise FaganError("no real images to take class frequencies from")
    exact = counts / counts.sum() * total
    out = np.floor(exact).astype(np.int64)
    remainder = exact - out
    order = np.argsort(-remainder, kind="stable")  # ties: the lower class first
    out[order[: total - int(out.sum())]] += 1
    return out


def _generate_by_class(
    generator: nn.Module,
    counts: np.ndarray,
    seed: int,
    truncation: float | None,
    batch_size: int,
) -> Tensor:
    """``counts[c]`` images of each class ``c``, in class order, uint8 (N, 3, S, S)."""
    latents = make_latents(int(counts.sum()), generator.latent_size, seed, truncation)
    images: list[Tensor] = []
    was_training = generator.training
    generator.eval()
    try:
        start = 0
        for label, count in enumerate(counts.tolist()):
            if count:
                chunk = latents[start : start + count]
                for batch in generate_batches(generator, chunk, batch_size, label=label):
                    images.append(to_uint8(batch))
            start += count
    finally:
        generator.train(was_training)
    return torch.cat(images)


def class_means(per_class: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The unweighted mean of each per-class metric (SWD levels too)."""
    means: dict[str, Any] = {}
    if per_class and "swd" in per_class[0]:
        levels = per_class[0]["swd"]["levels"]
        means["swd"] = {
            "levels": {
                level: float(np.mean([c["swd"]["levels"][level] for c in per_class]))
                for level in levels
            },
            "avg": float(np.mean([c["swd"]["avg"] for c in per_class])),
        }
    if per_class and "fid" in per_class[0]:
        means["fid"] = {"value": float(np.mean([c["fid"]["value"] for c in per_class]))}
    if per_class and "kid" in per_class[0]:
        means["kid"] = {"mean": float(np.mean([c["kid"]["mean"] for c in per_class]))}
    return means


def evaluate_conditional(
    generator: nn.Module,
    real_u8: Tensor,
    real_labels: np.ndarray,
    metrics: str | Sequence[str] = ("swd",),
    num_samples: int | None = None,
    seed: int = 0,
    *,
    classes: Sequence[int] | None = None,
    truncation: float | None = None,
    opts: MetricOptions | None = None,
) -> dict[str, Any]:
    """A class-conditional generator against labelled real images, whole and per class.

    Args:
        generator: a class-conditional :class:`fagan.networks.Generator`.
        real_u8: real images, uint8 (N, 3, S, S), S the generator's size.
        real_labels: their classes (N,) in the generator's numbering
            (:func:`match_classes`).
        metrics: names or a comma-separated string; ``swd``, ``fid`` and ``kid`` are
            also measured per class.
        num_samples: images to generate in all (default: as many as real images).
        seed: seed of the latents.
        classes: the classes measured on their own (default: every class).
        truncation: truncate latents to ``|z| <= truncation``.
        opts: the metrics' options (``swd_floor`` applies to the whole set only; a
            given ``real_features`` must be those of ``real_u8``, in order).

    Returns:
        The whole-set results of :func:`fagan.evaluate.evaluate_images`, plus
        ``classes``: ``[{"index", "name", "n_real", "n_fake", "swd", "fid", "kid"}]``
        (the metrics asked) and ``class_mean``: ``{"swd": {"levels", "avg"}, "fid":
        {"value"}, "kid": {"mean"}}``.

    Raises:
        FaganError: an unconditional generator, labels that do not fit, a measured class
            with fewer than :data:`MIN_CLASS_IMAGES` real or generated images, what the
            metrics raise.
    """
    from fagan.evaluate import evaluate_images

    names = parse_metric_list(metrics)
    opts = (opts or MetricOptions()).validate()
    num_classes, class_names = generator_classes(generator)
    if not num_classes:
        raise FaganError("per-class evaluation needs a class-conditional generator")
    labels = np.asarray(real_labels, dtype=np.int64)
    if labels.shape != (len(real_u8),):
        raise FaganError(f"{len(real_u8)} real images but {labels.shape[0]} labels")
    if len(labels) and not (0 <= labels.min() and labels.max() < num_classes):
        raise FaganError(f"real labels must be from 0 to {num_classes - 1}")
    if opts.real_features is not None and len(opts.real_features) != len(real_u8):
        raise FaganError(f"{len(opts.real_features)} real features for {len(real_u8)} real images")
    chosen = list(range(num_classes)) if classes is None else list(classes)
    real_counts = np.bincount(labels, minlength=num_classes)
    for index in chosen:
        if not 0 <= index < num_classes:
            raise FaganError(f"class {index} is out of range (0 to {num_classes - 1})")
        if real_counts[index] < MIN_CLASS_IMAGES:
            raise FaganError(
                f"class {class_label(index, class_names)} has {real_counts[index]} real "
                f"image(s); per-class metrics need at least {MIN_CLASS_IMAGES} (choose the "
                "classes to measure with --class)"
            )
    total = len(real_u8) if num_samples is None else num_samples
    fake_counts = stratified_counts(real_counts, total)
    for index in chosen:
        if fake_counts[index] < MIN_CLASS_IMAGES:
            raise FaganError(
                f"{total} generated images leave class {class_label(index, class_names)} "
                f"{fake_counts[index]} (its share of the real images); per-class metrics "
                f"need at least {MIN_CLASS_IMAGES}: give a larger --num_samples"
            )
    inception = [n for n in names if METRICS[n].needs_inception]
    if inception:  # fail on missing weights before generating anything
        opts = dataclasses.replace(opts, extractor=opts.get_extractor())
        if any(METRICS[n].needs_logits for n in names):
            opts.get_extractor().require_logits()
    fake_u8 = _generate_by_class(generator, fake_counts, seed, truncation, opts.batch_size)
    fake_labels = np.repeat(np.arange(num_classes), fake_counts)

    features: dict[str, Any] = {}
    if inception:
        extractor = opts.get_extractor()
        if "fid" in names or "kid" in names:
            features["real_features"] = (
                opts.real_features
                if opts.real_features is not None
                else extractor(real_u8, name="real")[0]
            )
        features["fake_features"], features["fake_logits"] = extractor(fake_u8, name="fake")
    results = evaluate_images(real_u8, fake_u8, names, opts, **features)

    per_class_names = [n for n in names if n in CLASS_METRICS]
    few = [
        class_label(i, class_names)
        for i in chosen
        if min(real_counts[i], fake_counts[i]) < _FEW_SWD_IMAGES
    ]
    if "swd" in per_class_names and few:
        warnings.warn(
            f"per-class SWD of fewer than {_FEW_SWD_IMAGES} real or generated images is "
            f"mostly noise: class(es) {abbreviate(few)}",
            UserWarning,
            stacklevel=2,
        )
    per_class: list[dict[str, Any]] = []
    for index in chosen:
        real_rows = np.flatnonzero(labels == index)
        fake_rows = np.flatnonzero(fake_labels == index)
        entry: dict[str, Any] = {
            "index": index,
            "name": None if class_names is None else class_names[index],
            "n_real": int(len(real_rows)),
            "n_fake": int(len(fake_rows)),
        }
        if per_class_names:
            changes: dict[str, Any] = {"swd_floor": False}
            if "real_features" in features:
                changes["real_features"] = features["real_features"][real_rows]
                changes["fake_features"] = features["fake_features"][fake_rows]
            entry.update(
                compute_metrics(
                    per_class_names,
                    real_u8[torch.from_numpy(real_rows)],
                    fake_u8[torch.from_numpy(fake_rows)],
                    opts,
                    **changes,
                )
            )
        per_class.append(entry)
    results["classes"] = per_class
    results["class_mean"] = class_means(per_class)
    return results
