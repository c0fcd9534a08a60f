"""fagan's fast paths: each computes what a plain reference path computes, cheaper.

Every fast path here equals its plain path up to float rounding and leaves parameters,
buffers and state-dict keys as they are; it changes only how a result is computed.

* spectral norm on the output (:func:`spectral_norm_on_output`, taken by
  :class:`FastPathConv2d` and :class:`FastPathConvTranspose2d`): ``conv(x, W) / sigma
  + b`` for the ``spectral_norm`` parametrization's ``conv(x, W / sigma) + b``, where a
  spectrally normalised convolution's weight has more elements than its input;
* a transposed convolution from a 1 x 1 input as one matrix product
  (:func:`conv_transpose2d_1x1`, taken by :class:`FastPathConvTranspose2d`) for
  ``F.conv_transpose2d`` (a generator's first layer);
* fused attention (:func:`attend_fused`, a flash/SDPA kernel on zero-padded q, k, v
  through :class:`FusedPaddedAttention`) for ``attention.attend_explicit``'s
  ``softmax(q k^T) v`` with its N x N map, above :data:`EXPLICIT_MAX_POSITIONS`
  positions when no map is kept;
* in-place activations (:func:`activate_inplace`) for ``activation(x)``: ReLU and
  positive-slope LeakyReLU on a fresh convolution or batch-norm output.

The switch
    All fast paths are on by default. ``FAGAN_FAST_PATHS=0`` (also ``false``, ``off``,
    ``no``) in the environment turns every one of them off; it is read once, when this
    module is first imported (as timm reads ``TIMM_FUSED_ATTN``). In code,
    :func:`enabled` reads the switch, :func:`set_enabled` sets it and :func:`disabled`
    turns it off inside a ``with`` block. The layers read it at every forward pass, so
    it can be flipped between passes of the same model; it is one setting per process
    (not per thread), like ``torch.backends`` flags. With it off every layer takes its
    plain path: the ``spectral_norm`` parametrization, ``nn.Conv2d`` /
    ``nn.ConvTranspose2d``'s own forward, explicit ``softmax(q k^T) v`` attention and
    out-of-place activations.

Private torch APIs
    Two fast paths use underscore-prefixed torch names, looked up at every call; each
    lookup's comment says what is used and what happens without it. Without them the
    layers take the plain path (spectral norm) or the public SDPA (attention), never an
    error.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

# --------------------------------------------------------------------------- the switch
#: The environment variable read at import: ``0``/``false``/``off``/``no`` turns every fast
#: path off; ``1``/``true``/``on``/``yes`` or unset leaves them on.
ENV_VAR = "FAGAN_FAST_PATHS"
_OFF_VALUES = frozenset({"0", "false", "off", "no"})
_ON_VALUES = frozenset({"", "1", "true", "on", "yes"})


def _enabled_by_environment() -> bool:
    """The switch's initial state from :data:`ENV_VAR` (a warning, and on, for other values)."""
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value in _OFF_VALUES:
        return False
    if value not in _ON_VALUES:
        warnings.warn(
            f"{ENV_VAR}={value!r} is not 0 or 1 (false/true, off/on, no/yes); "
            "fagan's fast paths stay on",
            RuntimeWarning,
            stacklevel=2,
        )
    return True


class _Switch:
    """The process-wide on/off state of every fast path; read and set only through
    :func:`enabled`, :func:`set_enabled` and :func:`disabled`."""

    __slots__ = ("on",)

    def __init__(self, on: bool) -> None:
        self.on = on


_SWITCH = _Switch(_enabled_by_environment())


def enabled() -> bool:
    """Whether the layers take their fast paths (see the module docstring)."""
    return _SWITCH.on


def set_enabled(on: bool) -> bool:
    """Turns every fast path on or off for this process.

    Args:
        on: True for the fast paths, False for the plain reference paths.

    Returns:
        The previous setting (to restore it).

    Raises:
        TypeError: if ``on`` is not a bool.
    """
    if not isinstance(on, bool):
        raise TypeError(f"set_enabled expects a bool, got {on!r}")
    previous, _SWITCH.on = _SWITCH.on, on
    return previous


