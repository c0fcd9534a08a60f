"""The options of ``fagan train``, declared once.

:class:`TrainOptions` is the single declaration: the command line's flags (``fagan train``
and the root ``train.py``), their help text and defaults, and every check
(:meth:`TrainOptions.validate`) come from it, so the library (``train(TrainOptions(...))``)
and the command line accept the same values with the same messages.

A resumed run (``--resume``) takes its options from the run it continues
(:func:`resumed_options`): an option given again that would break the exact continuation
is refused, one that only changes where, how long or how visibly it runs is applied with a
notice.

This module imports no torch: the command line builds its flags from it at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from fagan.errors import FaganError
from fagan.options import (
    EXISTING_FILE,
    FLAG,
    NON_NEGATIVE_INT,
    PERCENTAGE,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    TEXT,
    UNIT_INTERVAL,
    Kind,
    check_fields,
    choice,
    option,
    quote,
)

PRECISIONS = ("fp32", "bf16", "fp16")
#: ``--conditioning``'s values (the schemes of :mod:`fagan.layers.conditional`, and none).
CONDITIONING_CHOICES = ("projection", "concat", "none")
ORIGINAL = "the original train.py's flags"
BEYOND = "beyond the original"
#: Most data-loading processes the default picks.
MAX_DEFAULT_WORKERS = 4
#: Most images in a sample grid (drawn in batches of at most --batch_size).
MAX_GRID_SAMPLES = 1024
#: Fewest steps between two sample grids (and TensorBoard images), whatever
#: --feedback_factor asks.
MIN_GRID_STEPS = 20
GRID_SAMPLES = Kind(
    int,
    lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_GRID_SAMPLES,
    f"a whole number in [1, {MAX_GRID_SAMPLES}]",
)


def default_num_workers(in_memory: bool) -> int:
    """The default ``--num_workers``: what the machine has room for.

    Data already in memory (the embedded demo faces) needs no loader processes: 0. Else
    one process per CPU this process may run on, less one for the training itself, at
    most :data:`MAX_DEFAULT_WORKERS`, never more than the CPUs.

    Args:
        in_memory: whether the dataset holds its images in memory (nothing to decode).
    """
    if in_memory:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))


@dataclass
class TrainOptions:
    """Every training option; the command line's flags have the same names.

    Defaults follow the original ``train.py`` except ``start`` (1, not 4) and
    ``num_workers`` (derived from the machine). ``None`` means "derive it": the configs
    and image size from the data (the embedded demo uses ``small32``, a folder
    ``fagan64``), the latent size from the generator config.
    """

    # ---- the original train.py's flags
    generator_config: str | None = option(
        None,
        TEXT,
        "generator architecture: a .conf/.yaml file or a built-in name (fagan64, "
        "sagan64, small32); default fagan64, or small32 for the embedded demo",
        group=ORIGINAL,
    )
    discriminator_config: str | None = option(
        None, TEXT, "discriminator architecture, likewise", group=ORIGINAL
    )
    generator_file: str | None = option(
        None,
        EXISTING_FILE,
        "initial generator weights (ours or attn-gan-pytorch's GAN_GEN_*.pth)",
        group=ORIGINAL,
    )
    discriminator_file: str | None = option(
        None, EXISTING_FILE, "initial discriminator weights", group=ORIGINAL
    )
    images_dir: str | None = option(
        None,
        TEXT,
        "training images: a folder (flat, nested, or one sub-folder per class) or "
        "a dataset zip from fagan prepare; default data/celeba if present, else the embedded "
        "demo faces",
        group=ORIGINAL,
    )
    sample_dir: str = option("samples/fagan_1", TEXT, "sample grids go here", group=ORIGINAL)
    model_dir: str = option(
        "models/fagan_1", TEXT, "weights, training state, logs and plots go here", group=ORIGINAL
    )
    loss_function: str = option(
        "relativistic-hinge",
        TEXT,
        "hinge, relativistic-hinge, standard, lsgan, wgan-gp, "
        "relativistic-standard, relativistic-lsgan",
        group=ORIGINAL,
    )
    latent_size: int | None = option(
        None,
        POSITIVE_INT,
        "latent size (default: the generator config's input channels, 128 for the original's)",
        group=ORIGINAL,
    )
    batch_size: int = option(32, POSITIVE_INT, "images per step (per process)", group=ORIGINAL)
    start: int = option(1, POSITIVE_INT, "number of the first epoch", group=ORIGINAL)
    num_epochs: int = option(12, POSITIVE_INT, "number of the last epoch", group=ORIGINAL)
    feedback_factor: int = option(
        62,
        POSITIVE_INT,
        "loss logs (loss.log, stats.jsonl, TensorBoard scalars) per epoch, "
        "and at its first batch; a sample grid (and its TensorBoard image) goes with a log "
        f"when at least {MIN_GRID_STEPS} steps passed since the last grid",
        group=ORIGINAL,
    )
    checkpoint_factor: int = option(1, POSITIVE_INT, "save weights every N epochs", group=ORIGINAL)
    g_lr: float = option(0.0001, POSITIVE_FLOAT, "generator learning rate (Adam)", group=ORIGINAL)
    d_lr: float = option(
        0.0004, POSITIVE_FLOAT, "discriminator learning rate (Adam)", group=ORIGINAL
    )
    data_percentage: float = option(
        100.0, PERCENTAGE, "share of the data used per epoch", group=ORIGINAL
    )
    num_workers: int | None = option(
        None,
        NON_NEGATIVE_INT,
        "data loading processes (default: one fewer than the CPUs "
        f"this process may use, at most {MAX_DEFAULT_WORKERS}; 0 for the embedded demo, "
        "whose images are in memory)",
        group=ORIGINAL,
    )
    # ---- beyond the original
    conditioning: str | None = option(
        None,
        choice(*CONDITIONING_CHOICES),
        "class-conditional training on the data's classes (class sub-folders, or a "
        "fagan prepare zip's labels): projection (conditional batch norm in the generator, "
        "a projection head in the discriminator), concat (attn-gan-pytorch's scheme: the "
        "class vector concatenated to the latent and to the discriminator's last layer's "
        "input), or none; default: the configs' 'conditioning:' key, else none",
        group=BEYOND,
    )
    embedding_dim: int | None = option(
        None,
        NON_NEGATIVE_INT,
        "with --conditioning: the size of a learned class embedding (projection: one "
        "shared by the generator's batch norms, as BigGAN; concat: replaces the one-hot "
        "class vector); 0: none (projection: a gain and bias per class in each batch norm; "
        "concat: one-hot vectors); default: 128 for projection (it conditions within a few "
        "hundred steps, where per-layer gains barely move), 0 for concat (the original's "
        "scheme)",
        group=BEYOND,
    )
    matching_aware: bool = option(
        False,
        FLAG,
        "with --conditioning: matching-aware discriminator (GAN-CLS): real images paired "
        "with wrong classes (the batch's labels shuffled) are scored as fake, besides the "
        "generated ones",
        group=BEYOND,
    )
    seed: int = option(
        0,
        SEED,
        "seed of the initial weights, the data order, the latents and the augmentations",
        group=BEYOND,
    )
    resume: bool = option(
        False,
        FLAG,
        "continue exactly from the training state in "
        "--model_dir, with the options the run was started with",
        group=BEYOND,
    )
    overwrite: bool = option(
        False,
        FLAG,
        "clears that run's outputs first: the previous run's "
        "weights, state, logs and grids in --model_dir and --sample_dir",
        group=BEYOND,
    )
    ema_decay: float = option(
        0.999,
        UNIT_INTERVAL,
        "decay of the generator's moving average used for samples (0: off)",
        group=BEYOND,
    )
    precision: str = option(
        "fp32",
        choice(*PRECISIONS),
        "bf16 autocast (CPU and GPU) or fp16 with a gradient scaler (GPU)",
        group=BEYOND,
    )
    image_size: int | None = option(
        None, POSITIVE_INT, "training image size (must match the generator's output)", group=BEYOND
    )
    device: str = option("auto", TEXT, "auto, cpu, cuda, cuda:N or mps", group=BEYOND)
    n_critic: int = option(1, POSITIVE_INT, "discriminator steps per generator step", group=BEYOND)
    augment: str | None = option(
        None,
        TEXT,
        "DiffAugment policy such as color,translation,cutout, or none (default: "
        "that policy for the embedded demo, none for folders)",
        group=BEYOND,
    )
    max_steps: int | None = option(
        None,
        POSITIVE_INT,
        "stop after this many steps in all, saving a resumable state",
        group=BEYOND,
    )
    time_limit: float | None = option(
        None, POSITIVE_FLOAT, "stop after this many seconds, saving a resumable state", group=BEYOND
    )
    num_samples: int = option(64, GRID_SAMPLES, "images in each sample grid", group=BEYOND)
    tensorboard: bool = option(
        True, FLAG, "do not write TensorBoard events", group=BEYOND, negative_flag="no_tensorboard"
    )
    channels_last: bool | None = option(
        None,
        FLAG,
        "channels-last memory format (default: on with --precision bf16/fp16)",
        group=BEYOND,
        negative_flag="no_channels_last",
    )
    compile: bool = option(False, FLAG, "torch.compile both networks", group=BEYOND)
    eval_every: int | None = option(
        None,
        POSITIVE_INT,
        "every N steps, measure the EMA generator against real images "
        "(logged to stats.jsonl and TensorBoard)",
        group=BEYOND,
    )
    eval_metrics: str = option(
        "swd",
        TEXT,
        "metrics for --eval_every: swd, fid, kid, is (fid/kid/is need --inception_weights)",
        group=BEYOND,
    )
    eval_num_samples: int = option(
        1000, POSITIVE_INT, "real (and generated) images per evaluation, at least 2", group=BEYOND
    )
    inception_weights: str | None = option(
        None,
        EXISTING_FILE,
        "InceptionV3 weights file for FID/KID/IS (never downloaded)",
        group=BEYOND,
    )

    def validate(self) -> None:
        """Checks every option once, at the boundary: each against its kind, then together.

        Raises:
            FaganError: naming the first bad option and its value.
        """
        check_fields(self)
        if self.images_dir is not None:
            from fagan.data import check_dataset_path

            check_dataset_path(self.images_dir, "--images_dir")
        if self.start > self.num_epochs:
            raise FaganError(
                f"--start {self.start} is after --num_epochs {self.num_epochs}: nothing to train"
            )
        if self.embedding_dim is not None and self.conditioning == "none":
            raise FaganError(
                f"--embedding_dim {self.embedding_dim} applies to class-conditional training; "
                "it was given with --conditioning none"
            )
        if self.eval_num_samples < 2:
            raise FaganError(
                f"--eval_num_samples must be a whole number >= 2, got {self.eval_num_samples!r}"
            )
        # the checks below import torch: only now, not when the flags are built
        from fagan.augment import parse_policy
        from fagan.losses import get_loss

        get_loss(self.loss_function)
        if self.augment is not None and self.augment.strip().lower() != "none":
            parse_policy(self.augment)
        if self.eval_every is not None:
            from fagan.metrics import needs_inception, parse_metric_list
            from fagan.metrics.inception import resolve_weights_path

            if needs_inception(parse_metric_list(self.eval_metrics)):
                resolve_weights_path(self.inception_weights)  # fails now, not hours later


def given_by_default(opts: TrainOptions) -> frozenset[str]:
    """The options a library caller set: those that differ from their declared defaults."""
    return frozenset(f.name for f in fields(opts) if getattr(opts, f.name) != f.default)


# --------------------------------------------------------------------------- resuming
#: Options a resumed run may change: where, how long and how visibly it runs. Everything
#: else decides what is computed; changing it would not continue the run exactly.
RESUME_MAY_CHANGE = frozenset(
    {
        "sample_dir",
        "num_epochs",
        "max_steps",
        "time_limit",
        "feedback_factor",
        "checkpoint_factor",
        "num_workers",
        "device",
        "tensorboard",
        "channels_last",
        "compile",
        "eval_every",
        "eval_metrics",
        "eval_num_samples",
        "inception_weights",
    }
)
#: Options that say which run to resume: always the caller's.
_RESUME_LOCATION = frozenset({"model_dir", "resume", "overwrite"})
#: Starting weights, only read when a run starts: a resumed run has its own.
_START_ONLY = frozenset({"generator_file", "discriminator_file"})


def resumed_options(
    opts: TrainOptions, saved: Mapping[str, Any] | None, given: Collection[str]
) -> tuple[TrainOptions, list[str]]:
    """The options of a resumed run: the saved run's, with the caller's allowed changes.

    Args:
        opts: the options as called (with ``resume`` set).
        saved: the options the run was saved with (a training state's ``"options"``);
            None for a state written without them: ``opts`` are used as they are.
        given: the names of the options the caller set (on the command line, the flags
            given); the others are taken from ``saved``.

    Returns:
        The options to resume with, and one notice per option changed on resuming.

    Raises:
        FaganError: for an option given with a value other than the saved one where that
            would break the exact continuation (architecture, data, batch size, seed, ...).
    """
    if saved is None:
        return opts, []
    values: dict[str, Any] = {}
    notices = []
    for f in fields(opts):
        name = f.name
        mine = getattr(opts, name)
        if name in _RESUME_LOCATION or name not in saved:
            continue
        theirs = saved[name]
        if name not in given or mine == theirs:
            values[name] = None if name in _START_ONLY else theirs
        elif name in RESUME_MAY_CHANGE:
            notices.append(f"--{name} {_shown(mine)} replaces the run's {_shown(theirs)}")
        elif name in _START_ONLY:
            raise FaganError(
                f"--{name} sets the weights a run starts from; --resume "
                f"continues from the training state in {opts.model_dir}"
            )
        else:
            raise FaganError(
                f"--{name} {_shown(mine)} differs from the run's {_shown(theirs)}: a resumed "
                f"run keeps its --{name} to continue exactly (leave it out, or start a new run "
                "in another --model_dir)"
            )
    return replace(opts, **values), notices


def _shown(value: Any) -> str:
    return "(not set)" if value is None else quote(value) if isinstance(value, str) else str(value)
