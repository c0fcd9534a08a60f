"""Architecture configuration: ``.conf``/YAML files -> frozen, validated layer specs.

The format is the original FAGAN project's (``attn-gan-pytorch``): a YAML mapping with
an ``architecture`` list, one mapping per layer, tuples written as strings such as
``"(128, 512)"``. The original files are read unchanged. YAML lists (``[4, 4]``) and
single integers (``4`` for ``(4, 4)``) are accepted too.

Every check lives here, and every problem is reported as one :class:`FaganError`
naming the file, the layer (``architecture[i]``, counted from 0 like the module
indices ``model.i`` of a saved state dict) and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fagan.errors import FaganError, brief_repr, brief_text
from fagan.layers.activations import ACTIVATION_FORMS, ActivationSpec, parse_activation

Pair = tuple[int, int]

#: The architectures shipped with the package, one folder each with gen.yaml and dis.yaml.
BUILTIN_CONFIGS = Path(__file__).resolve().parent / "configs"
#: The roles a configuration file plays: the generator's or the discriminator's.
ROLES = ("gen", "dis")

# Limits past which a configuration is refused before it is looked at: an architecture
# has a few hundred values nested 4 levels deep in a file of a few kilobytes.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 50


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class ConvSpec:
    """A (transposed) convolution, optionally spectrally normalised, batch-normed, activated."""

    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair
    padding: Pair
    bias: bool
    batch_norm: bool
    spectral_norm: bool
    activation: ActivationSpec
    transpose: bool = False


@dataclass(frozen=True)
class FullAttentionSpec:
    """The FAGAN full attention layer (k x k query/key/value/residual convolutions)."""

    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair
    padding: Pair
    bias: bool
    use_spectral_norm: bool
    use_batch_norm: bool
    squeeze_factor: int
    transpose: bool
    activation: ActivationSpec | None


@dataclass(frozen=True)
class SelfAttentionSpec:
    """The SAGAN self-attention layer (1 x 1 query/key/value, residual input)."""

    channels: int
    bias: bool
    squeeze_factor: int
    activation: ActivationSpec | None


@dataclass(frozen=True)
class DropoutSpec:
    """Channel dropout (``Dropout2d``)."""

    drop_prob: float


@dataclass(frozen=True)
class BatchNormSpec:
    """A standalone ``BatchNorm2d``."""

    num_channels: int


@dataclass(frozen=True)
class IgnoreAttnMapsSpec:
    """Kept for the original's module numbering; a no-op here (layers return tensors)."""


LayerSpec = (
    ConvSpec
    | FullAttentionSpec
    | SelfAttentionSpec
    | DropoutSpec
    | BatchNormSpec
    | IgnoreAttnMapsSpec
)


@dataclass(frozen=True)
class NetworkSpec:
    """A parsed architecture file.

    Attributes:
        layers: the layer specs in order.
        source: where it was read from (for messages).
        conditioning: the class conditioning the file asks ``fagan train`` for
            (``"projection"`` or ``"concat"``; its optional top-level ``conditioning:``
            key), or None.
    """

    layers: tuple[LayerSpec, ...]
    source: str = "<config>"
    conditioning: str | None = None

    @property
    def in_channels(self) -> int:
        """Channels the first channel-changing layer expects."""
        for layer in self.layers:
            channels = _in_channels(layer)
            if channels is not None:
                return channels
        raise FaganError(f"{self.source}: the architecture has no convolution or attention layer")

    @property
    def out_channels(self) -> int:
        """Channels the last channel-changing layer produces."""
        for layer in reversed(self.layers):
            channels = _out_channels(layer)
            if channels is not None:
                return channels
        raise FaganError(f"{self.source}: the architecture has no convolution or attention layer")

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """Propagates a (C, H, W) input shape through the layers.

        Raises:
            FaganError: naming the first layer whose input does not fit.
        """
        shape = (channels, height, width)
        for index, layer in enumerate(self.layers):
            shape = _layer_output_shape(layer, shape, f"{self.source}: architecture[{index}]")
        return shape


