"""Tests for fagan.config: the original .conf files, our YAML configs, built-in names, every
kind of bad config, and configs built to exhaust memory, time or the stack.

Bad configs are made by editing the text of the original project's files (kept byte for
byte in tests/fixtures), so each test reads what a user who mistyped one line of a real
config would give us.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from fagan.config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_VALUES,
    BatchNormSpec,
    ConvSpec,
    DropoutSpec,
    FullAttentionSpec,
    IgnoreAttnMapsSpec,
    NetworkSpec,
    SelfAttentionSpec,
    builtin_config_names,
    load_config,
    parse_config,
    resolve_config_path,
    spec_to_dict,
)
from fagan.errors import FaganError
from fagan.layers.activations import ActivationSpec
from fagan.networks import Discriminator, Generator

REPO = Path(__file__).resolve().parents[1]
OUR_CONFIGS = REPO / "configs"
ORIGINAL_CONFIGS = REPO / "tests" / "fixtures" / "fagan_configs"
# the byte-for-byte originals beside the repository, where a checkout has them
SHARED_CONFIGS = REPO.parent / "shared" / "reference" / "fagan_configs"

ORIGINAL_FILES = [("fagan_1", "gen"), ("fagan_1", "dis"), ("fagan_2", "gen"), ("fagan_2", "dis")]
OUR_FILES = [
    (name, role) for name in ("dcgan64", "fagan64", "sagan64", "small32") for role in ("gen", "dis")
]


def original(run: str, role: str) -> Path:
    """One of the original project's .conf files, as the repository's fixtures hold it."""
    return ORIGINAL_CONFIGS / run / f"{role}.conf"


def ours(name: str, role: str) -> Path:
    return OUR_CONFIGS / name / f"{role}.yaml"


def edited(tmp_path: Path, run: str, role: str, old: str, new: str, count: int = 1) -> Path:
    """A copy of an original config (in tmp_path) with ``old`` replaced by ``new``."""
    text = original(run, role).read_text()
    assert old in text, f"test set-up: {old!r} not in the original {role}.conf"
    path = tmp_path / f"{role}.conf"
    path.write_text(text.replace(old, new, count))
    return path


def layer_text(text: str, index: int) -> str:
    """The text of the ``index``-th ``-`` item of an original config's architecture list."""
    return re.split(r"(?m)^  -\s*$", text)[1 + index]


def replace_in_layer(text: str, index: int, old: str, new: str) -> str:
    """Replaces ``old`` by ``new`` inside the ``index``-th ``-`` item of the architecture list."""
    head, *items = re.split(r"(?m)^  -\s*$", text)
    assert old in items[index], f"test set-up: {old!r} not in architecture[{index}]"
    items[index] = items[index].replace(old, new, 1)
    return "  -".join([head, *items])


def edited_layer(tmp_path: Path, run: str, role: str, index: int, old: str, new: str) -> Path:
    path = tmp_path / f"{role}.conf"
    path.write_text(replace_in_layer(original(run, role).read_text(), index, old, new))
    return path


def config_error(path: Path) -> str:
    with pytest.raises(FaganError) as info:
        load_config(path)
    return str(info.value)


# --------------------------------------------------------------------------- good configs
def on_meta(network: type, spec: NetworkSpec):
    """Builds a network without allocating or initialising its weights (keys, shapes and
    the constructor's checks are what these tests look at)."""
    with torch.device("meta"):
        return network(spec)


EXPECTED_LAYER_TYPES = {
    "gen": [
        FullAttentionSpec,
        IgnoreAttnMapsSpec,
        FullAttentionSpec,
        IgnoreAttnMapsSpec,
        ConvSpec,
        SelfAttentionSpec,
        IgnoreAttnMapsSpec,
        ConvSpec,
        SelfAttentionSpec,
        IgnoreAttnMapsSpec,
        ConvSpec,
    ],
    "dis": [
        FullAttentionSpec,
        IgnoreAttnMapsSpec,
        ConvSpec,
        FullAttentionSpec,
        IgnoreAttnMapsSpec,
        SelfAttentionSpec,
        IgnoreAttnMapsSpec,
        ConvSpec,
        SelfAttentionSpec,
        IgnoreAttnMapsSpec,
        ConvSpec,
    ],
}


@pytest.mark.parametrize("run,role", ORIGINAL_FILES)
def test_original_conf_files_parse(run: str, role: str) -> None:
    spec = load_config(original(run, role))
    assert [type(layer) for layer in spec.layers] == EXPECTED_LAYER_TYPES[role]
    assert spec.source == str(original(run, role))
    first = spec.layers[0]
    if role == "gen":
        assert first == FullAttentionSpec(
            in_channels=128,
            out_channels=512,
            kernel_size=(4, 4),
            stride=(1, 1),
            padding=(0, 0),
            bias=True,
            use_spectral_norm=True,
            use_batch_norm=True,
            squeeze_factor=8,
            transpose=True,
            activation=ActivationSpec("lrelu", 0.3),
        )
        assert spec.layers[-1] == ConvSpec(
            in_channels=64,
            out_channels=3,
            kernel_size=(4, 4),
            stride=(2, 2),
            padding=(1, 1),
            bias=True,
            batch_norm=False,
            spectral_norm=False,
            activation=ActivationSpec("tanh"),
            transpose=True,
        )
        assert spec.output_shape(128, 1, 1) == (3, 64, 64)
        assert on_meta(Generator, spec).image_size == 64
    else:
        assert first.squeeze_factor == 1 and first.use_batch_norm is False
        assert first.activation == ActivationSpec("lrelu", 0.1)
        assert spec.layers[-1].activation == ActivationSpec("lrelu", 1.0)
        assert spec.output_shape(3, 64, 64) == (1, 1, 1)
        assert on_meta(Discriminator, spec).image_size == 64


