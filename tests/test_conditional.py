"""Class-conditional networks and losses.

* ``concat``: parity with attn-gan-pytorch's ``ConditionalGenerator`` /
  ``ConditionalDiscriminator`` built from the original project's configs with the
  condition channels added (the first generator layer and the last discriminator layer
  take K more), and with its matching-aware ``ConditionalGAN.optimize_discriminator``;
* ``projection``: conditional batch norm and the projection head against their formulas;
* both: the networks depend on the labels, every loss trains them, bf16 autocast, and
  every bad input is one FaganError line.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from attn_gan_pytorch.ConfigManagement import parse2tuple
from attn_gan_pytorch.Utils import get_layer
from easydict import EasyDict
from reference import (
    Losses,
    Networks,
    randomize_batch_norms,
    randomize_gammas,
    reference_configs_dir,
)
from test_parity import assert_close, converge
from torch import nn

from fagan.checkpoint import load_state_into
from fagan.config import (
    BatchNormSpec,
    ConvSpec,
    FullAttentionSpec,
    load_config,
    parse_config,
    resolve_config_path,
)
from fagan.errors import FaganError
from fagan.layers.conditional import ConditionalBatchNorm2d, ProjectionHead, condition_layers
from fagan.losses import (
    LOSSES,
    get_loss,
    gradient_penalty,
    matching_aware_d,
    mismatched_labels,
    original_mismatched_labels,
)
from fagan.networks import Discriminator, Generator

NUM_CLASSES = 10
SCHEMES = ["projection", "concat"]


def spec(name: str, role: str):
    return load_config(resolve_config_path(name, role))


def labels(*values: int) -> torch.Tensor:
    return torch.tensor(values)


def _layer(
    name: str,
    channels: tuple[int, int],
    kernel: int,
    stride: int,
    padding: int,
    activation: str,
    batch_norm: bool,
    **more,
) -> dict:
    """One layer in the original's config format (tuples as strings)."""
    return {
        "name": name,
        "channels": f"{channels}",
        "kernel_dims": f"({kernel}, {kernel})",
        "stride": f"({stride}, {stride})",
        "padding": f"({padding}, {padding})",
        "bias": True,
        "activation": activation,
        **(
            {"use_batch_norm": batch_norm, "use_spectral_norm": True, "squeeze_factor": 4}
            if name == "full_attention"
            else {"batch_norm": batch_norm, "spectral_norm": True}
        ),
        **more,
    }


_IGNORE = {"name": "ignore_attn_maps"}
#: A tiny FAGAN in the original's format (16x16, latent 16; full attention with batch norm in
#: G, without in D; self-attention), for the tests that do not need a realistic size.
TINY_CONFIGS = {
    "gen": {
        "architecture": [
            _layer("full_attention", (16, 32), 4, 1, 0, "lrelu(0.2)", True, transpose_conv=True),
            _IGNORE,
            _layer("conv_transpose", (32, 16), 4, 2, 1, "relu", True),
            {"name": "self_attention", "channels": 16, "bias": True, "squeeze_factor": 4},
            _IGNORE,
            _layer("conv_transpose", (16, 3), 4, 2, 1, "tanh", False),
        ]
    },
    "dis": {
        "architecture": [
            _layer("conv", (3, 16), 4, 2, 1, "lrelu(0.2)", False),
            _layer("full_attention", (16, 32), 4, 2, 1, "lrelu(0.2)", False, transpose_conv=False),
            _IGNORE,
            _layer("conv", (32, 1), 4, 1, 0, "lrelu(1.0)", False, spectral_norm=False),
        ]
    },
}
TINY = {role: parse_config(data, f"tiny/{role}.yaml") for role, data in TINY_CONFIGS.items()}
LATENT = {"fagan_1": 128, "tiny": 16}
IMAGE = {"fagan_1": 64, "tiny": 16}


# --------------------------------------------------------------------------- reference (concat)
def conditional_config(arch: str, role: str, extra: int) -> dict:
    """The original config of ``arch`` (``fagan_1``: the original project's files) with the
    generator's first / the discriminator's last layer taking ``extra`` more channels, as a
    user of attn-gan-pytorch writes the config of a conditional network."""
    if arch == "tiny":
        data = copy.deepcopy(TINY_CONFIGS[role])
    else:
        with open(reference_configs_dir() / arch / f"{role}.conf") as handle:
            data = yaml.safe_load(handle)
    layer = data["architecture"][0 if role == "gen" else -1]
    in_channels, out_channels = parse2tuple(layer["channels"])
    layer["channels"] = f"({in_channels + extra}, {out_channels})"
    return data


