"""Generator and Discriminator assembled from validated architecture specs.

Both wrap an ``nn.Sequential`` named ``model`` whose indices are the config's layer
indices, as in attn-gan-pytorch, so state-dict keys (``model.3.query_conv.weight``)
line up with the original's.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from fagan.config import (
    BatchNormSpec,
    ConvSpec,
    DropoutSpec,
    FullAttentionSpec,
    IgnoreAttnMapsSpec,
    LayerSpec,
    NetworkSpec,
    SelfAttentionSpec,
)
from fagan.errors import FaganError
from fagan.layers import ConvBlock, FullAttention, SelfAttention, attention_layers


def _conv(spec: ConvSpec) -> nn.Module:
    return ConvBlock(
        spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
        activation=spec.activation.build(), transpose=spec.transpose, bias=spec.bias,
        use_spectral_norm=spec.spectral_norm, use_batch_norm=spec.batch_norm,
    )


def _full_attention(spec: FullAttentionSpec) -> nn.Module:
    return FullAttention(
        spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
        transpose=spec.transpose, squeeze_factor=spec.squeeze_factor, bias=spec.bias,
        use_spectral_norm=spec.use_spectral_norm, use_batch_norm=spec.use_batch_norm,
        activation=None if spec.activation is None else spec.activation.build(),
    )


def _self_attention(spec: SelfAttentionSpec) -> nn.Module:
    return SelfAttention(
        spec.channels, squeeze_factor=spec.squeeze_factor, bias=spec.bias,
        activation=None if spec.activation is None else spec.activation.build(),
    )


_BUILDERS: dict[type, Callable[..., nn.Module]] = {
    ConvSpec: _conv,
    FullAttentionSpec: _full_attention,
    SelfAttentionSpec: _self_attention,
    DropoutSpec: lambda spec: nn.Dropout2d(p=spec.drop_prob),
    BatchNormSpec: lambda spec: nn.BatchNorm2d(spec.num_channels),
    IgnoreAttnMapsSpec: lambda spec: nn.Identity(),
}


def build_layer(spec: LayerSpec) -> nn.Module:
    """Builds the module for one layer spec."""
    return _BUILDERS[type(spec)](spec)


# Whole-network errors name the layer and field to change, like every config error.
def _first_channel_field(spec: NetworkSpec) -> str:
    """``<file>: architecture[i]: field '...'`` of the layer that sets the input channels."""
    for index, layer in enumerate(spec.layers):
        if isinstance(layer, BatchNormSpec):
            return f"{spec.source}: architecture[{index}]: field 'num_channels'"
        if isinstance(layer, (ConvSpec, FullAttentionSpec, SelfAttentionSpec)):
            return f"{spec.source}: architecture[{index}]: field 'channels'"
    return spec.source


def _last_channel_field(spec: NetworkSpec) -> str:
    """The same for the layer that sets the output channels (the last convolution)."""
    for index in reversed(range(len(spec.layers))):
        if isinstance(spec.layers[index], (ConvSpec, FullAttentionSpec)):
            return f"{spec.source}: architecture[{index}]: field 'channels'"
    return _first_channel_field(spec)


def _last_sizing_layer(spec: NetworkSpec) -> int:
    """Index of the last layer that changes the spatial size (a convolution)."""
    for index in reversed(range(len(spec.layers))):
        if isinstance(spec.layers[index], (ConvSpec, FullAttentionSpec)):
            return index
    return len(spec.layers) - 1


def _size_field(spec: NetworkSpec, shape: tuple[int, int, int]) -> str:
    """The layer and field behind a wrong output size.

    The first layer whose output is not square (and its first non-square pair among
    kernel_dims, stride, padding), else the last layer that changes the size.
    """
    for index in range(len(spec.layers)):
        _, height, width = NetworkSpec(spec.layers[: index + 1], spec.source).output_shape(*shape)
        layer = spec.layers[index]
        if height != width and isinstance(layer, (ConvSpec, FullAttentionSpec)):
            pairs = {"kernel_dims": layer.kernel_size, "stride": layer.stride,
                     "padding": layer.padding}
            field = next((k for k, v in pairs.items() if v[0] != v[1]), "kernel_dims")
            return f"{spec.source}: architecture[{index}]: field '{field}'"
    return f"{spec.source}: architecture[{_last_sizing_layer(spec)}]: field 'kernel_dims'"


class Network(nn.Module):
    """A sequence of layers built from a :class:`NetworkSpec`."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = nn.Sequential(*(build_layer(layer) for layer in spec.layers))

    def gammas(self) -> dict[str, float]:
        """The mixing scalar ``g`` of every attention layer, by layer name."""
        return {name: float(layer.gamma.detach()) for name, layer in attention_layers(self).items()}


