"""Attention layers: FAGAN's full attention and SAGAN's self-attention.

Both compute unscaled dot-product attention over every spatial position of their
output. :func:`attend` picks one of two exact ways per call:

* few positions (``N <= EXPLICIT_MAX_POSITIONS``): the explicit ``bmm -> softmax ->
  bmm``; its (B, N, N) map is small and two batched matrix products beat a fused
  kernel's blocking overhead;
* many positions: a fused (flash) attention kernel on inputs zero-padded to one head
  dim (:func:`attend_fused`; on the CPU PyTorch's flash forward and backward operators,
  elsewhere :func:`torch.nn.functional.scaled_dot_product_attention`). Neither its
  forward nor its backward keeps an N x N map, so memory grows linearly with N: a
  128 x 128 output (16,384 positions) at batch 8 trains in well under 1 GB, where
  the map alone would take 8.6 GB.

Inside :func:`capture_attention` the layers take the explicit path at every size and
keep their attention probabilities for inspection.

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

from fagan.layers.activations import activate_inplace
from fagan.layers.blocks import Conv2d, ConvTranspose2d

#: Up to this many positions :func:`attend` uses the explicit path (two ``bmm`` and a
#: softmax). Measured on a 2-core AVX-512 CPU with the FAGAN 64x64 shapes (batch 32,
#: forward + backward): explicit is 1.3-2x faster than the fused kernel at N = 64 and
#: 256, the fused kernel 1.2-2x faster at N = 1024 (with value dims up to 128), and the
#: explicit map grows as N^2 (batch 32: 8 MB at N = 256, 128 MB at N = 1024).
EXPLICIT_MAX_POSITIONS = 256


def _sdpa_ready(t: Tensor, dim: int) -> Tensor:
    """``t`` (B, N, C) zero-padded to ``dim`` channels with unit channel stride, as (B, 1, N, dim).

    The fused CPU kernel needs equal head dims for q, k and v and a unit stride on the
    last dim; otherwise SDPA silently falls back to its math path, which materialises
    the N x N map (and is slower than the plain explicit path).
    """
    if t.shape[-1] < dim:
        t = F.pad(t, (0, dim - t.shape[-1]))  # a fresh contiguous tensor
    elif t.stride(-1) != 1:
        t = t.contiguous()
    return t.unsqueeze(1)


def attend_explicit(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`attend` computed explicitly: ``softmax(q k^T) v`` and the (B, N, N) map."""
    attention = torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1)  # (B, N, N)
    return torch.bmm(attention, v), attention