def reference_conditional_network(arch: str, role: str, extra: int) -> nn.Module:
    """attn-gan-pytorch's ConditionalGenerator (its latent_size counts the condition) or
    ConditionalDiscriminator (every layer but the last, and the last as ``last_module``)."""
    layers = [
        get_layer(layer) for layer in EasyDict(conditional_config(arch, role, extra)).architecture
    ]
    if role == "gen":
        return Networks.ConditionalGenerator(layers, LATENT[arch] + extra)
    return Networks.ConditionalDiscriminator(layers[:-1], layers[-1])


def _our_unwidened_spec(arch: str, role: str):
    if arch == "tiny":
        return TINY[role]
    return load_config(reference_configs_dir() / arch / f"{role}.conf")


@pytest.fixture(scope="module")
def concat_pair():
    """``(arch, embedding_dim, role) -> (reference, ours)``: a reference conditional network
    with trained-like weights (gammas, batch norms, converged spectral norms) and ours built
    from the unconditional config, holding its weights; made once each, in eval mode."""
    made: dict = {}

    def get(arch: str, embedding_dim: int | None, role: str):
        key = arch, embedding_dim, role
        if key not in made:
            seed = len(made)
            torch.manual_seed(20 + seed)
            extra = embedding_dim or NUM_CLASSES
            ref = reference_conditional_network(arch, role, extra)
            net = Generator if role == "gen" else Discriminator
            size = LATENT[arch] if role == "gen" else None
            ours = net(
                _our_unwidened_spec(arch, role),
                size,
                NUM_CLASSES,
                "concat",
                embedding_dim=embedding_dim,
            )
            randomize_gammas(ref, 2 * seed)
            randomize_batch_norms(ref, 2 * seed + 1)
            converge(ref)
            state = dict(ref.state_dict())
            if embedding_dim is not None:
                state["class_embedding.weight"] = ours.class_embedding.weight.detach().clone()
            load_state_into(ours, state, "reference conditional network")
            made[key] = (ref.eval(), ours.eval())
        return made[key]

    return get


