"""The fast attention paths equal the explicit one and never hold an N x N map.

:func:`fagan.layers.attention.attend` takes the explicit ``bmm -> softmax -> bmm`` up
to ``fast.EXPLICIT_MAX_POSITIONS`` positions and PyTorch's fused (flash) SDPA kernel
above (``fast.attend_fused``);
the layers take the explicit path inside :func:`capture_attention`. Here: both paths
agree on values and gradients (raw attention, FullAttention conv/strided/transposed,
SelfAttention, Cq < Cv and Cq > Cv, N up to 4096), bf16 autocast stays close and in
bf16, the fused kernel really is the one used (SDPA is restricted to it, so a silent
fallback to its N x N math path would raise), and a 128 x 128 full attention trains
without the memory an N x N map needs (peak RSS of a subprocess).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fagan.layers import FullAttention, SelfAttention, attend, capture_attention, fast
from fagan.layers import attention as attention_module
from fagan.layers.attention import attend_explicit
from fagan.layers.fast import EXPLICIT_MAX_POSITIONS, attend_fused, pad_to_head_dim


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def qkv(batch: int, n: int, cq: int, cv: int, seed: int) -> tuple[torch.Tensor, ...]:
    """q, k, v laid out as the layers make them: transposed views of conv outputs."""
    generator = torch.Generator().manual_seed(seed)
    # unscaled attention: q . k with variance ~4, a softmax neither flat nor one-hot
    scale = 2**0.5 / cq**0.25
    y = torch.randn(batch, 2 * cq + cv, n, generator=generator)
    y[:, : 2 * cq] *= scale
    return tuple(part.transpose(1, 2) for part in y.split([cq, cq, cv], dim=1))


# --------------------------------------------------------------------------- attend
@pytest.mark.parametrize(
    ("n", "cq", "cv"),
    [
        (16, 8, 64),
        (257, 3, 64),
        (1024, 8, 64),
        (1024, 64, 8),
        (600, 5, 13),
        (333, 16, 16),
        (4096, 8, 64),
        (4096, 32, 4),
    ],
)
@pytest.mark.parametrize("cpu_kernels", [True, False], ids=["cpu-flash-ops", "portable"])
def test_fused_equals_explicit_values_and_gradients(
    n: int, cq: int, cv: int, cpu_kernels: bool
) -> None:
    batch = 2
    weights = torch.randn(batch, n, cv, generator=torch.Generator().manual_seed(n + 1))
    results = []

    def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attend_fused(q, k, v, cpu_kernels=cpu_kernels)

    for fn in (fused, lambda q, k, v: attend_explicit(q, k, v)[0]):
        q, k, v = (t.detach().clone().requires_grad_(True) for t in qkv(batch, n, cq, cv, n))
        out = fn(q, k, v)
        (out * weights).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    (fast, *fast_grads), (slow, *slow_grads) = results
    assert fast.shape == slow.shape == (batch, n, cv)
    assert rel_err(fast, slow) < 1e-5
    for name, a, b in zip("qkv", fast_grads, slow_grads, strict=True):
        assert rel_err(a, b) < 2e-5, f"gradient wrt {name}"


@pytest.mark.parametrize("n", [EXPLICIT_MAX_POSITIONS, EXPLICIT_MAX_POSITIONS + 1])
def test_attend_picks_explicit_up_to_the_threshold_and_fused_above(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_explicit, real_fused = attend_explicit, attend_fused

    def spy_explicit(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append("explicit")
        return real_explicit(*args)

    def spy_fused(*args: torch.Tensor) -> torch.Tensor:
        calls.append("fused")
        return real_fused(*args)

    monkeypatch.setattr(attention_module, "attend_explicit", spy_explicit)
    monkeypatch.setattr(fast, "attend_fused", spy_fused)
    q, k, v = qkv(1, n, 4, 8, seed=3)
    out, attention = attend(q, k, v)
    assert attention is None
    assert calls == ["explicit" if n <= EXPLICIT_MAX_POSITIONS else "fused"]
    calls.clear()
    kept, attention = attend(q, k, v, keep_map=True)
    assert calls == ["explicit"] and attention is not None and attention.shape == (1, n, n)
    assert rel_err(out, kept) < 1e-5


def test_sdpa_inputs_have_unit_channel_stride_and_a_common_dim() -> None:
    """A transposed value (stride N on its channels) made SDPA fall back to its math path."""
    q, k, v = qkv(2, 300, 3, 64, seed=4)
    assert v.stride(-1) != 1
    for t in (q, k, v):
        ready = pad_to_head_dim(t, 64)
        assert ready.shape == (2, 1, 300, 64) and ready.stride(-1) == 1
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if the fused kernel can't run
        attend_fused(q, k, v, cpu_kernels=False)  # the portable path goes through SDPA


def test_gradients_of_gradients_equal_the_explicit_path() -> None:
    """WGAN-GP differentiates through a gradient: the fused path's backward must itself
    be differentiable (PyTorch's CPU flash backward is not; the explicit one is used)."""
    from fagan.losses import gradient_penalty

    layer, _ = _layer("full squeeze 1 (D first layer)")  # N = 1024 > threshold
    real = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    fake = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))

    class Critic(nn.Module):
        def __init__(self, attention: nn.Module) -> None:
            super().__init__()
            self.attention = attention

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attention(x).mean(dim=(1, 2, 3))

    results = []
    for explicit in (False, True):
        critic = Critic(copy.deepcopy(layer))
        with torch.no_grad():  # run the spectral norm's power iteration once, the same
            critic(real)
        critic.eval()
        if explicit:
            with capture_attention(critic):
                penalty = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(1))
        else:
            penalty = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(1))
        penalty.backward()
        results.append((penalty.detach(), {n: p.grad for n, p in critic.named_parameters()}))
    (fast, fast_grads), (slow, slow_grads) = results
    assert rel_err(fast, slow) < 1e-5
    scale = max(float(g.abs().max()) for g in slow_grads.values())
    for key, grad in fast_grads.items():
        ref = slow_grads[key]
        assert float((grad - ref).abs().max()) <= 1e-4 * max(
            float(ref.abs().max()), 1e-2 * scale
        ), key


