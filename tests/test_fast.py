"""fagan.layers.fast: every fast path equals its plain path, and one switch turns them all off.

Here: the switch (API, environment variable, in a fresh process); each fast path against
the same layer with ``fast.disabled()`` (outputs, gradients, spectral-norm buffers),
with a check that the fast path really ran; the fallbacks when the private torch APIs
are missing; and a few training steps of the small32 networks both ways.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from torch.profiler import ProfilerActivity, profile

from fagan.layers import FullAttention, SelfAttention, fast, make_conv
from fagan.layers.attention import attend_explicit

T = TypeVar("T")


def _ops(fn: Callable[[], T]) -> tuple[T, set[str]]:
    """``fn()`` and the names of the operators it ran."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    return result, {event.key for event in prof.key_averages()}


def _switch(on: bool) -> AbstractContextManager:
    return nullcontext() if on else fast.disabled()


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# --------------------------------------------------------------------------- the switch
def test_set_enabled_and_disabled_switch_and_restore() -> None:
    start = fast.enabled()
    try:
        assert fast.set_enabled(True) is start and fast.enabled()
        with fast.disabled():
            assert not fast.enabled()
            with fast.disabled():
                assert not fast.enabled()
            assert not fast.enabled()  # the inner block restores "off", not "on"
        assert fast.enabled()
        with pytest.raises(RuntimeError), fast.disabled():
            raise RuntimeError
        assert fast.enabled()  # restored after an exception too
        assert fast.set_enabled(False) is True and not fast.enabled()
        with pytest.raises(TypeError):
            fast.set_enabled(0)  # type: ignore[arg-type]
        assert not fast.enabled()
    finally:
        fast.set_enabled(start)


