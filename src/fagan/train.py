"""Training: options, one discriminator step, one generator step, and the loop around them.

The loop reads top to bottom: set-up (data, networks, optimisers, EMA, precision,
resume), then per batch ``d_step`` x ``n_critic`` and ``g_step``, feedback (loss.log,
stats.jsonl, TensorBoard, sample grids), checkpoints, and the end-of-run outputs (loss
plot, progress GIF). Everything a run writes lives under ``--model_dir`` and
``--sample_dir``. Precision is chosen once (an autocast context and a gradient scaler
that are no-ops in fp32), so the steps have no precision branches.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
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
from fagan.augment import diff_augment, parse_policy
from fagan.checkpoint import (
    TRAINING_STATE_FORMAT,
    is_training_state,
    load_file,
    load_network,
    load_state_into,
    save_file,
)
from fagan.config import (
    NetworkSpec,
    load_config,
    parse_config,
    resolve_config_path,
    spec_to_dict,
)
from fagan.data import ResumableSampler, check_dataset_path, open_training_data
from fagan.distributed import DistInfo, all_agree, init_distributed, shutdown_distributed
from fagan.errors import FaganError
from fagan.fileio import atomic_write
from fagan.losses import GANLoss, get_loss, gradient_penalty
from fagan.networks import Discriminator, Generator
from fagan.plots import plot_losses
from fagan.runlog import RunLog
from fagan.sample import evenly_spaced, grid_uint8, make_progress_gif, to_uint8, write_grid

TRAINING_STATE = "training_state.pth"
OPTIONS_FILE = "options.json"
DEMO_AUGMENT = "color,translation,cutout"
PRECISIONS = ("fp32", "bf16", "fp16")
# What --resume reads from a training state.
_STATE_KEYS = ("generator", "discriminator", "g_optimizer", "d_optimizer", "scaler", "epoch",
               "batch", "step", "rng", "fixed_latents", "sampler", "generator_config",
               "discriminator_config")
# Temporary files of saves killed mid-write (SIGKILL, power loss) older than this are removed.
_STALE_TEMP_SECONDS = 120.0


# --------------------------------------------------------------------------- options
@dataclass
class TrainOptions:
    """Every training option; the command line's flags have the same names.

    Defaults follow the original ``train.py`` except ``start`` (1, not 4). ``None``
    means "derive it": the configs and image size from the data (the embedded demo
    uses ``small32``, a folder ``fagan64``), the latent size from the generator config.
    """

    generator_config: str | None = None
    discriminator_config: str | None = None
    generator_file: str | None = None
    discriminator_file: str | None = None
    images_dir: str | None = None
    sample_dir: str = "samples/fagan_1"
    model_dir: str = "models/fagan_1"
    loss_function: str = "relativistic-hinge"
    latent_size: int | None = None
    batch_size: int = 32
    start: int = 1
    num_epochs: int = 12
    feedback_factor: int = 62
    checkpoint_factor: int = 1
    g_lr: float = 0.0001
    d_lr: float = 0.0004
    data_percentage: float = 100.0
    num_workers: int = 3
    # beyond the original
    seed: int = 0
    resume: bool = False
    ema_decay: float = 0.999
    precision: str = "fp32"
    image_size: int | None = None
    device: str = "auto"
    n_critic: int = 1
    augment: str | None = None
    max_steps: int | None = None
    time_limit: float | None = None
    num_samples: int = 64
    tensorboard: bool = True
    channels_last: bool | None = None  # None: on for bf16/fp16, off for fp32
    compile: bool = False
    eval_every: int | None = None
    eval_metrics: str = "swd"
    eval_num_samples: int = 1000
    inception_weights: str | None = None

    def validate(self) -> None:
        """Checks every option once, at the boundary.

        Raises:
            FaganError: naming the first bad option and its value.
        """
        positive_ints = ("batch_size", "num_epochs", "feedback_factor", "checkpoint_factor",
                         "n_critic", "num_samples", "start")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FaganError(f"--{name} must be a whole number >= 1, got {value!r}")
        for name in ("latent_size", "image_size", "max_steps", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise FaganError(f"--{name} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise FaganError(f"--num_workers must be 0 or more, got {self.num_workers!r}")
        for name in ("g_lr", "d_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise FaganError(f"--{name} must be a positive number, got {value!r}")
        if not 0 < self.data_percentage <= 100:
            raise FaganError(
                f"--data_percentage must be in (0, 100], got {self.data_percentage!r}"
            )
        if not 0 <= self.ema_decay < 1:
            raise FaganError(f"--ema_decay must be in [0, 1) (0 turns EMA off), got {self.ema_decay!r}")
        if self.precision not in PRECISIONS:
            raise FaganError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.start > self.num_epochs:
            raise FaganError(
                f"--start {self.start} is after --num_epochs {self.num_epochs}: nothing to train"
            )
        if self.time_limit is not None and not self.time_limit > 0:
            raise FaganError(f"--time_limit must be a positive number of seconds, got {self.time_limit!r}")
        get_loss(self.loss_function)
        if self.eval_every is not None:
            from fagan.metrics import needs_inception, parse_metric_list
            from fagan.metrics.inception import resolve_weights_path

            if not isinstance(self.eval_num_samples, int) or self.eval_num_samples < 2:
                raise FaganError(
                    f"--eval_num_samples must be a whole number >= 2, got {self.eval_num_samples!r}"
                )
            if needs_inception(parse_metric_list(self.eval_metrics)):
                resolve_weights_path(self.inception_weights)  # fails now, not hours later
        if self.augment:
            parse_policy(self.augment)
        for name in ("generator_file", "discriminator_file"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise FaganError(f"--{name}: file not found: {value}")
        if self.images_dir is not None:
            check_dataset_path(self.images_dir, "--images_dir")


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


def d_step(
    G: nn.Module, D: nn.Module, real: Tensor, z: Tensor, loss: GANLoss,
    opt: torch.optim.Optimizer, prec: Precision, augment: Callable[[Tensor], Tensor],
    rng: torch.Generator,
) -> float:
    """One discriminator update: each discriminator pass runs once per batch.

    The fake batch is made without building a graph (the generator is not updated
    here), as the original's ``.detach()`` did, but cheaper.
    """
    with torch.no_grad(), prec.autocast():
        fake = _unwrap(G)(z)
    with prec.autocast():
        r = D(augment(real)).float()
        f = D(augment(fake)).float()
    d_loss = loss.d(r, f)
    if loss.gp_weight:
        d_loss = d_loss + loss.gp_weight * gradient_penalty(_unwrap(D), real, fake.float(), rng)
    opt.zero_grad(set_to_none=True)
    prec.scaler.scale(d_loss).backward()
    prec.scaler.step(opt)
    prec.scaler.update()
    # freed now rather than at the next D step: they would otherwise be held through the
    # G step (memory) and fragment the heap between the steps' temporaries
    opt.zero_grad(set_to_none=True)
    return float(d_loss.detach())


def g_step(
    G: nn.Module, D: nn.Module, real: Tensor, z: Tensor, loss: GANLoss,
    opt: torch.optim.Optimizer, prec: Precision, augment: Callable[[Tensor], Tensor],
) -> float:
    """One generator update.

    The discriminator's parameters leave autograd for the step (no weight gradients
    are computed for it), and the real-image term of relativistic losses is computed
    without a graph.
    """
    d_net = _unwrap(D)  # not the DDP wrapper: D's weights are not synchronised here
    d_net.requires_grad_(False)
    try:
        with prec.autocast():
            # the real pass first: its temporaries are gone before the generator's and
            # the fake pass's graphs are built (a lower peak than the other order)
            if loss.g_uses_real:
                with torch.no_grad():
                    r = d_net(augment(real)).float()
            f = d_net(augment(G(z))).float()
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
    reordered around every convolution (a FAGAN 64x64 bf16 iteration on a 2-core CPU:
    1-7% faster channels-last); in fp32 on the CPU it was not faster (0-5% slower).
    """
    if channels_last is not None:
        return channels_last
    return precision in ("bf16", "fp16")


