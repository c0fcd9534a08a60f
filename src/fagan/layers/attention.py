"""Attention layers: FAGAN's full attention and SAGAN's self-attention.

Both compute unscaled dot-product attention over every spatial position of their
output. In ordinary use they go through
:func:`torch.nn.functional.scaled_dot_product_attention` (no N x N map is kept, so
memory grows linearly with the number of positions); inside :func:`capture_attention`
they take the explicit path and keep their attention probabilities for inspection.

Parameter names follow attn-gan-pytorch (``query_conv``, ``key_conv``, ``value_conv``,
``residual_conv``, ``gamma``, ``batch_norm``) so that its state dicts map onto ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


def attend(q: Tensor, k: Tensor, v: Tensor, keep_map: bool = False) -> tuple[Tensor, Tensor | None]:
    """Unscaled softmax attention of every query position over every key position.

    ``out[b, i] = sum_j softmax_j(q[b, i] . k[b, j]) v[b, j]`` — the original's
    ``energy = Q^T K`` (no ``1/sqrt(d)``), softmax over keys, output ``V A^T``.

    Args:
        q: queries (B, N, Cq).
        k: keys (B, N, Cq).
        v: values (B, N, Cv).
        keep_map: if True, compute the (B, N, N) probabilities explicitly and return them.

    Returns:
        The attended values (B, N, Cv) and the attention map (B, N, N) or None.
    """
    if keep_map:
        attention = torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1)  # (B, N, N)
        return torch.bmm(attention, v), attention
    # SDPA's fused CPU kernel wants equal head dims. Zero-padding q and k leaves every
    # dot product unchanged, zero-padding v adds output channels we slice away: exact.
    cq, cv = q.shape[-1], v.shape[-1]
    dim = max(cq, cv)
    if cq < dim:
        q = F.pad(q, (0, dim - cq))
        k = F.pad(k, (0, dim - cq))
    if cv < dim:
        v = F.pad(v, (0, dim - cv))
    out = F.scaled_dot_product_attention(
        q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0
    ).squeeze(1)  # (B, N, dim)
    return out[..., :cv], None


class _AttentionBase(nn.Module):
    """Shared state: the mixing scalar ``gamma`` and the on-demand attention map."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.keep_attention = False
        self.attention: Tensor | None = None  # (B, N, N) when keep_attention

    def _split_qkv(self, y: Tensor, sizes: list[int]) -> tuple[Tensor, ...]:
        # (B, C, H, W) -> per part (B, N, C_part), N = H * W in row-major order
        return tuple(part.flatten(2).transpose(1, 2) for part in y.split(sizes, dim=1))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out, attention = attend(q, k, v, keep_map=self.keep_attention)
        self.attention = None if attention is None else attention.detach()
        return out


class FullAttention(_AttentionBase):
    """FAGAN's full attention layer.

    Query and key (``in -> in // squeeze_factor``), value and residual (``in -> out``)
    are k x k convolutions (transposed when ``transpose``) sharing kernel, stride and
    padding. Attention runs over every output position; the residual path may be
    spectrally normalised and batch-normed; the activation is applied to both paths;
    the result is ``gamma * attention + (1 - gamma) * residual`` with ``gamma``
    trainable and starting at 0.

    The four convolutions run as one fused convolution whose weight is the
    concatenation of theirs (the residual's after spectral normalisation).
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
        conv = nn.ConvTranspose2d if transpose else nn.Conv2d
        squeezed = in_channels // squeeze_factor

        def make(out: int) -> nn.Module:
            return conv(in_channels, out, kernel_size, stride, padding, bias=bias)

        self.query_conv = make(squeezed)
        self.key_conv = make(squeezed)
        self.value_conv = make(out_channels)
        residual = make(out_channels)
        # dim=0 as the original's SpectralNorm (w.view(w.shape[0], -1)), also when transposed
        self.residual_conv = spectral_norm(residual, dim=0) if use_spectral_norm else residual
        self.batch_norm = nn.BatchNorm2d(out_channels) if use_batch_norm else None
        self.activation = activation if activation is not None else nn.Identity()
        self.transpose = transpose
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.sizes = [squeezed, squeezed, out_channels, out_channels]

    def _convs(self) -> list[nn.Module]:
        return [self.query_conv, self.key_conv, self.value_conv, self.residual_conv]

    def forward(self, x: Tensor) -> Tensor:
        convs = self._convs()
        out_dim = 1 if self.transpose else 0  # ConvTranspose2d weights are (in, out, kh, kw)
        weight = torch.cat([c.weight for c in convs], dim=out_dim)
        bias = None if convs[0].bias is None else torch.cat([c.bias for c in convs])
        if self.transpose:
            y = F.conv_transpose2d(x, weight, bias, self.stride, self.padding)
        else:
            y = F.conv2d(x, weight, bias, self.stride, self.padding)
        batch, _, height, width = y.shape
        q, k, v, _ = self._split_qkv(y, self.sizes)
        residual = y[:, -self.sizes[3]:]  # (B, Cout, H, W)
        out = self._attend(q, k, v)  # (B, N, Cout)
        out = out.transpose(1, 2).reshape(batch, self.sizes[2], height, width)
        if self.batch_norm is not None:
            residual = self.batch_norm(residual)
        out, residual = self.activation(out), self.activation(residual)
        return self.gamma * out + (1 - self.gamma) * residual


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
        self.sizes = [squeezed, squeezed, channels]

    def forward(self, x: Tensor) -> Tensor:
        convs = [self.query_conv, self.key_conv, self.value_conv]
        weight = torch.cat([c.weight for c in convs])
        bias = None if convs[0].bias is None else torch.cat([c.bias for c in convs])
        y = F.conv2d(x, weight, bias)
        q, k, v = self._split_qkv(y, self.sizes)
        out = self._attend(q, k, v)  # (B, N, C)
        out = out.transpose(1, 2).reshape(x.shape)
        return self.gamma * self.activation(out) + x


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
