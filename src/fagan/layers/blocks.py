"""Convolution blocks: (transposed) convolution, optional spectral and batch norm, activation.

A block is an ``nn.Sequential`` of ``conv[, batch_norm], activation`` exactly as
attn-gan-pytorch laid it out, so saved state dicts keep their ``model.i.0.*`` /
``model.i.1.*`` keys.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with a fast path for a 1 x 1 input (a generator's first layer).

    From a single pixel (no padding, no output padding, no dilation, no groups) the
    transposed convolution is one matrix product: ``out[b, o, i, j] = sum_c x[b, c]
    W[c, o, i, j] + bias[o]``. PyTorch's deconvolution kernels are slow for it (the
    FAGAN generator's 128 -> 512 4x4 layer at batch 32, forward + backward on a 2-core CPU:
    6.8 ms as a deconvolution, 1.2 ms as a matrix product; the same numbers up to float
    rounding). Parameters, state-dict keys and every other case are ``nn.ConvTranspose2d``'s.
    """

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if (output_size is None and x.dim() == 4 and x.shape[-2:] == (1, 1)
                and self.groups == 1 and self.padding == (0, 0)
                and self.output_padding == (0, 0) and self.dilation == (1, 1)
                and self.padding_mode == "zeros"):
            weight = self.weight  # (in, out, kh, kw); spectrally normalised if registered
            out = (x.flatten(1) @ weight.flatten(1)).view(x.shape[0], *weight.shape[1:])
            if self.bias is not None:
                out = out + self.bias.view(1, -1, 1, 1).to(out.dtype)
            return out
        return super().forward(x, output_size)


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
        conv_type = ConvTranspose2d if transpose else nn.Conv2d
        conv = conv_type(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        if use_spectral_norm:
            # dim=0 as the original's SpectralNorm (w.view(w.shape[0], -1)), also when transposed
            conv = spectral_norm(conv, dim=0)
        layers: list[nn.Module] = [conv]
        if use_batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(activation)
        super().__init__(*layers)