# --------------------------------------------------------------------------- schema
# For each layer name: (required keys, optional keys {name: default}, aliases {alias: key}).
_SCHEMA: dict[str, tuple[tuple[str, ...], dict[str, Any], dict[str, str]]] = {
    "conv": (
        ("channels", "kernel_dims", "stride", "padding", "bias", "batch_norm", "activation"),
        {"spectral_norm": False},
        {"use_spectral_norm": "spectral_norm", "use_batch_norm": "batch_norm"},
    ),
    "full_attention": (
        (
            "channels",
            "kernel_dims",
            "stride",
            "padding",
            "bias",
            "use_spectral_norm",
            "use_batch_norm",
            "squeeze_factor",
            "transpose_conv",
        ),
        {"activation": None},
        {"spectral_norm": "use_spectral_norm", "batch_norm": "use_batch_norm"},
    ),
    "self_attention": (("channels", "bias", "squeeze_factor"), {"activation": None}, {}),
    "dropout": (("drop_prob",), {}, {}),
    "batch_norm": (("num_channels",), {}, {}),
    "ignore_attn_maps": ((), {}, {}),
}
_SCHEMA["conv_transpose"] = _SCHEMA["conv"]

LAYER_NAMES = tuple(sorted(_SCHEMA))

_INT = r"\s*([-+]?\d+)\s*"
_TUPLE = re.compile(rf"^\(?{_INT},{_INT}\)?$")
# Longer strings are not a tuple or an activation, and are not parsed to find out.
_MAX_TUPLE_TEXT = 64
_MAX_ACTIVATION_TEXT = 64
#: Values of a config's optional top-level 'conditioning:' key (what ``fagan train`` uses when
#: ``--conditioning`` is not given).
CONDITIONING_KEYS = ("projection", "concat", "none")


class _Field:
    """Reads typed values from one layer mapping, naming file/layer/field on failure."""

    def __init__(self, where: str, values: dict[str, Any]):
        self.where = where
        self.values = values

    def fail(self, key: str, problem: str) -> FaganError:
        return FaganError(f"{self.where}: field {_key(key)}: {problem}")

    def pair(self, key: str, *, minimum: int = 0) -> Pair:
        raw = self.values[key]
        if isinstance(raw, bool):
            raise self.fail(
                key, f'expected a pair of integers like "(4, 4)", got {brief_repr(raw)}'
            )
        if isinstance(raw, int):
            value = (raw, raw)
        elif (
            isinstance(raw, (list, tuple))
            and len(raw) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
        ):
            value = (raw[0], raw[1])
        elif (
            isinstance(raw, str)
            and len(raw) <= _MAX_TUPLE_TEXT
            and (match := _TUPLE.match(raw.strip()))
        ):
            value = (int(match.group(1)), int(match.group(2)))
        else:
            raise self.fail(
                key, f'malformed tuple {brief_repr(raw)}; expected two integers like "(4, 4)"'
            )
        if min(value) < minimum:
            raise self.fail(key, f"values must be >= {minimum}, got {brief_repr(value)}")
        return value

    def integer(self, key: str, *, minimum: int = 1) -> int:
        raw = self.values[key]
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.fail(key, f"expected an integer, got {brief_repr(raw)}")
        if raw < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {brief_repr(raw)}")
        return raw

    def boolean(self, key: str) -> bool:
        raw = self.values[key]
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        raise self.fail(key, f"expected True or False, got {brief_repr(raw)}")

    def probability(self, key: str) -> float:
        raw = self.values[key]
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw < 1:
            raise self.fail(key, f"expected a number in [0, 1), got {brief_repr(raw)}")
        return float(raw)

    def activation(self, key: str) -> ActivationSpec | None:
        raw = self.values[key]
        if raw is None:
            return None
        if isinstance(raw, str) and len(raw) <= _MAX_ACTIVATION_TEXT:
            try:
                return parse_activation(raw)
            except ValueError:
                pass
        raise self.fail(
            key, f"cannot parse activation {brief_repr(raw)}; expected {ACTIVATION_FORMS}"
        )


def _key(key: Any) -> str:
    """A field name as messages quote it: ``'kernel_dims'``, bounded."""
    return f"'{key}'" if isinstance(key, str) and len(key) <= 40 else brief_repr(key, 40)


