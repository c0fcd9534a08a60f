"""The training steps' memory and speed measures change no result.

In-place activations, gradients freed right after each update and the fused Adam are
there for speed and memory (benchmarks/RESULTS.md); these tests pin that they compute what the plain
versions compute.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fagan.config import load_config, resolve_config_path
from fagan.layers import FullAttention
from fagan.losses import get_loss, gradient_penalty
from fagan.networks import Discriminator, Generator
from fagan.train import Precision, d_step, g_step, make_adam

LATENT = 128


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    G = Generator(load_config(resolve_config_path("fagan64", "gen")), LATENT).train()
    D = Discriminator(load_config(resolve_config_path("fagan64", "dis")), 64).train()
    return G, D


def _out_of_place(model: nn.Module) -> int:
    """Makes every activation that ``activate_inplace`` would apply in place run out of place
    (it goes by exact type; a wrapper hides it); returns how many there were."""
    from fagan.layers import ConvBlock

    changed = 0
    for module in model.modules():
        if isinstance(module, ConvBlock) and type(module[-1]) in (nn.LeakyReLU, nn.ReLU):
            module[-1] = nn.Sequential(module[-1])
            changed += 1
        if isinstance(module, FullAttention) and type(module.activation) in (nn.LeakyReLU, nn.ReLU):
            module.activation = nn.Sequential(module.activation)
            changed += 1
    return changed


def _steps(G: nn.Module, D: nn.Module, loss_name: str, steps: int = 2) -> list[float]:
    loss = get_loss(loss_name)
    prec = Precision.create("fp32", torch.device("cpu"))
    g_opt, d_opt = make_adam(G, 1e-4), make_adam(D, 4e-4)
    data = torch.Generator().manual_seed(3)
    rng = torch.Generator().manual_seed(4)
    losses = []
    for _ in range(steps):
        real = torch.rand(4, 3, 64, 64, generator=data) * 2 - 1
        z = torch.randn(4, LATENT, generator=data)
        losses.append(d_step(G, D, real, z, loss, d_opt, prec, lambda x: x, rng))
        z = torch.randn(4, LATENT, generator=data)
        losses.append(g_step(G, D, real, z, loss, g_opt, prec, lambda x: x))
    return losses


@pytest.mark.parametrize("loss_name", ["relativistic-hinge", "hinge"])
def test_inplace_activations_give_bitwise_the_same_training(loss_name: str) -> None:
    G, D = _models()
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    # the FAGAN 64x64 networks do use in-place activations (conv blocks and the full
    # attention residual paths), so the comparison below is not vacuous
    assert _out_of_place(G_ref) >= 4 and _out_of_place(D_ref) >= 4
    assert _steps(G, D, loss_name) == _steps(G_ref, D_ref, loss_name)
    for ours, ref in ((G, G_ref), (D, D_ref)):
        for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_inplace_activations_keep_the_gradient_penalty() -> None:
    """WGAN-GP differentiates through the discriminator's backward, i.e. through
    ``leaky_relu_backward`` computed from the activation's output when in place."""
    _, D = _models()
    D_ref = copy.deepcopy(D)
    assert _out_of_place(D_ref) >= 4
    data = torch.Generator().manual_seed(3)
    real = torch.rand(4, 3, 64, 64, generator=data) * 2 - 1
    fake = torch.rand(4, 3, 64, 64, generator=data) * 2 - 1
    loss = get_loss("wgan-gp")
    grads = []
    for model in (D, D_ref):
        penalty = gradient_penalty(model, real, fake, torch.Generator().manual_seed(1))
        total = loss.d(model(real), model(fake)) + loss.gp_weight * penalty
        total.backward()
        grads.append((float(penalty.detach()), {n: p.grad for n, p in model.named_parameters()}))
    (penalty, ours), (ref_penalty, ref) = grads
    assert penalty == pytest.approx(ref_penalty, rel=1e-6) and penalty > 0
    for name, grad in ours.items():
        scale = float(ref[name].abs().max())
        assert float((grad - ref[name]).abs().max()) <= 1e-5 * scale + 1e-9, name


def test_steps_free_gradients_after_updating() -> None:
    G, D = _models()
    losses = _steps(G, D, "relativistic-hinge", steps=1)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.grad is None for p in G.parameters())
    assert all(p.grad is None for p in D.parameters())
    assert all(p.requires_grad for p in D.parameters())  # restored after the G step


