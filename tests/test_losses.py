"""Tests for fagan.losses: against attn-gan-pytorch's loss classes where it has them, and
against independent numpy formulas where it does not.

The reference classes call a discriminator on "samples"; here that discriminator is an
identity (or a sigmoid, for its BCE-on-probabilities StandardGAN), and the samples are the
logits themselves, so both sides see exactly the same discriminator outputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fagan.errors import FaganError
from fagan.losses import LOSSES, GANLoss, get_loss, gradient_penalty

Losses = pytest.importorskip("attn_gan_pytorch.Losses")

EXPECTED_NAMES = [
    "hinge",
    "relativistic-hinge",
    "standard",
    "lsgan",
    "wgan-gp",
    "relativistic-standard",
    "relativistic-lsgan",
]
RELATIVISTIC = {"relativistic-hinge", "relativistic-standard", "relativistic-lsgan"}


def logits(seed: int, shape: tuple[int, ...], scale: float = 2.0, shift: float = 0.0):
    generator = torch.Generator().manual_seed(seed)
    # float32, what training runs in (the reference's BCE targets are float32 too)
    return torch.randn(*shape, generator=generator) * scale + shift


# (batch shape, seed): the discriminator's (B,) logits and its raw (B, 1, 1, 1) output
SHAPES = [
    pytest.param((8,), id="B8"),
    pytest.param((3, 1, 1, 1), id="B3x1x1x1"),
    pytest.param((64,), id="B64"),
]
SEEDS = [0, 1, 2]


def test_registry_names_and_flags() -> None:
    assert list(LOSSES) == EXPECTED_NAMES
    for name, loss in LOSSES.items():
        assert isinstance(loss, GANLoss) and loss.name == name
        assert loss.g_uses_real is (name in RELATIVISTIC), name
        assert loss.gp_weight == (10.0 if name == "wgan-gp" else 0.0), name


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_generator_loss_ignores_real_logits_unless_flagged(name: str) -> None:
    loss = LOSSES[name]
    f = logits(0, (16,))
    g1, g2 = loss.g(logits(1, (16,)), f), loss.g(logits(2, (16,), shift=3.0), f)
    if loss.g_uses_real:
        assert not torch.isclose(g1, g2), name
    else:
        assert float(g1) == float(g2), name


@pytest.mark.parametrize("name", ["hinge", "HINGE", "Relativistic-Hinge", "wgan-gp"])
def test_get_loss_is_case_insensitive(name: str) -> None:
    assert get_loss(name) is LOSSES[name.lower()]


@pytest.mark.parametrize("name", ["hing", "wgan", "", "relativistic_hinge"])
def test_get_loss_unknown_name_lists_the_names(name: str) -> None:
    with pytest.raises(FaganError) as info:
        get_loss(name)
    message = str(info.value)
    assert message.startswith(f"unknown loss function {name!r}; choose one of ")
    assert message.endswith(", ".join(EXPECTED_NAMES))


# --------------------------------------------------------------------------- against the reference
REFERENCE_PAIRS = [
    pytest.param("hinge", "HingeGAN", id="hinge"),
    pytest.param("relativistic-hinge", "RelativisticAverageHingeGAN", id="relativistic-hinge"),
    pytest.param("standard", "StandardGAN", id="standard"),
]


def _reference(class_name: str) -> Losses.GANLoss:
    # StandardGAN applies BCE to probabilities: its discriminator ends in a sigmoid
    dis = torch.sigmoid if class_name == "StandardGAN" else (lambda x: x)
    return getattr(Losses, class_name)(torch.device("cpu"), dis)


@pytest.mark.parametrize("name,class_name", REFERENCE_PAIRS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_equal_to_reference(name: str, class_name: str, shape, seed: int) -> None:
    ours, ref = LOSSES[name], _reference(class_name)
    r, f = logits(seed, shape, shift=0.5), logits(seed + 100, shape, shift=-0.5)
    torch.testing.assert_close(ours.d(r, f), ref.dis_loss(r, f), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.g(r, f), ref.gen_loss(r, f), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,class_name", REFERENCE_PAIRS)
def test_gradients_equal_to_reference(name: str, class_name: str) -> None:
    ours, ref = LOSSES[name], _reference(class_name)
    r0, f0 = logits(5, (10,)), logits(6, (10,))
    for part in ("d", "g"):
        grads = []
        for compute in (getattr(ours, part), ref.dis_loss if part == "d" else ref.gen_loss):
            r, f = r0.clone().requires_grad_(True), f0.clone().requires_grad_(True)
            compute(r, f).backward()
            grads.append((torch.zeros_like(r) if r.grad is None else r.grad, f.grad))
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-8, msg=f"{name} {part}")


def test_hinge_reference_values_by_hand() -> None:
    # r = [2, 0.5], f = [-2, 0]: relu(1 - r) = [0, 0.5], relu(1 + f) = [0, 1]
    r, f = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert float(LOSSES["hinge"].d(r, f)) == pytest.approx(0.25 + 0.5)
    assert float(LOSSES["hinge"].g(r, f)) == pytest.approx(1.0)


def test_standard_is_stable_where_the_reference_clamps() -> None:
    """Logits far beyond float32 sigmoid saturation: ours stays exact (softplus), the
    reference's BCE on probabilities clamps log(0) to -100."""
    r = torch.tensor([-150.0, 2.0])
    f = torch.tensor([150.0, -2.0])
    # softplus(-r) and softplus(f) are both [softplus(150), softplus(-2)]
    expected = (np.logaddexp(0, 150.0) + np.logaddexp(0, -2.0)) / 2
    assert float(LOSSES["standard"].d(r, f)) == pytest.approx(expected, rel=1e-6)
    # the reference: sigmoid(-150) == 0 and sigmoid(150) == 1 in float32, log clamped at -100
    clamped = (100 + np.logaddexp(0, -2.0)) / 2
    assert float(_reference("StandardGAN").dis_loss(r, f)) == pytest.approx(clamped, rel=1e-5)
    assert math.isfinite(float(LOSSES["standard"].g(r, f)))