def _parse_layer(where: str, raw: Any) -> LayerSpec:
    if not isinstance(raw, dict):
        raise FaganError(f"{where}: expected a mapping of fields, got {brief_repr(raw)}")
    if "name" not in raw:
        raise FaganError(f"{where}: field 'name': missing; one of {', '.join(LAYER_NAMES)}")
    name = raw["name"]
    if not isinstance(name, str) or name.lower() not in _SCHEMA:
        raise FaganError(
            f"{where}: field 'name': unknown layer {brief_repr(name)}; one of "
            f"{', '.join(LAYER_NAMES)}"
        )
    name = name.lower()
    where = f"{where} ({name})"
    required, optional, aliases = _SCHEMA[name]

    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "name":
            continue
        canonical = aliases.get(key, key) if isinstance(key, str) else key
        if canonical not in required and canonical not in optional:
            known = ", ".join(sorted((*required, *optional)))
            raise FaganError(f"{where}: field {_key(key)}: unknown key; {name} takes {known}")
        if canonical in values and values[canonical] != value:
            raise FaganError(
                f"{where}: field {_key(key)}: conflicts with '{canonical}' given as "
                f"{brief_repr(values[canonical])}"
            )
        values[canonical] = value
    for key in required:
        if key not in values:
            raise FaganError(f"{where}: field '{key}': missing")
    for key, default in optional.items():
        values.setdefault(key, default)

    f = _Field(where, values)
    if name in ("conv", "conv_transpose"):
        in_c, out_c = f.pair("channels", minimum=1)
        activation = f.activation("activation")
        if activation is None:
            raise f.fail("activation", "missing")
        return ConvSpec(
            in_channels=in_c,
            out_channels=out_c,
            kernel_size=f.pair("kernel_dims", minimum=1),
            stride=f.pair("stride", minimum=1),
            padding=f.pair("padding"),
            bias=f.boolean("bias"),
            batch_norm=f.boolean("batch_norm"),
            spectral_norm=f.boolean("spectral_norm"),
            activation=activation,
            transpose=name == "conv_transpose",
        )
    if name == "full_attention":
        in_c, out_c = f.pair("channels", minimum=1)
        squeeze = f.integer("squeeze_factor")
        if in_c // squeeze < 1:
            raise f.fail(
                "squeeze_factor",
                f"{squeeze} leaves no query/key channels for {in_c} input channels",
            )
        return FullAttentionSpec(
            in_channels=in_c,
            out_channels=out_c,
            kernel_size=f.pair("kernel_dims", minimum=1),
            stride=f.pair("stride", minimum=1),
            padding=f.pair("padding"),
            bias=f.boolean("bias"),
            use_spectral_norm=f.boolean("use_spectral_norm"),
            use_batch_norm=f.boolean("use_batch_norm"),
            squeeze_factor=squeeze,
            transpose=f.boolean("transpose_conv"),
            activation=f.activation("activation"),
        )
    if name == "self_attention":
        channels = f.integer("channels")
        squeeze = f.integer("squeeze_factor")
        if channels // squeeze < 1:
            raise f.fail(
                "squeeze_factor",
                f"{squeeze} leaves no query/key channels for {channels} channels",
            )
        return SelfAttentionSpec(
            channels=channels,
            bias=f.boolean("bias"),
            squeeze_factor=squeeze,
            activation=f.activation("activation"),
        )
    if name == "dropout":
        return DropoutSpec(drop_prob=f.probability("drop_prob"))
    if name == "batch_norm":
        return BatchNormSpec(num_channels=f.integer("num_channels"))
    return IgnoreAttnMapsSpec()


# --------------------------------------------------------------------------- shapes
def _in_channels(layer: LayerSpec) -> int | None:
    if isinstance(layer, (ConvSpec, FullAttentionSpec)):
        return layer.in_channels
    if isinstance(layer, SelfAttentionSpec):
        return layer.channels
    if isinstance(layer, BatchNormSpec):
        return layer.num_channels
    return None


def _out_channels(layer: LayerSpec) -> int | None:
    if isinstance(layer, (ConvSpec, FullAttentionSpec)):
        return layer.out_channels
    return _in_channels(layer)


def _layer_output_shape(
    layer: LayerSpec, shape: tuple[int, int, int], where: str
) -> tuple[int, int, int]:
    channels, height, width = shape
    _check_channels(layer, channels, where)
    if not isinstance(layer, (ConvSpec, FullAttentionSpec)):
        return shape
    sizes = []
    for size, k, s, p in zip(
        (height, width), layer.kernel_size, layer.stride, layer.padding, strict=True
    ):
        out = (size - 1) * s - 2 * p + k if layer.transpose else (size + 2 * p - k) // s + 1
        if out < 1:
            raise FaganError(
                f"{where}: field 'kernel_dims': a {height}x{width} input becomes empty "
                f"(kernel {layer.kernel_size}, stride {layer.stride}, padding {layer.padding})"
            )
        sizes.append(out)
    return layer.out_channels, sizes[0], sizes[1]