@pytest.mark.parametrize("run,role", ORIGINAL_FILES)
def test_fixtures_are_the_original_files(run: str, role: str) -> None:
    shared = SHARED_CONFIGS / run / f"{role}.conf"
    if not shared.is_file():
        pytest.skip(f"no reference copy at {shared} to compare the fixture with")
    assert original(run, role).read_bytes() == shared.read_bytes()


def test_fixtures_keep_the_original_format() -> None:
    """What makes the .conf format itself: tuples as unquoted ``(a, b)``, quoted names and
    activations, capitalised booleans, both spellings of the norm flags, no final newline
    in dis.conf; whatever reads these reads the users' files."""
    gen, dis = original("fagan_1", "gen").read_text(), original("fagan_1", "dis").read_text()
    assert gen.startswith("# configuration for the Generator architecture\n\narchitecture:\n")
    assert "    channels: (128, 512)\n    kernel_dims: (4, 4)\n" in gen
    assert '    name: "conv_transpose"\n' in gen and '    activation: "tanh"\n' in gen
    assert "    use_spectral_norm: True\n" in gen and "    spectral_norm: True\n" in gen
    assert "    transpose_conv: True\n" in gen and "    channels: 128\n" in gen
    assert '    activation: "lrelu(0.3)"' in dis and dis.endswith('activation: "lrelu(1.0)"')
    data = yaml.safe_load(gen)
    assert data["architecture"][0]["channels"] == "(128, 512)"  # a string, as the original read it
    assert data["architecture"][0]["bias"] is True
    for role in ("gen", "dis"):
        assert original("fagan_1", role).read_bytes() == original("fagan_2", role).read_bytes()


@pytest.mark.parametrize(
    "name,role,image_size",
    [(name, role, 32 if name == "small32" else 64) for name, role in OUR_FILES],
)
def test_our_yaml_configs_parse_and_build(name: str, role: str, image_size: int) -> None:
    spec = load_config(ours(name, role))
    assert spec.source == str(ours(name, role))
    if role == "gen":
        assert spec.in_channels == 128 and spec.out_channels == 3
        assert spec.output_shape(128, 1, 1) == (3, image_size, image_size)
        assert on_meta(Generator, spec).image_size == image_size
    else:
        assert spec.in_channels == 3 and spec.out_channels == 1
        assert spec.output_shape(3, image_size, image_size) == (1, 1, 1)
        assert on_meta(Discriminator, spec).image_size == image_size


def test_packaged_configs_equal_repository_configs() -> None:
    packaged = REPO / "src" / "fagan" / "configs"
    for name, role in OUR_FILES:
        assert (packaged / name / f"{role}.yaml").read_text() == ours(name, role).read_text()


@pytest.mark.parametrize("run", ["fagan_1", "fagan_2"])
@pytest.mark.parametrize("role", ["gen", "dis"])
def test_fagan64_is_the_original_architecture(run: str, role: str) -> None:
    mine, theirs = load_config(ours("fagan64", role)), load_config(original(run, role))
    assert mine.layers == theirs.layers
    build = Generator if role == "gen" else Discriminator
    a, b = on_meta(build, mine).state_dict(), on_meta(build, theirs).state_dict()
    assert list(a) == list(b)
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    # spot-check the names that matter for loading the original's GAN_GEN_*/GAN_DIS_* files
    if role == "gen":
        assert tuple(a["model.0.residual_conv.parametrizations.weight.original"].shape) == (
            128,
            512,
            4,
            4,
        )
        assert tuple(a["model.5.query_conv.weight"].shape) == (16, 128, 1, 1)
        assert tuple(a["model.10.0.weight"].shape) == (64, 3, 4, 4)
    else:
        assert tuple(a["model.0.query_conv.weight"].shape) == (3, 3, 4, 4)
        assert tuple(a["model.2.0.parametrizations.weight.original"].shape) == (128, 64, 4, 4)
        assert tuple(a["model.10.0.weight"].shape) == (1, 512, 4, 4)


@pytest.mark.parametrize("role", ["gen", "dis"])
def test_fagan64_state_dict_matches_converted_reference(role: str) -> None:
    reference = pytest.importorskip("reference")
    from fagan.checkpoint import convert_legacy_state_dict

    conf = original("fagan_1", role)
    ref = (
        reference.reference_generator(conf)
        if role == "gen"
        else reference.reference_discriminator(conf)
    )
    net = (Generator if role == "gen" else Discriminator)(load_config(ours("fagan64", role)))
    converted = convert_legacy_state_dict(ref.state_dict(), net)
    expected = net.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(tuple(converted[k].shape) == tuple(expected[k].shape) for k in expected)


# --------------------------------------------------------------------------- files and built-in names
BUILTIN_SIZES = {"dcgan64": 64, "fagan64": 64, "sagan64": 64, "small32": 32}


def test_builtin_names_are_the_shipped_folders() -> None:
    assert builtin_config_names() == sorted(BUILTIN_SIZES)


@pytest.mark.parametrize("name", sorted(BUILTIN_SIZES))
@pytest.mark.parametrize("role", ["gen", "dis"])
def test_load_config_accepts_builtin_names(name: str, role: str) -> None:
    spec = load_config(name, role)
    assert spec.layers == load_config(ours(name, role)).layers
    assert spec.source.endswith(f"{name}/{role}.yaml")
    size = BUILTIN_SIZES[name]
    if role == "gen":
        assert spec.output_shape(spec.in_channels, 1, 1) == (3, size, size)
    else:
        assert spec.output_shape(3, size, size) == (1, 1, 1)


def test_load_config_name_defaults_to_the_generator() -> None:
    assert load_config("fagan64").layers == load_config("fagan64", "gen").layers
    assert load_config("fagan64").layers != load_config("fagan64", "dis").layers
    # the README's library example
    generator = Generator(load_config("fagan64"), latent_size=128).eval()
    with torch.no_grad():
        assert tuple(generator(torch.randn(2, 128)).shape) == (2, 3, 64, 64)


