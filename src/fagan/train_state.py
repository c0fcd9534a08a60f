"""The mutable state of a training run, in one object, and how it is saved and resumed.

:class:`TrainState` holds everything a step changes: the networks and their moving
average, the optimisers, the gradient scaler, the random streams, the fixed latents of the
sample grids and the epoch/batch/step counters. :meth:`TrainState.state_dict` and
:meth:`TrainState.load_state_dict` write and read ``training_state.pth`` (the keys below)
and mirror each other; where a resumed run continues (:func:`resume_position`) is decided
here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fagan import __version__
from fagan.checkpoint import (
    TRAINING_STATE_FIELDS,
    TRAINING_STATE_FORMAT,
    is_training_state,
    load_file,
    load_state_into,
    validate_training_state,
)
from fagan.errors import FaganError

TRAINING_STATE = "training_state.pth"
#: What --resume reads from a training state (checked field by field on load).
REQUIRED_KEYS = TRAINING_STATE_FIELDS

RngState = dict[str, Tensor]


def read_training_state(path: Path) -> dict[str, Any]:
    """Loads ``training_state.pth`` for ``--resume``, checking that it is whole.

    Raises:
        FaganError: when it is missing, not a fagan training state, or incomplete.
    """
    if not path.is_file():
        raise FaganError(f"--resume: no training state in {path.parent} (expected {path})")
    saved = load_file(path)
    if not is_training_state(saved):
        raise FaganError(f"--resume: {path} is not a fagan training state")
    missing = [key for key in REQUIRED_KEYS if key not in saved]
    if missing:
        raise FaganError(f"--resume: {path} is incomplete: it lacks {', '.join(missing)}")
    validate_training_state(saved, path)
    return saved


def sampler_key(
    *, seed: int, batch_size: int, world_size: int, data_percentage: float, dataset_len: int
) -> dict[str, Any]:
    """What fixes the order of the data: a resumed run continues exactly only if it is equal."""
    return {
        "seed": seed,
        "batch_size": batch_size,
        "world_size": world_size,
        "data_percentage": data_percentage,
        "dataset_len": dataset_len,
    }


def resume_position(epoch: int, batch: int, exact: bool, batches_per_epoch: int) -> tuple[int, int]:
    """Where a resumed run continues: ``(epoch, batches already done in it)``.

    Exactly where it stopped, or at the start of the next epoch when the saved epoch was
    finished or when the data order changed (``exact`` false: then the saved position in
    the epoch means nothing).

    Args:
        epoch: the saved epoch.
        batch: batches done in it when saved.
        exact: whether the data order is the saved one (see :func:`sampler_key`).
        batches_per_epoch: batches in an epoch now.
    """
    if not exact or batch >= batches_per_epoch:
        return epoch + 1, 0
    return epoch, batch


def seeded_generators(
    seed: int, rank: int, device: torch.device
) -> tuple[torch.Generator, torch.Generator]:
    """The random streams of the latents and of the augmentations, one pair per process."""
    latent = torch.Generator(device=device).manual_seed((seed * 7919 + rank) % 2**64)
    augment = torch.Generator(device=device).manual_seed((seed * 104729 + rank + 1) % 2**64)
    return latent, augment


@dataclass
class TrainState:
    """Everything a training step changes, saved whole for an exact resume.

    Attributes:
        generator, discriminator: the networks (not wrapped for DDP or torch.compile).
        ema: the generator's moving average, or None when it is off.
        g_opt, d_opt: their optimisers.
        scaler: the gradient scaler (a no-op below fp16).
        latent_rng, aug_rng: the random streams of the latents and of the augmentations.
        fixed_latents: the latents of the sample grids, the same all run long.
        sampler_key: what fixes the data order (:func:`sampler_key`).
        run: what the run is (architecture, sizes, options, a class-conditional run's
            ``conditioning`` and ``class_names``); saved alongside, read back before the
            state is built.
        fixed_labels: a class-conditional run's class label for each fixed latent, else None.
        epoch: the current epoch (counting from ``--start``).
        batch: batches done in ``epoch``.
        step: generator steps done in all.
    """

    generator: nn.Module
    discriminator: nn.Module
    ema: nn.Module | None
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    latent_rng: torch.Generator
    aug_rng: torch.Generator
    fixed_latents: Tensor
    sampler_key: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)
    fixed_labels: Tensor | None = None
    epoch: int = 1
    batch: int = 0
    step: int = 0

    @property
    def sampling_generator(self) -> nn.Module:
        """The generator that draws sample grids and is measured: the EMA one if any."""
        return self.ema if self.ema is not None else self.generator

    def rng_state(self) -> RngState:
        """This process's random streams (torch's global one included)."""
        state = {
            "torch": torch.get_rng_state(),
            "latent": self.latent_rng.get_state(),
            "augment": self.aug_rng.get_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def set_rng_state(self, state: RngState) -> None:
        """The inverse of :meth:`rng_state`."""
        torch.set_rng_state(state["torch"])
        self.latent_rng.set_state(state["latent"])
        self.aug_rng.set_state(state["augment"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])

    def state_dict(
        self, gather: Callable[[RngState], list[RngState]] | None = None
    ) -> dict[str, Any]:
        """The contents of ``training_state.pth``.

        Args:
            gather: every process's random streams from this one's (a collective under
                DDP); default: this process alone.
        """
        rng = self.rng_state()
        return {
            "format": TRAINING_STATE_FORMAT,
            "format_version": 1,
            "fagan_version": __version__,
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema_generator": None if self.ema is None else self.ema.state_dict(),
            "g_optimizer": self.g_opt.state_dict(),
            "d_optimizer": self.d_opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "rng": gather(rng) if gather is not None else [rng],
            "fixed_latents": self.fixed_latents.cpu(),
            **({} if self.fixed_labels is None else {"fixed_labels": self.fixed_labels.cpu()}),
            "sampler": self.sampler_key,
            **self.run,
        }

    def load_state_dict(
        self,
        saved: dict[str, Any],
        *,
        batches_per_epoch: int,
        rank: int = 0,
        source: str = "training state",
    ) -> bool:
        """Continues from ``saved`` (a :meth:`state_dict`, usually read from a file).

        The random streams and the position in the epoch are restored only where the data
        order is the saved one; else the run continues from the start of the next epoch.

        Args:
            saved: the saved state.
            batches_per_epoch: batches in an epoch now.
            rank: this process's rank.
            source: where ``saved`` comes from, for messages.

        Returns:
            Whether the run continues exactly (the data order is the saved one).

        Raises:
            FaganError: when the saved networks do not fit this state's.
        """
        load_state_into(self.generator, saved["generator"], f"{source} generator")
        load_state_into(self.discriminator, saved["discriminator"], f"{source} discriminator")
        if self.ema is not None:  # a run saved without one starts it from the generator
            ema_saved = saved.get("ema_generator") or saved["generator"]
            load_state_into(self.ema, ema_saved, f"{source} EMA generator")
        self.g_opt.load_state_dict(saved["g_optimizer"])
        self.d_opt.load_state_dict(saved["d_optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        self.fixed_latents = saved["fixed_latents"].to(self.fixed_latents.device)
        if self.fixed_labels is not None:
            self.fixed_labels = saved["fixed_labels"].to(self.fixed_labels.device)
        self.step = saved["step"]
        rngs = saved["rng"]
        exact = len(rngs) == self.sampler_key["world_size"] and saved["sampler"] == self.sampler_key
        if exact:
            self.set_rng_state(rngs[rank])
        self.epoch, self.batch = resume_position(
            saved["epoch"], saved["batch"], exact, batches_per_epoch
        )
        return exact