def _condition(ours: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The condition vectors the original takes as input: one-hot or our embedding of y."""
    if ours.embedding_dim is None:
        return F.one_hot(y, NUM_CLASSES).float()
    return ours.class_embedding(y).detach()


PAIRS = [
    pytest.param("fagan_1", None, id="fagan_1-one-hot"),
    pytest.param("tiny", None, id="tiny-one-hot"),
    pytest.param("tiny", 6, id="tiny-embedding6"),
]


@pytest.mark.parametrize("arch,embedding_dim", PAIRS)
def test_concat_generator_matches_reference(concat_pair, arch: str, embedding_dim) -> None:
    ref, ours = concat_pair(arch, embedding_dim, "gen")
    latent = LATENT[arch]
    assert ours.model[0].value_conv.weight.shape[0] == latent + (embedding_dim or NUM_CLASSES)
    z = torch.randn(4, latent, generator=torch.Generator().manual_seed(1))
    y = labels(3, 0, 9, 3)
    with torch.no_grad():
        theirs = ref(torch.cat((z, _condition(ours, y)), dim=1)[:, :, None, None])
        mine = ours(z, y)
    assert mine.shape == (4, 3, IMAGE[arch], IMAGE[arch]) and float(theirs.std()) > 1e-3
    assert_close(mine, theirs)


@pytest.mark.parametrize("arch,embedding_dim", PAIRS)
def test_concat_discriminator_matches_reference(concat_pair, arch: str, embedding_dim) -> None:
    ref, ours = concat_pair(arch, embedding_dim, "dis")
    assert sorted(k for k in ours.state_dict() if k.startswith("last_module")) == [
        "last_module.0.bias",
        "last_module.0.weight",
    ]
    size = IMAGE[arch]
    x = torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    y = labels(1, 7, 7, 0, 4)
    with torch.no_grad():
        theirs = ref(x, _condition(ours, y)).flatten()
        mine = ours(x, y)
    assert mine.shape == (5,)
    assert_close(mine, theirs, atol_fraction=1e-4)
    spread = theirs - theirs.mean()
    assert float(spread.abs().max()) > 0
    torch.testing.assert_close(
        mine - mine.mean(), spread, rtol=1e-3, atol=1e-3 * float(spread.abs().max())
    )


def test_concat_generator_matches_reference_in_training_mode(concat_pair) -> None:
    """Batch statistics agree, and so do the updated running statistics."""
    ref, ours = concat_pair("fagan_1", None, "gen")
    ref_state, our_state = copy.deepcopy(ref.state_dict()), copy.deepcopy(ours.state_dict())
    z = torch.randn(5, 128, generator=torch.Generator().manual_seed(3))
    y = labels(0, 1, 2, 1, 0)
    try:
        ref.train()
        ours.train()
        with torch.no_grad():
            theirs = ref(torch.cat((z, _condition(ours, y)), dim=1)[:, :, None, None])
            mine = ours(z, y)
        assert_close(mine, theirs)
        stats = [k for k in ours.state_dict() if k.endswith(("running_mean", "running_var"))]
        assert len(stats) == 8
        for key in stats:
            assert_close(ours.state_dict()[key], ref.state_dict()[key])
    finally:  # the module-scoped pair stays as the other tests expect it
        ref.load_state_dict(ref_state)
        ours.load_state_dict(our_state)
        ref.eval()
        ours.eval()


def test_original_style_conditional_config_builds_the_same_generator(
    concat_pair, tmp_path: Path
) -> None:
    """A config whose first layer already takes latent + K channels (how the original's
    conditional generators are written) is used as it is: the same network."""
    path = tmp_path / "gen.conf"
    path.write_text(yaml.safe_dump(conditional_config("tiny", "gen", NUM_CLASSES)))
    wide = Generator(load_config(path), 16, NUM_CLASSES, "concat")
    _, ours = concat_pair("tiny", None, "gen")
    assert {k: v.shape for k, v in wide.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    wide.load_state_dict(ours.state_dict())
    wide.eval()
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(wide(z, labels(5, 2)), ours(z, labels(5, 2)))


# --------------------------------------------------------------------------- matching-aware parity
REFERENCE_LOSSES = [
    pytest.param("hinge", "HingeGAN", id="hinge"),
    pytest.param("relativistic-hinge", "RelativisticAverageHingeGAN", id="relativistic-hinge"),
]


def _reference_step(concat_pair, reference_loss: str, z, y, images, randomizer=None) -> float:
    """The loss ``ConditionalGAN.optimize_discriminator(..., matching_aware=True)`` returns
    (its optimizer step, at learning rate 0, changes nothing)."""
    (ref_g, _), (ref_d, _) = concat_pair("tiny", None, "gen"), concat_pair("tiny", None, "dis")
    ref_gan = Networks.ConditionalGAN(ref_g, ref_d)
    vectors = F.one_hot(y, NUM_CLASSES).float()
    noise = torch.cat((z, vectors), dim=1)[:, :, None, None]
    loss_fn = getattr(Losses, reference_loss)(torch.device("cpu"), ref_d)
    optimizer = torch.optim.SGD(ref_d.parameters(), lr=0.0)
    return ref_gan.optimize_discriminator(
        optimizer, noise, images, loss_fn, vectors, matching_aware=True, randomizer=randomizer
    )


def _our_logits(concat_pair, z, y, wrong, images):
    (_, g), (_, d) = concat_pair("tiny", None, "gen"), concat_pair("tiny", None, "dis")
    with torch.no_grad():
        return d(images, y), d(g(z, y), y), d(images, wrong)


@pytest.mark.parametrize("name,reference_loss", REFERENCE_LOSSES)
def test_original_matching_aware_loss_equals_the_package(
    concat_pair, name: str, reference_loss: str
) -> None:
    """The original variant with the original's own mismatcher (its batch = num_classes)."""
    z = torch.randn(NUM_CLASSES, 16, generator=torch.Generator().manual_seed(5))
    y = torch.randperm(NUM_CLASSES, generator=torch.Generator().manual_seed(6))
    y[1] = y[0]  # some repeated labels
    images = torch.rand(NUM_CLASSES, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1

    np.random.seed(8)
    theirs = _reference_step(concat_pair, reference_loss, z, y, images)
    np.random.seed(8)
    wrong = original_mismatched_labels(y, NUM_CLASSES)
    np.random.seed(8)
    their_rows = Networks.ConditionalGAN.randomize(F.one_hot(y, NUM_CLASSES).float())
    assert torch.equal(F.one_hot(wrong, NUM_CLASSES).float(), their_rows)
    assert set(wrong.tolist()) <= {int(y[0]), int(y[1])}  # rows 0 and 1 only: not a shuffle

    r, f, m = _our_logits(concat_pair, z, y, wrong, images)
    mine = matching_aware_d(get_loss(name).d, r, f, m, variant="original")
    assert float(mine) == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    assert float(matching_aware_d(get_loss(name).d, r, f, m)) != pytest.approx(theirs, rel=1e-3)


@pytest.mark.parametrize("name,reference_loss", REFERENCE_LOSSES)
def test_original_matching_aware_scoring_with_any_mismatch(
    concat_pair, name: str, reference_loss: str
) -> None:
    """The original's scoring (mismatched reals as both real and fake) on our mismatched
    labels, through its ``randomizer`` hook, with a batch that is not num_classes."""
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(9))
    y = labels(0, 0, 4, 9, 2, 4)
    wrong = mismatched_labels(y, NUM_CLASSES, torch.Generator().manual_seed(10))
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(11)) * 2 - 1
    theirs = _reference_step(
        concat_pair,
        reference_loss,
        z,
        y,
        images,
        randomizer=lambda _: F.one_hot(wrong, NUM_CLASSES).float(),
    )
    r, f, m = _our_logits(concat_pair, z, y, wrong, images)
    mine = matching_aware_d(get_loss(name).d, r, f, m, variant="original")
    assert float(mine) == pytest.approx(theirs, rel=1e-5, abs=1e-6)