def test_a_file_is_read_whatever_the_role() -> None:
    assert (
        load_config(original("fagan_1", "gen"), "dis").layers
        == load_config(original("fagan_1", "gen")).layers
    )


def test_a_file_wins_over_a_builtin_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fagan64").write_text(original("fagan_1", "dis").read_text())
    monkeypatch.chdir(tmp_path)
    assert load_config("fagan64").source == "fagan64"
    assert isinstance(load_config("fagan64").layers[0], FullAttentionSpec)
    assert load_config("fagan64").output_shape(3, 64, 64) == (1, 1, 1)  # the file's, a D


def test_resolve_config_path_keeps_working() -> None:
    assert resolve_config_path("small32", "dis") == OUR_CONFIGS.parent / "src" / "fagan" / (
        "configs/small32/dis.yaml"
    )
    assert resolve_config_path(str(original("fagan_1", "gen")), "gen") == original("fagan_1", "gen")
    # the form existing callers use
    assert (
        load_config(resolve_config_path("sagan64", "dis")).layers
        == load_config("sagan64", "dis").layers
    )


@pytest.mark.parametrize(
    "value",
    ["nowhere/gen.conf", "fagan65", "", "x" * 10_000],
    ids=["missing-file", "unknown-name", "empty", "name-too-long-for-a-path"],
)
def test_neither_file_nor_builtin_name(tmp_path: Path, value: str) -> None:
    message = config_error(value)
    shown = value if len(value) < 100 else value[:50]
    assert message.startswith(f"config not found: {shown}"), message
    assert message.endswith(
        "(give a .conf or .yaml file, or one of the built-in dcgan64, fagan64, sagan64, small32)"
    )
    assert len(message) < 320  # the 10,000-character name is cut


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert config_error(tmp_path).startswith(f"config not found: {tmp_path} (give a .conf")


def test_unknown_role_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="role must be one of"):
        load_config("fagan64", "generator")


# --------------------------------------------------------------------------- tuple forms
@pytest.mark.parametrize(
    "written,expected",
    [
        ('"(4, 4)"', (4, 4)),
        ('"(4,4)"', (4, 4)),
        ('"( 4 , 3 )"', (4, 3)),
        ("(4, 3)", (4, 3)),  # unquoted, as YAML reads the original's files: a string
        ('"4, 3"', (4, 3)),
        ("[4, 4]", (4, 4)),
        ("[4, 3]", (4, 3)),
        ("4", (4, 4)),
        ("3", (3, 3)),
    ],
)
def test_tuple_forms(tmp_path: Path, written: str, expected: tuple[int, int]) -> None:
    path = edited_layer(
        tmp_path, "fagan_1", "dis", 2, "kernel_dims: (4, 4)", f"kernel_dims: {written}"
    )
    assert load_config(path).layers[2].kernel_size == expected


def test_tuple_forms_give_equal_specs(tmp_path: Path) -> None:
    text = original("fagan_1", "gen").read_text()
    as_lists = re.sub(r"\((\d+), (\d+)\)", r"[\1, \2]", text)
    assert "[128, 512]" in as_lists and "(" not in as_lists.replace("lrelu(0.3)", "")
    as_ints = (
        text.replace("(4, 4)", "4")
        .replace("(2, 2)", "2")
        .replace("(1, 1)", "1")
        .replace("(0, 0)", "0")
    )
    specs = []
    for name, content in (("tuples", text), ("lists", as_lists), ("ints", as_ints)):
        (tmp_path / f"{name}.conf").write_text(content)
        specs.append(load_config(tmp_path / f"{name}.conf").layers)
    assert specs[0] == specs[1] == specs[2]


# --------------------------------------------------------------------------- spellings
@pytest.mark.parametrize(
    "index,layer_type,original_key,other_key,field",
    [
        (2, ConvSpec, "spectral_norm", "use_spectral_norm", "spectral_norm"),
        (2, ConvSpec, "batch_norm", "use_batch_norm", "batch_norm"),
        (3, FullAttentionSpec, "use_spectral_norm", "spectral_norm", "use_spectral_norm"),
        (3, FullAttentionSpec, "use_batch_norm", "batch_norm", "use_batch_norm"),
    ],
)
@pytest.mark.parametrize("value", [True, False])
def test_both_norm_spellings(
    tmp_path: Path,
    index: int,
    layer_type: type,
    original_key: str,
    other_key: str,
    field: str,
    value: bool,
) -> None:
    text = original("fagan_1", "dis").read_text()
    line = re.search(rf"(?m)^    {original_key}: \w+$", layer_text(text, index))
    assert line is not None
    plain = replace_in_layer(text, index, line.group(0), f"    {original_key}: {value}")
    other = replace_in_layer(text, index, line.group(0), f"    {other_key}: {value}")
    (tmp_path / "a.conf").write_text(plain)
    (tmp_path / "b.conf").write_text(other)
    a, b = load_config(tmp_path / "a.conf"), load_config(tmp_path / "b.conf")
    assert isinstance(a.layers[index], layer_type)
    assert getattr(a.layers[index], field) is value
    assert a.layers == b.layers


def test_both_spellings_conflicting_is_an_error(tmp_path: Path) -> None:
    path = edited_layer(
        tmp_path,
        "fagan_1",
        "dis",
        2,
        "spectral_norm: True",
        "spectral_norm: True\n    use_spectral_norm: False",
    )
    message = config_error(path)
    assert str(path) in message and "architecture[2]" in message
    assert "'use_spectral_norm'" in message and "conflicts" in message