# --------------------------------------------------------------------------- size guard
def check_config_size(data: Any, source: str) -> None:
    """Refuses a loaded document too large or too deeply nested to be an architecture.

    Runs before anything else looks at ``data`` (a YAML document or a mapping from a
    training state). Containers met more than once (YAML aliases, shared references in a
    pickle) are counted each time they are met, as a full walk would see them, but
    measured once: an alias bomb is measured in time linear in its size on disk. No
    recursion, so any depth is measured without a ``RecursionError``.

    Raises:
        FaganError: more than :data:`MAX_CONFIG_VALUES` values once shared parts are
            expanded, nesting deeper than :data:`MAX_CONFIG_DEPTH`, or a container that
            holds itself.
    """
    measured: dict[int, int] = {}  # id of a finished container -> values it expands to
    on_path: set[int] = set()
    distinct = 0
    # one frame per open container: [container, iterator over its children, values so far]
    stack: list[list[Any]] = []

    def open_container(container: Any) -> None:
        nonlocal distinct
        distinct += 1
        if len(stack) >= MAX_CONFIG_DEPTH:
            raise FaganError(
                f"{source}: refusing the configuration: nested more than {MAX_CONFIG_DEPTH} "
                "levels deep (an architecture needs 4)"
            )
        on_path.add(id(container))
        stack.append([container, iter(_children(container)), 1])

    def add(values: int) -> None:
        stack[-1][2] += values
        if stack[-1][2] > MAX_CONFIG_VALUES or distinct > MAX_CONFIG_VALUES:
            raise FaganError(
                f"{source}: refusing the configuration: it expands to more than "
                f"{MAX_CONFIG_VALUES:,} values (YAML aliases and shared parts counted where "
                "they are used); an architecture has a few hundred"
            )

    if not isinstance(data, (dict, list, tuple)):
        return
    open_container(data)
    while stack:
        frame = stack[-1]
        child = next(frame[1], _DONE)
        if child is _DONE:
            stack.pop()
            on_path.discard(id(frame[0]))
            measured[id(frame[0])] = frame[2]
            if stack:
                add(frame[2])
        elif not isinstance(child, (dict, list, tuple)):
            add(1)
        elif id(child) in measured:
            add(measured[id(child)])
        elif id(child) in on_path:
            raise FaganError(
                f"{source}: refusing the configuration: it contains itself (a YAML anchor "
                "or shared reference used inside its own value)"
            )
        else:
            open_container(child)


_DONE = object()


def _children(container: dict | list | tuple) -> Any:
    if isinstance(container, dict):
        for key, value in container.items():
            yield key
            yield value
    else:
        yield from container


def _check_yaml_events(text: str, source: str) -> None:
    """:func:`check_config_size` on YAML text, from the parser's events, before the
    document is built.

    Building can itself blow up (merge keys ``<<: [*a, *a]``, whose entries some PyYAML
    versions copy level after level) or recurse past Python's limit (nesting), so the
    size and depth are measured on the event stream first, each anchor's expanded size
    recorded once.
    """
    anchors: dict[str, int | None] = {}  # anchor -> expanded size; None while still open
    # one entry per open collection: [values so far, its anchor]
    stack: list[list[Any]] = []

    def too_big() -> FaganError:
        return FaganError(
            f"{source}: refusing the configuration: it expands to more than "
            f"{MAX_CONFIG_VALUES:,} values (YAML aliases and shared parts counted where they "
            "are used); an architecture has a few hundred"
        )

    def add(values: int) -> None:
        if stack:
            stack[-1][0] += values
            if stack[-1][0] > MAX_CONFIG_VALUES:
                raise too_big()

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= MAX_CONFIG_DEPTH:
                raise FaganError(
                    f"{source}: refusing the configuration: nested more than "
                    f"{MAX_CONFIG_DEPTH} levels deep at line {event.start_mark.line + 1} "
                    "(an architecture needs 4)"
                )
            if event.anchor is not None:
                anchors[event.anchor] = None
            stack.append([1, event.anchor])
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            values, anchor = stack.pop()
            if anchor is not None:
                anchors[anchor] = values
            add(values)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                anchors[event.anchor] = 1
            add(1)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in anchors and anchors[event.anchor] is None:
                raise FaganError(
                    f"{source}: refusing the configuration: alias *{brief_text(event.anchor, 40)}"
                    f" at line {event.start_mark.line + 1} is used inside its own anchor's value"
                )
            add(anchors.get(event.anchor) or 1)  # an undefined alias is the loader's to report