# --------------------------------------------------------------------------- layers
LAYERS = {
    # name: (constructor, input shape); output positions in the comment
    "full strided conv, Cq<Cv": (
        lambda: FullAttention(
            16, 32, (4, 4), (2, 2), (1, 1), squeeze_factor=8, activation=nn.LeakyReLU(0.2)
        ),
        (2, 16, 40, 40),
    ),  # N = 400
    "full transposed, Cq<Cv": (
        lambda: FullAttention(
            16, 8, (4, 4), (2, 2), (1, 1), transpose=True, activation=nn.LeakyReLU(0.3)
        ),
        (2, 16, 16, 16),
    ),  # N = 1024
    "full 3x3, Cq>Cv, no BN/SN": (
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
        (2, 64, 24, 24),
    ),  # N = 576, Cq = 32 > Cv = 4
    "full squeeze 1 (D first layer)": (
        lambda: FullAttention(
            3,
            16,
            (4, 4),
            (2, 2),
            (1, 1),
            squeeze_factor=1,
            use_batch_norm=False,
            activation=nn.LeakyReLU(0.1),
        ),
        (2, 3, 64, 64),
    ),  # N = 1024, Cq = 3
    "full few positions": (
        lambda: FullAttention(16, 16, (3, 3), (1, 1), (1, 1)),
        (2, 16, 8, 8),
    ),  # N = 64
    "self": (lambda: SelfAttention(16), (2, 16, 24, 24)),  # N = 576
    "self, N = 4096": (lambda: SelfAttention(32, activation=nn.ReLU()), (1, 32, 64, 64)),
}


def _layer(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    make, shape = LAYERS[name]
    torch.manual_seed(seed)
    layer = make().train()
    with torch.no_grad():
        layer.gamma.fill_(0.6)  # so that the attention path shows in the output
    return layer, torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))


