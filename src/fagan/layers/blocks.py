"""Convolution blocks: (transposed) convolution, optional spectral and batch norm, activation.

A block is an ``nn.Sequential`` of ``conv[, batch_norm], activation`` exactly as
attn-gan-pytorch laid it out, so saved state dicts keep their ``model.i.0.*`` /
``model.i.1.*`` keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from fagan.layers.activations import activate_inplace

try:  # the class behind spectral_norm(); private, so its absence only disables a shortcut
    from torch.nn.utils.parametrizations import _SpectralNorm
except ImportError:  # pragma: no cover - other torch versions
    _SpectralNorm = None  # type: ignore[assignment,misc]

_SN_ATTRIBUTES = ("_u", "_v", "_power_method", "n_power_iterations", "dim")


def _spectral_parts(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(W, sigma)`` for a convolution whose spectral norm is cheaper applied to its output.

    ``spectral_norm`` computes ``conv(x, W / sigma) + b``. For a weight with more elements
    than the input (the FAGAN 64x64 networks' 2M-weight layers on 4x4 and 8x8 maps), the
    equal ``conv(x, W) / sigma + b`` moves far less memory: no weight-sized division
    forward and backward, and under autocast the cast of ``W`` (a leaf) is cached across
    passes. ``sigma`` and the power iteration are exactly ``_SpectralNorm.forward``'s
    (same ``u``/``v`` updates in training mode, gradients through ``sigma``), so
    parameters, buffers and state dicts are untouched; results agree up to float rounding.

    Returns None (use the module's normal path) for anything else: no spectral norm,
    another parametrization, ``dim`` other than 0, a weight smaller than the input.
    """
    if _SpectralNorm is None or not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations.weight  # type: ignore[union-attr]
    if len(plist) != 1 or not isinstance(plist[0], _SpectralNorm):
        return None
    sn = plist[0]
    weight = plist.original
    if (not all(hasattr(sn, name) for name in _SN_ATTRIBUTES) or sn.dim != 0
            or weight.ndim != 4 or weight.numel() <= x.numel()):
        return None
    weight_mat = weight.flatten(1)
    if sn.training:
        sn._power_method(weight_mat, sn.n_power_iterations)
    u = sn._u.clone(memory_format=torch.contiguous_format)
    v = sn._v.clone(memory_format=torch.contiguous_format)
    return weight, torch.vdot(u, torch.mv(weight_mat, v))


def _scale_and_bias(out: Tensor, sigma: Tensor | None, bias: Tensor | None) -> Tensor:
    """``out / sigma + bias`` over the channel dim, each part where given."""
    if sigma is not None:
        out = out / sigma  # 0-dim sigma: out keeps its dtype (bf16 under autocast)
    return out if bias is None else out + bias.view(1, -1, 1, 1).to(out.dtype)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d``; spectrally normalised and with a weight larger than its input, the
    normalisation is applied to the output (see :func:`_spectral_parts`)."""

    def forward(self, x: Tensor) -> Tensor:
        parts = _spectral_parts(self, x) if self.padding_mode == "zeros" else None
        if parts is None:
            return super().forward(x)
        weight, sigma = parts
        out = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
        return _scale_and_bias(out, sigma, self.bias)


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with a fast path for a 1 x 1 input (a generator's first layer)
    and, like :class:`Conv2d`, the spectral norm applied to the output where cheaper.

    From a single pixel (no padding, no output padding, no dilation, no groups) the
    transposed convolution is one matrix product: ``out[b, o, i, j] = sum_c x[b, c]
    W[c, o, i, j] + bias[o]``. PyTorch's deconvolution kernels are slow for it (the
    FAGAN generator's 128 -> 512 4x4 layer at batch 32, forward + backward on a 2-core CPU:
    6.8 ms as a deconvolution, 1.2 ms as a matrix product; the same numbers up to float
    rounding). Parameters, state-dict keys and every other case are ``nn.ConvTranspose2d``'s.
    """

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or self.padding_mode != "zeros" or x.dim() != 4:
            return super().forward(x, output_size)
        one_pixel = (x.shape[-2:] == (1, 1) and self.groups == 1 and self.padding == (0, 0)
                     and self.output_padding == (0, 0) and self.dilation == (1, 1))
        parts = _spectral_parts(self, x)
        if parts is None and not one_pixel:
            return super().forward(x, output_size)
        weight, sigma = parts if parts is not None else (self.weight, None)
        if one_pixel:  # weight (in, out, kh, kw)
            out = (x.flatten(1) @ weight.flatten(1)).view(x.shape[0], *weight.shape[1:])
        else:
            out = F.conv_transpose2d(x, weight, None, self.stride, self.padding,
                                     self.output_padding, self.groups, self.dilation)
        return _scale_and_bias(out, sigma, self.bias)


class ConvBlock(nn.Sequential):
    """``conv -> [BatchNorm2d] -> activation``, the conv spectrally normalised if asked."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        *,
        activation: nn.Module,
        transpose: bool = False,
        bias: bool = True,
        use_spectral_norm: bool = False,
        use_batch_norm: bool = False,
    ) -> None:
        conv_type = ConvTranspose2d if transpose else Conv2d
        conv = conv_type(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        if use_spectral_norm:
            # dim=0 as the original's SpectralNorm (w.view(w.shape[0], -1)), also when transposed
            conv = spectral_norm(conv, dim=0)
        layers: list[nn.Module] = [conv]
        if use_batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(activation)
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        *layers, activation = self  # (slicing a Sequential would build a new ConvBlock)
        for layer in layers:
            x = layer(x)
        # a fresh convolution/batch-norm output: activated in place where possible
        return activate_inplace(activation, x)