class Generator(Network):
    """Latent vectors (B, latent_size) -> images (B, 3, S, S) in [-1, 1].

    Raises:
        FaganError: if the first layer does not take ``latent_size`` channels or the
            output is not a square RGB image.
    """

    def __init__(self, spec: NetworkSpec, latent_size: int = 128) -> None:
        if spec.in_channels != latent_size:
            raise FaganError(
                f"{_first_channel_field(spec)}: the generator's first layer takes "
                f"{spec.in_channels} channels but the latent size is {latent_size} (set "
                f"--latent_size {spec.in_channels} or change the config)"
            )
        channels, height, width = spec.output_shape(latent_size, 1, 1)
        if channels != 3 or height != width or height < 4:
            where = (_last_channel_field(spec) if channels != 3
                     else _size_field(spec, (latent_size, 1, 1)))
            raise FaganError(
                f"{where}: the generator's output is not an image: a latent vector "
                f"becomes {channels}x{height}x{width}, expected 3xSxS (RGB, square, S >= 4)"
            )
        super().__init__(spec)
        self.latent_size = latent_size
        self.image_size = height

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z.reshape(z.shape[0], self.latent_size, 1, 1))


def infer_image_size(spec: NetworkSpec) -> int | None:
    """The smallest image size (4..1024) that ``spec`` reduces to one logit, if any."""
    for size in range(4, 1025):
        try:
            if spec.output_shape(3, size, size) == (1, 1, 1):
                return size
        except FaganError:
            continue
    return None


class Discriminator(Network):
    """Images (B, 3, S, S) -> logits (B,).

    Args:
        spec: the architecture.
        image_size: the input size S; inferred from the architecture when None.

    Raises:
        FaganError: if the network does not take RGB images or does not reduce an
            S x S image to a single logit.
    """

    def __init__(self, spec: NetworkSpec, image_size: int | None = None) -> None:
        if spec.in_channels != 3:
            raise FaganError(
                f"{_first_channel_field(spec)}: the discriminator's first layer takes "
                f"{spec.in_channels} channels; images have 3 (RGB)"
            )
        if image_size is None:
            image_size = infer_image_size(spec)
            if image_size is None:
                where = (_last_channel_field(spec) if spec.out_channels != 1
                         else f"{spec.source}: architecture[{_last_sizing_layer(spec)}]: "
                         "field 'kernel_dims'")
                raise FaganError(
                    f"{where}: the discriminator does not reduce any square RGB image "
                    "to a single logit (1x1x1 output)"
                )
        try:
            shape = spec.output_shape(3, image_size, image_size)
        except FaganError as error:
            raise FaganError(f"{error}; the images are {image_size}x{image_size}") from None
        if shape != (1, 1, 1):
            where = (_last_channel_field(spec) if shape[0] != 1
                     else _size_field(spec, (3, image_size, image_size)))
            raise FaganError(
                f"{where}: the discriminator does not reduce a 3x{image_size}x{image_size} "
                f"image to logits: it gives {shape[0]}x{shape[1]}x{shape[2]}, expected 1x1x1"
            )
        super().__init__(spec)
        self.image_size = image_size

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).reshape(x.shape[0])