def test_original_mismatch_needs_batch_equal_to_classes() -> None:
    with pytest.raises(FaganError, match="batch size equals the number of classes") as error:
        original_mismatched_labels(labels(0, 1, 2), 4)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------- matching-aware (intended)
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "y",
    [
        pytest.param([3] * 16, id="one-class"),
        pytest.param([0, 1] * 8, id="two-classes"),
        pytest.param(list(range(10)) * 3, id="every-class"),
        pytest.param([7], id="single"),
    ],
)
def test_mismatched_labels_are_always_wrong(seed: int, y: list[int]) -> None:
    y = torch.tensor(y)
    wrong = mismatched_labels(y, NUM_CLASSES, torch.Generator().manual_seed(seed))
    assert wrong.shape == y.shape and wrong.dtype == y.dtype
    assert bool((wrong != y).all())
    assert int(wrong.min()) >= 0 and int(wrong.max()) < NUM_CLASSES
    again = mismatched_labels(y, NUM_CLASSES, torch.Generator().manual_seed(seed))
    assert torch.equal(wrong, again)


def test_mismatched_labels_shuffle_the_batch() -> None:
    """Drawn from the batch: a balanced batch of classes {2, 5} is mismatched within {2, 5}
    (about 1 in 2^5 samples fall back to a random other class), and the class counts of a
    large balanced batch are kept close."""
    y = torch.tensor([2, 5] * 50)
    wrong = mismatched_labels(y, NUM_CLASSES, torch.Generator().manual_seed(0))
    from_batch = wrong == torch.where(y == 2, 5, 2)
    assert int(from_batch.sum()) >= 90, wrong
    y = torch.arange(NUM_CLASSES).repeat(100)
    wrong = mismatched_labels(y, NUM_CLASSES, torch.Generator().manual_seed(1))
    counts = torch.bincount(wrong, minlength=NUM_CLASSES)
    assert bool((counts - 100).abs().max() <= 20), counts


def test_mismatched_labels_need_two_classes() -> None:
    with pytest.raises(FaganError, match="at least 2 classes"):
        mismatched_labels(labels(0, 0), 1)


@pytest.mark.parametrize("name", list(LOSSES))
def test_matching_aware_variants_formulas(name: str) -> None:
    d = LOSSES[name].d
    gen = torch.Generator().manual_seed(12)
    r, f, m = (torch.randn(8, generator=gen) for _ in range(3))
    torch.testing.assert_close(matching_aware_d(d, r, f, m), (d(r, f) + d(r, m)) / 2)
    torch.testing.assert_close(matching_aware_d(d, r, f, m, "original"), (d(r, f) + d(m, m)) / 2)


def test_intended_variant_scores_mismatched_pairs_as_fake() -> None:
    """Hinge: the intended term pushes a mismatched pair's logit down (positive gradient)
    and equals real + (fake + mismatch) / 2; the original's term is >= 2 whatever the
    mismatched logits are and gives no gradient while they lie in (-1, 1)."""
    d = LOSSES["hinge"].d
    r, f = torch.tensor([0.5, 2.0, -0.3]), torch.tensor([-0.2, 0.4, -2.0])
    m = torch.tensor([0.3, -0.6, 0.9], requires_grad=True)
    intended = matching_aware_d(d, r, f, m)
    expected = F.relu(1 - r).mean() + (F.relu(1 + f).mean() + F.relu(1 + m).mean()) / 2
    torch.testing.assert_close(intended, expected)
    (grad,) = torch.autograd.grad(intended, m)
    assert bool((grad > 0).all())
    original = matching_aware_d(d, r, f, m, "original")
    (grad,) = torch.autograd.grad(original, m)
    assert bool((grad == 0).all())
    for shift in (-5.0, 0.0, 5.0):
        shifted = m.detach() + shift
        assert float(d(shifted, shifted)) >= 2.0


def test_unknown_matching_aware_variant() -> None:
    with pytest.raises(FaganError, match="unknown matching-aware variant 'both'"):
        matching_aware_d(LOSSES["hinge"].d, torch.zeros(2), torch.zeros(2), torch.zeros(2), "both")