def test_make_adam_is_the_fused_adam_and_matches_the_plain_one() -> None:
    G, _ = _models()
    fused = make_adam(G, 1e-3)
    assert fused.defaults["fused"] and fused.defaults["betas"] == (0.0, 0.9)
    ref_model = copy.deepcopy(G)
    plain = torch.optim.Adam(ref_model.parameters(), lr=1e-3, betas=(0.0, 0.9))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in G.parameters()]
        for model, opt in ((G, fused), (ref_model, plain)):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(G.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a plain optimiser's state loads into the fused one (resuming older runs)
    fused.load_state_dict(plain.state_dict())
    fused.step()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sn", [True, False])
@pytest.mark.parametrize("bf16", [False, True])
def test_transposed_conv_from_one_pixel_equals_the_deconvolution(
    bias: bool, sn: bool, bf16: bool
) -> None:
    """The 1 x 1-input fast path (a matrix product) computes nn.ConvTranspose2d's output
    and gradients; other inputs take nn.ConvTranspose2d's own path."""
    from torch.nn.utils.parametrizations import spectral_norm

    from fagan.layers.fast import FastPathConvTranspose2d

    torch.manual_seed(1)
    ours = FastPathConvTranspose2d(32, 48, (4, 3), stride=(2, 2), bias=bias)
    ref = nn.ConvTranspose2d(32, 48, (4, 3), stride=(2, 2), bias=bias)
    ref.load_state_dict(ours.state_dict())
    if sn:
        ours, ref = spectral_norm(ours, dim=0), spectral_norm(ref, dim=0)
        ref.load_state_dict(ours.state_dict())
        ours.eval(), ref.eval()  # no power iteration: the same normalised weight
    x = torch.randn(5, 32, 1, 1, generator=torch.Generator().manual_seed(2))
    outs, grads = [], []
    for layer in (ours, ref):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(xi)
        outs.append(y.float())
        y.float().square().sum().backward()
        grads.append([xi.grad] + [p.grad for p in layer.parameters()])
    assert outs[0].shape == (5, 48, 4, 3) and outs[0].dtype == outs[1].dtype
    for a, b in zip([outs[0], *grads[0]], [outs[1], *grads[1]], strict=True):
        a, b = a.detach().float(), b.detach().float()
        if bf16:  # both in bfloat16 (8 significant bits): relative to the whole tensor
            assert float((a - b).norm() / b.norm()) < 1e-2
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    bigger = torch.randn(2, 32, 3, 3)  # not one pixel: the deconvolution itself
    with torch.no_grad():
        if sn:  # spectral norm applied to the output (the weight outnumbers the input)
            torch.testing.assert_close(ours(bigger), ref(bigger), rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(ours(bigger), ref(bigger))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_spectral_norm_on_the_output_equals_spectral_norm_on_the_weight(
    transpose: bool, bias: bool
) -> None:
    """conv(x, W) / sigma + b == conv(x, W / sigma) + b, with the same power iteration
    (u and v updated alike in training mode), gradients, and state dict."""
    from torch.nn.utils.parametrizations import spectral_norm

    from fagan.layers.fast import (
        FastPathConv2d,
        FastPathConvTranspose2d,
        spectral_norm_on_output,
    )

    torch.manual_seed(3)
    ours_type, ref_type = (
        (FastPathConvTranspose2d, nn.ConvTranspose2d) if transpose else (FastPathConv2d, nn.Conv2d)
    )
    ours = spectral_norm(ours_type(64, 128, 4, stride=2, padding=1, bias=bias), dim=0)
    ref = spectral_norm(ref_type(64, 128, 4, stride=2, padding=1, bias=bias), dim=0)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 64, 4, 4, generator=torch.Generator().manual_seed(4))
    ours.eval()  # (in training mode spectral_norm_on_output runs a power iteration)
    assert spectral_norm_on_output(ours, x) is not None  # 131k weights > 3k inputs: the output path
    assert spectral_norm_on_output(ours, torch.randn(3, 64, 64, 64)) is None  # input larger
    ours.train(), ref.train()
    for _ in range(3):  # training mode: a power iteration per pass, on the same u and v
        outs, grads = [], []
        for layer in (ours, ref):
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            y.square().sum().backward()
            outs.append(y.detach())
            grads.append([xi.grad] + [p.grad.clone() for p in layer.parameters()])
            layer.zero_grad(set_to_none=True)
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
        for a, b in zip(grads[0], grads[1], strict=True):  # float rounding, to the scale
            assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max()) + 1e-7
        for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    ours.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
