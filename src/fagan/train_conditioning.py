"""Class-conditional training: which scheme a run uses, its classes, its sample grids.

``fagan train --conditioning projection|concat`` (or a config's ``conditioning:`` key)
trains a class-conditional GAN on the data's labels (class sub-folders, or a ``fagan
prepare`` zip's). The number of classes and their names come from the data; a resumed
run keeps the saved run's (:func:`resolve_scheme`, :func:`run_classes`). Every step
gives the discriminator the real batch with its labels and the generator's images made
for the same labels, so a conditional step draws no extra random numbers.

A conditional run's sample grids have one row per class (the first
:data:`GRID_CLASSES`), the same latents in each column (:func:`class_grid_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fagan.config import NetworkSpec
from fagan.errors import FaganError

#: Most classes (rows) in a conditional run's sample grids: the first ones.
GRID_CLASSES = 10


#: ``--embedding_dim`` when not given, by scheme: projection conditions through one class
#: embedding shared by the generator's batch norms (BigGAN). Its gains move by the sum of
#: many weights' steps, so a class shows within a few hundred steps; per-class gains of
#: each layer (``--embedding_dim 0``) move by at most the learning rate a step.
DEFAULT_EMBEDDING_DIM = {"projection": 128, "concat": None}


@dataclass(frozen=True)
class RunClasses:
    """A class-conditional run's conditioning and classes.

    Attributes:
        num_classes: the number of classes.
        scheme: ``"projection"`` or ``"concat"``.
        embedding_dim: the class embedding size, or None (see :class:`fagan.networks.Generator`).
        class_names: one name per class label.
    """

    num_classes: int
    scheme: str
    embedding_dim: int | None
    class_names: tuple[str, ...]

    @property
    def options(self) -> dict[str, Any]:
        """The generator's conditioning options (``Generator.conditioning_options``): what
        a training state's and a network file's ``"conditioning"`` hold."""
        return {
            "num_classes": self.num_classes,
            "conditioning": self.scheme,
            "embedding_dim": self.embedding_dim,
        }

    def network_kwargs(self, role: str) -> dict[str, Any]:
        """The keyword arguments that make the generator or discriminator conditional (the
        projection discriminator's class embedding has its feature size: no embedding_dim)."""
        options = self.options
        if role == "discriminator" and self.scheme == "projection":
            options["embedding_dim"] = None
        return options

    def describe(self) -> str:
        """One line for the start of a run."""
        shown = ", ".join(self.class_names[:12]) + (", ..." if self.num_classes > 12 else "")
        embedding = f", class embedding of {self.embedding_dim}" if self.embedding_dim else ""
        rows = (
            f" (sample grids: the first {GRID_CLASSES} classes, one per row)"
            if self.num_classes > GRID_CLASSES
            else " (sample grids: one row per class)"
        )
        return (
            f"class-conditional training, {self.scheme} conditioning{embedding}, on "
            f"{self.num_classes} classes: {shown}{rows}"
        )


def _scheme(value: str | None) -> str | None:
    return None if value in (None, "none") else value


def resolve_scheme(
    option: str | None,
    g_spec: NetworkSpec,
    d_spec: NetworkSpec,
    saved: dict[str, Any] | None = None,
) -> str | None:
    """The conditioning scheme of a run, or None for an unconditional one.

    A resumed run keeps its saved scheme; else ``--conditioning`` when given, else the
    configs' ``conditioning:`` key.

    Args:
        option: ``--conditioning`` (``projection``, ``concat``, ``none``) or None when not given.
        g_spec, d_spec: the architectures (their ``conditioning``).
        saved: the training state being resumed.

    Raises:
        FaganError: a ``--conditioning`` other than the resumed run's, or configs that ask
            for two different schemes.
    """
    if saved is not None:
        stored = saved.get("conditioning")
        theirs = None if stored is None else stored["conditioning"]
        if option is not None and _scheme(option) != theirs:
            raise FaganError(
                f"--conditioning {option} differs from the run's {theirs or 'none'}: a resumed "
                "run keeps its conditioning (leave it out, or start a new run in another "
                "--model_dir)"
            )
        return theirs
    if option is not None:
        return _scheme(option)
    g, d = g_spec.conditioning, d_spec.conditioning
    if g is not None and d is not None and g != d:
        raise FaganError(
            f"the generator config asks for {g} conditioning ({g_spec.source}) and the "
            f"discriminator config for {d} ({d_spec.source}); give --conditioning"
        )
    return g or d


def run_classes(
    scheme: str | None,
    labels: Any,
    class_names: tuple[str, ...] | None,
    source: str,
    *,
    embedding_dim: int | None = None,
    matching_aware: bool = False,
    saved: dict[str, Any] | None = None,
) -> RunClasses | None:
    """The classes a conditional run trains on, from its data (and a resumed run's state).

    Args:
        scheme: the run's scheme (:func:`resolve_scheme`); None for an unconditional run.
        labels: the data's ``(N,)`` integer labels, or None for unlabelled data.
        class_names: the data's class names, or None (then ``"0"``, ``"1"``, ...).
        source: the data, for messages.
        embedding_dim: ``--embedding_dim`` (None: :data:`DEFAULT_EMBEDDING_DIM`; 0: none).
        matching_aware: ``--matching_aware`` (refused for an unconditional run).
        saved: the training state being resumed: its classes must be the data's.

    Raises:
        FaganError: unlabelled data, fewer than two classes, ``--embedding_dim`` or
            ``--matching_aware`` without conditioning, or data whose classes differ from
            the resumed run's.
    """
    if scheme is None:
        if embedding_dim is not None:
            raise FaganError(
                f"--embedding_dim {embedding_dim} applies to class-conditional training; give "
                "--conditioning projection or concat"
            )
        if matching_aware:
            raise FaganError(
                "--matching_aware applies to class-conditional training; give "
                "--conditioning projection or concat"
            )
        return None
    if labels is None or len(labels) == 0:
        raise FaganError(
            f"--conditioning {scheme} needs class labels, and {source} has none (give a folder "
            "with one sub-folder of images per class, or a dataset zip whose dataset.json "
            "holds labels)"
        )
    num_classes = len(class_names) if class_names else int(labels.max()) + 1
    if num_classes < 2:
        raise FaganError(
            f"--conditioning {scheme} needs at least 2 classes, and {source} has {num_classes}"
        )
    names = tuple(class_names) if class_names else tuple(str(k) for k in range(num_classes))
    if saved is not None:
        stored = saved["conditioning"]
        if stored["num_classes"] != num_classes or tuple(saved["class_names"]) != names:
            raise FaganError(
                f"{source} has {num_classes} classes ({', '.join(names[:6])}"
                f"{', ...' if num_classes > 6 else ''}) but the resumed run trained on "
                f"{stored['num_classes']} ({', '.join(saved['class_names'][:6])}"
                f"{', ...' if stored['num_classes'] > 6 else ''}); resume on the same data"
            )
        embedding_dim = stored["embedding_dim"]
    elif embedding_dim is None:
        embedding_dim = DEFAULT_EMBEDDING_DIM.get(scheme)
    return RunClasses(num_classes, scheme, embedding_dim or None, names)


def class_grid_inputs(latents: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """The latents and labels of a conditional run's sample grids.

    One row per class (the first :data:`GRID_CLASSES`), ``len(latents) // rows`` columns
    (at least one); column ``c`` of every row has latent ``latents[c]``.

    Args:
        latents: ``(N, latent_size)``: the unconditional run's grid latents.
        num_classes: the run's classes.

    Returns:
        ``(rows * columns, latent_size)`` latents and ``(rows * columns,)`` int64 labels,
        row by row.
    """
    rows = min(num_classes, GRID_CLASSES)
    columns = max(1, len(latents) // rows)
    z = latents[:columns].repeat(rows, 1)  # (rows * columns, latent_size)
    y = torch.arange(rows, device=latents.device).repeat_interleave(columns)
    return z, y


def grid_columns(labels: Tensor) -> int:
    """Images per row of a conditional run's grid: the fixed latents per class."""
    return int((labels == labels[0]).sum())


class EvenClasses(nn.Module):
    """A conditional generator called with latents alone: labels ``0, 1, ..., K-1, 0, ...``
    over the images it makes since :meth:`restart` (every class equally often), so that
    measures written for unconditional generators (``--eval_every``) see all classes.

    Attributes:
        generator: the conditional generator.
        latent_size, image_size: the generator's.
        classes: its number of classes.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.latent_size = generator.latent_size
        self.image_size = generator.image_size
        # not ``num_classes``: to the measures this is an unconditional generator
        self.classes = generator.num_classes
        self.made = 0
        self.train(generator.training)

    def restart(self) -> EvenClasses:
        """Starts the labels again from class 0; returns itself."""
        self.made = 0
        return self

    def forward(self, z: Tensor) -> Tensor:
        y = torch.arange(self.made, self.made + len(z), device=z.device) % self.classes
        self.made += len(z)
        return self.generator(z, y)
