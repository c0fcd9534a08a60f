"""Class conditioning: conditional batch norm, the projection head, label checks.

* :class:`ConditionalBatchNorm2d` — batch norm without affine parameters followed by a
  per-class gain and bias (de Vries et al. 2017; Miyato & Koyama 2018), either from the
  layer's own embedding (as mimicry's ``ConditionalBatchNorm2d``) or from a vector that
  one embedding shared by all layers produces (BigGAN's shared class embedding).
* :class:`ProjectionHead` — the class-dependent term ``<embed(y), phi(x)>`` of the
  projection discriminator (Miyato & Koyama 2018), its embedding spectrally normalised
  as mimicry's ``SNEmbedding`` and BigGAN's.
* :func:`check_labels` — the one place where class labels given to a network are
  checked, with one-line :class:`~fagan.errors.FaganError` messages.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from fagan.errors import FaganError

#: The ways a network can be made class-conditional (see :mod:`fagan.networks`).
CONDITIONING_SCHEMES = ("projection", "concat")


def check_conditioning(
    num_classes: int | None, conditioning: str | None, embedding_dim: int | None, who: str
) -> str | None:
    """Validates a network's conditioning arguments; returns the scheme's name (lower case).

    Raises:
        FaganError: a scheme without a class count or the reverse, an unknown scheme,
            fewer than one class, or an embedding size below one.
    """
    if conditioning is None:
        if num_classes is not None:
            raise FaganError(
                f"the {who} got num_classes={num_classes} but no conditioning scheme; "
                f"choose one of {', '.join(CONDITIONING_SCHEMES)}"
            )
        if embedding_dim is not None:
            raise FaganError(f"the {who} got embedding_dim={embedding_dim} but no conditioning")
        return None
    scheme = conditioning.lower() if isinstance(conditioning, str) else conditioning
    if scheme not in CONDITIONING_SCHEMES:
        raise FaganError(
            f"unknown conditioning {conditioning!r}; choose one of {', '.join(CONDITIONING_SCHEMES)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FaganError(
            f"the {who} is {scheme}-conditional and needs num_classes >= 1, got {num_classes!r}"
        )
    if embedding_dim is not None and (
        isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1
    ):
        raise FaganError(
            f"the {who}'s embedding_dim must be an integer >= 1, got {embedding_dim!r}"
        )
    return scheme


def check_labels(
    y: Tensor | None,
    batch: int,
    num_classes: int | None,
    who: str,
    *,
    device: torch.device | None = None,
    check_range: bool = True,
) -> Tensor | None:
    """Checks the class labels given to a network's forward pass.

    Args:
        y: the labels, (B,) integers in ``[0, num_classes)``, or None.
        batch: B, the batch size of the network's other input.
        num_classes: the network's number of classes; None for an unconditional network.
        who: ``generator`` or ``discriminator``, for messages.
        device: the device of the network's other input, where the labels are moved.
        check_range: whether to check every label's range (one device synchronisation).

    Returns:
        ``y`` as int64 on ``device`` (None for an unconditional network).

    Raises:
        FaganError: labels missing for a conditional network, given to an unconditional
            one, not integers, of the wrong shape, or outside ``[0, num_classes)``.
    """
    if num_classes is None:
        if y is not None:
            raise FaganError(f"the {who} is unconditional and takes no class labels")
        return None
    if y is None:
        raise FaganError(
            f"the {who} is class-conditional ({num_classes} classes): give the class labels y"
        )
    if (
        not isinstance(y, Tensor)
        or y.dtype.is_floating_point
        or y.dtype.is_complex
        or (y.dtype == torch.bool)
    ):
        kind = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise FaganError(f"the {who}'s class labels must be an integer tensor, got {kind}")
    if tuple(y.shape) != (batch,):
        raise FaganError(
            f"the {who}'s class labels have shape {list(y.shape)}; expected [{batch}], "
            "one label per sample"
        )
    y = y.to(device=device, dtype=torch.long)
    if check_range and batch:
        outside = (y < 0) | (y >= num_classes)
        if bool(outside.any()):
            value = int(y[outside][0])
            raise FaganError(
                f"class label {value} given to the {who} is outside [0, {num_classes})"
            )
    return y


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm with a per-class gain and bias: ``gamma_y * BN(x) + beta_y``.

    ``BN`` is an ``nn.BatchNorm2d`` without affine parameters (its running statistics
    are shared by all classes). The class's gain and bias come from

    * ``shared_dim=None``: this layer's own ``nn.Embedding(num_classes, 2 C)`` holding
      ``[gamma | beta]`` per class, initialised to ``gamma = 1``, ``beta = 0`` (every
      class starts as plain batch norm; each class's row learns from its own samples);
    * ``shared_dim=d``: BigGAN's scheme — the condition is a class vector ``e`` (B, d)
      from an embedding shared by all layers, and ``gamma = 1 + W_g e``,
      ``beta = W_b e`` with this layer's bias-free linear maps ``gain`` and ``bias``,
      initialised to zero (so again ``gamma = 1``, ``beta = 0`` to start; the maps
      learn first, the shared embedding once they are non-zero).

    Inside a network the condition (labels, or shared vectors) is set on the layer by
    its owner for the length of one forward pass (``condition``), so that the layers
    around it (convolution blocks, full attention) call it like any batch norm with the
    features alone. Used on its own, it takes the condition as ``forward``'s argument.

    Args:
        num_features: C, the channels.
        num_classes: the number of classes (the per-layer embedding's rows).
        shared_dim: the size of the shared class vectors, or None for a per-layer
            embedding.
        eps: batch norm's epsilon.
        momentum: batch norm's running-statistics momentum.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        *,
        shared_dim: int | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.shared_dim = shared_dim
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        if shared_dim is None:
            self.embed = nn.Embedding(num_classes, 2 * num_features)
            with torch.no_grad():
                self.embed.weight[:, :num_features].fill_(1.0)
                self.embed.weight[:, num_features:].zero_()
        else:
            self.gain = nn.Linear(shared_dim, num_features, bias=False)
            self.bias = nn.Linear(shared_dim, num_features, bias=False)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)
        self.condition: Tensor | None = None

    def gain_and_bias(self, condition: Tensor) -> tuple[Tensor, Tensor]:
        """``(gamma, beta)``, each (B, C), for labels (B,) or shared class vectors (B, d)."""
        if self.shared_dim is None:
            gamma, beta = self.embed(condition).chunk(2, dim=1)
            return gamma, beta
        return 1 + self.gain(condition), self.bias(condition)

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        """Normalises ``x`` (B, C, H, W) and applies each sample's class gain and bias.

        Args:
            x: the features.
            condition: labels (B,) or shared class vectors (B, d); when None, the one
                the owning network set for this forward pass.
        """
        if condition is None:
            condition = self.condition
        if condition is None:
            raise RuntimeError(
                "ConditionalBatchNorm2d called without a condition: pass it to forward() "
                "or run the layer inside its conditional network"
            )
        out = self.bn(x)
        gamma, beta = self.gain_and_bias(condition)
        # in the features' dtype, so that under autocast a bf16 activation stays bf16
        gamma = gamma.to(out.dtype).view(-1, self.num_features, 1, 1)
        beta = beta.to(out.dtype).view(-1, self.num_features, 1, 1)
        return gamma * out + beta

    def extra_repr(self) -> str:
        shared = "" if self.shared_dim is None else f", shared_dim={self.shared_dim}"
        return f"{self.num_features}, num_classes={self.num_classes}{shared}"


class ProjectionHead(nn.Module):
    """The class term of a projection discriminator: ``<embed(y), phi>``.

    The logit of the projection discriminator (Miyato & Koyama 2018) is
    ``psi(phi(x)) + <embed(y), phi(x)>``; this module computes the second term from the
    pooled features ``phi`` (B, C). The embedding ``embed`` (num_classes x C) is
    spectrally normalised like mimicry's ``SNEmbedding`` and BigGAN's (torch's
    ``spectral_norm``: one power iteration per training-mode forward) and initialised
    Xavier-uniform as mimicry's projection discriminators do.
    """

    def __init__(self, num_classes: int, num_features: int) -> None:
        super().__init__()
        embedding = nn.Embedding(num_classes, num_features)
        nn.init.xavier_uniform_(embedding.weight)
        self.embed = spectral_norm(embedding)

    def forward(self, phi: Tensor, y: Tensor) -> Tensor:
        """``(embed(y) * phi).sum(1)``, (B,), computed in float32."""
        return (self.embed(y).float() * phi.float()).sum(dim=1)


def condition_layers(model: nn.Module) -> list[ConditionalBatchNorm2d]:
    """The conditional batch norms inside ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, ConditionalBatchNorm2d)]


__all__ = [
    "CONDITIONING_SCHEMES",
    "ConditionalBatchNorm2d",
    "ProjectionHead",
    "check_conditioning",
    "check_labels",
    "condition_layers",
]
