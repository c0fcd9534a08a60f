"""GAN losses as pure functions of discriminator outputs, selected by name.

Every function takes the discriminator's logits on a real batch ``r`` and on a fake
batch ``f`` (any shape; means run over all elements) and returns a scalar. Losses that
do not use ``r`` for the generator say so (``g_uses_real=False``), so the training
loop skips that discriminator pass. WGAN-GP's gradient penalty needs the
discriminator itself and lives in :func:`gradient_penalty`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fagan.errors import FaganError

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- hinge
def hinge_d(r: Tensor, f: Tensor) -> Tensor:
    """Hinge discriminator loss: ``E[relu(1 - r)] + E[relu(1 + f)]``."""
    return F.relu(1 - r).mean() + F.relu(1 + f).mean()


def hinge_g(r: Tensor, f: Tensor) -> Tensor:
    """Hinge generator loss: ``-E[f]``."""
    return -f.mean()


# --------------------------------------------------------------------------- relativistic hinge
def relativistic_hinge_d(r: Tensor, f: Tensor) -> Tensor:
    """Relativistic average hinge, discriminator (as attn-gan-pytorch defines it).

    ``E[relu(1 - (r - E[f]))] + E[relu(1 + (f - E[r]))]``
    """
    return F.relu(1 - (r - f.mean())).mean() + F.relu(1 + (f - r.mean())).mean()


def relativistic_hinge_g(r: Tensor, f: Tensor) -> Tensor:
    """Relativistic average hinge, generator (as attn-gan-pytorch defines it).

    ``E[relu(1 + (r - E[f]))] + E[relu(1 - (f - E[r]))]``
    """
    return F.relu(1 + (r - f.mean())).mean() + F.relu(1 - (f - r.mean())).mean()


# --------------------------------------------------------------------------- standard
def standard_d(r: Tensor, f: Tensor) -> Tensor:
    """Standard GAN discriminator loss on logits, halved as the original's.

    ``(E[softplus(-r)] + E[softplus(f)]) / 2`` — i.e. ``(BCE(sigmoid(r), 1) +
    BCE(sigmoid(f), 0)) / 2``, computed stably from logits.
    """
    return (F.softplus(-r).mean() + F.softplus(f).mean()) / 2


def standard_g(r: Tensor, f: Tensor) -> Tensor:
    """Non-saturating generator loss: ``E[softplus(-f)] = BCE(sigmoid(f), 1)``."""
    return F.softplus(-f).mean()


# --------------------------------------------------------------------------- least squares
def lsgan_d(r: Tensor, f: Tensor) -> Tensor:
    """Least-squares discriminator loss (Mao et al. 2017).

    ``0.5 * (E[(r - 1)^2] + E[f^2])``. attn-gan-pytorch squares the batch *mean*
    instead (``0.5 * ((E[r] - 1)^2 + E[f]^2)``); the two agree per sample.
    """
    return 0.5 * (((r - 1) ** 2).mean() + (f**2).mean())


def lsgan_g(r: Tensor, f: Tensor) -> Tensor:
    """Least-squares generator loss: ``0.5 * E[(f - 1)^2]``."""
    return 0.5 * ((f - 1) ** 2).mean()


# --------------------------------------------------------------------------- WGAN
def wgan_d(r: Tensor, f: Tensor) -> Tensor:
    """Wasserstein critic loss ``E[f] - E[r]`` (add :func:`gradient_penalty` for WGAN-GP)."""
    return f.mean() - r.mean()


def wgan_g(r: Tensor, f: Tensor) -> Tensor:
    """Wasserstein generator loss ``-E[f]``."""
    return -f.mean()


# --------------------------------------------------------------------------- relativistic average
def relativistic_standard_d(r: Tensor, f: Tensor) -> Tensor:
    """Relativistic average standard GAN, discriminator (Jolicoeur-Martineau 2018).

    ``(E[softplus(-(r - E[f]))] + E[softplus(f - E[r])]) / 2``
    """
    return (F.softplus(-(r - f.mean())).mean() + F.softplus(f - r.mean()).mean()) / 2


def relativistic_standard_g(r: Tensor, f: Tensor) -> Tensor:
    """Relativistic average standard GAN, generator.

    ``(E[softplus(r - E[f])] + E[softplus(-(f - E[r]))]) / 2``
    """
    return (F.softplus(r - f.mean()).mean() + F.softplus(-(f - r.mean())).mean()) / 2


def relativistic_lsgan_d(r: Tensor, f: Tensor) -> Tensor:
    """Relativistic average least squares, discriminator.

    ``(E[(r - E[f] - 1)^2] + E[(f - E[r] + 1)^2]) / 2``
    """
    return (((r - f.mean() - 1) ** 2).mean() + ((f - r.mean() + 1) ** 2).mean()) / 2


def relativistic_lsgan_g(r: Tensor, f: Tensor) -> Tensor:
    """Relativistic average least squares, generator.

    ``(E[(f - E[r] - 1)^2] + E[(r - E[f] + 1)^2]) / 2``
    """
    return (((f - r.mean() - 1) ** 2).mean() + ((r - f.mean() + 1) ** 2).mean()) / 2


# --------------------------------------------------------------------------- gradient penalty
def gradient_penalty(
    discriminator: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """WGAN-GP's penalty ``E[(||grad D(x_hat)||_2 - 1)^2]`` on random interpolates.

    ``x_hat = a * real + (1 - a) * fake`` with ``a ~ U(0, 1)`` per sample.
    """
    alpha = torch.rand(
        real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype, generator=generator
    )
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = discriminator(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class GANLoss:
    """A named pair of discriminator and generator losses.

    Attributes:
        d: discriminator loss ``d(r, f)``.
        g: generator loss ``g(r, f)``.
        g_uses_real: whether ``g`` reads the real logits (relativistic losses).
        gp_weight: weight of the gradient penalty added to ``d`` (0 for none).
    """

    name: str
    d: LossFn
    g: LossFn
    g_uses_real: bool = False
    gp_weight: float = 0.0


LOSSES: dict[str, GANLoss] = {
    loss.name: loss
    for loss in (
        GANLoss("hinge", hinge_d, hinge_g),
        GANLoss("relativistic-hinge", relativistic_hinge_d, relativistic_hinge_g, True),
        GANLoss("standard", standard_d, standard_g),
        GANLoss("lsgan", lsgan_d, lsgan_g),
        GANLoss("wgan-gp", wgan_d, wgan_g, gp_weight=10.0),
        GANLoss("relativistic-standard", relativistic_standard_d, relativistic_standard_g, True),
        GANLoss("relativistic-lsgan", relativistic_lsgan_d, relativistic_lsgan_g, True),
    )
}


def get_loss(name: str) -> GANLoss:
    """Looks a loss up by name (case-insensitive).

    Raises:
        FaganError: for an unknown name, listing the known ones.
    """
    loss = LOSSES.get(name.lower())
    if loss is None:
        raise FaganError(f"unknown loss function {name!r}; choose one of {', '.join(LOSSES)}")
    return loss
