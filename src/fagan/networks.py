"""Generator and Discriminator assembled from validated architecture specs.

Both wrap an ``nn.Sequential`` named ``model`` whose indices are the config's layer
indices, as in attn-gan-pytorch, so state-dict keys (``model.3.query_conv.weight``)
line up with the original's.

Either network can be class-conditional, from any architecture spec, in one of two
schemes (``conditioning=``):

``"projection"``
    The generator's batch norms (in convolution blocks, in full attention layers'
    residual paths, standalone) become :class:`~fagan.layers.ConditionalBatchNorm2d`
    (per-class gain and bias); the discriminator adds the projection term
    ``<embed(y), phi(x)>`` to its logit (Miyato & Koyama 2018), ``phi(x)`` being the
    input of its last convolution summed over positions.
``"concat"``
    attn-gan-pytorch's ``ConditionalGenerator`` / ``ConditionalDiscriminator``: the
    condition vector (one-hot, or a learned embedding) is concatenated to the latent
    vector, and, tiled over the reduced feature map, to the input of the
    discriminator's last layer. The first (last) layer is built wider by the condition
    size; state-dict keys are the original's (``model.*``, ``last_module.*``).

Unconditional networks (``conditioning=None``) are built and run exactly as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
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
from fagan.layers.conditional import (
    ConditionalBatchNorm2d,
    ProjectionHead,
    check_conditioning,
    check_labels,
    condition_layers,
)


def _conv(spec: ConvSpec) -> nn.Module:
    return ConvBlock(
        spec.in_channels,
        spec.out_channels,
        spec.kernel_size,
        spec.stride,
        spec.padding,
        activation=spec.activation.build(),
        transpose=spec.transpose,
        bias=spec.bias,
        use_spectral_norm=spec.spectral_norm,
        use_batch_norm=spec.batch_norm,
    )


def _full_attention(spec: FullAttentionSpec) -> nn.Module:
    return FullAttention(
        spec.in_channels,
        spec.out_channels,
        spec.kernel_size,
        spec.stride,
        spec.padding,
        transpose=spec.transpose,
        squeeze_factor=spec.squeeze_factor,
        bias=spec.bias,
        use_spectral_norm=spec.use_spectral_norm,
        use_batch_norm=spec.use_batch_norm,
        activation=None if spec.activation is None else spec.activation.build(),
    )


def _self_attention(spec: SelfAttentionSpec) -> nn.Module:
    return SelfAttention(
        spec.channels,
        squeeze_factor=spec.squeeze_factor,
        bias=spec.bias,
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
            pairs = {
                "kernel_dims": layer.kernel_size,
                "stride": layer.stride,
                "padding": layer.padding,
            }
            field = next((k for k, v in pairs.items() if v[0] != v[1]), "kernel_dims")
            return f"{spec.source}: architecture[{index}]: field '{field}'"
    return f"{spec.source}: architecture[{_last_sizing_layer(spec)}]: field 'kernel_dims'"


# --------------------------------------------------------------------------- conditioning helpers
def _widened(layer: LayerSpec, extra: int) -> LayerSpec:
    """``layer`` (a convolution or full attention) taking ``extra`` more input channels."""
    return dataclasses.replace(layer, in_channels=layer.in_channels + extra)


def _first_input_layer(spec: NetworkSpec) -> int:
    """Index of the first layer that reads the input's channels."""
    for index, layer in enumerate(spec.layers):
        if isinstance(layer, (ConvSpec, FullAttentionSpec, SelfAttentionSpec, BatchNormSpec)):
            return index
    return 0


def _has_batch_norm(spec: NetworkSpec) -> bool:
    return any(
        isinstance(layer, BatchNormSpec)
        or (isinstance(layer, ConvSpec) and layer.batch_norm)
        or (isinstance(layer, FullAttentionSpec) and layer.use_batch_norm)
        for layer in spec.layers
    )