@pytest.mark.parametrize(
    ("value", "on"),
    [
        ("0", False),
        ("false", False),
        (" OFF ", False),
        ("no", False),
        ("1", True),
        ("true", True),
        ("", True),
        ("yes", True),
        (None, True),
    ],
)
def test_environment_values(value: str | None, on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv(fast.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(fast.ENV_VAR, value)
    assert fast._enabled_by_environment() is on


def test_an_unknown_environment_value_warns_and_keeps_the_fast_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(fast.ENV_VAR, "sometimes")
    with pytest.warns(RuntimeWarning, match="FAGAN_FAST_PATHS='sometimes'"):
        assert fast._enabled_by_environment() is True


_SWITCH_PROBE = textwrap.dedent("""
    import json, torch
    from torch import nn
    from torch.profiler import ProfilerActivity, profile
    from fagan.layers import FullAttention, fast, make_conv

    def ops(fn):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sorted({event.key for event in prof.key_averages()})

    torch.manual_seed(0)
    attention = FullAttention(8, 8, (3, 3), (1, 1), (1, 1), activation=nn.LeakyReLU(0.2))
    first = make_conv(32, 16, (4, 4), (1, 1), (0, 0), transpose=True)
    print(json.dumps({
        "enabled": fast.enabled(),
        "attention": ops(lambda: attention(torch.randn(2, 8, 20, 20)).sum().backward()),
        "first": ops(lambda: first(torch.randn(2, 32, 1, 1))),
    }))
""")


@pytest.mark.parametrize("value", ["0", "1"])
def test_the_environment_variable_switches_a_fresh_process(value: str) -> None:
    """FAGAN_FAST_PATHS=0: explicit softmax attention, the deconvolution, out-of-place
    activations; =1: the flash kernel, a matrix product, in-place activations."""
    env = dict(os.environ, **{fast.ENV_VAR: value})
    probe = subprocess.run(
        [sys.executable, "-c", _SWITCH_PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    on = value == "1"
    assert result["enabled"] is on
    attention = set(result["attention"])
    assert any("flash_attention" in name for name in attention) is on  # N = 400
    assert ("aten::_softmax" in attention) is not on
    assert ("aten::leaky_relu_" in attention) is on  # the residual path, in place
    assert ("aten::convolution" in result["first"]) is not on  # 1 x 1 input: a matmul


# --------------------------------------------------------------------------- convolutions
CONVS = {
    # name: (constructor, input shape, spectral norm applied to the output?, one pixel?)
    "conv, spectral norm on the output": (
        lambda bias: make_conv(64, 128, (4, 4), (2, 2), (1, 1), bias=bias, use_spectral_norm=True),
        (3, 64, 4, 4),
        True,
        False,
    ),
    "conv, spectral norm, input larger than the weight": (
        lambda bias: make_conv(8, 8, (3, 3), (1, 1), (1, 1), bias=bias, use_spectral_norm=True),
        (2, 8, 16, 16),
        False,
        False,
    ),
    "transposed from 1x1": (
        lambda bias: make_conv(32, 48, (4, 3), (2, 2), (0, 0), transpose=True, bias=bias),
        (5, 32, 1, 1),
        False,
        True,
    ),
    "transposed from 1x1, spectral norm": (
        lambda bias: make_conv(
            32, 48, (4, 4), (1, 1), (0, 0), transpose=True, bias=bias, use_spectral_norm=True
        ),
        (5, 32, 1, 1),
        True,
        True,
    ),
    "transposed, spectral norm on the output": (
        lambda bias: make_conv(
            64, 32, (4, 4), (2, 2), (1, 1), transpose=True, bias=bias, use_spectral_norm=True
        ),
        (3, 64, 4, 4),
        True,
        False,
    ),
}


def _conv_passes(
    layer: nn.Module, x: torch.Tensor, on: bool, bf16: bool
) -> list[list[torch.Tensor]]:
    """Two training-mode passes (a power iteration each): output, input and weight grads."""
    results = []
    for _ in range(2):
        xi = x.clone().requires_grad_(True)
        with _switch(on), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(xi)
            y.float().square().sum().backward()
        results.append([y.detach(), xi.grad] + [p.grad.clone() for p in layer.parameters()])
        layer.zero_grad(set_to_none=True)
    return results


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("name", list(CONVS))
def test_conv_fast_paths_equal_the_plain_paths(name: str, bias: bool, bf16: bool) -> None:
    make, shape, on_output, one_pixel = CONVS[name]
    torch.manual_seed(0)
    layer = make(bias).train()
    twin = copy.deepcopy(layer)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    # the fast path really applies (an eval-mode probe runs no power iteration)
    assert (fast.spectral_norm_on_output(copy.deepcopy(layer).eval(), x) is not None) is on_output
    with torch.no_grad():
        assert ("aten::convolution" in _ops(lambda: layer.eval()(x))[1]) is not one_pixel
        layer.train()
    fast_runs = _conv_passes(layer, x, True, bf16)
    plain_runs = _conv_passes(twin, x, False, bf16)
    for fast_run, plain_run in zip(fast_runs, plain_runs, strict=True):
        assert fast_run[0].dtype == plain_run[0].dtype
        for a, b in zip(fast_run, plain_run, strict=True):
            if bf16:  # both in bfloat16 (8 significant bits): relative to the whole tensor
                assert float((a.float() - b.float()).norm() / b.float().norm()) < 1e-2
            else:
                assert _max_rel(a, b) < 1e-5
    for (key, a), b in zip(layer.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=key)  # u and v too


def test_without_the_private_spectral_norm_class_the_plain_path_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No ``torch.nn.utils.parametrizations._SpectralNorm``: the spectral_norm
    parametrization's own path, bit for bit the plain one."""
    torch.manual_seed(0)
    layers = [
        make_conv(64, 128, (4, 4), (2, 2), (1, 1), use_spectral_norm=True),
        make_conv(64, 32, (4, 4), (2, 2), (1, 1), transpose=True, use_spectral_norm=True),
    ]
    x = torch.randn(3, 64, 4, 4)
    assert all(fast.spectral_norm_on_output(layer.eval(), x) is not None for layer in layers)
    monkeypatch.delattr(parametrizations, "_SpectralNorm")
    for layer in layers:
        assert fast.spectral_norm_on_output(layer, x) is None
        layer.train()
        twin = copy.deepcopy(layer)
        fast_runs = _conv_passes(layer, x, True, False)
        plain_runs = _conv_passes(twin, x, False, False)
        for a, b in zip(sum(fast_runs, []), sum(plain_runs, []), strict=True):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------- attention
ATTENTION = {
    "full, transposed, N = 1024, Cq < Cv": (
        lambda: FullAttention(
            16, 8, (4, 4), (2, 2), (1, 1), transpose=True, activation=nn.LeakyReLU(0.2)
        ),
        (2, 16, 16, 16),
    ),
    "full, 3x3, N = 400, Cq > Cv, no BN/SN": (
        lambda: FullAttention(
            64,
            4,
            (3, 3),
            (1, 1),
            (1, 1),
            squeeze_factor=2,
            use_spectral_norm=False,
            use_batch_norm=False,
        ),
        (2, 64, 20, 20),
    ),
    "self, N = 576": (lambda: SelfAttention(16, activation=nn.ReLU()), (2, 16, 24, 24)),
}


def _attention_pass(
    layer: nn.Module, x: torch.Tensor, on: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    with _switch(on):
        out = layer(x)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
        (out * weights).sum().backward()
    grads = {"input": x.grad} | {
        n: p.grad for n, p in layer.named_parameters() if p.grad is not None
    }
    return out.detach(), grads


@pytest.mark.parametrize("name", list(ATTENTION))
def test_fused_attention_equals_explicit_attention_in_the_layers(name: str) -> None:
    make, shape = ATTENTION[name]
    torch.manual_seed(0)
    layer = make().train()
    with torch.no_grad():
        layer.gamma.fill_(0.6)  # so that the attention path shows in the output
    twin = copy.deepcopy(layer)  # spectral norm / batch norm state advance per forward
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    (fast_out, fast_grads), fast_ops = _ops(lambda: _attention_pass(layer, x, True))
    (plain_out, plain_grads), plain_ops = _ops(lambda: _attention_pass(twin, x, False))
    for ran, on in ((fast_ops, True), (plain_ops, False)):
        assert any("flash_attention" in op for op in ran) is on
        assert ("aten::_softmax" in ran) is not on
    assert _max_rel(fast_out, plain_out) < 1e-5
    assert fast_grads.keys() == plain_grads.keys()
    # (the key bias's gradient is 0 in exact arithmetic: errors against the largest gradient)
    scale = max(float(g.abs().max()) for g in plain_grads.values())
    for key, grad in fast_grads.items():
        ref = plain_grads[key]
        assert float((grad - ref).abs().max()) <= 5e-5 * max(
            float(ref.abs().max()), 1e-2 * scale
        ), key


class _AtenWithoutCpuFlash:
    """``torch.ops.aten`` as a torch build without the CPU flash-attention operators."""

    def __init__(self, aten: object) -> None:
        self._aten = aten

    def __getattr__(self, name: str) -> object:
        if name.startswith("_scaled_dot_product_flash_attention_for_cpu"):
            raise AttributeError(name)
        return getattr(self._aten, name)


def test_without_the_private_cpu_flash_operators_the_public_sdpa_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu[_backward]``:
    attend_fused takes the public-SDPA path (bit for bit) and still equals the explicit."""
    generator = torch.Generator().manual_seed(2)
    q, k, v = (
        torch.randn(2, 300, c, generator=generator) * s for c, s in ((4, 0.7), (4, 0.7), (24, 1.0))
    )
    weights = torch.randn(2, 300, 24, generator=generator)

    def run(fn: Callable[..., torch.Tensor]) -> list[torch.Tensor]:
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = fn(*inputs)
        (out * weights).sum().backward()
        return [out.detach()] + [t.grad for t in inputs]

    assert fast._cpu_flash_ops() is not None
    with_ops = run(fast.attend_fused)
    portable = run(lambda *t: fast.attend_fused(*t, cpu_kernels=False))
    explicit = run(lambda *t: attend_explicit(*t)[0])
    monkeypatch.setattr(torch.ops, "aten", _AtenWithoutCpuFlash(torch.ops.aten))
    assert fast._cpu_flash_ops() is None
    without_ops = run(fast.attend_fused)
    for a, b, c, d in zip(without_ops, portable, explicit, with_ops, strict=True):
        assert torch.equal(a, b)
        assert _max_rel(a, c) < 2e-5 and _max_rel(d, c) < 2e-5


# --------------------------------------------------------------------------- activations
@pytest.mark.parametrize(
    ("activation", "in_place"),
    [
        (nn.ReLU(), True),
        (nn.LeakyReLU(0.2), True),
        (nn.LeakyReLU(1.0), True),
        (nn.LeakyReLU(0.0), False),
        (nn.LeakyReLU(-0.5), False),
        (nn.Tanh(), False),
    ],
)
def test_in_place_activation_equals_the_plain_activation(
    activation: nn.Module, in_place: bool
) -> None:
    results = {}
    for on in (True, False):
        leaf = torch.randn(
            4, 8, 5, 5, generator=torch.Generator().manual_seed(3), requires_grad=True
        )
        x = leaf * 1.5  # a fresh non-leaf tensor, as a convolution's output
        with _switch(on):
            out = fast.activate_inplace(activation, x)
        assert (out.data_ptr() == x.data_ptr()) is (on and in_place)
        out.square().sum().backward()
        results[on] = (out.detach(), leaf.grad)
    for a, b in zip(results[True], results[False], strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- training
@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: small tensors gain nothing from more, and on a shared CPU the
    threads' synchronisation dominates; results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _small32_training(
    on: bool, loss_name: str, steps: int = 3
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """``steps`` D and G steps of the small32 networks from one seed; losses and weights."""
    from fagan.config import load_config, resolve_config_path
    from fagan.losses import get_loss
    from fagan.networks import Discriminator, Generator
    from fagan.train import Precision, d_step, g_step

    torch.manual_seed(0)
    G = Generator(load_config(resolve_config_path("small32", "gen")), 128).train()
    D = Discriminator(load_config(resolve_config_path("small32", "dis")), 32).train()
    # SGD keeps weight differences proportional to gradient differences; Adam turns the
    # float noise of gradients that are 0 in exact arithmetic (a bias before batch norm)
    # into steps of the learning rate's size on either path
    g_opt = torch.optim.SGD(G.parameters(), lr=0.05)
    d_opt = torch.optim.SGD(D.parameters(), lr=0.05)
    loss, prec = get_loss(loss_name), Precision.create("fp32", torch.device("cpu"))
    data, rng = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    losses = []
    with _switch(on):
        for _ in range(steps):
            real = torch.rand(8, 3, 32, 32, generator=data) * 2 - 1
            z = torch.randn(8, 128, generator=data)
            losses.append(d_step(G, D, real, z, loss, d_opt, prec, lambda x: x, rng))
            z = torch.randn(8, 128, generator=data)
            losses.append(g_step(G, D, real, z, loss, g_opt, prec, lambda x: x))
    weights = {f"G.{k}": v for k, v in G.state_dict().items()}
    return losses, weights | {f"D.{k}": v for k, v in D.state_dict().items()}


@pytest.mark.parametrize(
    ("loss_name", "all_fused"),
    [
        ("relativistic-hinge", False),  # small32 as it is: no attention above the threshold
        ("wgan-gp", True),  # every attention fused, the gradient penalty's double backward too
    ],
)
def test_small32_trains_the_same_with_and_without_fast_paths(
    loss_name: str,
    all_fused: bool,
    one_thread: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if all_fused:  # small32's attention has at most 256 positions
        monkeypatch.setattr(fast, "EXPLICIT_MAX_POSITIONS", 0)
    fast_losses, fast_weights = _small32_training(True, loss_name)
    plain_losses, plain_weights = _small32_training(False, loss_name)
    assert fast_losses == pytest.approx(plain_losses, rel=1e-5)
    assert fast_weights.keys() == plain_weights.keys()
    moved = 0
    for key, a in fast_weights.items():
        b = plain_weights[key]
        assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max()) + 1e-7, key
        moved += key.endswith("gamma") and float(b.abs().max()) > 0
    assert moved == 3  # the attention layers' mixing weights did train