# --------------------------------------------------------------------------- lsgan
def test_lsgan_equals_reference_for_batch_size_one() -> None:
    ref = _reference("LSGAN")
    for seed in SEEDS:
        r, f = logits(seed, (1,)), logits(seed + 10, (1,))
        torch.testing.assert_close(LOSSES["lsgan"].d(r, f), ref.dis_loss(r, f))
        torch.testing.assert_close(LOSSES["lsgan"].g(r, f), ref.gen_loss(r, f))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_lsgan_is_mean_of_squares_not_reference_square_of_mean(shape, seed: int) -> None:
    r, f = logits(seed, shape, shift=0.7), logits(seed + 10, shape, shift=-0.3)
    rn, fn = r.double().numpy().ravel(), f.double().numpy().ravel()
    d, g = LOSSES["lsgan"].d(r, f), LOSSES["lsgan"].g(r, f)
    assert float(d) == pytest.approx(0.5 * (np.mean((rn - 1) ** 2) + np.mean(fn**2)), rel=1e-6)
    assert float(g) == pytest.approx(0.5 * np.mean((fn - 1) ** 2), rel=1e-6)
    # the documented difference: the reference squares the batch mean, and the gap is
    # exactly half the (population) variances
    ref = _reference("LSGAN")
    ref_d, ref_g = float(ref.dis_loss(r, f)), float(ref.gen_loss(r, f))
    assert float(d) - ref_d == pytest.approx(0.5 * (rn.var() + fn.var()), rel=1e-5)
    assert float(g) - ref_g == pytest.approx(0.5 * fn.var(), rel=1e-5)
    assert float(d) > ref_d + 0.1 and float(g) > ref_g + 0.1


# --------------------------------------------------------------------------- no reference: numpy
def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -_softplus(-x)


