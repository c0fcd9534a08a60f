"""Convolution blocks: (transposed) convolution, optional spectral and batch norm, activation.

A block is an ``nn.Sequential`` of ``conv[, batch_norm], activation`` exactly as
attn-gan-pytorch laid it out, so saved state dicts keep their ``model.i.0.*`` /
``model.i.1.*`` keys.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


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
        conv_type = nn.ConvTranspose2d if transpose else nn.Conv2d
        conv = conv_type(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        if use_spectral_norm:
            # dim=0 as the original's SpectralNorm (w.view(w.shape[0], -1)), also when transposed
            conv = spectral_norm(conv, dim=0)
        layers: list[nn.Module] = [conv]
        if use_batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(activation)
        super().__init__(*layers)