# --------------------------------------------------------------------------- conditional batch norm
def test_cbn_starts_as_batch_norm_without_affine_for_every_class() -> None:
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(6, 4)
    x = torch.randn(8, 6, 3, 3) * 3 + 1
    y = labels(0, 1, 2, 3, 0, 1, 2, 3)
    expected = F.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(cbn(x, y), expected)
    torch.testing.assert_close(cbn(x, torch.zeros(8, dtype=torch.long)), expected)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cbn_applies_each_class_gain_and_bias(training: bool) -> None:
    torch.manual_seed(1)
    cbn = ConditionalBatchNorm2d(5, 3)
    with torch.no_grad():
        cbn.embed.weight[1:].normal_()  # classes 1 and 2 trained away from (1, 0)
        cbn.bn.running_mean.normal_()
        cbn.bn.running_var.uniform_(0.5, 2)
    cbn.train(training)
    x = torch.randn(6, 5, 4, 4)
    y = labels(0, 1, 2, 2, 1, 0)
    out = cbn(x, y)
    bn = F.batch_norm(x, cbn.bn.running_mean.clone(), cbn.bn.running_var.clone(), training=training)
    gamma, beta = cbn.embed.weight[:, :5], cbn.embed.weight[:, 5:]
    expected = gamma[y][:, :, None, None] * bn + beta[y][:, :, None, None]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[y == 0], bn[y == 0])  # class 0: gamma = 1, beta = 0
    assert not torch.allclose(out[2], cbn(x, labels(0, 1, 1, 2, 1, 0))[2])  # class matters


def test_cbn_with_shared_embedding() -> None:
    torch.manual_seed(2)
    cbn = ConditionalBatchNorm2d(4, 3, shared_dim=7)
    e = torch.randn(5, 7)
    x = torch.randn(5, 4, 2, 2)
    torch.testing.assert_close(cbn(x, e), F.batch_norm(x, None, None, training=True))
    with torch.no_grad():  # trained away from the start
        cbn.gain.weight.normal_()
        cbn.bias.weight.normal_()
    expected = (1 + e @ cbn.gain.weight.T)[:, :, None, None] * F.batch_norm(
        x, None, None, training=True
    ) + (e @ cbn.bias.weight.T)[:, :, None, None]
    torch.testing.assert_close(cbn(x, e), expected)