def _replace_batch_norms(model: nn.Module, num_classes: int, shared_dim: int | None) -> int:
    """Replaces every ``BatchNorm2d`` in ``model`` by a conditional one; returns how many."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    for name, bn in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(
            parent,
            child,
            ConditionalBatchNorm2d(
                bn.num_features,
                num_classes,
                shared_dim=shared_dim,
                eps=bn.eps,
                momentum=bn.momentum,
            ),
        )
    return len(found)


class Network(nn.Module):
    """A sequence of layers built from a :class:`NetworkSpec`.

    Attributes:
        spec: the architecture as given.
        num_classes: the number of classes of a conditional network, else None.
        conditioning: ``"projection"``, ``"concat"`` or None.
        embedding_dim: the class embedding size (see :class:`Generator`), or None.
        validate_labels: check every class label's range on each forward pass (one
            device synchronisation); a caller that validated its labels once (a
            dataset's) may turn it off.
    """

    def __init__(self, spec: NetworkSpec, layers: Sequence[LayerSpec] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes: int | None = None
        self.conditioning: str | None = None
        self.embedding_dim: int | None = None
        self.validate_labels = True
        layers = spec.layers if layers is None else layers
        self.model = nn.Sequential(*(build_layer(layer) for layer in layers))

    def gammas(self) -> dict[str, float]:
        """The mixing scalar ``g`` of every attention layer, by layer name."""
        return {name: float(layer.gamma.detach()) for name, layer in attention_layers(self).items()}

    @property
    def conditioning_options(self) -> dict[str, int | str | None]:
        """``num_classes``, ``conditioning`` and ``embedding_dim``: the keyword arguments
        that, with the spec, rebuild this network (e.g. from a checkpoint's metadata)."""
        return {
            "num_classes": self.num_classes,
            "conditioning": self.conditioning,
            "embedding_dim": self.embedding_dim,
        }

    def _condition_vectors(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        """The concat scheme's condition (B, K): one-hot labels or their learned embedding."""
        embedding = getattr(self, "class_embedding", None)
        vectors = F.one_hot(y, self.num_classes) if embedding is None else embedding(y)
        return vectors.to(dtype)

    def _labels(self, y: Tensor | None, inputs: Tensor, who: str) -> Tensor | None:
        return check_labels(
            y,
            inputs.shape[0],
            self.num_classes,
            who,
            device=inputs.device,
            check_range=self.validate_labels,
        )


class Generator(Network):
    """Latent vectors (B, latent_size) [and class labels (B,)] -> images (B, 3, S, S) in [-1, 1].

    Args:
        spec: the architecture; its first layer takes ``latent_size`` channels (for
            ``concat`` conditioning it is widened by the condition size; a spec whose
            first layer already takes ``latent_size + K``, as the original's
            conditional configs, is used as it is).
        latent_size: the size of the latent (noise) vectors ``z``.
        num_classes: the number of classes of a class-conditional generator.
        conditioning: ``"projection"`` (conditional batch norms) or ``"concat"`` (the
            condition concatenated to ``z``), or None for an unconditional generator.
        embedding_dim: ``projection``: the size of a class embedding shared by all
            conditional batch norms (BigGAN), None for one embedding per layer
            (mimicry); ``concat``: the size of a learned class embedding, None for
            one-hot vectors (K = num_classes).

    Raises:
        FaganError: if the first layer does not take ``latent_size`` channels, the
            output is not a square RGB image, the conditioning arguments are invalid,
            or ``projection`` conditioning finds no batch norm to condition.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        latent_size: int = 128,
        num_classes: int | None = None,
        conditioning: str | None = None,
        *,
        embedding_dim: int | None = None,
    ) -> None:
        scheme = check_conditioning(num_classes, conditioning, embedding_dim, "generator")
        condition_size = (embedding_dim or num_classes or 0) if scheme == "concat" else 0
        layers = spec.layers
        if scheme == "concat" and spec.in_channels == latent_size:
            first = _first_input_layer(spec)
            if not isinstance(layers[first], (ConvSpec, FullAttentionSpec)):
                raise FaganError(
                    f"{spec.source}: architecture[{first}]: concat conditioning widens the "
                    "generator's first layer by the condition size, and this layer is not a "
                    "convolution or full attention"
                )
            layers = (
                *layers[:first],
                _widened(layers[first], condition_size),
                *layers[first + 1 :],
            )
        elif spec.in_channels != latent_size + condition_size:
            concat = (
                f" (or {latent_size + condition_size}: the latent size plus the "
                f"{condition_size} condition channels)"
                if condition_size
                else ""
            )
            raise FaganError(
                f"{_first_channel_field(spec)}: the generator's first layer takes "
                f"{spec.in_channels} channels but the latent size is {latent_size}{concat} "
                f"(set --latent_size {spec.in_channels - condition_size} or change the config)"
            )
        if scheme == "projection" and not _has_batch_norm(spec):
            raise FaganError(
                f"{spec.source}: projection conditioning replaces the generator's batch norms "
                "by class-conditional ones, and this architecture has none (use concat "
                "conditioning or add batch_norm to a layer)"
            )
        built = NetworkSpec(tuple(layers), spec.source)
        channels, height, width = built.output_shape(latent_size + condition_size, 1, 1)
        if channels != 3 or height != width or height < 4:
            where = (
                _last_channel_field(spec)
                if channels != 3
                else _size_field(built, (latent_size + condition_size, 1, 1))
            )
            raise FaganError(
                f"{where}: the generator's output is not an image: a latent vector "
                f"becomes {channels}x{height}x{width}, expected 3xSxS (RGB, square, S >= 4)"
            )
        super().__init__(spec, layers)
        self.latent_size = latent_size
        self.image_size = height
        if scheme is None:
            return
        self.num_classes, self.conditioning, self.embedding_dim = num_classes, scheme, embedding_dim
        self.condition_size = condition_size
        if scheme == "projection":
            _replace_batch_norms(self.model, num_classes, embedding_dim)
            if embedding_dim is not None:  # BigGAN's shared class embedding
                self.class_embedding = nn.Embedding(num_classes, embedding_dim)
        elif embedding_dim is not None:
            self.class_embedding = nn.Embedding(num_classes, embedding_dim)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images from latent vectors ``z`` (B, latent_size) and, if conditional, labels ``y`` (B,).

        Raises:
            FaganError: labels missing for a conditional generator, given to an
                unconditional one, or outside ``[0, num_classes)``.
        """
        batch = z.shape[0]
        y = self._labels(y, z, "generator")
        if y is None:
            return self.model(z.reshape(batch, self.latent_size, 1, 1))
        if self.conditioning == "concat":
            condition = self._condition_vectors(y, z.dtype)  # (B, K)
            x = torch.cat((z.reshape(batch, self.latent_size), condition), dim=1)
            return self.model(x.reshape(batch, self.latent_size + self.condition_size, 1, 1))
        embedding = getattr(self, "class_embedding", None)
        condition = y if embedding is None else embedding(y)  # labels (B,) or vectors (B, d)
        layers = condition_layers(self.model)
        for layer in layers:
            layer.condition = condition
        try:
            return self.model(z.reshape(batch, self.latent_size, 1, 1))
        finally:  # no label tensor (or its graph) outlives the pass
            for layer in layers:
                layer.condition = None


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
    """Images (B, 3, S, S) [and class labels (B,)] -> logits (B,).

    Args:
        spec: the architecture.
        image_size: the input size S; inferred from the architecture when None.
        num_classes: the number of classes of a class-conditional discriminator.
        conditioning: ``"projection"``: ``logit = D(x) + <embed(y), phi(x)>`` where
            ``D(x)`` is the unconditional network's logit and ``phi(x)`` (B, C) is the
            input of its last convolution (``architecture[k]``, the layer that reduces
            the map to 1x1; for fagan64 the 512x4x4 map after the 4x4 self-attention)
            summed over positions — for a 1x1 map ``D(x)`` is the paper's ``psi(phi)``,
            for a kxk one its convolution generalises it; ``embed`` (num_classes x C)
            is spectrally normalised. ``"concat"``: the condition vector, tiled over
            the map entering the last layer, is concatenated to it (the last layer is
            built wider by K, as attn-gan-pytorch's ``ConditionalDiscriminator``).
            None: unconditional.
        embedding_dim: ``concat`` only: the size of a learned class embedding, None
            for one-hot vectors.

    Raises:
        FaganError: if the network does not take RGB images or does not reduce an
            S x S image to a single logit, or the conditioning arguments are invalid.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        image_size: int | None = None,
        num_classes: int | None = None,
        conditioning: str | None = None,
        *,
        embedding_dim: int | None = None,
    ) -> None:
        scheme = check_conditioning(num_classes, conditioning, embedding_dim, "discriminator")
        if scheme == "projection" and embedding_dim is not None:
            raise FaganError(
                "the projection discriminator's class embedding has the size of its "
                f"features; embedding_dim={embedding_dim} applies to concat conditioning "
                "or to the generator"
            )
        if spec.in_channels != 3:
            raise FaganError(
                f"{_first_channel_field(spec)}: the discriminator's first layer takes "
                f"{spec.in_channels} channels; images have 3 (RGB)"
            )
        if image_size is None:
            image_size = infer_image_size(spec)
            if image_size is None:
                where = (
                    _last_channel_field(spec)
                    if spec.out_channels != 1
                    else f"{spec.source}: architecture[{_last_sizing_layer(spec)}]: "
                    "field 'kernel_dims'"
                )
                raise FaganError(
                    f"{where}: the discriminator does not reduce any square RGB image "
                    "to a single logit (1x1x1 output)"
                )
        try:
            shape = spec.output_shape(3, image_size, image_size)
        except FaganError as error:
            raise FaganError(f"{error}; the images are {image_size}x{image_size}") from None
        if shape != (1, 1, 1):
            where = (
                _last_channel_field(spec)
                if shape[0] != 1
                else _size_field(spec, (3, image_size, image_size))
            )
            raise FaganError(
                f"{where}: the discriminator does not reduce a 3x{image_size}x{image_size} "
                f"image to logits: it gives {shape[0]}x{shape[1]}x{shape[2]}, expected 1x1x1"
            )
        last = _last_sizing_layer(spec)
        if scheme == "concat" and last != len(spec.layers) - 1:
            raise FaganError(
                f"{spec.source}: architecture[{last + 1}]: concat conditioning feeds the "
                f"condition to the discriminator's last layer, and architecture[{last}] "
                "(its last convolution) is followed by other layers"
            )
        super().__init__(spec, spec.layers[:last] if scheme == "concat" else None)
        self.image_size = image_size
        if scheme is None:
            return
        self.num_classes, self.conditioning, self.embedding_dim = num_classes, scheme, embedding_dim
        #: index of the last convolution, whose input is phi (projection) or gets the condition
        self.head_index = last
        head_input = NetworkSpec(spec.layers[:last], spec.source).output_shape(
            3, image_size, image_size
        )
        if scheme == "projection":
            self.projection = ProjectionHead(num_classes, head_input[0])
            return
        self.condition_size = embedding_dim or num_classes
        self.last_module = build_layer(_widened(spec.layers[last], self.condition_size))
        if embedding_dim is not None:
            self.class_embedding = nn.Embedding(num_classes, embedding_dim)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Logits (B,) for images ``x`` (B, 3, S, S) and, if conditional, labels ``y`` (B,).

        Raises:
            FaganError: labels missing for a conditional discriminator, given to an
                unconditional one, or outside ``[0, num_classes)``.
        """
        batch = x.shape[0]
        y = self._labels(y, x, "discriminator")
        if y is None:
            return self.model(x).reshape(batch)
        if self.conditioning == "concat":
            features = self.model(x)  # (B, C, H', W')
            condition = self._condition_vectors(y, features.dtype)[:, :, None, None]
            condition = condition.expand(-1, -1, *features.shape[2:])  # (B, K, H', W')
            return self.last_module(torch.cat((features, condition), dim=1)).reshape(batch)
        phi = None
        for index, layer in enumerate(self.model):
            if index == self.head_index:
                phi = x.float().sum(dim=(2, 3))  # (B, C)
            x = layer(x)
        return x.reshape(batch) + self.projection(phi, y)