# --------------------------------------------------------------------------- loading
def parse_config(data: Any, source: str = "<config>") -> NetworkSpec:
    """Parses an already-loaded document into a :class:`NetworkSpec`.

    Args:
        data: the YAML document, or the mapping a training state holds (a mapping with
            an ``architecture`` list).
        source: the name used in messages.

    Raises:
        FaganError: for any problem, naming the source, layer and field; a document
            too large or too deep to be an architecture (:func:`check_config_size`) is
            refused before it is looked at.
    """
    check_config_size(data, source)
    if not isinstance(data, dict) or "architecture" not in data:
        raise FaganError(f"{source}: expected a mapping with an 'architecture' list of layers")
    unknown = [key for key in data if key not in ("architecture", "conditioning")]
    if unknown:
        raise FaganError(
            f"{source}: unknown top-level key {brief_repr(unknown[0], 40)}; only "
            "'architecture' and 'conditioning'"
        )
    conditioning = data.get("conditioning")
    if conditioning is not None and conditioning not in CONDITIONING_KEYS:
        raise FaganError(
            f"{source}: 'conditioning' must be one of {', '.join(CONDITIONING_KEYS)}, "
            f"got {brief_repr(conditioning, 40)}"
        )
    architecture = data["architecture"]
    if not isinstance(architecture, list) or not architecture:
        raise FaganError(f"{source}: 'architecture' must be a non-empty list of layers")
    layers = tuple(
        _parse_layer(f"{source}: architecture[{index}]", raw)
        for index, raw in enumerate(architecture)
    )
    spec = NetworkSpec(
        layers=layers, source=source, conditioning=None if conditioning == "none" else conditioning
    )
    # channel agreement between consecutive layers (spatial checks need an input size)
    channels = spec.in_channels
    for index, layer in enumerate(layers):
        channels = _check_channels(layer, channels, f"{source}: architecture[{index}]")
    return spec


def _check_channels(layer: LayerSpec, channels: int, where: str) -> int:
    expected = _in_channels(layer)
    if expected is not None and expected != channels:
        field = "num_channels" if isinstance(layer, BatchNormSpec) else "channels"
        raise FaganError(
            f"{where}: field '{field}': expects {expected} input channels but the previous "
            f"layer gives {channels}"
        )
    out = _out_channels(layer)
    return channels if out is None else out


def load_config(source: str | Path, role: str = "gen") -> NetworkSpec:
    """Reads and validates an architecture: a ``.conf``/``.yaml`` file or a built-in name.

    ``load_config("fagan64")`` is the built-in generator, ``load_config("fagan64", "dis")``
    its discriminator; a path to a file is read whatever ``role`` says. YAML is read
    with the safe loader; nothing in the file is evaluated. A file over
    :data:`MAX_CONFIG_BYTES`, or whose aliases expand past :data:`MAX_CONFIG_VALUES`
    values or whose nesting passes :data:`MAX_CONFIG_DEPTH`, is refused before it is built.

    Args:
        source: a file path, or a built-in name (:func:`builtin_config_names`).
        role: ``"gen"`` or ``"dis"``: which of a built-in architecture's two files.

    Raises:
        FaganError: neither a file nor a built-in name, an unreadable or oversized file,
            invalid YAML, or any invalid layer.
    """
    path = resolve_config_path(source, role)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise FaganError(f"cannot read config file {path}: {error.strerror or error}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise FaganError(
            f"{path}: refusing a config file over {MAX_CONFIG_BYTES // (1 << 20)} MiB "
            "(an architecture file has a few kilobytes); is it the right file?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FaganError(
            f"{path}: not a text config file (byte {error.start} is not UTF-8)"
        ) from None
    return parse_config_text(text, str(path))