def test_cbn_keeps_bf16_under_autocast() -> None:
    cbn = ConditionalBatchNorm2d(4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cbn(torch.randn(2, 4, 3, 3, dtype=torch.bfloat16), labels(0, 2))
    assert out.dtype == torch.bfloat16


def _batch_norm_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


GENERATOR_SPECS = [
    pytest.param(("builtin", name), id=name) for name in ("fagan64", "sagan64", "small32")
] + [pytest.param(("original", "fagan_1"), id="fagan_1-conf")]


def _generator_spec(which: tuple[str, str]):
    kind, name = which
    if kind == "builtin":
        return spec(name, "gen")
    return load_config(reference_configs_dir() / name / "gen.conf")


def _spec_batch_norms(g_spec) -> int:
    """Batch norms the spec asks for: conv blocks, full attention residuals, standalone."""
    return sum(
        isinstance(layer, BatchNormSpec)
        or (isinstance(layer, ConvSpec) and layer.batch_norm)
        or (isinstance(layer, FullAttentionSpec) and layer.use_batch_norm)
        for layer in g_spec.layers
    )


@pytest.mark.parametrize("which", GENERATOR_SPECS)
def test_projection_generator_conditions_every_batch_norm(which) -> None:
    """Every BatchNorm2d, wherever the spec puts it, becomes a conditional one in place."""
    g_spec = _generator_spec(which)
    plain = Generator(g_spec)
    cond = Generator(g_spec, 128, 5, "projection")
    names = _batch_norm_names(plain)
    assert len(names) == _spec_batch_norms(g_spec) > 0
    assert [f"{n}.bn" for n in names] == _batch_norm_names(cond)
    conditional = {n for n, m in cond.named_modules() if isinstance(m, ConditionalBatchNorm2d)}
    assert conditional == set(names)
    has_attention_bn = any(
        isinstance(layer, FullAttentionSpec) and layer.use_batch_norm for layer in g_spec.layers
    )
    assert any(n.endswith(".batch_norm") for n in names) == has_attention_bn


def test_standalone_batch_norm_layer_becomes_conditional() -> None:
    g_spec = parse_config(
        {
            "architecture": [
                {
                    "name": "conv_transpose",
                    "channels": "(8, 6)",
                    "kernel_dims": "(4, 4)",
                    "stride": "(1, 1)",
                    "padding": "(0, 0)",
                    "bias": True,
                    "batch_norm": False,
                    "activation": "relu",
                },
                {"name": "batch_norm", "num_channels": 6},
                {
                    "name": "conv_transpose",
                    "channels": "(6, 3)",
                    "kernel_dims": "(3, 3)",
                    "stride": "(1, 1)",
                    "padding": "(1, 1)",
                    "bias": True,
                    "batch_norm": False,
                    "activation": "tanh",
                },
            ]
        },
        "g.yaml",
    )
    g = Generator(g_spec, 8, 3, "projection")
    assert isinstance(g.model[1], ConditionalBatchNorm2d)
    assert g(torch.randn(2, 8), labels(0, 2)).shape == (2, 3, 4, 4)


@pytest.mark.parametrize("shared", [None, 8], ids=["per-layer", "shared8"])
def test_projection_generator_starts_as_the_unconditional_one(shared: int | None) -> None:
    """At initialisation (gamma = 1, beta = 0) the network computes what the unconditional
    one with the same weights does, for any label."""
    g_spec = spec("small32", "gen")
    torch.manual_seed(3)
    plain = Generator(g_spec)
    torch.manual_seed(3)
    cond = Generator(g_spec, 128, 5, "projection", embedding_dim=shared)
    z = torch.randn(4, 128, generator=torch.Generator().manual_seed(4))
    out = cond(z, labels(0, 4, 2, 2))
    torch.testing.assert_close(out, plain(z), rtol=1e-5, atol=1e-5)
    assert all(layer.condition is None for layer in condition_layers(cond))  # nothing kept


def test_projection_generator_eval_mode_changes_only_that_class() -> None:
    torch.manual_seed(5)
    g = Generator(spec("small32", "gen"), 128, 4, "projection")
    g.train()
    g(torch.randn(16, 128), torch.arange(4).repeat(4))  # running statistics
    g.eval()
    z = torch.randn(4, 128, generator=torch.Generator().manual_seed(6))
    y = labels(0, 1, 2, 3)
    with torch.no_grad():
        before = g(z, y)
        condition_layers(g)[0].embed.weight[2].mul_(1.5)
        after = g(z, y)
    changed = (after - before).flatten(1).abs().amax(dim=1)
    assert float(changed[2]) > 1e-3
    assert torch.equal(changed[[0, 1, 3]], torch.zeros(3))


# --------------------------------------------------------------------------- projection head
def test_projection_discriminator_equals_the_formula() -> None:
    """``D(x, y) = D_uncond(x) + <embed_sn(y), sum_hw h(x)>`` with ``h`` the input of the
    last convolution (fagan64: the 512x4x4 map after the 4x4 self-attention)."""
    d_spec = spec("fagan64", "dis")
    torch.manual_seed(7)
    d = Discriminator(d_spec, None, NUM_CLASSES, "projection")
    assert d.head_index == 10 and d.projection.embed.weight.shape == (NUM_CLASSES, 512)
    plain = Discriminator(d_spec)
    plain.load_state_dict(
        {k: v for k, v in d.state_dict().items() if not k.startswith("projection.")}
    )
    for net in (d, plain):
        randomize_gammas(net, 8)
        net.eval()
    inputs: list[torch.Tensor] = []
    d.model[10].register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9)) * 2 - 1
    y = labels(4, 9)
    with torch.no_grad():
        out = d(x, y)
        (h,) = inputs
        assert h.shape == (2, 512, 4, 4)
        embed = d.projection.embed.weight  # W / sigma
        expected = plain(x) + (embed[y] * h.sum(dim=(2, 3))).sum(dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, plain(x), atol=1e-3)


def test_projection_embedding_is_spectrally_normalised() -> None:
    torch.manual_seed(10)
    head = ProjectionHead(7, 32)
    with torch.no_grad():
        head.embed.parametrizations.weight.original.mul_(5)
    head.train()
    phi = torch.randn(3, 32)
    for _ in range(30):  # power iterations, one per training-mode forward
        head(phi, labels(0, 1, 2))
    sigma = torch.linalg.matrix_norm(head.embed.weight.detach(), ord=2)
    assert float(sigma) == pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(
        head(phi, labels(0, 1, 2)), (head.embed.weight[[0, 1, 2]] * phi).sum(1)
    )


# --------------------------------------------------------------------------- conditioning conditions
@pytest.mark.parametrize("scheme", SCHEMES)
def test_discriminator_output_depends_on_labels(scheme: str) -> None:
    torch.manual_seed(11)
    d = Discriminator(TINY["dis"], None, NUM_CLASSES, scheme).eval()
    x = torch.rand(1, 3, 16, 16).expand(NUM_CLASSES, -1, -1, -1)
    with torch.no_grad():
        out = d(x, torch.arange(NUM_CLASSES))
    assert float(out.max() - out.min()) > 1e-4  # one image, ten classes, ten logits