# --------------------------------------------------------------------------- bad configs
BAD_LAYERS = [
    # (role, layer index, old text in that layer, new text, field named, words in the message)
    pytest.param(
        "gen",
        0,
        'name: "full_attention"',
        'name: "fullattention"',
        "name",
        ["unknown layer 'fullattention'", "full_attention", "self_attention"],
        id="unknown-layer-name",
    ),
    pytest.param(
        "dis",
        5,
        'name: "self_attention"',
        'name: "attention"',
        "name",
        ["unknown layer 'attention'"],
        id="unknown-layer-name-2",
    ),
    pytest.param(
        "gen",
        0,
        "squeeze_factor: 8",
        "squeeze_fator: 8",
        "squeeze_fator",
        ["unknown key", "squeeze_factor"],
        id="unknown-key",
    ),
    pytest.param(
        "dis",
        2,
        "spectral_norm: True",
        "spectral_norm: True\n    dilation: 2",
        "dilation",
        ["unknown key"],
        id="unknown-key-extra",
    ),
    pytest.param("gen", 2, "    bias: True\n", "", "bias", ["missing"], id="missing-key"),
    pytest.param(
        "dis",
        5,
        "    squeeze_factor: 8\n",
        "",
        "squeeze_factor",
        ["missing"],
        id="missing-key-self-attention",
    ),
    pytest.param(
        "gen",
        4,
        '    activation: "relu"\n',
        "",
        "activation",
        ["missing"],
        id="missing-activation-conv",
    ),
    pytest.param(
        "gen",
        2,
        "kernel_dims: (4, 4)",
        "kernel_dims: (4, x)",
        "kernel_dims",
        ["malformed tuple", "(4, x)"],
        id="tuple-non-integer",
    ),
    pytest.param(
        "gen",
        2,
        "stride: (2, 2)",
        "stride: (2,)",
        "stride",
        ["malformed tuple", "(2,)"],
        id="tuple-one-element",
    ),
    pytest.param(
        "dis",
        2,
        "padding: (1, 1)",
        "padding: (1, 1, 1)",
        "padding",
        ["malformed tuple"],
        id="tuple-three-elements",
    ),
    pytest.param(
        "dis",
        2,
        "channels: (64, 128)",
        "channels: [64]",
        "channels",
        ["malformed tuple"],
        id="tuple-short-list",
    ),
    pytest.param(
        "dis", 2, "stride: (2, 2)", "stride: (0, 2)", "stride", [">= 1"], id="tuple-zero-stride"
    ),
    pytest.param(
        "dis",
        2,
        "padding: (1, 1)",
        "padding: (-1, 1)",
        "padding",
        [">= 0"],
        id="tuple-negative-padding",
    ),
    pytest.param(
        "dis",
        0,
        '"lrelu(0.1)"',
        '"lrelu(abc)"',
        "activation",
        ["cannot parse activation", "lrelu(abc)"],
        id="activation-bad-slope",
    ),
    pytest.param(
        "gen",
        4,
        '"relu"',
        '"swish"',
        "activation",
        ["cannot parse activation", "swish"],
        id="activation-unknown",
    ),
    pytest.param(
        "dis",
        2,
        '"lrelu(0.1)"',
        '"lrelu 0.1"',
        "activation",
        ["cannot parse activation"],
        id="activation-no-parentheses",
    ),
    pytest.param(
        "dis",
        2,
        "bias: True",
        "bias: yes please",
        "bias",
        ["expected True or False"],
        id="bias-not-boolean",
    ),
    pytest.param(
        "dis",
        3,
        "squeeze_factor: 8",
        "squeeze_factor: 0",
        "squeeze_factor",
        [">= 1"],
        id="squeeze-zero",
    ),
    pytest.param(
        "dis",
        0,
        "squeeze_factor: 1",
        "squeeze_factor: 4",
        "squeeze_factor",
        ["no query/key channels"],
        id="squeeze-too-large",
    ),
    pytest.param(
        "dis",
        5,
        "channels: 256",
        "channels: (256, 256)",
        "channels",
        ["expected an integer"],
        id="self-attention-tuple-channels",
    ),
    pytest.param(
        "dis",
        2,
        "channels: (64, 128)",
        "channels: (32, 128)",
        "channels",
        ["expects 32 input channels", "previous layer gives 64"],
        id="channel-mismatch-conv",
    ),
    pytest.param(
        "dis",
        5,
        "channels: 256",
        "channels: 128",
        "channels",
        ["expects 128 input channels", "previous layer gives 256"],
        id="channel-mismatch-self-attention",
    ),
    pytest.param(
        "gen",
        2,
        "channels: (512, 256)",
        "channels: (256, 256)",
        "channels",
        ["expects 256 input channels", "previous layer gives 512"],
        id="channel-mismatch-full-attention",
    ),
]


@pytest.mark.parametrize("role,index,old,new,field,words", BAD_LAYERS)
def test_bad_layer_names_file_layer_and_field(
    tmp_path: Path, role: str, index: int, old: str, new: str, field: str, words: list[str]
) -> None:
    path = edited_layer(tmp_path, "fagan_1", role, index, old, new)
    message = config_error(path)
    assert message.startswith(f"{path}: architecture[{index}]"), message
    assert f"field '{field}'" in message, message
    for word in words:
        assert word in message, message
    assert "\n" not in message


def test_activation_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"
    payloads = [
        "__import__('os')",
        f"__import__('os').system('touch {marker}')",
        f"lrelu(__import__('os').system('touch {marker}'))",
        f"lrelu(0.1); open('{marker}', 'w')",
    ]
    for number, payload in enumerate(payloads):
        path = edited_layer(tmp_path, "fagan_1", "dis", 2, '"lrelu(0.1)"', f'"{payload}"')
        message = config_error(path)
        assert message.startswith(f"{path}: architecture[2] (conv): field 'activation'"), number
        assert "cannot parse activation" in message
        assert not marker.exists(), f"payload {number} was evaluated"


