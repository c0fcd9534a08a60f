"""GAN losses as pure functions of discriminator outputs, selected by name.

Every function takes the discriminator's logits on a real batch ``r`` and on a fake
batch ``f`` (any shape; means run over all elements) and returns a scalar. Losses that
do not use ``r`` for the generator say so (``g_uses_real=False``), so the training
loop skips that discriminator pass. WGAN-GP's gradient penalty needs the
discriminator itself and lives in :func:`gradient_penalty`.

Class-conditional training uses the same functions on the logits of a conditional
discriminator ``D(x, y)``; :func:`matching_aware_d` adds the matching-aware
discriminator (GAN-CLS) term from the logits of real images paired with wrong labels,
which :func:`mismatched_labels` draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
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
    discriminator: nn.Module,
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """WGAN-GP's penalty ``E[(||grad D(x_hat)||_2 - 1)^2]`` on random interpolates.

    ``x_hat = a * real + (1 - a) * fake`` with ``a ~ U(0, 1)`` per sample. For a
    class-conditional discriminator, ``labels`` (B,) are the pair's class (real and fake
    of a conditional step share their labels): the gradient is that of ``D(x_hat, y)``
    with respect to the image.
    """
    alpha = torch.rand(
        real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype, generator=generator
    )
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = discriminator(mixed) if labels is None else discriminator(mixed, labels)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


# --------------------------------------------------------------------------- matching-aware
#: ``matching_aware_d`` variants: the GAN-CLS idea, and attn-gan-pytorch's own computation.
MATCHING_AWARE_VARIANTS = ("intended", "original")

#: How many times :func:`mismatched_labels` redraws from the batch a label that matched.
MISMATCH_REDRAWS = 4


def matching_aware_d(
    d: LossFn, r: Tensor, f: Tensor, m: Tensor, variant: str = "intended"
) -> Tensor:
    """Matching-aware discriminator loss (GAN-CLS, Reed et al. 2016) for any loss ``d``.

    Args:
        d: a discriminator loss ``d(r, f)`` (``GANLoss.d``).
        r: logits of real images with their own labels, ``D(x, y)``.
        f: logits of generated images with the labels they were made for, ``D(G(z, y), y)``.
        m: logits of real images with mismatched labels, ``D(x, y')``.
        variant: ``"intended"``: mismatched pairs are scored as fake,
            ``(d(r, f) + d(r, m)) / 2`` — for the separable losses ``real term +
            (fake term + mismatch term) / 2``, GAN-CLS's discriminator loss; ``m``
            should come from :func:`mismatched_labels`. ``"original"``:
            attn-gan-pytorch's ``ConditionalGAN.optimize_discriminator``, which calls
            its conditional loss with the mismatched real batch as both the real and
            the fake argument, ``(d(r, f) + d(m, m)) / 2``: mismatched pairs are
            pushed towards "real" and "fake" at once, so they teach the discriminator
            nothing about matching (for hinge the term is at least 2 whatever ``m``
            is, and its gradient only pulls ``m`` back into [-1, 1]); its labels come
            from :func:`original_mismatched_labels`.

    Raises:
        FaganError: for an unknown variant.
    """
    if variant == "intended":
        return (d(r, f) + d(r, m)) / 2
    if variant == "original":
        return (d(r, f) + d(m, m)) / 2
    raise FaganError(
        f"unknown matching-aware variant {variant!r}; choose one of "
        f"{', '.join(MATCHING_AWARE_VARIANTS)}"
    )


def mismatched_labels(
    y: Tensor, num_classes: int, generator: torch.Generator | None = None
) -> Tensor:
    """Wrong labels for real images: ``y`` shuffled across the batch, never a sample's own.

    The labels are permuted at random over the batch, so the mismatched labels keep the
    batch's class frequencies. A sample the permutation left with its own class draws
    again from the batch's labels (up to :data:`MISMATCH_REDRAWS` times); one still
    matching after that (its class fills most of the batch) gets a uniformly random
    other class. Every returned label differs from the true one.

    Args:
        y: the true labels (B,), integers in ``[0, num_classes)``.
        num_classes: the number of classes (at least 2).
        generator: the random number generator (on ``y``'s device), for reproducibility.

    Raises:
        FaganError: for fewer than two classes (no label can be wrong).
    """
    if num_classes < 2:
        raise FaganError(
            f"matching-aware training needs at least 2 classes to mismatch, got {num_classes}"
        )
    batch, device = y.shape[0], y.device
    wrong = y[torch.randperm(batch, device=device, generator=generator)]
    for _ in range(MISMATCH_REDRAWS):
        redraw = y[torch.randint(0, batch, (batch,), device=device, generator=generator)]
        wrong = torch.where(wrong == y, redraw, wrong)
    offset = torch.randint(
        1, num_classes, (batch,), device=device, generator=generator, dtype=y.dtype
    )
    return torch.where(wrong == y, (y + offset) % num_classes, wrong)


def original_mismatched_labels(
    y: Tensor, num_classes: int, rng: np.random.RandomState | None = None
) -> Tensor:
    """attn-gan-pytorch's ``ConditionalGAN.randomize`` on one-hot labels, as class labels.

    The original computes ``vectors[np.random.permutation(vectors[0]), :]``: it permutes
    the *values* of the first sample's one-hot vector (zeros and a single one) and uses
    them as row indices, so it returns ``num_classes`` rows, all copies of the batch's
    first or second label — not the batch shuffled. This reproduces it exactly (same
    numpy random stream) for parity; training with it works only when the batch size
    equals the number of classes (the original fails otherwise).

    Args:
        y: the true labels (B,).
        num_classes: the number of classes (the one-hot size).
        rng: the numpy random state; the global one (as the original) when None.

    Raises:
        FaganError: if the batch size differs from the number of classes.
    """
    if y.shape[0] != num_classes:
        raise FaganError(
            "the original matching-aware mismatch only works when the batch size equals the "
            f"number of classes (batch {y.shape[0]}, {num_classes} classes); use the intended "
            "variant"
        )
    first = F.one_hot(y[0].long().cpu(), num_classes).numpy()
    rows = (np.random if rng is None else rng).permutation(first)
    return y[torch.as_tensor(rows, device=y.device)]


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