@pytest.mark.parametrize(
    "scheme,embedding_dim",
    [("projection", None), ("projection", 8), ("concat", None), ("concat", 8)],
)
def test_generator_output_depends_on_labels_after_one_step(scheme: str, embedding_dim) -> None:
    """One hinge step against a conditional discriminator makes every scheme class-dependent
    (concat already is at initialisation; projection starts at gamma = 1, beta = 0)."""
    torch.manual_seed(12)
    g = Generator(TINY["gen"], 16, 4, scheme, embedding_dim=embedding_dim)
    d = Discriminator(TINY["dis"], None, 4, scheme)
    z = torch.randn(1, 16).expand(4, -1)
    y = torch.arange(4)
    optimizer = torch.optim.Adam(g.parameters(), lr=1e-3)
    loss = get_loss("hinge").g(None, d(g(torch.randn(8, 16), y.repeat(2)), y.repeat(2)))
    loss.backward()
    optimizer.step()
    g.eval()
    with torch.no_grad():
        images = g(z, y)
    spread = (images - images.mean(dim=0)).abs().amax()
    assert float(spread) > 1e-4


# --------------------------------------------------------------------------- every loss, conditionally
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", list(LOSSES))
def test_conditional_training_step_with_every_loss(scheme: str, name: str) -> None:
    torch.manual_seed(13)
    loss = LOSSES[name]
    g = Generator(TINY["gen"], 16, 5, scheme)
    d = Discriminator(TINY["dis"], None, 5, scheme)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    y = labels(0, 3, 4, 3)
    gen = torch.Generator().manual_seed(14)
    fake = g(torch.randn(4, 16), y)

    r, f = d(real, y), d(fake.detach(), y)
    m = d(real, mismatched_labels(y, 5, gen))
    d_loss = matching_aware_d(loss.d, r, f, m)
    if loss.gp_weight:
        d_loss = d_loss + loss.gp_weight * gradient_penalty(d, real, fake, gen, labels=y)
    d_loss.backward()
    assert torch.isfinite(d_loss)
    for param_name, param in d.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), param_name
    head = (
        d.projection.embed.parametrizations.weight.original
        if scheme == "projection"
        else d.last_module[0].weight
    )
    assert float(head.grad.abs().sum()) > 0

    d.zero_grad()
    r = d(real, y) if loss.g_uses_real else None
    g_loss = loss.g(r, d(fake, y))
    g_loss.backward()
    assert torch.isfinite(g_loss)
    for param_name, param in g.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), param_name
    if scheme == "projection":
        conditioned = condition_layers(g)[0].embed.weight.grad
    else:  # the residual convolution's weights on the condition's input channels
        conditioned = g.model[0].residual_conv.parametrizations.weight.original.grad[16:]
    assert float(conditioned.abs().sum()) > 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_conditional_networks_under_bf16_autocast(scheme: str) -> None:
    torch.manual_seed(15)
    g = Generator(TINY["gen"], 16, 5, scheme, embedding_dim=6)
    d = Discriminator(TINY["dis"], None, 5, scheme, embedding_dim=6 if scheme == "concat" else None)
    y = labels(1, 2, 0, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = g(torch.randn(4, 16), y)
        logits = d(images, y)
    assert images.dtype == torch.bfloat16 and images.shape == (4, 3, 16, 16)
    assert logits.shape == (4,) and bool(torch.isfinite(logits).all())
    logits.float().sum().backward()
    grads = [p.grad for p in g.parameters()]
    assert all(grad is not None and bool(torch.isfinite(grad).all()) for grad in grads)
    # the class path learns: concat's embedding; projection's gain maps (the shared
    # embedding's own gradient starts at 0, as the maps start at 0)
    learned = g.class_embedding.weight if scheme == "concat" else condition_layers(g)[0].gain.weight
    assert float(learned.grad.abs().sum()) > 0


# --------------------------------------------------------------------------- state, copies, rebuild
@pytest.mark.parametrize("scheme", SCHEMES)
def test_conditional_generator_rebuilds_from_spec_and_options(scheme: str) -> None:
    """``spec`` stays the given one and ``conditioning_options`` rebuild the same network,
    as a checkpoint's metadata would; deepcopies (EMA) and SyncBatchNorm conversion keep
    the conditioning."""
    torch.manual_seed(16)
    g_spec = spec("small32", "gen")
    g = Generator(g_spec, 128, 3, scheme, embedding_dim=4).eval()
    assert g.spec is g_spec
    assert g.conditioning_options == {"num_classes": 3, "conditioning": scheme, "embedding_dim": 4}
    again = Generator(g.spec, 128, **g.conditioning_options)
    load_state_into(again, g.state_dict(), "generator")
    again.eval()
    twin = copy.deepcopy(g)
    z, y = torch.randn(2, 128), labels(2, 0)
    with torch.no_grad():
        out = g(z, y)
        torch.testing.assert_close(again(z, y), out)
        torch.testing.assert_close(twin(z, y), out)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(g))
    if scheme == "projection":
        assert len(condition_layers(synced)) == len(condition_layers(g))
        assert all(isinstance(layer.bn, nn.SyncBatchNorm) for layer in condition_layers(synced))