def parse_config_text(text: str, source: str = "<config>") -> NetworkSpec:
    """Parses an architecture from YAML text (what a ``.conf``/``.yaml`` file holds).

    Raises:
        FaganError: text over :data:`MAX_CONFIG_BYTES`, invalid YAML, or any invalid
            layer (as :func:`load_config`).
    """
    if not isinstance(text, str):
        raise FaganError(f"{source}: expected the architecture as YAML text, found {type(text)}")
    if len(text) > MAX_CONFIG_BYTES:
        raise FaganError(
            f"{source}: refusing a config over {MAX_CONFIG_BYTES // (1 << 20)} MiB "
            "(an architecture has a few kilobytes)"
        )
    try:
        _check_yaml_events(text, source)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise FaganError(f"{source}: invalid YAML{line}: {brief_text(problem)}") from None
    except ValueError as error:  # a scalar YAML accepts but Python refuses (a huge integer)
        raise FaganError(f"{source}: invalid value: {brief_text(str(error))}") from None
    return parse_config(data, source=source)


def resolve_config_path(value: str | Path, role: str) -> Path:
    """A config file path, or a built-in architecture name such as ``fagan64``.

    Args:
        value: a file path or one of :func:`builtin_config_names`.
        role: ``"gen"`` or ``"dis"``.

    Raises:
        FaganError: if it is neither.
        ValueError: if ``role`` is neither ``"gen"`` nor ``"dis"`` (a programming error).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    path = Path(value)
    try:
        if path.is_file():
            return path
    except OSError:  # a name too long to be a path, say: not a file, then
        pass
    if str(value) in builtin_config_names():
        return BUILTIN_CONFIGS / str(value) / f"{role}.yaml"
    raise FaganError(
        f"config not found: {brief_text(str(value))} (give a .conf or .yaml file, or one of "
        f"the built-in {', '.join(builtin_config_names())})"
    )


def builtin_config_names() -> list[str]:
    """Names of the architectures shipped with the package."""
    return sorted(p.name for p in BUILTIN_CONFIGS.iterdir() if (p / "gen.yaml").is_file())


def spec_to_dict(spec: NetworkSpec) -> dict[str, Any]:
    """Writes a spec back as a config mapping (tuples as the original's strings)."""

    def pair(value: Pair) -> str:
        return f"({value[0]}, {value[1]})"

    out = []
    for layer in spec.layers:
        if isinstance(layer, ConvSpec):
            out.append(
                {
                    "name": "conv_transpose" if layer.transpose else "conv",
                    "channels": pair((layer.in_channels, layer.out_channels)),
                    "kernel_dims": pair(layer.kernel_size),
                    "stride": pair(layer.stride),
                    "padding": pair(layer.padding),
                    "bias": layer.bias,
                    "batch_norm": layer.batch_norm,
                    "spectral_norm": layer.spectral_norm,
                    "activation": str(layer.activation),
                }
            )
        elif isinstance(layer, FullAttentionSpec):
            entry = {
                "name": "full_attention",
                "channels": pair((layer.in_channels, layer.out_channels)),
                "kernel_dims": pair(layer.kernel_size),
                "stride": pair(layer.stride),
                "padding": pair(layer.padding),
                "bias": layer.bias,
                "use_spectral_norm": layer.use_spectral_norm,
                "use_batch_norm": layer.use_batch_norm,
                "squeeze_factor": layer.squeeze_factor,
                "transpose_conv": layer.transpose,
            }
            if layer.activation is not None:
                entry["activation"] = str(layer.activation)
            out.append(entry)
        elif isinstance(layer, SelfAttentionSpec):
            entry = {
                "name": "self_attention",
                "channels": layer.channels,
                "bias": layer.bias,
                "squeeze_factor": layer.squeeze_factor,
            }
            if layer.activation is not None:
                entry["activation"] = str(layer.activation)
            out.append(entry)
        elif isinstance(layer, DropoutSpec):
            out.append({"name": "dropout", "drop_prob": layer.drop_prob})
        elif isinstance(layer, BatchNormSpec):
            out.append({"name": "batch_norm", "num_channels": layer.num_channels})
        else:
            out.append({"name": "ignore_attn_maps"})
    if spec.conditioning is not None:
        return {"conditioning": spec.conditioning, "architecture": out}
    return {"architecture": out}


__all__ = [
    "ActivationSpec",
    "BatchNormSpec",
    "ConvSpec",
    "DropoutSpec",
    "FullAttentionSpec",
    "IgnoreAttnMapsSpec",
    "LAYER_NAMES",
    "LayerSpec",
    "NetworkSpec",
    "SelfAttentionSpec",
    "BUILTIN_CONFIGS",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_VALUES",
    "ROLES",
    "builtin_config_names",
    "check_config_size",
    "load_config",
    "parse_config",
    "parse_config_text",
    "resolve_config_path",
    "spec_to_dict",
]
