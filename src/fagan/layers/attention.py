"""Attention layers: FAGAN's full attention and SAGAN's self-attention.

Both compute unscaled dot-product attention over every spatial position of their
output. :func:`attend` picks one of two exact ways per call:

* the plain path, :func:`attend_explicit`: ``bmm -> softmax -> bmm`` with its (B, N, N)
  map; taken up to :data:`fagan.layers.fast.EXPLICIT_MAX_POSITIONS` positions (where
  two batched matrix products beat a fused kernel's blocking overhead), whenever the
  map is kept, and everywhere when the fast paths are off;
* the fast path, :func:`fagan.layers.fast.attend_fused`: a fused (flash) attention
  kernel on inputs zero-padded to one head dim. Neither its forward nor its backward
  keeps an N x N map, so memory grows linearly with N (at a 128 x 128 output, 16,384
  positions, the map alone is 1 GiB per sample in float32).

Inside :func:`capture_attention` the layers take the explicit path at every size and
keep their attention probabilities for inspection.

Parameter names follow attn-gan-pytorch (``query_conv``, ``key_conv``, ``value_conv``,
``residual_conv``, ``gamma``, ``batch_norm``) so that its state dicts map onto ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from fagan.layers import fast
from fagan.layers.blocks import make_conv


def attend_explicit(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`attend` computed explicitly: ``softmax(q k^T) v`` and the (B, N, N) map."""
    attention = torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1)  # (B, N, N)
    return torch.bmm(attention, v), attention


def attend(q: Tensor, k: Tensor, v: Tensor, keep_map: bool = False) -> tuple[Tensor, Tensor | None]:
    """Unscaled softmax attention of every query position over every key position.

    ``out[b, i] = sum_j softmax_j(q[b, i] . k[b, j]) v[b, j]`` — the original's
    ``energy = Q^T K`` (no ``1/sqrt(d)``), softmax over keys, output ``V A^T``.

    :func:`attend_explicit` whenever the map is kept or
    :func:`fagan.layers.fast.use_fused_attention` says no (the fast paths off, or at
    most ``EXPLICIT_MAX_POSITIONS`` positions); :func:`fagan.layers.fast.attend_fused`
    otherwise. Both are exact (they differ by float rounding only).

    Args:
        q: queries (B, N, Cq).
        k: keys (B, N, Cq).
        v: values (B, N, Cv).
        keep_map: if True, compute the (B, N, N) probabilities explicitly and return them.

    Returns:
        The attended values (B, N, Cv) and the attention map (B, N, N) or None.
    """
    if keep_map:
        return attend_explicit(q, k, v)
    if not fast.use_fused_attention(q.shape[1]):
        return attend_explicit(q, k, v)[0], None
    return fast.attend_fused(q, k, v), None


def _positions(y: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, N, C), N = H * W in row-major order (a view)."""
    return y.flatten(2).transpose(1, 2)


class _AttentionBase(nn.Module):
    """Shared state: the mixing scalar ``gamma`` and the on-demand attention map."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.keep_attention = False
        self.attention: Tensor | None = None  # (B, N, N) when keep_attention

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out, attention = attend(q, k, v, keep_map=self.keep_attention)
        self.attention = None if attention is None else attention.detach()
        return out

    def _gamma(self) -> Tensor:
        # 0-dim, so that under autocast the mix keeps the activations' (bf16) dtype
        # instead of promoting them to fp32 (a (1,)-shaped fp32 tensor would); in fp32
        # it is the same computation.
        return self.gamma.squeeze(0)


class FullAttention(_AttentionBase):
    """FAGAN's full attention layer.

    Query and key (``in -> in // squeeze_factor``), value and residual (``in -> out``)
    are k x k convolutions (transposed when ``transpose``) sharing kernel, stride and
    padding. Attention runs over every output position; the residual path may be
    spectrally normalised and batch-normed; the activation is applied to both paths;
    the result is ``gamma * attention + (1 - gamma) * residual`` with ``gamma``
    trainable and starting at 0.

    The four convolutions (from :func:`~fagan.layers.blocks.make_conv`) run separately,
    as in the original: one convolution with their concatenated weights was measured
    slower on the CPU (benchmarks/RESULTS.md) and would copy the weights (and their
    gradients) at every pass.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        *,
        transpose: bool = False,
        squeeze_factor: int = 8,
        bias: bool = True,
        use_spectral_norm: bool = True,
        use_batch_norm: bool = True,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        squeezed = in_channels // squeeze_factor

        def make(out: int, normalised: bool = False) -> nn.Module:
            return make_conv(
                in_channels,
                out,
                kernel_size,
                stride,
                padding,
                transpose=transpose,
                bias=bias,
                use_spectral_norm=normalised,
            )

        self.query_conv = make(squeezed)
        self.key_conv = make(squeezed)
        self.value_conv = make(out_channels)
        self.residual_conv = make(out_channels, use_spectral_norm)
        self.batch_norm = nn.BatchNorm2d(out_channels) if use_batch_norm else None
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        value = self.value_conv(x)  # (B, Cout, H, W)
        batch, channels, height, width = value.shape
        out = self._attend(
            _positions(self.query_conv(x)), _positions(self.key_conv(x)), _positions(value)
        )  # (B, N, Cout)
        out = out.transpose(1, 2).reshape(batch, channels, height, width)
        residual = self.residual_conv(x)
        if self.batch_norm is not None:
            residual = self.batch_norm(residual)
        # the residual is a fresh convolution/batch-norm output: activated in place where
        # the activation allows it (one tensor fewer kept for the backward)
        out, residual = self.activation(out), fast.activate_inplace(self.activation, residual)
        gamma = self._gamma()
        return gamma * out + (1 - gamma) * residual


class SelfAttention(_AttentionBase):
    """SAGAN's self-attention: 1 x 1 query/key/value, ``gamma * attention + x``."""

    def __init__(
        self,
        channels: int,
        *,
        squeeze_factor: int = 8,
        bias: bool = True,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        squeezed = channels // squeeze_factor
        self.query_conv = nn.Conv2d(channels, squeezed, 1, bias=bias)
        self.key_conv = nn.Conv2d(channels, squeezed, 1, bias=bias)
        self.value_conv = nn.Conv2d(channels, channels, 1, bias=bias)
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self._attend(
            _positions(self.query_conv(x)),
            _positions(self.key_conv(x)),
            _positions(self.value_conv(x)),
        )  # (B, N, C)
        out = out.transpose(1, 2).reshape(x.shape)
        return self._gamma() * self.activation(out) + x


ATTENTION_TYPES = (FullAttention, SelfAttention)


def attention_layers(model: nn.Module) -> dict[str, _AttentionBase]:
    """The attention layers of ``model`` by qualified name, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ATTENTION_TYPES)}


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Keeps every attention layer's probabilities during the forward passes inside.

    Yields a dict that, after a forward pass, maps each attention layer's name to its
    (B, N, N) attention probabilities (rows sum to 1; row ``i`` is where output
    position ``i`` looks). Outside this context no map is kept.
    """
    layers = attention_layers(model)
    maps: dict[str, Tensor] = {}

    def keeper(name: str):
        def hook(layer: _AttentionBase, _inputs: object, _output: object) -> None:
            maps[name] = layer.attention

        return hook

    handles = []
    for name, layer in layers.items():
        layer.keep_attention = True
        handles.append(layer.register_forward_hook(keeper(name)))
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers.values():
            layer.keep_attention = False
            layer.attention = None