def _run(
    layer: nn.Module, x: torch.Tensor, explicit: bool, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    autocast = torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)
    if explicit:
        with capture_attention(layer) as maps, autocast:
            out = layer(x)
        assert maps, "capture_attention kept no map"
    else:
        with autocast:
            out = layer(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out.float() * weights).sum().backward()
    grads = {"input": x.grad}
    grads |= {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_fast_path_equals_explicit_path(name: str) -> None:
    layer, x = _layer(name)
    twin = copy.deepcopy(layer)  # spectral norm / batch norm state advance per forward
    fast, fast_grads = _run(layer, x, explicit=False)
    slow, slow_grads = _run(twin, x, explicit=True)
    assert rel_err(fast, slow) < 1e-5
    assert fast_grads.keys() == slow_grads.keys()
    assert "gamma" in fast_grads and "query_conv.weight" in fast_grads
    # (the key bias's gradient is exactly 0 in theory: a softmax ignores a constant per
    # row; so errors are measured against the layer's largest gradient at the least)
    scale = max(float(g.abs().max()) for g in slow_grads.values())
    for key, grad in fast_grads.items():
        ref = slow_grads[key]
        tol = 5e-5 * max(float(ref.abs().max()), 1e-2 * scale)
        assert float((grad - ref).abs().max()) <= tol, key


def norm_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius)."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize(
    "name", ["full squeeze 1 (D first layer)", "full transposed, Cq<Cv", "self"]
)
def test_bf16_autocast_stays_bf16_and_close(name: str) -> None:
    """bf16 autocast: both paths within bf16 tolerance of fp32, the fast one no worse."""
    layer, x = _layer(name)
    reference, reference_grads = _run(copy.deepcopy(layer), x, explicit=True)
    keys = sorted(reference_grads)
    errors = {}
    for explicit in (False, True):
        out, grads = _run(copy.deepcopy(layer), x, explicit=explicit, dtype=torch.bfloat16)
        # full attention's 0-dim gamma keeps the mix in bf16 (a (1,)-shaped fp32 gamma
        # promoted it to fp32); self-attention adds its input, here float32
        expected = torch.bfloat16 if isinstance(layer, FullAttention) else x.dtype
        assert out.dtype == expected
        assert sorted(grads) == keys
        assert all(torch.isfinite(grads[key]).all() for key in keys)
        # all gradients together (a small bias's gradient is a bf16 sum over every
        # position, and the key bias's is exactly 0 in theory: per-tensor ratios mislead)
        flat = torch.cat([grads[key].float().flatten() for key in keys])
        ref = torch.cat([reference_grads[key].flatten() for key in keys])
        errors[explicit] = (norm_err(out.float(), reference), norm_err(flat, ref))
    for explicit, (out_err, grad_err) in errors.items():
        assert out_err < 1e-2 and grad_err < 8e-2, (explicit, out_err, grad_err)
    (fast_out, fast_grad), (slow_out, slow_grad) = errors[False], errors[True]
    assert fast_out <= 1.5 * slow_out + 1e-3 and fast_grad <= 1.5 * slow_grad + 1e-2


@pytest.mark.parametrize("cpu_kernels", [True, False], ids=["cpu-flash-ops", "portable"])
def test_training_forward_uses_the_fused_kernel_forward_and_backward(
    cpu_kernels: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flash kernel runs forward and backward and no softmax does; with SDPA
    restricted to the flash kernel, a fallback to its math path would raise."""
    from torch.profiler import ProfilerActivity, profile

    real_fused = attend_fused
    monkeypatch.setattr(
        fast, "attend_fused", lambda q, k, v: real_fused(q, k, v, cpu_kernels=cpu_kernels)
    )
    layer, x = _layer("full transposed, Cq<Cv")
    with (
        sdpa_kernel([SDPBackend.FLASH_ATTENTION]),
        profile(activities=[ProfilerActivity.CPU]) as prof,
    ):
        _run(layer, x, explicit=False)
    names = {event.key for event in prof.key_averages()}
    fused = {n for n in names if "flash_attention" in n}
    assert any("backward" in n for n in fused) and len(fused) >= 2, sorted(names)
    assert not any("softmax" in n for n in names), "an explicit softmax ran"


_MEMORY_PROBE = textwrap.dedent("""
    import json, torch
    from torch import nn
    from fagan.layers import FullAttention

    def status_mb(field):  # VmRSS now, VmHWM peak (ru_maxrss is inherited from pytest)
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    torch.manual_seed(0)
    layer = FullAttention(16, 16, (3, 3), (1, 1), (1, 1), activation=nn.LeakyReLU(0.2))
    x = torch.randn(1, 16, 128, 128, requires_grad=True)
    small = FullAttention(16, 16, (3, 3), (1, 1), (1, 1))
    small(torch.randn(1, 16, 24, 24)).sum().backward()  # load the kernels first
    base = status_mb("VmRSS")
    layer(x).square().sum().backward()
    peak = status_mb("VmHWM")
    print(json.dumps({"base": base, "peak": peak, "grad": float(x.grad.abs().sum())}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_128x128_full_attention_trains_without_an_n_by_n_map() -> None:
    """16,384 positions: one float32 map is 1 GiB per sample (and the explicit path
    holds several such buffers at once); the fused path must stay far below that."""
    probe = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    grown = result["peak"] - result["base"]
    assert result["grad"] > 0
    assert grown < 256, f"peak RSS grew by {grown:.0f} MB during forward + backward"
