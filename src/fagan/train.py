"""Training: one discriminator step, one generator step, and the loop around them.

The loop (:func:`_train_epochs`) reads top to bottom: per batch ``d_step`` x ``n_critic``,
``g_step``, the moving average, feedback (loss.log, stats.jsonl, TensorBoard, sample
grids, ``--eval_every`` measures), then whether to stop; per epoch a checkpoint. Before
it, :func:`_train` sets the run up: the resolved set-up (:func:`resolve_setup`), the data,
the one :class:`~fagan.train_state.TrainState` that every step changes (resumed from
``training_state.pth`` with ``--resume``), the run folder. After it come the end-of-run
outputs (loss plot, progress GIF). Everything a run writes lives under ``--model_dir``
and ``--sample_dir``. Precision is chosen once (an autocast context and a gradient scaler
that are no-ops in fp32), so the steps have no precision branches. A class-conditional run
(``--conditioning``, :mod:`fagan.train_conditioning`) gives both steps the real batch's
labels: the fakes are made for them and both batches are scored with them.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import Dataset
from tqdm import tqdm

from fagan import __version__
from fagan.animation import make_progress_gif
from fagan.augment import diff_augment
from fagan.checkpoint import load_network, network_file, save_file
from fagan.config import (
    NetworkSpec,
    load_config,
    parse_config,
    resolve_config_path,
    spec_to_dict,
)
from fagan.data import ResumableSampler, TrainingData, open_training_data
from fagan.distributed import DistInfo, all_agree, init_distributed, shutdown_distributed
from fagan.errors import FaganError
from fagan.fileio import atomic_write
from fagan.losses import (
    GANLoss,
    get_loss,
    gradient_penalty,
    matching_aware_d,
    mismatched_labels,
)
from fagan.networks import Discriminator, Generator
from fagan.plots import plot_losses
from fagan.runfolder import RunLock, claim_run_folder
from fagan.runlog import RunLog
from fagan.sample import evenly_spaced, grid_uint8, to_uint8, write_grid
from fagan.train_conditioning import (
    EvenClasses,
    RunClasses,
    class_grid_inputs,
    grid_columns,
    resolve_scheme,
    run_classes,
)
from fagan.train_options import (
    MIN_GRID_STEPS,
    PRECISIONS,
    TrainOptions,
    default_num_workers,
    given_by_default,
    resumed_options,
)
from fagan.train_state import (
    TRAINING_STATE,
    RngState,
    TrainState,
    read_training_state,
    resume_position,
    sampler_key,
    seeded_generators,
)

__all__ = [
    "PRECISIONS",
    "TRAINING_STATE",
    "StopReason",
    "TrainOptions",
    "TrainResult",
    "TrainSetup",
    "TrainState",
    "d_step",
    "g_step",
    "resolve_setup",
    "train",
]

OPTIONS_FILE = "options.json"
# The embedded demo (no --images_dir): 100 small faces, so a small architecture and
# augmentation (the repeats and flips are the data's: fagan.data.open_training_data).
DEMO_CONFIG = "small32"
DEMO_AUGMENT = "color,translation,cutout"
# Temporary files of saves killed mid-write (SIGKILL, power loss) older than this are removed.
_STALE_TEMP_SECONDS = 120.0


class StopReason(str, Enum):
    """Why a run ended."""

    DONE = "done"  # every epoch up to --num_epochs
    MAX_STEPS = "max_steps"
    TIME_LIMIT = "time_limit"
    SIGINT = "SIGINT"
    SIGTERM = "SIGTERM"
    OTHER_PROCESS = "another process"  # DDP: another rank was asked to stop

    @property
    def exit_status(self) -> int:
        """The command's exit status: 0, or 128 + the signal's number when stopped by one
        (130 for SIGINT, 143 for SIGTERM; another process's stop counts as SIGTERM), so
        that ``fagan train && next`` does not carry on after an interrupt."""
        if self is StopReason.SIGINT:
            return 128 + signal.SIGINT
        if self in (StopReason.SIGTERM, StopReason.OTHER_PROCESS):
            return 128 + signal.SIGTERM
        return 0

    @property
    def resumable_only(self) -> bool:
        """Stopped from outside: a state to resume from is saved, no final outputs."""
        return self in (StopReason.SIGINT, StopReason.SIGTERM, StopReason.OTHER_PROCESS)


# --------------------------------------------------------------------------- steps
@dataclass
class Precision:
    """The precision chosen once: an autocast context factory and a gradient scaler."""

    autocast: Callable[[], AbstractContextManager]
    scaler: torch.amp.GradScaler

    @classmethod
    def create(cls, name: str, device: torch.device) -> Precision:
        if name == "fp16" and device.type != "cuda":
            raise FaganError("--precision fp16 needs a CUDA GPU; use bf16 on the CPU")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        enabled = dtype is not None

        def autocast() -> AbstractContextManager:
            return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=enabled)

        scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")
        return cls(autocast, scaler)


def _unwrap(model: nn.Module) -> nn.Module:
    model = model.module if isinstance(model, DDP) else model
    return getattr(model, "_orig_mod", model)


def _call(net: nn.Module, x: Tensor, labels: Tensor | None) -> Tensor:
    """``net(x)``, or ``net(x, labels)`` for a class-conditional step."""
    return net(x) if labels is None else net(x, labels)


def d_step(
    G: nn.Module,
    D: nn.Module,
    real: Tensor,
    z: Tensor,
    loss: GANLoss,
    opt: torch.optim.Optimizer,
    prec: Precision,
    augment: Callable[[Tensor], Tensor],
    rng: torch.Generator,
    labels: Tensor | None = None,
    mismatch_classes: int | None = None,
) -> float:
    """One discriminator update: each discriminator pass runs once per batch.

    The fake batch is made without building a graph (the generator is not updated
    here), as the original's ``.detach()`` did, but cheaper. A class-conditional step
    (``labels``, the real batch's (B,)) makes the fakes for the real batch's labels and
    scores both batches with them. With ``mismatch_classes`` (the number of classes) the
    step is matching-aware (:func:`fagan.losses.matching_aware_d`, the intended
    variant): the real batch is scored again with wrong labels drawn from ``rng``, as fake.
    """
    with torch.no_grad(), prec.autocast():
        fake = _call(_unwrap(G), z, labels)
    with prec.autocast():
        r = _call(D, augment(real), labels).float()
        f = _call(D, augment(fake), labels).float()
        if mismatch_classes is not None and labels is not None:
            wrong = mismatched_labels(labels, mismatch_classes, rng)
            m = _call(D, augment(real), wrong).float()
    if mismatch_classes is not None and labels is not None:
        d_loss = matching_aware_d(loss.d, r, f, m)
    else:
        d_loss = loss.d(r, f)
    if loss.gp_weight:
        d_loss = d_loss + loss.gp_weight * gradient_penalty(
            _unwrap(D), real, fake.float(), rng, labels
        )
    opt.zero_grad(set_to_none=True)
    prec.scaler.scale(d_loss).backward()
    prec.scaler.step(opt)
    prec.scaler.update()
    # freed now rather than at the next D step: they would otherwise be held through the
    # G step (memory) and fragment the heap between the steps' temporaries
    opt.zero_grad(set_to_none=True)
    return float(d_loss.detach())


def g_step(
    G: nn.Module,
    D: nn.Module,
    real: Tensor,
    z: Tensor,
    loss: GANLoss,
    opt: torch.optim.Optimizer,
    prec: Precision,
    augment: Callable[[Tensor], Tensor],
    labels: Tensor | None = None,
) -> float:
    """One generator update.

    The discriminator's parameters leave autograd for the step (no weight gradients
    are computed for it), and the real-image term of relativistic losses is computed
    without a graph. A class-conditional step (``labels``, the real batch's) generates
    for the real batch's labels.
    """
    d_net = _unwrap(D)  # not the DDP wrapper: D's weights are not synchronised here
    d_net.requires_grad_(False)
    try:
        with prec.autocast():
            # the real pass first: its temporaries are gone before the generator's and
            # the fake pass's graphs are built (a lower peak than the other order)
            if loss.g_uses_real:
                with torch.no_grad():
                    r = _call(d_net, augment(real), labels).float()
            f = _call(d_net, augment(_call(G, z, labels)), labels).float()
            if not loss.g_uses_real:
                r = f.new_zeros(())
        g_loss = loss.g(r, f)
        opt.zero_grad(set_to_none=True)
        prec.scaler.scale(g_loss).backward()
        prec.scaler.step(opt)
        prec.scaler.update()
        opt.zero_grad(set_to_none=True)
    finally:
        d_net.requires_grad_(True)
    return float(g_loss.detach())


def uses_channels_last(precision: str, channels_last: bool | None) -> bool:
    """Whether to train in the channels-last memory format.

    ``None`` (the default) picks it for bf16/fp16: oneDNN's bf16 convolutions (AMX,
    AVX-512 BF16) and GPU tensor cores work channels-last, and contiguous tensors are
    reordered around every convolution; in fp32 on the CPU it was not faster
    (benchmarks/RESULTS.md).
    """
    if channels_last is not None:
        return channels_last
    return precision in ("bf16", "fp16")


def make_adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """The original's optimiser, ``Adam(lr, betas=(0, 0.9))``, with PyTorch's fused kernel.

    The fused implementation (one kernel over all parameters instead of ~6 ops per
    parameter, faster: benchmarks/RESULTS.md) is used on CPUs and CUDA GPUs; elsewhere the
    default implementation.
    """
    params = list(model.parameters())
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params
    )
    return torch.optim.Adam(params, lr=lr, betas=(0.0, 0.9), fused=fused or None)


@torch.no_grad()
def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay used after ``step`` updates: ``min(decay, (1 + step) / (10 + step))``.

    The warm-up keeps the average from clinging to the random initial weights in the
    first thousands of steps (at 0.999 the initial weights still weigh 37% after 1,000).
    """
    return min(decay, (1 + step) / (10 + step))


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


# --------------------------------------------------------------------------- set-up
@dataclass(frozen=True)
class TrainSetup:
    """What the options (and a resumed state) resolve to before the first step.

    Attributes:
        g_spec, d_spec: the architectures.
        architecture: how to name them in messages.
        latent_size, image_size: the generator's input and output sizes.
        embedded: whether the run trains on the embedded demo faces (no ``--images_dir``).
        augment_policy: the DiffAugment policy, "" for none.
        num_workers: data loading processes.
        scheme: the class conditioning asked for (``"projection"``, ``"concat"``), or None.
        classes: a class-conditional run's classes, known once the data is open
            (:func:`with_classes`); None before, and for an unconditional run.
    """

    g_spec: NetworkSpec
    d_spec: NetworkSpec
    architecture: str
    latent_size: int
    image_size: int
    embedded: bool
    augment_policy: str
    num_workers: int
    scheme: str | None = None
    classes: RunClasses | None = None

    def network_kwargs(self, role: str) -> dict[str, Any]:
        """The conditioning keyword arguments of the ``role`` network (none when
        unconditional)."""
        return {} if self.classes is None else self.classes.network_kwargs(role)


def resolve_setup(opts: TrainOptions, saved: dict[str, Any] | None = None) -> TrainSetup:
    """Resolves the derived options: architecture, sizes and the embedded demo's defaults.

    Args:
        opts: validated options.
        saved: the training state being resumed, whose architecture is used.

    Raises:
        FaganError: for a config that cannot be read or an ``--image_size`` the generator
            does not make.
    """
    embedded = opts.images_dir is None
    default = DEMO_CONFIG if embedded else "fagan64"
    if saved is not None:
        g_spec = parse_config(saved["generator_config"], "the training state's generator config")
        d_spec = parse_config(
            saved["discriminator_config"], "the training state's discriminator config"
        )
    else:
        g_spec = load_config(resolve_config_path(opts.generator_config or default, "gen"))
        d_spec = load_config(resolve_config_path(opts.discriminator_config or default, "dis"))
    latent_size = opts.latent_size or g_spec.in_channels
    scheme = resolve_scheme(opts.conditioning, g_spec, d_spec, saved)
    if scheme == "concat" and g_spec.in_channels != latent_size:
        # a config written for concat conditioning (the original's): the generator, built
        # once the classes are known, checks that its first layer takes latent + K channels
        generator_size = g_spec.output_shape(g_spec.in_channels, 1, 1)[1]
    else:
        generator_size = Generator(g_spec, latent_size).image_size
    if opts.image_size is not None and opts.image_size != generator_size:
        raise FaganError(
            f"--image_size {opts.image_size} differs from the generator's output size "
            f"{generator_size}; choose a config for that size"
        )
    if opts.augment is None:
        policy = DEMO_AUGMENT if embedded else ""
    else:
        policy = "" if opts.augment.strip().lower() == "none" else opts.augment
    workers = opts.num_workers
    return TrainSetup(
        g_spec,
        d_spec,
        architecture=opts.generator_config or default,
        latent_size=latent_size,
        image_size=generator_size,
        embedded=embedded,
        augment_policy=policy,
        num_workers=default_num_workers(in_memory=embedded) if workers is None else workers,
        scheme=scheme,
    )


def with_classes(
    setup: TrainSetup, opts: TrainOptions, images: TrainingData, saved: dict[str, Any] | None
) -> TrainSetup:
    """``setup`` with a class-conditional run's classes, from the data's labels.

    Raises:
        FaganError: see :func:`fagan.train_conditioning.run_classes`.
    """
    classes = run_classes(
        setup.scheme,
        images.labels,
        images.class_names,
        images.source,
        embedding_dim=opts.embedding_dim,
        matching_aware=opts.matching_aware,
        saved=saved,
    )
    return replace(setup, classes=classes)


@dataclass
class _Data:
    """The training images and the order they come in."""

    images: TrainingData  # decoded once (the demo's repeated and mirrored); .base for eval
    sampler: ResumableSampler


def _open_data(
    opts: TrainOptions,
    setup: TrainSetup,
    info: DistInfo,
    device: torch.device,
    say: Callable[[str], None],
) -> _Data:
    """The images, decoded once, and this process's share of each epoch."""
    images = open_training_data(
        opts.images_dir,
        setup.image_size,
        device,
        num_workers=setup.num_workers,
        channels_last=_memory_format(opts) == torch.channels_last,
    )
    if setup.embedded:
        say(f"no --images_dir: training {setup.architecture} on the embedded demo faces")
    say(images.describe())
    sampler = ResumableSampler(
        len(images),
        batch_size=opts.batch_size,
        seed=opts.seed,
        data_percentage=opts.data_percentage,
        rank=info.rank,
        world_size=info.world_size,
    )
    return _Data(images, sampler)


def _new_state(
    opts: TrainOptions,
    setup: TrainSetup,
    info: DistInfo,
    device: torch.device,
    data: _Data,
    scaler: torch.amp.GradScaler,
    say: Callable[[str], None],
) -> TrainState:
    """The state of a new run: fresh networks (or --generator_file's), step 0."""
    G = Generator(setup.g_spec, setup.latent_size, **setup.network_kwargs("generator"))
    D = Discriminator(setup.d_spec, setup.image_size, **setup.network_kwargs("discriminator"))
    G.validate_labels = D.validate_labels = False  # the data's labels, checked once
    if opts.generator_file and not opts.resume:
        load_network(G, opts.generator_file, "generator", prefer_ema=False)
    if opts.discriminator_file and not opts.resume:
        load_network(D, opts.discriminator_file, "discriminator")
    if info.enabled and device.type == "cuda":
        G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
    elif info.enabled:
        say(
            "note: batch norm is synchronised across processes on GPUs only; on the CPU each "
            "process normalises its own batch (buffers are taken from rank 0 at checkpoints)"
        )
    memory_format = _memory_format(opts)
    G.to(device, memory_format=memory_format).train()
    D.to(device, memory_format=memory_format).train()
    ema = copy.deepcopy(G).eval().requires_grad_(False) if opts.ema_decay > 0 else None
    latent_rng, aug_rng = seeded_generators(opts.seed, info.rank, device)
    fixed_latents = torch.randn(
        opts.num_samples, setup.latent_size, generator=torch.Generator().manual_seed(opts.seed)
    )
    fixed_labels = None
    if setup.classes is not None:  # one row per class, the same latents in each column
        fixed_latents, fixed_labels = class_grid_inputs(fixed_latents, setup.classes.num_classes)
    key = sampler_key(
        seed=opts.seed,
        batch_size=opts.batch_size,
        world_size=info.world_size,
        data_percentage=opts.data_percentage,
        dataset_len=data.sampler.dataset_len,
    )
    run = {
        "generator_config": spec_to_dict(setup.g_spec),
        "discriminator_config": spec_to_dict(setup.d_spec),
        "latent_size": setup.latent_size,
        "image_size": setup.image_size,
        "options": {**asdict(opts), "conditioning": setup.scheme or "none"},
        "conditioning": None if setup.classes is None else setup.classes.options,
        "class_names": None if setup.classes is None else list(setup.classes.class_names),
    }
    return TrainState(
        G,
        D,
        ema,
        make_adam(G, opts.g_lr),
        make_adam(D, opts.d_lr),
        scaler,
        latent_rng,
        aug_rng,
        fixed_latents.to(device),
        key,
        run,
        fixed_labels=None if fixed_labels is None else fixed_labels.to(device),
        epoch=opts.start,
    )


def _resume(
    state: TrainState,
    saved: dict[str, Any],
    path: Path,
    info: DistInfo,
    batches_per_epoch: int,
    say: Callable[[str], None],
) -> None:
    """Continues ``state`` from the saved one, exactly where the data order allows."""
    exact = state.load_state_dict(
        saved, batches_per_epoch=batches_per_epoch, rank=info.rank, source=str(path)
    )
    if not exact:
        warnings.warn(
            "the data order changed since the training state was saved (other images, batch "
            "size, seed, data percentage or number of processes): continuing from the start "
            f"of epoch {state.epoch}, not exactly",
            stacklevel=2,
        )
    say(f"resuming from {path}: epoch {state.epoch}, batch {state.batch}, step {state.step}")


def _memory_format(opts: TrainOptions) -> torch.memory_format:
    """The memory format of the networks and the real batches."""
    if uses_channels_last(opts.precision, opts.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _for_training(
    net: nn.Module, opts: TrainOptions, info: DistInfo, device: torch.device
) -> nn.Module:
    """``net`` as the steps call it: wrapped for DDP and torch.compile where asked."""
    if info.enabled:
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if opts.compile else net


@dataclass
class _Inputs:
    """The steps' inputs: real batches on the device, latents, augmentation."""

    state: TrainState
    setup: TrainSetup
    device: torch.device
    memory_format: torch.memory_format
    matching_aware: bool = False

    def labels(self, batch_labels: Tensor | None) -> Tensor | None:
        """A batch's labels as the steps take them: None for an unconditional run."""
        return None if self.setup.classes is None else batch_labels

    @property
    def mismatch_classes(self) -> int | None:
        """The number of classes for a matching-aware D step (``--matching_aware``), or None."""
        classes = self.setup.classes
        return classes.num_classes if classes is not None and self.matching_aware else None

    def latents(self, n: int) -> Tensor:
        return torch.randn(
            n, self.setup.latent_size, device=self.device, generator=self.state.latent_rng
        )

    def augment(self, x: Tensor) -> Tensor:
        policy = self.setup.augment_policy
        return diff_augment(x, policy, self.state.aug_rng) if policy else x


# --------------------------------------------------------------------------- run outputs
def _prepare_run_folder(
    opts: TrainOptions,
    setup: TrainSetup,
    info: DistInfo,
    device: torch.device,
    say: Callable[[str], None],
) -> RunLog:
    """Creates the run's folders and writes the resolved options and architectures."""
    model_dir = Path(opts.model_dir)
    for flag, folder in (("--model_dir", model_dir), ("--sample_dir", Path(opts.sample_dir))):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FaganError(
                f"{flag}: cannot create folder {folder}: {error.strerror or error}"
            ) from None
    _remove_stale_temp_files(model_dir, say)
    run_log = RunLog(model_dir, tensorboard=opts.tensorboard)
    resolved = {
        **asdict(opts),
        "latent_size": setup.latent_size,
        "image_size": setup.image_size,
        "augment": setup.augment_policy or "none",
        "conditioning": setup.scheme or "none",
        "embedding_dim": None if setup.classes is None else setup.classes.embedding_dim,
        "class_names": None if setup.classes is None else list(setup.classes.class_names),
        "num_workers": setup.num_workers,
        "channels_last": uses_channels_last(opts.precision, opts.channels_last),
        "world_size": info.world_size,
        "device": str(device),
        "fagan_version": __version__,
    }
    _write_text(model_dir / OPTIONS_FILE, json.dumps(resolved, indent=2) + "\n")
    for name, spec in (("gen.yaml", setup.g_spec), ("dis.yaml", setup.d_spec)):
        _write_text(model_dir / name, yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    return run_log


class _Feedback:
    """What a run shows while it trains: a progress bar per epoch, loss.log / stats.jsonl /
    TensorBoard records ``--feedback_factor`` times per epoch (and at its first batch), and
    the ``--eval_every`` measures. A sample grid (and its TensorBoard image) goes with a
    record when it is the run's first or at least :data:`MIN_GRID_STEPS` steps passed since
    the last, which bounds what a long run writes. Only the main process writes
    (``run_log`` is None elsewhere).
    """

    def __init__(
        self,
        opts: TrainOptions,
        run_log: RunLog | None,
        evaluator: _Evaluator | None,
        prec: Precision,
        batches_per_epoch: int,
        world_size: int,
    ) -> None:
        self.opts, self.run_log, self.evaluator, self.prec = opts, run_log, evaluator, prec
        self.interval = max(1, batches_per_epoch // opts.feedback_factor)
        self.batches_per_epoch, self.world_size = batches_per_epoch, world_size
        self.started = time.monotonic()
        self.bar: tqdm | None = None
        self.last_grid: int | None = None  # the step of this process's last sample grid

    def __enter__(self) -> _Feedback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end_epoch()  # on errors too: the error message gets a line of its own

    def start_epoch(self, state: TrainState) -> None:
        self.bar = tqdm(
            total=self.batches_per_epoch,
            initial=state.batch,
            desc=f"epoch {state.epoch}/{self.opts.num_epochs}",
            disable=self.run_log is None,
            unit="batch",
            dynamic_ncols=True,
            leave=True,
            file=sys.stderr,
        )
        self.window_start, self.window_images = time.monotonic(), 0

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def after_step(self, state: TrainState, d_loss: float, g_loss: float, images: int) -> None:
        """Progress, and the records, grids and measures that are due after this step."""
        self.window_images += images * self.world_size
        elapsed = time.monotonic() - self.window_start
        rate = self.window_images / elapsed if elapsed > 0 else 0.0
        assert self.bar is not None
        self.bar.update(1)
        self.bar.set_postfix(d=f"{d_loss:.3f}", g=f"{g_loss:.3f}", img_s=f"{rate:.1f}")
        if self.run_log is None:
            return
        if state.batch % self.interval == 0 or state.batch == 1:
            self.run_log.feedback(
                {
                    "step": state.step,
                    "epoch": state.epoch,
                    "batch": state.batch,
                    "d_loss": d_loss,
                    "g_loss": g_loss,
                    "gamma": state.generator.gammas()
                    | {f"D.{k}": v for k, v in state.discriminator.gammas().items()},
                    "images_per_s": rate,
                    "g_lr": state.g_opt.param_groups[0]["lr"],
                    "d_lr": state.d_opt.param_groups[0]["lr"],
                    "time": time.monotonic() - self.started,
                }
            )
            if self.last_grid is None or state.step - self.last_grid >= MIN_GRID_STEPS:
                self.sample_grid(state, f"{state.epoch}_{state.batch}")
                self.last_grid = state.step
        if self.evaluator is not None and state.step % self.opts.eval_every == 0:
            self.evaluate(state)

    def sample_grid(self, state: TrainState, tag: str) -> Path:
        """``gen_<tag>.png`` (and TensorBoard's image): the fixed latents' images (a
        conditional run's: one row per class, the same latent in each column)."""
        net = state.sampling_generator
        was_training = net.training
        net.eval()
        size, labels = self.opts.batch_size, state.fixed_labels
        with torch.no_grad(), self.prec.autocast():  # in batches: --num_samples may be large
            if labels is None:
                parts = [net(z) for z in state.fixed_latents.split(size)]
            else:
                pairs = zip(state.fixed_latents.split(size), labels.split(size), strict=True)
                parts = [net(z, y) for z, y in pairs]
            images = torch.cat([part.float() for part in parts])
        net.train(was_training)
        # one layout for the PNG and TensorBoard; a conditional run's: one row per class
        grid = grid_uint8(images, None if labels is None else grid_columns(labels))
        path = write_grid(grid, Path(self.opts.sample_dir) / f"gen_{tag}.png")
        if self.run_log is not None:
            self.run_log.image("samples", grid, state.step)
        return path

    def evaluate(self, state: TrainState) -> None:
        assert self.evaluator is not None and self.run_log is not None
        net = state.sampling_generator
        scores = self.evaluator(net if net.num_classes is None else EvenClasses(net))
        self.run_log.append_stats(
            {"step": state.step, "epoch": state.epoch, "batch": state.batch, "eval": scores}
        )
        message = f"step {state.step}: " + ", ".join(
            f"{name} {value:.3f}" for name, value in scores.items() if not name[-1].isdigit()
        )
        if self.bar is not None:
            self.bar.write(message)


class _Checkpoints:
    """Saves the training state (every process takes part) and the weights (the main one).

    Attributes:
        files: the weights files written so far, by role.
    """

    def __init__(self, model_dir: Path, info: DistInfo) -> None:
        self.model_dir, self.info = model_dir, info
        self.state_path = model_dir / TRAINING_STATE
        self.files: dict[str, Path] = {}

    def save_state(self, state: TrainState) -> None:
        """``training_state.pth``: a collective under DDP, written by the main process."""
        info = self.info
        if info.enabled:  # rank 0's running statistics everywhere: all ranks hold one model
            for net in (state.generator, state.discriminator, state.ema):
                for buffer in [] if net is None else net.buffers():
                    dist.broadcast(buffer, src=0)
        saved = state.state_dict(gather=_all_gather if info.enabled else None)
        if info.is_main:
            save_file(saved, self.state_path)

    def save_weights(self, state: TrainState) -> None:
        """The original's ``GAN_GEN_<epoch>.pth`` and ``GAN_DIS_<epoch>.pth``, and the EMA's."""
        if not self.info.is_main:
            return
        epoch, folder = state.epoch, self.model_dir
        self.files["generator"] = save_file(
            _weights_file(state, "generator", state.generator), folder / f"GAN_GEN_{epoch}.pth"
        )
        self.files["discriminator"] = save_file(
            _weights_file(state, "discriminator", state.discriminator),
            folder / f"GAN_DIS_{epoch}.pth",
        )
        if state.ema is not None:
            self.files["ema_generator"] = save_file(
                _weights_file(state, "generator", state.ema), folder / f"GAN_GEN_EMA_{epoch}.pth"
            )

    def end_of_epoch(self, state: TrainState, opts: TrainOptions) -> None:
        """Every ``--checkpoint_factor`` epochs, and the first and last, as the original."""
        epoch = state.epoch
        if epoch % opts.checkpoint_factor == 0 or epoch == 1 or epoch == opts.num_epochs:
            self.save_state(state)
            self.save_weights(state)
            if self.info.is_main and (self.model_dir / "loss.log").is_file():
                plot_losses(self.model_dir / "loss.log", self.model_dir / "loss.png")


def _weights_file(state: TrainState, role: str, net: nn.Module) -> dict[str, Any]:
    """What a per-epoch weights file holds: the plain state dict (the original's format),
    or for a class-conditional run a network file that also carries the architecture,
    conditioning and class names (:func:`fagan.checkpoint.network_file`)."""
    run = state.run
    if run.get("conditioning") is None:
        return net.state_dict()
    return network_file(
        role,
        net.state_dict(),
        yaml.safe_dump(run[f"{role}_config"], sort_keys=False),
        run["latent_size"],
        run["conditioning"],
        run["class_names"],
        image_size=run["image_size"],
    )


def _all_gather(rng: RngState) -> list[RngState]:
    """Every process's random streams, in rank order (a collective)."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {k: v.cpu() for k, v in rng.items()})
    return gathered


class _Evaluator:
    """``--eval_every``: metrics of the EMA generator against a fixed set of real images.

    The real images (up to ``eval_num_samples``, evenly spread over the dataset), their
    Inception features and the real-vs-real SWD floor are computed once; every
    evaluation then generates as many images from the same latents.
    """

    def __init__(self, dataset: Dataset, opts: TrainOptions, device: torch.device) -> None:
        from fagan.metrics import needs_inception, parse_metric_list
        from fagan.metrics.inception import InceptionFeatures

        indices = list(range(len(dataset)))  # type: ignore[arg-type]
        picks = evenly_spaced(indices, opts.eval_num_samples)
        self.real = to_uint8(torch.stack([dataset[k] for k in picks]))
        self.metrics = parse_metric_list(opts.eval_metrics)
        self.seed = opts.seed
        self.options: dict[str, Any] = {"device": device}
        if needs_inception(self.metrics):
            extractor = InceptionFeatures(opts.inception_weights, device=device, progress=False)
            self.options["extractor"] = extractor
            if any(name in ("fid", "kid") for name in self.metrics):
                self.options["real_features"], _ = extractor(self.real, name="real")
        self.first = True

    def __call__(self, generator: nn.Module) -> dict[str, float]:
        from fagan.evaluate import evaluate_generator, flatten_results

        scores = evaluate_generator(
            generator,
            self.real,
            self.metrics,
            num_samples=len(self.real),
            seed=self.seed,
            swd_floor=self.first and "swd" in self.metrics,
            **self.options,
        )
        self.first = False
        return flatten_results(scores)


@dataclass
class TrainResult:
    """What a run ended with.

    Attributes:
        stopped: why it ended.
        files: the weights, loss plot, GIF and training state written at the end.
    """

    generator: nn.Module
    discriminator: nn.Module
    ema_generator: nn.Module | None
    step: int
    epoch: int
    stopped: StopReason = StopReason.DONE
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def stopped_early(self) -> StopReason | None:
        """Why the run stopped before its last epoch; None when it trained them all."""
        return None if self.stopped is StopReason.DONE else self.stopped


@dataclass
class _Run:
    """The fixed parts of a run that the loop uses (the changing parts: :class:`TrainState`)."""

    opts: TrainOptions
    info: DistInfo
    device: torch.device
    G: nn.Module  # the networks as the steps call them (DDP, torch.compile)
    D: nn.Module
    loss: GANLoss
    prec: Precision
    inputs: _Inputs
    data: _Data
    feedback: _Feedback
    checkpoints: _Checkpoints


# --------------------------------------------------------------------------- the loop
def train(
    opts: TrainOptions,
    log: Callable[[str], None] | None = None,
    *,
    given: Collection[str] | None = None,
) -> TrainResult:
    """Trains a GAN as the options say; see the module docstring for the outline.

    Args:
        opts: the options (validated here).
        log: where progress messages go (default: stderr of the main process).
        given: with ``opts.resume``, the options the caller set; the others are the saved
            run's (default: those that differ from their declared defaults).

    Returns:
        The trained networks and where the run stopped.

    Raises:
        FaganError: for bad options or data, and when a loss becomes NaN or infinite
            (the last good checkpoint is left untouched).
    """
    opts.validate()
    saved, notices = None, []
    if opts.resume:
        if Path(opts.model_dir).is_dir():  # a run in progress is named, its state not read
            with RunLock(opts.model_dir):
                pass
        saved = read_training_state(Path(opts.model_dir) / TRAINING_STATE)
        given = given_by_default(opts) if given is None else given
        opts, notices = resumed_options(opts, saved.get("options"), given)
        opts.validate()
    info, device = init_distributed(opts.device)
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if not info.is_main:
        say = lambda message: None  # noqa: E731
    for notice in notices:
        say(f"note: {notice}")
    cleanup = ExitStack()
    try:
        return _train(opts, saved, info, device, say, cleanup)
    except OSError as error:  # a full disk, no permission: a message, not a traceback
        where = f" ({error.filename})" if error.filename else ""
        raise FaganError(
            f"training stopped: {error.strerror or error}{where}; checkpoints written before "
            f"are unchanged (in {opts.model_dir})"
        ) from None
    finally:
        cleanup.close()
        shutdown_distributed()


def continuation_flag(model_dir: str | Path) -> str:
    """How to run again into ``model_dir``: ``--resume`` for an unfinished run,
    ``--overwrite`` for a finished (or unreadable) one, ``""`` when it holds no run.

    Used by ``make demo`` to resume or restart cleanly.
    """
    path = Path(model_dir) / TRAINING_STATE
    if not path.is_file():
        return "--overwrite" if Path(model_dir).is_dir() and any(Path(model_dir).iterdir()) else ""
    try:
        saved = read_training_state(path)
        key, options = saved["sampler"], saved["options"]
        batches = ResumableSampler(
            key["dataset_len"],
            batch_size=key["batch_size"],
            seed=key["seed"],
            data_percentage=key["data_percentage"],
            rank=0,
            world_size=key["world_size"],
        ).batches_per_epoch
        epoch, _ = resume_position(saved["epoch"], saved["batch"], True, batches)
        return "--overwrite" if epoch > options["num_epochs"] else "--resume"
    except (FaganError, KeyError, TypeError):
        return "--overwrite"


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16) for oneDNN.

    There, ``--precision bf16`` trained several times faster than fp32
    (benchmarks/RESULTS.md); elsewhere bf16 is emulated and slower. ``make demo`` uses it.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _claim_run_folder(
    opts: TrainOptions,
    info: DistInfo,
    device: torch.device,
    say: Callable[[str], None],
    cleanup: ExitStack,
) -> None:
    """The main process claims the run folders (lock; refuse, continue or clear a previous
    run); every process stops when that fails. The claim is held until the run ends."""
    failure: FaganError | None = None
    if info.is_main:
        try:
            claim = claim_run_folder(
                opts.model_dir,
                opts.sample_dir,
                resume=opts.resume,
                overwrite=opts.overwrite,
                keep=(
                    opts.generator_file,
                    opts.discriminator_file,
                    opts.generator_config,
                    opts.discriminator_config,
                ),
                say=say,
            )
            cleanup.callback(claim.release)
        except FaganError as error:
            failure = error
    if all_agree(failure is not None, info, device):
        raise failure or FaganError("the main process could not claim the run folders")


def _train(
    opts: TrainOptions,
    saved: dict[str, Any] | None,
    info: DistInfo,
    device: torch.device,
    say: Callable[[str], None],
    cleanup: ExitStack,
) -> TrainResult:
    """Sets the run up, trains, and writes the end-of-run outputs."""
    model_dir = Path(opts.model_dir)
    setup = resolve_setup(opts, saved)
    torch.manual_seed(opts.seed)
    data = _open_data(opts, setup, info, device, say)
    cleanup.callback(data.images.close)
    setup = with_classes(setup, opts, data.images, saved)
    if setup.classes is not None:
        say(setup.classes.describe())
    prec = Precision.create(opts.precision, device)
    state = _new_state(opts, setup, info, device, data, prec.scaler, say)
    if saved is not None:
        _resume(state, saved, model_dir / TRAINING_STATE, info, data.sampler.batches_per_epoch, say)
    # claimed once data, architecture and weights are known good, before the first write
    _claim_run_folder(opts, info, device, say, cleanup)
    run_log = _prepare_run_folder(opts, setup, info, device, say) if info.is_main else None
    evaluator = None
    if opts.eval_every is not None and info.is_main:
        evaluator = _Evaluator(data.images.base, opts, device)
    batches = data.sampler.batches_per_epoch
    run = _Run(
        opts=opts,
        info=info,
        device=device,
        loss=get_loss(opts.loss_function),
        prec=prec,
        G=_for_training(state.generator, opts, info, device),
        D=_for_training(state.discriminator, opts, info, device),
        inputs=_Inputs(state, setup, device, _memory_format(opts), opts.matching_aware),
        data=data,
        feedback=_Feedback(opts, run_log, evaluator, prec, batches, info.world_size),
        checkpoints=_Checkpoints(model_dir, info),
    )
    say(
        f"training on {device} ({info.world_size} process(es)), {data.sampler.dataset_len} "
        f"images, {batches} batches per epoch, loss {run.loss.name}, precision {opts.precision}"
    )
    stopped = _train_epochs(run, state)
    if run_log is not None:
        run_log.close()
        _end_of_run(run, state, stopped, say)
    files = {**run.checkpoints.files, "training_state": run.checkpoints.state_path}
    return TrainResult(
        state.generator, state.discriminator, state.ema, state.step, state.epoch, stopped, files
    )


def _train_epochs(run: _Run, state: TrainState) -> StopReason:
    """The loop: epochs of batches, each a D step (x ``n_critic``) and a G step."""
    opts, inputs, G, D, loss, prec = run.opts, run.inputs, run.G, run.D, run.loss, run.prec
    stop = StopReason.MAX_STEPS if _reached(opts.max_steps, state.step) else None
    with _stop_on_signals() as signals, run.feedback as feedback:
        while stop is None and state.epoch <= opts.num_epochs:
            run.data.sampler.set_epoch(state.epoch)
            run.data.sampler.set_start_batch(state.batch)
            feedback.start_epoch(state)
            batches = run.data.images.batches(run.data.sampler, state.aug_rng)
            for i, batch in enumerate(batches, start=state.batch + 1):
                real, labels = batch.images, inputs.labels(batch.labels)
                for _ in range(opts.n_critic):
                    d_loss = d_step(
                        G,
                        D,
                        real,
                        inputs.latents(len(real)),
                        loss,
                        state.d_opt,
                        prec,
                        inputs.augment,
                        state.aug_rng,
                        labels,
                        inputs.mismatch_classes,
                    )
                g_loss = g_step(
                    G,
                    D,
                    real,
                    inputs.latents(len(real)),
                    loss,
                    state.g_opt,
                    prec,
                    inputs.augment,
                    labels,
                )
                if state.ema is not None:
                    decay = ema_decay_at(opts.ema_decay, state.step)
                    ema_update(state.ema, state.generator, decay)
                state.step, state.batch = state.step + 1, i
                _check_finite(d_loss, g_loss, state, opts.model_dir)
                feedback.after_step(state, d_loss, g_loss, len(real))
                stop = _stop_reason(run, state, signals.reason, feedback.started)
                if stop is not None:
                    break
            feedback.end_epoch()
            if stop is not None:
                run.checkpoints.save_state(state)
                break
            run.checkpoints.end_of_epoch(state, opts)
            state.epoch, state.batch = state.epoch + 1, 0
    return stop or StopReason.DONE


def _reached(limit: int | None, step: int) -> bool:
    """Whether ``step`` steps reach ``--max_steps`` (never when it is not set)."""
    return limit is not None and step >= limit


def _check_finite(d_loss: float, g_loss: float, state: TrainState, model_dir: str) -> None:
    """Stops a diverged run before anything is saved from it."""
    if not (math.isfinite(d_loss) and math.isfinite(g_loss)):
        raise FaganError(
            f"training diverged at step {state.step} (epoch {state.epoch}, batch "
            f"{state.batch}): d_loss={d_loss}, g_loss={g_loss}; the last checkpoint in "
            f"{model_dir} is left as it was (try lower learning rates or --precision fp32)"
        )


def _stop_reason(
    run: _Run, state: TrainState, signalled: StopReason | None, started: float
) -> StopReason | None:
    """Why to stop after this step, if at all; every process stops at the same step."""
    opts, want = run.opts, signalled
    if want is None and _reached(opts.max_steps, state.step):
        want = StopReason.MAX_STEPS
    if want is None and opts.time_limit is not None:
        if time.monotonic() - started >= opts.time_limit:
            want = StopReason.TIME_LIMIT
    if all_agree(want is not None, run.info, run.device):
        return want or StopReason.OTHER_PROCESS
    return None


def planned_steps(batches_per_epoch: int, opts: TrainOptions) -> int:
    """The steps of the whole run: batches per epoch x epochs from ``--start``."""
    return batches_per_epoch * (opts.num_epochs - opts.start + 1)


def stop_message(
    stopped: StopReason, state: TrainState, opts: TrainOptions, planned: int, state_path: Path
) -> str:
    """The last line of a run that stopped before its last epoch: why, how far, how to go on.

    Args:
        stopped: why it stopped (not :attr:`StopReason.DONE`).
        state: the state it stopped in.
        opts: the run's options.
        planned: the run's planned steps (:func:`planned_steps`).
        state_path: the training state saved.
    """
    by = {StopReason.MAX_STEPS: "--max_steps", StopReason.TIME_LIMIT: "--time_limit"}.get(
        stopped, stopped.value
    )
    command = (
        f"fagan train --resume --model_dir {shlex.quote(opts.model_dir)} "
        f"--sample_dir {shlex.quote(opts.sample_dir)}"
    )
    return (
        f"stopped by {by} at step {state.step:,} of {planned:,} planned (epoch "
        f"{state.epoch} of {opts.num_epochs}); training state saved to {state_path}; "
        f"continue with: {command}"
    )


def _end_of_run(
    run: _Run, state: TrainState, stopped: StopReason, say: Callable[[str], None]
) -> None:
    """The final weights, loss plot and progress GIF (main process), and the last message."""
    model_dir, sample_dir = Path(run.opts.model_dir), Path(run.opts.sample_dir)
    files = run.checkpoints.files
    planned = planned_steps(run.data.sampler.batches_per_epoch, run.opts)
    if stopped.resumable_only:
        say(stop_message(stopped, state, run.opts, planned, run.checkpoints.state_path))
        return
    if stopped is not StopReason.DONE:
        run.checkpoints.save_weights(state)
    if (model_dir / "loss.log").is_file():
        files["loss_plot"] = plot_losses(model_dir / "loss.log", model_dir / "loss.png")
    if any(sample_dir.glob("gen_*_*.png")):
        files["gif"] = make_progress_gif(sample_dir, sample_dir / "progress.gif", mp4=True)
    if stopped is StopReason.DONE:
        say(
            f"done: {state.step:,} steps; weights and training state in {model_dir}, "
            f"samples in {sample_dir}"
        )
    else:
        say(stop_message(stopped, state, run.opts, planned, run.checkpoints.state_path))


@contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step."""
    request = _StopRequest()
    handled = (signal.SIGINT, signal.SIGTERM)

    def handler(signum: int, _frame: Any) -> None:
        request.reason = StopReason(signal.Signals(signum).name)
        for s in handled:  # a second signal stops at once
            signal.signal(s, previous[s])

    try:
        previous = {s: signal.signal(s, handler) for s in handled}
    except ValueError:  # not the main thread: no signal handling
        yield request
        return
    try:
        yield request
    finally:
        for s in handled:
            signal.signal(s, previous[s])


@dataclass
class _StopRequest:
    """A signal's request to stop, set by the handler, read by the loop."""

    reason: StopReason | None = None


# --------------------------------------------------------------------------- helpers
def _write_text(path: Path, text: str) -> None:
    """Replaces a small text file atomically: a full disk leaves the previous one intact."""
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as error:
        raise FaganError(
            f"cannot write {path}: {error.strerror or error}; the previous file is unchanged"
        ) from None


def _remove_stale_temp_files(model_dir: Path, say: Callable[[str], None]) -> None:
    """Removes the hidden temporary files of checkpoint saves that were killed mid-write.

    ``save_file`` writes a hidden ``.<name>.XXXX...`` sibling and renames it over ``<name>``;
    a process killed in between (SIGKILL, power loss) leaves it behind, the checkpoint
    itself intact. Files touched in the last two minutes are kept: another process may be
    writing them.
    """
    now, removed = time.time(), []
    for pattern in (f".{TRAINING_STATE}.*", ".GAN_*.pth.*"):
        for path in model_dir.glob(pattern):
            try:
                if now - path.stat().st_mtime > _STALE_TEMP_SECONDS:
                    path.unlink()
                    removed.append(path.name)
            except OSError:
                continue
    if removed:
        say(
            f"removed {len(removed)} temporary file(s) left in {model_dir} by saves that were "
            f"interrupted: {', '.join(sorted(removed))}"
        )