@contextmanager
def disabled() -> Iterator[None]:
    """Every layer takes its plain reference path inside; the previous setting returns after."""
    previous = set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)


# --------------------------------------------------------------------------- convolutions
def _spectral_norm_type() -> type | None:
    # Private API: torch.nn.utils.parametrizations._SpectralNorm, the module that
    # spectral_norm() registers, with its _u/_v buffers and _power_method (checked in
    # spectral_norm_on_output). Without it, spectral_norm_on_output returns None and the
    # convolution takes the spectral_norm parametrization's own (plain) path.
    return getattr(parametrizations, "_SpectralNorm", None)


_SN_ATTRIBUTES = ("_u", "_v", "_power_method", "n_power_iterations", "dim")


def spectral_norm_on_output(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(W, sigma)`` for a convolution whose spectral norm is cheaper applied to its output.

    ``spectral_norm`` computes ``conv(x, W / sigma) + b``; for a weight with more
    elements than the input the equal ``conv(x, W) / sigma + b`` moves less memory: no
    weight-sized division forward and backward, and under autocast the cast of ``W`` (a
    leaf) is cached across passes. It is equal because the convolution is linear in its
    weight, and ``sigma`` and the power iteration are exactly ``_SpectralNorm.forward``'s
    (the same ``u``/``v`` updates in training mode, gradients through ``sigma``), so
    parameters, buffers and state dicts are untouched.

    Args:
        module: a convolution, spectrally normalised or not.
        x: its input.

    Returns:
        The unnormalised weight and ``sigma`` (after this pass's power iteration in
        training mode), or None (use the module's plain path) for anything else: no
        spectral norm, another parametrization, ``dim`` other than 0, a weight not larger
        than the input, or the private ``_SpectralNorm`` API missing.
    """
    sn_type = _spectral_norm_type()
    if sn_type is None or not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations.weight  # type: ignore[union-attr]
    if len(plist) != 1 or not isinstance(plist[0], sn_type):
        return None
    sn = plist[0]
    weight = plist.original
    if (
        not all(hasattr(sn, name) for name in _SN_ATTRIBUTES)
        or sn.dim != 0
        or weight.ndim != 4
        or weight.numel() <= x.numel()
    ):
        return None
    weight_mat = weight.flatten(1)
    if sn.training:
        sn._power_method(weight_mat, sn.n_power_iterations)
    u = sn._u.clone(memory_format=torch.contiguous_format)
    v = sn._v.clone(memory_format=torch.contiguous_format)
    return weight, torch.vdot(u, torch.mv(weight_mat, v))


def scale_and_bias(out: Tensor, sigma: Tensor | None, bias: Tensor | None) -> Tensor:
    """``out / sigma + bias`` over the channel dim, each part where given."""
    if sigma is not None:
        out = out / sigma  # 0-dim sigma: out keeps its dtype (bf16 under autocast)
    return out if bias is None else out + bias.view(1, -1, 1, 1).to(out.dtype)


def conv_transpose2d_1x1(x: Tensor, weight: Tensor) -> Tensor:
    """``F.conv_transpose2d(x, weight)`` (no bias, no padding, unit dilation, one group) for
    a 1 x 1 input, as one matrix product.

    From a single pixel every output pixel is ``out[b, o, i, j] = sum_c x[b, c]
    W[c, o, i, j]`` whatever the stride: a (B, Cin) by (Cin, Cout * kh * kw) product.
    PyTorch's deconvolution kernels are slow for this shape; the matrix product is the
    same sum in another order.

    Args:
        x: the input (B, Cin, 1, 1).
        weight: the transposed convolution's weight (Cin, Cout, kh, kw).

    Returns:
        The output (B, Cout, kh, kw).
    """
    return (x.flatten(1) @ weight.flatten(1)).view(x.shape[0], *weight.shape[1:])


class FastPathConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) that, spectrally normalised and with
    the fast paths on, applies the norm to its output where cheaper
    (:func:`spectral_norm_on_output`); otherwise exactly ``nn.Conv2d``."""

    def forward(self, x: Tensor) -> Tensor:
        parts = (
            spectral_norm_on_output(self, x) if enabled() and self.padding_mode == "zeros" else None
        )
        if parts is None:
            return super().forward(x)
        weight, sigma = parts
        out = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
        return scale_and_bias(out, sigma, self.bias)


class FastPathConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, same state dict) that, with the fast paths
    on, computes a 1 x 1 input as one matrix product (:func:`conv_transpose2d_1x1`) and,
    spectrally normalised, applies the norm to its output where cheaper
    (:func:`spectral_norm_on_output`); otherwise exactly ``nn.ConvTranspose2d``."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if not enabled() or output_size is not None or self.padding_mode != "zeros" or x.dim() != 4:
            return super().forward(x, output_size)
        one_pixel = (
            x.shape[-2:] == (1, 1)
            and self.groups == 1
            and self.padding == (0, 0)
            and self.output_padding == (0, 0)
            and self.dilation == (1, 1)
        )
        parts = spectral_norm_on_output(self, x)
        if parts is None and not one_pixel:
            return super().forward(x, output_size)
        weight, sigma = parts if parts is not None else (self.weight, None)
        if one_pixel:
            out = conv_transpose2d_1x1(x, weight)
        else:
            out = F.conv_transpose2d(
                x,
                weight,
                None,
                self.stride,
                self.padding,
                self.output_padding,
                self.groups,
                self.dilation,
            )
        return scale_and_bias(out, sigma, self.bias)


# --------------------------------------------------------------------------- attention
#: Up to this many positions attention takes the explicit path even with the fast paths
#: on: two batched matrix products beat a fused kernel's blocking overhead while the
#: (B, N, N) map is small; above, the fused kernel is faster and the map (growing as
#: N^2) costly. Chosen from ``benchmarks/bench_attention.py --parts policy`` at the
#: FAGAN 64x64 shapes (see benchmarks/RESULTS.md).
EXPLICIT_MAX_POSITIONS = 256


def use_fused_attention(positions: int) -> bool:
    """Whether attention over ``positions`` positions (no map kept) takes :func:`attend_fused`:
    the fast paths on and more than :data:`EXPLICIT_MAX_POSITIONS` positions."""
    return enabled() and positions > EXPLICIT_MAX_POSITIONS


def pad_to_head_dim(t: Tensor, dim: int) -> Tensor:
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


_FlashOps = tuple[Callable[..., tuple[Tensor, ...]], Callable[..., tuple[Tensor, ...]]]


def _cpu_flash_ops() -> _FlashOps | None:
    # Private API: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu and
    # ..._for_cpu_backward, the CPU flash kernel's own forward and backward operators.
    # Without them, attend_fused runs the public F.scaled_dot_product_attention and
    # recomputes it in the backward (the same result, more time).
    aten = torch.ops.aten
    try:
        return (
            aten._scaled_dot_product_flash_attention_for_cpu,
            aten._scaled_dot_product_flash_attention_for_cpu_backward,
        )
    except (AttributeError, RuntimeError):
        return None


class FusedPaddedAttention(torch.autograd.Function):
    """Fused attention on zero-padded (B, 1, N, dim) inputs that keeps only the unpadded
    q, k, v for its backward; used through :func:`attend_fused`.

    ``F.scaled_dot_product_attention`` would keep its zero-padded q, k, v (at the FAGAN
    64x64 shapes q and k grow 8-21x by the padding) and, on the CPU, has no double
    backward (WGAN-GP's gradient penalty needs one). Here:

    * with the CPU flash operators (``flash_ops``), the kernel's own forward and
      backward are called directly (no recomputation); the backward re-pads the saved
      inputs;
    * otherwise the forward runs the public SDPA without a graph and the backward
      recomputes it with one (activation checkpointing of the attention alone);
    * when the backward itself must be differentiable (``create_graph=True``), it is
      computed through the plain explicit path (an N x N map, as any double backward
      of attention needs).
    """

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,  # type: ignore[override]
        flash_ops: _FlashOps | None,
    ) -> Tensor:
        dim = -(-max(q.shape[-1], v.shape[-1]) // 8) * 8
        padded = [pad_to_head_dim(t, dim) for t in (q, k, v)]
        if flash_ops is not None:
            out, logsumexp = flash_ops[0](*padded, 0.0, False, scale=1.0)
            ctx.save_for_backward(q, k, v, out, logsumexp)
        else:
            out = F.scaled_dot_product_attention(*padded, scale=1.0)
            ctx.save_for_backward(q, k, v)
        ctx.dim, ctx.flash_ops = dim, flash_ops
        return out  # (B, 1, N, dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, *kernel_state = ctx.saved_tensors
        cq, cv = q.shape[-1], v.shape[-1]
        wanted = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            # (imported here: fagan.layers.attention imports this module)
            from fagan.layers.attention import attend_explicit

            inputs = [t for t, need in zip((q, k, v), wanted, strict=True) if need]
            out = attend_explicit(q, k, v)[0]
            found = iter(
                torch.autograd.grad(out, inputs, grad.squeeze(1)[..., :cv], create_graph=True)
            )
            return (*(next(found) if need else None for need in wanted), None)
        if ctx.flash_ops is not None:
            padded = [pad_to_head_dim(t, ctx.dim) for t in (q, k, v)]
            out, logsumexp = kernel_state
            grads = ctx.flash_ops[1](
                grad.contiguous(), *padded, out, logsumexp, 0.0, False, scale=1.0
            )
        else:
            with torch.enable_grad():
                padded = [
                    pad_to_head_dim(t.detach(), ctx.dim).requires_grad_(True) for t in (q, k, v)
                ]
                out = F.scaled_dot_product_attention(*padded, scale=1.0)
            grads = torch.autograd.grad(out, padded, grad)
        sizes = (cq, cq, cv)
        return (
            *(
                g.squeeze(1)[..., :c] if need else None
                for g, c, need in zip(grads, sizes, wanted, strict=True)
            ),
            None,
        )


def attend_fused(q: Tensor, k: Tensor, v: Tensor, *, cpu_kernels: bool = True) -> Tensor:
    """``softmax(q k^T) v`` (unscaled) through a fused kernel: no N x N map, forward or backward.

    Equals ``attention.attend_explicit``: q, k and v are zero-padded to one head dim
    (rounded up to a multiple of 8, which CUDA's fused kernels want); zero channels
    leave every dot product unchanged, and the value's padded output channels are
    sliced away. Under autocast the inputs are cast to the autocast dtype first, as
    SDPA does. Used by ``attention.attend`` above :data:`EXPLICIT_MAX_POSITIONS`
    positions, where the map would cost more time and memory than the kernel.

    Args:
        q: queries (B, N, Cq).
        k: keys (B, N, Cq).
        v: values (B, N, Cv).
        cpu_kernels: on the CPU, call the flash kernel's operators directly where torch
            has them (False: the portable public-SDPA path used on other devices).

    Returns:
        The attended values (B, N, Cv).
    """
    device = q.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    flash_ops = _cpu_flash_ops() if cpu_kernels and device == "cpu" else None
    out = FusedPaddedAttention.apply(q, k, v, flash_ops).squeeze(1)
    # no slice when nothing was padded: its backward would allocate and zero-fill a
    # padded gradient and copy into it
    return out if out.shape[-1] == v.shape[-1] else out[..., : v.shape[-1]]


# --------------------------------------------------------------------------- activations
def activate_inplace(activation: nn.Module, x: Tensor) -> Tensor:
    """``activation(x)``, overwriting ``x`` when the fast paths are on and the activation has
    an in-place form with a backward (ReLU, LeakyReLU with a positive slope); out of
    place otherwise.

    For tensors that nothing else needs for its backward (a convolution's or batch
    norm's output). It is equal because these activations' backward can be computed
    from their output, which autograd keeps anyway for the next layer: in place it keeps
    one tensor instead of two.
    """
    if enabled():
        if type(activation) is nn.ReLU:
            return F.relu_(x)
        if type(activation) is nn.LeakyReLU and activation.negative_slope > 0:
            return F.leaky_relu_(x, activation.negative_slope)
    return activation(x)