def _numpy_losses(name: str, r: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    """Independent formulas (Arjovsky 2017; Jolicoeur-Martineau 2018), halved where the
    package halves the two-term losses."""
    if name == "wgan-gp":
        return float(f.mean() - r.mean()), float(-f.mean())
    dr, df = r - f.mean(), f - r.mean()  # relativistic average differences
    if name == "relativistic-standard":
        d = -(np.mean(_log_sigmoid(dr)) + np.mean(np.log1p(-1 / (1 + np.exp(-df))))) / 2
        g = -(np.mean(_log_sigmoid(df)) + np.mean(np.log1p(-1 / (1 + np.exp(-dr))))) / 2
        return float(d), float(g)
    if name == "relativistic-lsgan":
        d = (np.mean((dr - 1) ** 2) + np.mean((df + 1) ** 2)) / 2
        g = (np.mean((df - 1) ** 2) + np.mean((dr + 1) ** 2)) / 2
        return float(d), float(g)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["wgan-gp", "relativistic-standard", "relativistic-lsgan"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_against_independent_formulas(name: str, shape, seed: int) -> None:
    r, f = logits(seed, shape, shift=0.4), logits(seed + 20, shape, shift=-0.4)
    expected_d, expected_g = _numpy_losses(
        name, r.double().numpy().ravel(), f.double().numpy().ravel()
    )
    assert float(LOSSES[name].d(r, f)) == pytest.approx(expected_d, rel=1e-6, abs=1e-7)
    assert float(LOSSES[name].g(r, f)) == pytest.approx(expected_g, rel=1e-6, abs=1e-7)


def test_relativistic_losses_reward_the_right_side() -> None:
    """Real far above fake: the discriminator's relativistic losses are near their minimum,
    the generator's large; swapped, the other way round."""
    high, low = torch.full((4,), 5.0), torch.full((4,), -5.0)
    for name in ("relativistic-standard", "relativistic-lsgan", "relativistic-hinge"):
        loss = LOSSES[name]
        assert float(loss.d(high, low)) < float(loss.d(low, high)), name
        assert float(loss.g(high, low)) > float(loss.g(low, high)), name
    assert float(LOSSES["relativistic-standard"].d(high, low)) == pytest.approx(
        float(np.log1p(np.exp(-10.0))), rel=1e-5
    )


# --------------------------------------------------------------------------- gradient penalty
class Linear(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w everywhere."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(torch.tensor(0.3, dtype=weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight + self.bias


def _images(seed: int, batch: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("seed", SEEDS)
def test_gradient_penalty_zero_for_unit_norm_gradient(seed: int) -> None:
    w = torch.randn(48, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    d = Linear(w / w.norm())
    penalty = gradient_penalty(d, _images(seed), _images(seed + 1))
    assert penalty.item() == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("norm", [0.0, 0.25, 2.0, 3.5])
def test_gradient_penalty_of_linear_discriminator(norm: float) -> None:
    w = torch.randn(48, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    d = Linear(w / w.norm() * norm)
    penalty = gradient_penalty(d, _images(1), _images(2))
    assert penalty.item() == pytest.approx((norm - 1) ** 2, rel=1e-12, abs=1e-15)
    assert penalty.item() > 0
    # create_graph: the penalty trains the discriminator, d/dw (|w| - 1)^2 = 2 (|w| - 1) w/|w|
    penalty.backward()
    if norm > 0:
        expected = 2 * (norm - 1) * d.weight.detach() / norm
        torch.testing.assert_close(d.weight.grad, expected)
    assert d.bias.grad is None or float(d.bias.grad) == 0.0  # the bias moves no gradient


def test_gradient_penalty_nonlinear_matches_hand_computation() -> None:
    """D(x) = sum(x^2) has input gradient 2 x: the penalty on x_hat = a real + (1 - a) fake
    with the same random a, computed here independently."""
    real, fake = _images(3, batch=6), _images(4, batch=6)

    def d(x: torch.Tensor) -> torch.Tensor:
        return (x**2).flatten(1).sum(1)

    penalty = gradient_penalty(d, real, fake, generator=torch.Generator().manual_seed(11))
    alpha = torch.rand(
        6, 1, 1, 1, generator=torch.Generator().manual_seed(11), dtype=torch.float64
    ).numpy()
    x_hat = alpha * real.numpy() + (1 - alpha) * fake.numpy()
    norms = np.sqrt(((2 * x_hat) ** 2).reshape(6, -1).sum(1))
    assert penalty.item() == pytest.approx(float(np.mean((norms - 1) ** 2)), rel=1e-10)
    assert penalty.item() > 0


def test_gradient_penalty_does_not_touch_inputs() -> None:
    real = _images(5).requires_grad_(True)
    fake = _images(6).requires_grad_(True)
    w = torch.ones(48, dtype=torch.float64) * 0.5
    gradient_penalty(Linear(w), real, fake).backward()
    assert real.grad is None and fake.grad is None  # detached: only D is trained by it