def test_reading_the_original_configs_evaluates_nothing(tmp_path: Path) -> None:
    # YAML tags that a full loader would turn into Python calls are refused too.
    marker = tmp_path / "evaluated"
    path = edited(
        tmp_path,
        "fagan_1",
        "gen",
        'activation: "tanh"',
        f"activation: !!python/object/apply:os.system ['touch {marker}']",
    )
    message = config_error(path)
    assert str(path) in message and "invalid YAML" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "old,new,shape",
    [
        ("channels: (64, 3)", "channels: (64, 4)", "4x64x64"),
        ("channels: (64, 3)", "channels: (64, 1)", "1x64x64"),
        ("kernel_dims: (4, 4)", "kernel_dims: (4, 3)", "3x64x63"),
        ("padding: (1, 1)", "padding: (1, 0)", "3x64x66"),
    ],
    ids=["4-channels", "1-channel", "non-square-kernel", "non-square-padding"],
)
def test_generator_whose_output_is_not_an_image(
    tmp_path: Path, old: str, new: str, shape: str
) -> None:
    path = edited_layer(tmp_path, "fagan_1", "gen", 10, old, new)  # the last layer
    spec = load_config(path)  # a valid architecture, just not a generator
    with pytest.raises(FaganError) as info:
        Generator(spec)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "not an image" in message and shape in message and "3xSxS" in message


@pytest.mark.parametrize(
    "role,old,new",
    [
        ("gen", "channels: (64, 3)", "channels: (64, 4)"),
        ("dis", "channels: (512, 1)", "channels: (512, 2)"),
    ],
    ids=["generator-4-channels", "discriminator-2-channels"],
)
def test_network_level_errors_name_the_layer_and_field(
    tmp_path: Path, role: str, old: str, new: str
) -> None:
    path = edited_layer(tmp_path, "fagan_1", role, 10, old, new)
    with pytest.raises(FaganError) as info:
        (Generator if role == "gen" else Discriminator)(load_config(path))
    message = str(info.value)
    assert str(path) in message
    assert "architecture[10]" in message and "field 'channels'" in message


def test_generator_latent_size_mismatch(tmp_path: Path) -> None:
    spec = load_config(original("fagan_1", "gen"))
    with pytest.raises(FaganError) as info:
        Generator(spec, latent_size=100)
    message = str(info.value)
    assert str(original("fagan_1", "gen")) in message
    assert "takes 128 channels" in message and "latent size is 100" in message


@pytest.mark.parametrize(
    "old,new,image_size,words",
    [
        # the last conv keeps the 4x4 map: 64x64 images give 1x4x4, not one logit
        (
            "channels: (512, 1)\n    kernel_dims: (4, 4)",
            "channels: (512, 1)\n    kernel_dims: (1, 1)",
            64,
            ["3x64x64", "gives 1x4x4", "expected 1x1x1"],
        ),
        ("channels: (512, 1)", "channels: (512, 2)", 64, ["gives 2x1x1", "expected 1x1x1"]),
        (
            "channels: (512, 1)",
            "channels: (512, 2)",
            None,
            ["does not reduce any square RGB image to a single logit"],
        ),
    ],
    ids=["1x4x4", "2-channels", "2-channels-inferred-size"],
)
def test_discriminator_that_does_not_reduce_to_logits(
    tmp_path: Path, old: str, new: str, image_size: int | None, words: list[str]
) -> None:
    path = edited(tmp_path, "fagan_1", "dis", old, new)
    spec = load_config(path)
    with pytest.raises(FaganError) as info:
        Discriminator(spec, image_size=image_size)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, message


def test_discriminator_not_taking_rgb(tmp_path: Path) -> None:
    path = edited(tmp_path, "fagan_1", "dis", "channels: (3, 64)", "channels: (1, 64)")
    with pytest.raises(FaganError) as info:
        Discriminator(load_config(path))
    assert str(path) in str(info.value) and "takes 1 channels" in str(info.value)


@pytest.mark.parametrize(
    "old,new,line",
    [
        ("    stride: (1, 1)\n", "      stride: (1, 1)\n", 8),  # over-indented
        ("    bias: True\n", "\tbias: True\n", 10),  # a tab
        ("    bias: True\n", "    bias: True: False\n", 10),  # a second colon
    ],
    ids=["indentation", "tab", "colon"],
)
def test_invalid_yaml_names_the_line(tmp_path: Path, old: str, new: str, line: int) -> None:
    text = original("fagan_1", "gen").read_text()
    assert text.splitlines()[line - 1] == old.rstrip("\n")  # the line the test breaks
    path = tmp_path / "gen.conf"
    path.write_text(text.replace(old, new, 1))
    message = config_error(path)
    assert message.startswith(f"{path}: invalid YAML at line {line}:"), message


@pytest.mark.parametrize(
    "content", ["", "\n\n", "# only a comment\n"], ids=["empty", "blank", "comment"]
)
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "gen.conf"
    path.write_text(content)
    message = config_error(path)
    assert message == f"{path}: expected a mapping with an 'architecture' list of layers"


@pytest.mark.parametrize(
    "transform",
    [
        lambda text: text.replace("architecture:\n", "", 1).replace("\n  -", "\n-"),  # a list
        lambda text: "just a string\n",
        lambda text: "42\n",
        lambda text: text.replace("architecture:", "layers:", 1),  # a mapping, wrong key
    ],
    ids=["list", "string", "number", "no-architecture-key"],
)
def test_top_level_not_a_mapping_with_architecture(tmp_path: Path, transform) -> None:
    path = tmp_path / "gen.conf"
    path.write_text(transform(original("fagan_1", "gen").read_text()))
    message = config_error(path)
    assert message == f"{path}: expected a mapping with an 'architecture' list of layers"


def test_top_level_list_is_still_valid_yaml(tmp_path: Path) -> None:
    # guards the "list" case above: it must be a YAML list, not a YAML error
    text = original("fagan_1", "gen").read_text()
    data = yaml.safe_load(text.replace("architecture:\n", "", 1).replace("\n  -", "\n-"))
    assert isinstance(data, list) and len(data) == 11