def test_unconditional_networks_are_unchanged() -> None:
    torch.manual_seed(17)
    g = Generator(spec("small32", "gen"))
    torch.manual_seed(17)
    explicit = Generator(spec("small32", "gen"), 128, None, None)
    assert g.conditioning_options == {
        "num_classes": None,
        "conditioning": None,
        "embedding_dim": None,
    }
    assert list(g.state_dict()) == list(explicit.state_dict())
    d = Discriminator(spec("small32", "dis"))
    assert not any(
        k.startswith(("projection", "last_module", "class_embedding")) for k in d.state_dict()
    )
    z = torch.randn(2, 128)
    torch.testing.assert_close(g(z), explicit(z), rtol=0, atol=0)


# --------------------------------------------------------------------------- errors
def _one_line_error(call, match: str) -> None:
    with pytest.raises(FaganError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bad_labels_are_one_line_errors(scheme: str) -> None:
    g = Generator(spec("small32", "gen"), 128, 4, scheme)
    d = Discriminator(spec("small32", "dis"), None, 4, scheme)
    z, x = torch.randn(2, 128), torch.rand(2, 3, 32, 32)
    _one_line_error(lambda: g(z), r"generator is class-conditional \(4 classes\)")
    _one_line_error(lambda: d(x), r"discriminator is class-conditional \(4 classes\)")
    _one_line_error(
        lambda: g(z, labels(0, 4)),
        r"class label 4 given to the generator is "
        r"outside \[0, 4\)",
    )
    _one_line_error(lambda: d(x, labels(-1, 0)), r"class label -1 .* outside \[0, 4\)")
    _one_line_error(lambda: g(z, torch.tensor([0.0, 1.0])), "must be an integer tensor")
    _one_line_error(lambda: g(z, torch.tensor([True, False])), "must be an integer tensor")
    torch.testing.assert_close(g.eval()(z, labels(3, 1).int()), g(z, labels(3, 1)))
    _one_line_error(lambda: d(x, labels(0, 1, 2)), r"shape \[3\]; expected \[2\]")
    plain = Generator(spec("small32", "gen"))
    _one_line_error(lambda: plain(z, labels(0, 1)), "generator is unconditional")


def test_bad_conditioning_arguments_are_one_line_errors() -> None:
    g_spec, d_spec = spec("small32", "gen"), spec("small32", "dis")
    _one_line_error(lambda: Generator(g_spec, 128, 4, "film"), "unknown conditioning 'film'")
    _one_line_error(lambda: Generator(g_spec, 128, 4), "num_classes=4 but no conditioning")
    _one_line_error(lambda: Discriminator(d_spec, None, None, "concat"), "needs num_classes")
    _one_line_error(lambda: Discriminator(d_spec, None, 0, "projection"), "needs num_classes")
    _one_line_error(
        lambda: Discriminator(d_spec, None, 4, "projection", embedding_dim=8),
        "applies to concat conditioning",
    )
    _one_line_error(
        lambda: Generator(g_spec, 128, 4, "concat", embedding_dim=0),
        "embedding_dim must be an integer >= 1",
    )
    _one_line_error(
        lambda: Generator(g_spec, 100, 4, "concat"),
        r"latent size is 100 \(or 104: the latent size plus the 4 condition",
    )


def test_projection_needs_a_batch_norm_and_concat_a_final_convolution() -> None:
    no_bn = {
        "architecture": [
            {
                "name": "conv_transpose",
                "channels": "(8, 3)",
                "kernel_dims": "(4, 4)",
                "stride": "(1, 1)",
                "padding": "(0, 0)",
                "bias": True,
                "batch_norm": False,
                "activation": "tanh",
            }
        ]
    }
    _one_line_error(
        lambda: Generator(parse_config(no_bn, "g.yaml"), 8, 3, "projection"),
        "g.yaml: projection conditioning replaces the generator's batch norms",
    )
    Generator(parse_config(no_bn, "g.yaml"), 8, 3, "concat")  # concat needs none
    trailing = {
        "architecture": [
            {
                "name": "conv",
                "channels": "(3, 1)",
                "kernel_dims": "(4, 4)",
                "stride": "(1, 1)",
                "padding": "(0, 0)",
                "bias": True,
                "batch_norm": False,
                "activation": "lrelu(1.0)",
            },
            {"name": "ignore_attn_maps"},
        ]
    }
    d_spec = parse_config(trailing, "d.yaml")
    _one_line_error(
        lambda: Discriminator(d_spec, None, 3, "concat"),
        r"d.yaml: architecture\[1\]: concat conditioning feeds the condition",
    )
    assert Discriminator(d_spec, None, 3, "projection")(
        torch.rand(2, 3, 4, 4), labels(0, 2)
    ).shape == (2,)