def _cpu_flash_ops() -> tuple[object, object] | None:
    """PyTorch's CPU flash-attention forward and backward operators, where present."""
    try:
        return (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    except (AttributeError, RuntimeError):
        return None


_CPU_FLASH = _cpu_flash_ops()


class _FusedAttention(torch.autograd.Function):
    """Fused attention on padded inputs that keeps only the unpadded inputs for backward.

    ``F.scaled_dot_product_attention`` would keep its zero-padded q, k, v (at the
    FAGAN 64x64 shapes q and k grow 8-21x by the padding) and, on the CPU, has no
    double backward (WGAN-GP's gradient penalty needs one). Here:

    * on the CPU, the flash kernel's own forward and backward operators are called
      directly (no recomputation); the backward re-pads the saved inputs;
    * elsewhere, the forward runs the public SDPA without a graph and the backward
      recomputes it with one (activation checkpointing of the attention alone);
    * when the backward itself must be differentiable (``create_graph=True``), it is
      computed explicitly (an N x N map, as any double backward of attention needs).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, use_cpu_flash: bool) -> Tensor:  # type: ignore[override]
        dim = -(-max(q.shape[-1], v.shape[-1]) // 8) * 8
        padded = [_sdpa_ready(t, dim) for t in (q, k, v)]
        if use_cpu_flash:
            out, logsumexp = _CPU_FLASH[0](*padded, 0.0, False, scale=1.0)  # type: ignore[index,operator]
            ctx.save_for_backward(q, k, v, out, logsumexp)
        else:
            out = F.scaled_dot_product_attention(*padded, scale=1.0)
            ctx.save_for_backward(q, k, v)
        ctx.dim, ctx.use_cpu_flash = dim, use_cpu_flash
        return out  # (B, 1, N, dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, *kernel_state = ctx.saved_tensors
        cq, cv = q.shape[-1], v.shape[-1]
        wanted = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            inputs = [t for t, need in zip((q, k, v), wanted, strict=True) if need]
            out = attend_explicit(q, k, v)[0]
            found = iter(torch.autograd.grad(out, inputs, grad.squeeze(1)[..., :cv],
                                             create_graph=True))
            return (*(next(found) if need else None for need in wanted), None)
        if ctx.use_cpu_flash:
            padded = [_sdpa_ready(t, ctx.dim) for t in (q, k, v)]
            out, logsumexp = kernel_state
            grads = _CPU_FLASH[1](  # type: ignore[index,operator]
                grad.contiguous(), *padded, out, logsumexp, 0.0, False, scale=1.0
            )
        else:
            with torch.enable_grad():
                padded = [_sdpa_ready(t.detach(), ctx.dim).requires_grad_(True)
                          for t in (q, k, v)]
                out = F.scaled_dot_product_attention(*padded, scale=1.0)
            grads = torch.autograd.grad(out, padded, grad)
        sizes = (cq, cq, cv)
        return (*(g.squeeze(1)[..., :c] if need else None
                  for g, c, need in zip(grads, sizes, wanted, strict=True)), None)


def attend_fused(q: Tensor, k: Tensor, v: Tensor, *, cpu_kernels: bool = True) -> Tensor:
    """:func:`attend` through a fused kernel: no N x N map, forward or backward.

    q, k and v are zero-padded to one head dim (rounded up to a multiple of 8, which
    CUDA's fused kernels want): zero channels leave every dot product unchanged, and
    the value's padded output channels are sliced away, so this is exact. Under
    autocast the inputs are cast to the autocast dtype first, as SDPA does.

    Args:
        q: queries (B, N, Cq).
        k: keys (B, N, Cq).
        v: values (B, N, Cv).
        cpu_kernels: on the CPU, call the flash kernel's operators directly (False:
            the portable path used on other devices, for tests).

    Returns:
        The attended values (B, N, Cv).
    """
    device = q.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    use_cpu_flash = cpu_kernels and device == "cpu" and _CPU_FLASH is not None
    out = _FusedAttention.apply(q, k, v, use_cpu_flash).squeeze(1)
    # no slice when nothing was padded: its backward would allocate and zero-fill a
    # padded gradient and copy into it
    return out if out.shape[-1] == v.shape[-1] else out[..., : v.shape[-1]]


def attend(q: Tensor, k: Tensor, v: Tensor, keep_map: bool = False) -> tuple[Tensor, Tensor | None]:
    """Unscaled softmax attention of every query position over every key position.

    ``out[b, i] = sum_j softmax_j(q[b, i] . k[b, j]) v[b, j]`` — the original's
    ``energy = Q^T K`` (no ``1/sqrt(d)``), softmax over keys, output ``V A^T``.

    Up to :data:`EXPLICIT_MAX_POSITIONS` positions, and whenever the map is kept,
    :func:`attend_explicit`; above, :func:`attend_fused`. Both are exact (they differ
    by float rounding only).

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
    if q.shape[1] <= EXPLICIT_MAX_POSITIONS:
        return attend_explicit(q, k, v)[0], None
    return attend_fused(q, k, v), None


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

    The four convolutions run separately, as in the original: measured against one
    convolution with their concatenated weights, separate ones made a FAGAN 64x64
    training iteration about 6% (fp32) to 9% (bf16) faster on the CPU and need no
    per-pass copy of the weights (and of their gradients).
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
        conv = ConvTranspose2d if transpose else Conv2d
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
        out, residual = self.activation(out), activate_inplace(self.activation, residual)
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
            _positions(self.query_conv(x)), _positions(self.key_conv(x)),
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