@pytest.mark.parametrize(
    "content,words",
    [
        ("architecture: []\n", ["'architecture' must be a non-empty list"]),
        ("architecture:\n", ["'architecture' must be a non-empty list"]),
        ("architecture:\n  - conv\n", ["architecture[0]", "expected a mapping of fields"]),
        ("architecture:\n  - {channels: (3, 4)}\n", ["architecture[0]", "field 'name': missing"]),
        (
            "architecture:\n  - {name: dropout, drop_prob: 0.5}\nversion: 2\n",
            ["unknown top-level key 'version'"],
        ),
        (
            "architecture:\n  - {name: dropout, drop_prob: 0.5}\n",
            ["no convolution or attention layer"],
        ),
        (
            "architecture:\n  - {name: dropout, drop_prob: 1.5}\n",
            ["architecture[0] (dropout): field 'drop_prob'", "[0, 1)"],
        ),
    ],
    ids=[
        "empty-list",
        "null",
        "string-layer",
        "no-name",
        "extra-top-key",
        "no-channels",
        "drop-prob",
    ],
)
def test_other_structural_errors(tmp_path: Path, content: str, words: list[str]) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(content)
    message = config_error(path)
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, message


def test_parse_config_default_source_in_messages() -> None:
    with pytest.raises(FaganError, match=r"^<config>: architecture\[0\]: field 'name'"):
        parse_config({"architecture": [{"name": "nope"}]})


# --------------------------------------------------------------------------- round trip
ALL_LAYER_KINDS = {
    "architecture": [
        {
            "name": "conv",
            "channels": "(3, 16)",
            "kernel_dims": "(3, 3)",
            "stride": "(1, 1)",
            "padding": "(1, 1)",
            "bias": False,
            "batch_norm": True,
            "spectral_norm": False,
            "activation": "lrelu(0.25)",
        },
        {"name": "batch_norm", "num_channels": 16},
        {"name": "dropout", "drop_prob": 0.3},
        {
            "name": "self_attention",
            "channels": 16,
            "bias": True,
            "squeeze_factor": 2,
            "activation": "sigmoid",
        },
        {
            "name": "full_attention",
            "channels": "(16, 8)",
            "kernel_dims": "(4, 2)",
            "stride": "(2, 1)",
            "padding": "(1, 0)",
            "bias": False,
            "use_spectral_norm": False,
            "use_batch_norm": True,
            "squeeze_factor": 4,
            "transpose_conv": True,
        },
        {"name": "ignore_attn_maps"},
        {
            "name": "conv_transpose",
            "channels": "(8, 3)",
            "kernel_dims": "(1, 1)",
            "stride": "(1, 1)",
            "padding": "(0, 0)",
            "bias": True,
            "batch_norm": False,
            "spectral_norm": True,
            "activation": "TANH",
        },
    ]
}


@pytest.mark.parametrize(
    "path",
    [pytest.param(("orig", run, role), id=f"{run}-{role}") for run, role in ORIGINAL_FILES]
    + [pytest.param(("ours", name, role), id=f"{name}-{role}") for name, role in OUR_FILES],
)
def test_spec_to_dict_round_trips(path: tuple[str, str, str]) -> None:
    kind, name, role = path
    spec = load_config(original(name, role) if kind == "orig" else ours(name, role))
    data = spec_to_dict(spec)
    assert list(data) == ["architecture"] and len(data["architecture"]) == len(spec.layers)
    again = parse_config(data, source="round-trip")
    assert again.layers == spec.layers
    assert again == NetworkSpec(spec.layers, source="round-trip")
    # and through YAML text, as it would be written beside a checkpoint
    assert parse_config(yaml.safe_load(yaml.safe_dump(data))).layers == spec.layers


def test_spec_to_dict_round_trips_every_layer_kind() -> None:
    spec = parse_config(ALL_LAYER_KINDS)
    assert [type(layer) for layer in spec.layers] == [
        ConvSpec,
        BatchNormSpec,
        DropoutSpec,
        SelfAttentionSpec,
        FullAttentionSpec,
        IgnoreAttnMapsSpec,
        ConvSpec,
    ]
    assert spec.layers[3].activation == ActivationSpec("sigmoid")
    assert spec.layers[4].activation is None
    assert spec.layers[6].activation == ActivationSpec("tanh") and spec.layers[6].transpose
    assert parse_config(spec_to_dict(spec)) == spec
    # height: transposed k4 s2 p1 doubles 8 -> 16; width: transposed k2 s1 p0 gives 8 + 1
    assert spec.output_shape(3, 8, 8) == (3, 16, 9)
    # the shape propagation agrees with the modules built from the spec
    from fagan.networks import Network

    net = Network(spec).eval()
    with torch.no_grad():
        assert tuple(net.model(torch.randn(2, 3, 8, 8)).shape) == (2, 3, 16, 9)


def test_spec_to_dict_keeps_activation_slope_exactly() -> None:
    data = {
        "architecture": [dict(ALL_LAYER_KINDS["architecture"][0], activation="lrelu(0.1234567)")]
    }
    spec = parse_config(data)
    assert spec.layers[0].activation.slope == 0.1234567
    assert parse_config(spec_to_dict(spec)) == spec


# --------------------------------------------------------------------------- hostile configs
def billion_laughs(levels: int = 9) -> str:
    """The classic YAML alias bomb: 9 aliases of 9 aliases ... of a 9-item list, 9**9 values
    (387 million) in about 600 bytes, as the ``channels`` of an otherwise valid layer, whose
    malformed value the message quotes."""
    anchors = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        anchors.append(f"&l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return (
        "architecture:\n  - name: conv\n    channels: ["
        + ",\n      ".join(anchors)
        + "]\n    kernel_dims: (4, 4)\n    stride: (2, 2)\n    padding: (1, 1)\n"
        "    bias: True\n    batch_norm: False\n    activation: relu\n"
    )


