"""Convolution blocks: (transposed) convolution, optional spectral and batch norm, activation.

A block is an ``nn.Sequential`` of ``conv[, batch_norm], activation`` exactly as
attn-gan-pytorch laid it out, so saved state dicts keep their ``model.i.0.*`` /
``model.i.1.*`` keys. Its convolution comes from :func:`make_conv`, which may take
fagan's fast paths (:mod:`fagan.layers.fast`).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from fagan.layers.fast import FastPathConv2d, FastPathConvTranspose2d, activate_inplace


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    *,
    transpose: bool = False,
    bias: bool = True,
    use_spectral_norm: bool = False,
) -> nn.Module:
    """A convolution (transposed if asked) with optional spectral norm that takes fagan's fast
    paths where they apply and are enabled.

    The module is a :class:`~fagan.layers.fast.FastPathConv2d` or
    :class:`~fagan.layers.fast.FastPathConvTranspose2d`: an ``nn.Conv2d`` /
    ``nn.ConvTranspose2d`` with the same parameters and state-dict keys (plus
    ``spectral_norm``'s ``parametrizations.weight.*`` keys when normalised), computing
    the same function.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel (height, width).
        stride: stride (height, width).
        padding: padding (height, width).
        transpose: a transposed convolution.
        bias: with a bias.
        use_spectral_norm: normalise the weight by ``torch``'s ``spectral_norm``.

    Returns:
        The convolution module.
    """
    conv_type = FastPathConvTranspose2d if transpose else FastPathConv2d
    conv = conv_type(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
    # dim=0 as the original's SpectralNorm (w.view(w.shape[0], -1)), also when transposed
    return spectral_norm(conv, dim=0) if use_spectral_norm else conv


class ConvBlock(nn.Sequential):
    """``conv -> [BatchNorm2d] -> activation``, the conv from :func:`make_conv`."""

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
        layers: list[nn.Module] = [
            make_conv(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                transpose=transpose,
                bias=bias,
                use_spectral_norm=use_spectral_norm,
            )
        ]
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