def make_adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """The original's optimiser, ``Adam(lr, betas=(0, 0.9))``, with PyTorch's fused kernel.

    The fused implementation (one kernel over all parameters instead of ~6 ops per
    parameter) is used on CPUs and CUDA GPUs; it made a FAGAN 64x64 bf16 iteration ~3%
    faster on a 2-core CPU. Elsewhere the default implementation.
    """
    params = list(model.parameters())
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
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


# --------------------------------------------------------------------------- set-up helpers
@dataclass
class _Setup:
    """Everything resolved from the options before the first step."""

    g_spec: NetworkSpec
    d_spec: NetworkSpec
    latent_size: int
    image_size: int
    embedded: bool
    augment_policy: str


def _resolve(opts: TrainOptions, saved: dict[str, Any] | None) -> _Setup:
    embedded = opts.images_dir is None
    if saved is not None:
        g_spec = parse_config(saved["generator_config"], "training state generator config")
        d_spec = parse_config(saved["discriminator_config"], "training state discriminator config")
    else:
        default = "small32" if embedded else "fagan64"
        g_spec = load_config(resolve_config_path(opts.generator_config or default, "gen"))
        d_spec = load_config(resolve_config_path(opts.discriminator_config or default, "dis"))
    latent_size = opts.latent_size or g_spec.in_channels
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
    return _Setup(g_spec, d_spec, latent_size, generator_size, embedded, policy)