def merge_bomb(levels: int = 30) -> str:
    """Merge keys naming each level's mapping twice: 2**30 entries to merge, which PyYAML
    versions without duplicate-key pruning in ``flatten_mapping`` copy level after level."""
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for level in range(1, levels):
        lines.append(f"m{level}: &m{level} {{<<: [*m{level - 1}, *m{level - 1}]}}")
    return "\n".join(lines) + f"\narchitecture: [*m{levels - 1}]\n"


def shared_list_bomb() -> list:
    """The billion laughs as Python data: a list holding the same list 9 times, 9 deep."""
    bomb: list = ["lol"] * 9
    for _ in range(8):
        bomb = [bomb] * 9
    return bomb


_LIMITED = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from fagan.checkpoint import load_file, save_file
    from fagan.config import load_config, parse_config
    from fagan.errors import FaganError

    def vm_bytes():
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmSize:"))
        return int(line.split()[1]) * 1024

    # what the case may add to the address space the imports took
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + limit, resource.RLIM_INFINITY))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        exec(sys.argv[2])
        out = {"message": None}
    except FaganError as error:
        out = {"message": str(error)}
    out["seconds"] = time.perf_counter() - start
    out["added_peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    print(json.dumps(out))
""")

_PYTHON_BOMB = "bomb = ['lol'] * 9\nfor _ in range(8):\n    bomb = [bomb] * 9\n"
BOMBS = [
    pytest.param("load_config(sys.argv[1])", billion_laughs(), id="yaml-billion-laughs"),
    pytest.param("load_config(sys.argv[1])", merge_bomb(), id="yaml-merge-keys"),
    pytest.param(
        _PYTHON_BOMB + "parse_config({'architecture': [bomb]}, 'state')",
        None,
        id="shared-python-lists",
    ),
    pytest.param(
        _PYTHON_BOMB + "save_file({'architecture': [bomb]}, sys.argv[1] + '.pth')\n"
        "parse_config(load_file(sys.argv[1] + '.pth'), 'state')",
        None,
        id="shared-lists-through-a-weights-file",
    ),
]


@pytest.mark.parametrize("case,text", BOMBS)
def test_alias_bombs_are_refused_in_little_time_and_memory(
    tmp_path: Path, case: str, text: str | None
) -> None:
    """Run with 1 GiB more address space than the imports took, as a guard: without the
    size check, building the error message alone expands the bomb to gigabytes."""
    path = tmp_path / "bomb.conf"
    if text is not None:
        assert len(text.encode()) < 1_000
        path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-c", _LIMITED, str(path), case, str(1 << 30)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["message"] is not None
    assert "refusing the configuration: it expands to more than 100,000 values" in out["message"]
    assert "\n" not in out["message"] and len(out["message"]) < 300
    assert out["seconds"] < 10
    assert out["added_peak_kib"] < 100 * 1024


def test_the_bombs_really_are_bombs() -> None:
    """What the guard refuses is what it claims: 9**9 strings behind 9 lists, shared."""
    data = yaml.safe_load(billion_laughs())  # the loader shares aliased lists: cheap
    level, distinct = data["architecture"][0]["channels"][-1], 1
    while isinstance(level[0], list):
        assert len(level) == 9 and all(item is level[0] for item in level)
        level, distinct = level[0], distinct + 1
    assert level == ["lol"] * 9 and distinct == 9 and 9**9 > MAX_CONFIG_VALUES
    bomb = shared_list_bomb()
    assert all(item is bomb[0] for item in bomb) and bomb[0][0][0][0][0][0][0][0][0] == "lol"
    assert yaml.safe_load(merge_bomb(levels=12))["architecture"] == [{"a": 1, "b": 2}]


def _nested_yaml(depth: int, style: str) -> str:
    if style == "flow":
        return "architecture: " + "[" * depth + "]" * depth + "\n"
    return "architecture:\n" + "".join(" " * (2 * i + 2) + "-\n" for i in range(depth))


def _nested_list(depth: int) -> list:
    root: list = []
    current = root
    for _ in range(depth):
        current.append([])
        current = current[0]
    return root


def _cyclic_list() -> list:
    cycle: list = []
    cycle.append(cycle)
    return cycle


HOSTILE_FILES = [
    pytest.param(
        _nested_yaml(1000, "flow"),
        f"nested more than {MAX_CONFIG_DEPTH} levels deep",
        id="1000-deep-flow",
    ),
    pytest.param(
        _nested_yaml(1000, "block"),
        f"nested more than {MAX_CONFIG_DEPTH} levels deep",
        id="1000-deep-block",
    ),
    pytest.param(
        "architecture: " + "[" * 300_000,
        f"nested more than {MAX_CONFIG_DEPTH} levels",
        id="300000-open-brackets",
    ),
    pytest.param(
        "architecture: &a [*a]\n",
        "alias *a at line 1 is used inside its own anchor",
        id="alias-in-its-own-anchor",
    ),
    pytest.param(
        "architecture:\n  - name: conv\n    channels: " + "7" * 5000 + "\n",
        "invalid value: Exceeds the limit (4300 digits)",
        id="5000-digit-integer",
    ),
    pytest.param(
        "architecture: [{name: conv, channels: '" + "9" * 900_000 + "', kernel_dims: 3,"
        " stride: 1, padding: 1, bias: True, batch_norm: False, activation: relu}]\n",
        "field 'channels': malformed tuple '9999",
        id="900kB-string",
    ),
    pytest.param(
        "architecture: [{name: '" + "x" * 900_000 + "'}]\n",
        "field 'name': unknown layer 'xxxx",
        id="900kB-layer-name",
    ),
]


@pytest.mark.parametrize("text,words", HOSTILE_FILES)
def test_hostile_files_give_one_short_line(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "gen.conf"
    path.write_text(text)
    start = time.perf_counter()
    message = config_error(path)
    assert time.perf_counter() - start < 20
    assert message.startswith(f"{path}: ") and words in message, message[:300]
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize("size", [MAX_CONFIG_BYTES + 1, 50 << 20])
def test_oversized_file_is_refused_unread(tmp_path: Path, size: int) -> None:
    path = tmp_path / "gen.conf"
    with open(path, "wb") as handle:  # valid YAML all through: a comment
        handle.write(b"#" * size)
    assert config_error(path) == (
        f"{path}: refusing a config file over 1 MiB (an architecture file has a few "
        "kilobytes); is it the right file?"
    )


def test_file_just_under_the_size_limit_is_read(tmp_path: Path) -> None:
    text = original("fagan_1", "gen").read_text()
    path = tmp_path / "gen.conf"
    path.write_text(text + "#" * (MAX_CONFIG_BYTES - len(text.encode()) - 1) + "\n")
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(path).layers == load_config(original("fagan_1", "gen")).layers


def test_binary_file_is_not_a_config(tmp_path: Path) -> None:
    path = tmp_path / "GAN_GEN_1.pth"
    torch.save({"w": torch.ones(2)}, path)
    message = config_error(path)
    assert message.startswith(f"{path}: not a text config file (byte "), message


CONV = {
    "name": "conv",
    "channels": "(3, 8)",
    "kernel_dims": "(3, 3)",
    "stride": "(1, 1)",
    "padding": "(1, 1)",
    "bias": True,
    "batch_norm": False,
    "activation": "relu",
}

HOSTILE_DATA = [
    pytest.param(
        lambda: {"architecture": _nested_list(1000)},
        f"nested more than {MAX_CONFIG_DEPTH} levels deep",
        id="1000-deep",
    ),
    pytest.param(
        lambda: {"architecture": _nested_list(200_000)},
        f"nested more than {MAX_CONFIG_DEPTH} levels deep",
        id="200000-deep",
    ),
    pytest.param(lambda: {"architecture": _cyclic_list()}, "it contains itself", id="cycle"),
    pytest.param(
        lambda: {"architecture": [{"name": "conv"}] * (MAX_CONFIG_VALUES // 2)},
        "expands to more than 100,000 values",
        id="100000-layers",
    ),
    pytest.param(
        lambda: {"architecture": [[0] * (MAX_CONFIG_VALUES + 1)]},
        "expands to more than 100,000 values",
        id="a-list-of-100001",
    ),
    pytest.param(
        lambda: {"architecture": [dict(CONV, channels="1" * 50_000_000)]},
        "field 'channels': malformed tuple '1111",
        id="50MB-string-value",
    ),
    pytest.param(
        lambda: {"architecture": [dict(CONV, activation="lrelu(" + "1" * 50_000_000)]},
        "field 'activation': cannot parse activation 'lrelu(1111",
        id="50MB-activation",
    ),
    pytest.param(
        lambda: {"architecture": [{"name": "y" * 50_000_000}]},
        "field 'name': unknown layer 'yyyy",
        id="50MB-layer-name",
    ),
    pytest.param(
        lambda: {"architecture": [{"name": "conv", "z" * 50_000_000: 1}]},
        "field 'zzzz",
        id="50MB-key",
    ),
    pytest.param(
        lambda: {"architecture": [{"name": "dropout", "drop_prob": 10**200_000}]},
        "<an integer of 664386 bits>",
        id="200000-digit-integer",
    ),
    pytest.param(
        lambda: {"architecture": [{"name": "dropout", "drop_prob": shared_list_bomb()[:2]}]},
        "expands to more than 100,000 values",
        id="bomb-as-a-value",
    ),
    pytest.param(
        lambda: {
            "architecture": [
                {
                    "name": "self_attention",
                    "channels": 8,
                    "bias": True,
                    "squeeze_factor": torch.zeros(1).expand(10_000, 10_000),
                }
            ]
        },
        "got a float32 tensor of shape [10000, 10000]",
        id="tensor-value",
    ),
    pytest.param(
        lambda: {"architecture": [{"name": "dropout", "drop_prob": 0.5}], 7: "x" * 10**7},
        "unknown top-level key 7",
        id="non-string-top-level-key",
    ),
]


@pytest.mark.parametrize("make,words", HOSTILE_DATA)
def test_hostile_data_gives_one_short_line(make, words: str) -> None:
    """parse_config on a mapping from a training state: the same guard as for files."""
    data = make()
    start = time.perf_counter()
    with pytest.raises(FaganError) as info:
        parse_config(data, "state.pth (generator_config)")
    message = str(info.value)
    assert time.perf_counter() - start < 10
    assert message.startswith("state.pth (generator_config): ") and words in message, message
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize(
    "key,value,shown",
    [
        ("kernel_dims", "(" + "4" * 10_000 + ", 4)", "'(44444"),
        ("kernel_dims", ["a" * 10_000] * 2, "['aaaa"),
        ("bias", {"x" * 10_000: 1}, "{'xxxx"),
        ("activation", "lrelu(" + "0" * 10_000 + ")", "'lrelu(0000"),
        ("activation", 12, "12"),
    ],
    ids=["long-tuple", "list-of-long-strings", "mapping", "long-activation", "number-activation"],
)
def test_quoted_values_are_bounded(tmp_path: Path, key: str, value, shown: str) -> None:
    data = yaml.safe_load(original("fagan_1", "dis").read_text())
    data["architecture"][2][key] = value
    with pytest.raises(FaganError) as info:
        parse_config(data, "dis.conf")
    message = str(info.value)
    assert message.startswith(f"dis.conf: architecture[2] (conv): field '{key}': "), message
    assert shown in message and len(message) < 300