def _sampler_key(opts: TrainOptions, world_size: int, dataset_len: int) -> dict[str, Any]:
    return {"seed": opts.seed, "batch_size": opts.batch_size, "world_size": world_size,
            "data_percentage": opts.data_percentage, "dataset_len": dataset_len}


def _rng_state(latent_rng: torch.Generator, aug_rng: torch.Generator) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state(), "latent": latent_rng.get_state(),
             "augment": aug_rng.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Tensor], latent_rng: torch.Generator,
                   aug_rng: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    latent_rng.set_state(state["latent"])
    aug_rng.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextmanager
def _stop_on_signals() -> Iterator[dict[str, str | None]]:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step."""
    request: dict[str, str | None] = {"signal": None}
    handled = (signal.SIGINT, signal.SIGTERM)

    def handler(signum: int, _frame: Any) -> None:
        request["signal"] = signal.Signals(signum).name
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


class _Evaluator:
    """``--eval_every``: metrics of the EMA generator against a fixed set of real images.

    The real images (up to ``eval_num_samples``, evenly spread over the dataset), their
    Inception features and the real-vs-real SWD floor are computed once; every
    evaluation then generates as many images from the same latents.
    """

    def __init__(self, dataset: Dataset, opts: TrainOptions, device: torch.device) -> None:
        from fagan.metrics import needs_inception, parse_metric_list
        from fagan.metrics.inception import InceptionFeatures

        picks = evenly_spaced(list(range(len(dataset))), opts.eval_num_samples)  # type: ignore[arg-type]
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
            generator, self.real, self.metrics, num_samples=len(self.real), seed=self.seed,
            swd_floor=self.first and "swd" in self.metrics, **self.options)
        self.first = False
        return flatten_results(scores)


@dataclass
class TrainResult:
    """What a run ended with."""

    generator: nn.Module
    discriminator: nn.Module
    ema_generator: nn.Module | None
    step: int
    epoch: int
    stopped_early: str | None = None
    files: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- the loop
def train(opts: TrainOptions, log: Callable[[str], None] | None = None) -> TrainResult:
    """Trains a GAN as the options say; see the module docstring for the outline.

    Args:
        opts: the options (validated here).
        log: where progress messages go (default: stderr of the main process).

    Returns:
        The trained networks and where the run stopped.

    Raises:
        FaganError: for bad options or data, and when a loss becomes NaN or infinite
            (the last good checkpoint is left untouched).
    """
    opts.validate()
    info, device = init_distributed(opts.device)
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if not info.is_main:
        say = lambda message: None  # noqa: E731
    cleanup = ExitStack()
    try:
        return _train(opts, info, device, say, cleanup)
    except OSError as error:  # a full disk, no permission: a message, not a traceback
        where = f" ({error.filename})" if error.filename else ""
        raise FaganError(
            f"training stopped: {error.strerror or error}{where}; checkpoints written before "
            f"are unchanged (in {opts.model_dir})"
        ) from None
    finally:
        cleanup.close()
        shutdown_distributed()


def _train(opts: TrainOptions, info: DistInfo, device: torch.device,
           say: Callable[[str], None], cleanup: ExitStack) -> TrainResult:
    model_dir, sample_dir = Path(opts.model_dir), Path(opts.sample_dir)
    state_path = model_dir / TRAINING_STATE

    # ---- resume: the saved state decides the architecture
    saved = None
    if opts.resume:
        if not state_path.is_file():
            raise FaganError(f"--resume: no training state in {model_dir} (expected {state_path})")
        saved = load_file(state_path)
        if not is_training_state(saved):
            raise FaganError(f"--resume: {state_path} is not a fagan training state")
        missing = [key for key in _STATE_KEYS if key not in saved]
        if missing:
            raise FaganError(f"--resume: {state_path} is incomplete: it lacks {', '.join(missing)}")
    setup = _resolve(opts, saved)

    # ---- data
    torch.manual_seed(opts.seed)
    dataset = open_training_data(
        opts.images_dir, setup.image_size, device, num_workers=opts.num_workers,
        channels_last=uses_channels_last(opts.precision, opts.channels_last))
    cleanup.callback(dataset.close)
    if setup.embedded:
        say(f"no --images_dir: training {setup.g_spec.source} on the embedded demo faces")
    say(dataset.describe())
    sampler = ResumableSampler(
        len(dataset), batch_size=opts.batch_size, seed=opts.seed,
        data_percentage=opts.data_percentage, rank=info.rank, world_size=info.world_size,
    )

    # ---- networks, EMA, optimisers
    G = Generator(setup.g_spec, setup.latent_size)
    D = Discriminator(setup.d_spec, setup.image_size)
    if opts.generator_file and saved is None:
        load_network(G, opts.generator_file, "generator", prefer_ema=False)
    if opts.discriminator_file and saved is None:
        load_network(D, opts.discriminator_file, "discriminator")
    if saved is not None:
        load_state_into(G, saved["generator"], f"{state_path} generator")
        load_state_into(D, saved["discriminator"], f"{state_path} discriminator")
    if info.enabled and device.type == "cuda":
        G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
    elif info.enabled:
        say("note: batch norm is synchronised across processes on GPUs only; on the CPU each "
            "process normalises its own batch (buffers are taken from rank 0 at checkpoints)")
    memory_format = (torch.channels_last if uses_channels_last(opts.precision, opts.channels_last)
                     else torch.contiguous_format)
    G.to(device, memory_format=memory_format).train()
    D.to(device, memory_format=memory_format).train()
    ema = None
    if opts.ema_decay > 0:
        ema = copy.deepcopy(G).eval().requires_grad_(False)
        if saved is not None and saved.get("ema_generator") is not None:
            load_state_into(ema, saved["ema_generator"], f"{state_path} EMA generator")
    g_opt = make_adam(G, opts.g_lr)
    d_opt = make_adam(D, opts.d_lr)
    prec = Precision.create(opts.precision, device)
    loss = get_loss(opts.loss_function)
    G_train: nn.Module = G
    D_train: nn.Module = D
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        G_train = DDP(G, device_ids=ids)
        D_train = DDP(D, device_ids=ids)
    if opts.compile:
        G_train = torch.compile(G_train)
        D_train = torch.compile(D_train)

    # ---- random streams (all saved for an exact resume)
    latent_rng = torch.Generator(device=device).manual_seed(opts.seed * 7919 + info.rank)
    aug_rng = torch.Generator(device=device).manual_seed(opts.seed * 104729 + info.rank + 1)
    fixed_latents = torch.randn(
        opts.num_samples, setup.latent_size, generator=torch.Generator().manual_seed(opts.seed)
    )
    step, epoch, done_in_epoch = 0, opts.start, 0
    if saved is not None:
        g_opt.load_state_dict(saved["g_optimizer"])
        d_opt.load_state_dict(saved["d_optimizer"])
        prec.scaler.load_state_dict(saved["scaler"])
        fixed_latents = saved["fixed_latents"]
        step, epoch, done_in_epoch = saved["step"], saved["epoch"], saved["batch"]
        rng_states = saved["rng"]
        if len(rng_states) == info.world_size and saved["sampler"] == _sampler_key(
            opts, info.world_size, len(dataset)
        ):
            _set_rng_state(rng_states[info.rank], latent_rng, aug_rng)
        else:
            warnings.warn(
                "batch size, seed, data percentage, process count or data changed since the "
                "training state was saved: continuing from the next epoch, not exactly",
                stacklevel=2,
            )
            epoch, done_in_epoch = epoch + 1, sampler.batches_per_epoch
        if done_in_epoch >= sampler.batches_per_epoch:
            epoch, done_in_epoch = epoch + 1, 0
        say(f"resuming from {state_path}: epoch {epoch}, batch {done_in_epoch}, step {step}")
    fixed_latents = fixed_latents.to(device)

    def augment(x: Tensor) -> Tensor:
        return diff_augment(x, setup.augment_policy, aug_rng) if setup.augment_policy else x

    # ---- run folder
    run_log = None
    if info.is_main:
        for flag, folder in (("--model_dir", model_dir), ("--sample_dir", sample_dir)):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise FaganError(
                    f"{flag}: cannot create folder {folder}: {error.strerror or error}"
                ) from None
        _remove_stale_temp_files(model_dir, say)
        run_log = RunLog(model_dir, tensorboard=opts.tensorboard)
        resolved = {**asdict(opts), "latent_size": setup.latent_size,
                    "image_size": setup.image_size, "augment": setup.augment_policy or "none",
                    "channels_last": uses_channels_last(opts.precision, opts.channels_last),
                    "world_size": info.world_size, "device": str(device),
                    "fagan_version": __version__}
        _write_text(model_dir / OPTIONS_FILE, json.dumps(resolved, indent=2) + "\n")
        for name, spec in (("gen.yaml", setup.g_spec), ("dis.yaml", setup.d_spec)):
            _write_text(model_dir / name, yaml.safe_dump(spec_to_dict(spec), sort_keys=False))

    evaluator = None
    if opts.eval_every is not None and info.is_main:
        evaluator = _Evaluator(dataset.base, opts, device)

    def training_state(batch_in_epoch: int) -> dict[str, Any]:
        rng = _rng_state(latent_rng, aug_rng)
        if info.enabled:
            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, {k: v.cpu() for k, v in rng.items()})
            rng_all = gathered
        else:
            rng_all = [rng]
        return {
            "format": TRAINING_STATE_FORMAT, "format_version": 1, "fagan_version": __version__,
            "generator": _unwrap(G).state_dict(), "discriminator": _unwrap(D).state_dict(),
            "ema_generator": None if ema is None else ema.state_dict(),
            "g_optimizer": g_opt.state_dict(), "d_optimizer": d_opt.state_dict(),
            "scaler": prec.scaler.state_dict(),
            "epoch": epoch, "batch": batch_in_epoch, "step": step,
            "rng": rng_all, "fixed_latents": fixed_latents.cpu(),
            "sampler": _sampler_key(opts, info.world_size, len(dataset)),
            "generator_config": spec_to_dict(setup.g_spec),
            "discriminator_config": spec_to_dict(setup.d_spec),
            "latent_size": setup.latent_size, "image_size": setup.image_size,
            "options": {f.name: getattr(opts, f.name) for f in fields(opts)},
        }

    def sync_buffers() -> None:
        """Rank 0's running statistics everywhere, so that all ranks hold one model."""
        if info.enabled:
            for net in (_unwrap(G), _unwrap(D), ema):
                for buffer in [] if net is None else net.buffers():
                    dist.broadcast(buffer, src=0)

    def save_state(batch_in_epoch: int) -> None:
        sync_buffers()
        state = training_state(batch_in_epoch)  # collective: every rank takes part
        if info.is_main:
            save_file(state, state_path)

    def sample_grid(tag: str) -> Path:
        net = ema if ema is not None else _unwrap(G)
        was_training = net.training
        net.eval()
        with torch.no_grad(), prec.autocast():
            images = net(fixed_latents).float()
        net.train(was_training)
        grid = grid_uint8(images)  # one layout for the PNG and TensorBoard
        path = write_grid(grid, sample_dir / f"gen_{tag}.png")
        if run_log is not None:
            run_log.image("samples", grid, step)
        return path

    # ---- the loop
    interval = max(1, sampler.batches_per_epoch // opts.feedback_factor)
    started = time.monotonic()
    stopped: str | None = None
    if opts.max_steps is not None and step >= opts.max_steps:
        stopped = "max_steps"
    result_files: dict[str, Path] = {}
    say(f"training on {device} ({info.world_size} process(es)), {len(dataset)} images, "
        f"{sampler.batches_per_epoch} batches per epoch, loss {loss.name}, "
        f"precision {opts.precision}")
    # progress bars are closed on errors too: the error message gets a line of its own
    with _stop_on_signals() as stop_request, ExitStack() as bars:
        while stopped is None and epoch <= opts.num_epochs:
            sampler.set_epoch(epoch)
            sampler.set_start_batch(done_in_epoch)
            bar = bars.enter_context(tqdm(
                total=sampler.batches_per_epoch, initial=done_in_epoch,
                desc=f"epoch {epoch}/{opts.num_epochs}", disable=not info.is_main,
                unit="batch", dynamic_ncols=True, leave=True, file=sys.stderr))
            window_start, window_images = time.monotonic(), 0
            for i, batch in enumerate(dataset.batches(sampler, aug_rng), start=done_in_epoch + 1):
                real = batch.images
                for _ in range(opts.n_critic):
                    z = torch.randn(real.shape[0], setup.latent_size, device=device,
                                    generator=latent_rng)
                    d_loss = d_step(G_train, D_train, real, z, loss, d_opt, prec, augment, aug_rng)
                z = torch.randn(real.shape[0], setup.latent_size, device=device,
                                generator=latent_rng)
                g_loss = g_step(G_train, D_train, real, z, loss, g_opt, prec, augment)
                if ema is not None:
                    ema_update(ema, _unwrap(G), ema_decay_at(opts.ema_decay, step))
                step += 1
                done_in_epoch = i
                window_images += real.shape[0] * info.world_size

                if not (math.isfinite(d_loss) and math.isfinite(g_loss)):
                    raise FaganError(
                        f"training diverged at step {step} (epoch {epoch}, batch {i}): "
                        f"d_loss={d_loss}, g_loss={g_loss}; the last checkpoint in "
                        f"{model_dir} is left as it was (try lower learning rates or "
                        "--precision fp32)"
                    )
                elapsed = time.monotonic() - window_start
                rate = window_images / elapsed if elapsed > 0 else 0.0
                bar.update(1)
                bar.set_postfix(d=f"{d_loss:.3f}", g=f"{g_loss:.3f}", img_s=f"{rate:.1f}")
                if info.is_main and (i % interval == 0 or i == 1):
                    assert run_log is not None
                    run_log.feedback({
                        "step": step, "epoch": epoch, "batch": i,
                        "d_loss": d_loss, "g_loss": g_loss,
                        "gamma": _unwrap(G).gammas() | {
                            f"D.{k}": v for k, v in _unwrap(D).gammas().items()},
                        "images_per_s": rate, "g_lr": g_opt.param_groups[0]["lr"],
                        "d_lr": d_opt.param_groups[0]["lr"],
                        "time": time.monotonic() - started,
                    })
                    sample_grid(f"{epoch}_{i}")
                if evaluator is not None and step % opts.eval_every == 0:
                    assert run_log is not None
                    scores = evaluator(ema if ema is not None else _unwrap(G))
                    run_log.append_stats({"step": step, "epoch": epoch, "batch": i,
                                          "eval": scores})
                    bar.write(f"step {step}: " + ", ".join(
                        f"{name} {value:.3f}" for name, value in scores.items()
                        if not name[-1].isdigit()))

                want_stop = stop_request["signal"]
                if opts.max_steps is not None and step >= opts.max_steps:
                    want_stop = want_stop or "max_steps"
                if opts.time_limit is not None and time.monotonic() - started >= opts.time_limit:
                    want_stop = want_stop or "time_limit"
                if all_agree(want_stop is not None, info, device):
                    stopped = want_stop or "another process"
                    break
            bar.close()
            if stopped is not None:
                save_state(done_in_epoch)
                break

            # ---- end of epoch: checkpoint as the original did
            if epoch % opts.checkpoint_factor == 0 or epoch == 1 or epoch == opts.num_epochs:
                save_state(done_in_epoch)
                if info.is_main:
                    result_files.update(_save_weights(model_dir, epoch, G, D, ema))
                    if (model_dir / "loss.log").is_file():
                        plot_losses(model_dir / "loss.log", model_dir / "loss.png")
            epoch, done_in_epoch = epoch + 1, 0

    # ---- end of run
    if info.is_main:
        assert run_log is not None
        run_log.close()
        if stopped in (None, "max_steps", "time_limit"):
            if stopped is not None:
                result_files.update(_save_weights(model_dir, epoch, G, D, ema))
            if (model_dir / "loss.log").is_file():
                result_files["loss_plot"] = plot_losses(model_dir / "loss.log",
                                                        model_dir / "loss.png")
            if any(sample_dir.glob("gen_*_*.png")):
                result_files["gif"] = make_progress_gif(
                    sample_dir, sample_dir / "progress.gif", mp4=True)
        if stopped in ("SIGINT", "SIGTERM", "another process"):
            say(f"stopped by {stopped} at step {step}; training state saved to {state_path}; "
                "continue with --resume")
        else:
            say(f"done at step {step}; weights and training state in {model_dir}, "
                f"samples in {sample_dir}")
    result_files["training_state"] = state_path
    return TrainResult(_unwrap(G), _unwrap(D), ema, step, epoch, stopped, result_files)


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
        say(f"removed {len(removed)} temporary file(s) left in {model_dir} by saves that were "
            f"interrupted: {', '.join(sorted(removed))}")


def _save_weights(model_dir: Path, epoch: int, G: nn.Module, D: nn.Module,
                  ema: nn.Module | None) -> dict[str, Path]:
    files = {
        "generator": save_file(_unwrap(G).state_dict(), model_dir / f"GAN_GEN_{epoch}.pth"),
        "discriminator": save_file(_unwrap(D).state_dict(), model_dir / f"GAN_DIS_{epoch}.pth"),
    }
    if ema is not None:
        files["ema_generator"] = save_file(ema.state_dict(), model_dir / f"GAN_GEN_EMA_{epoch}.pth")
    return files
