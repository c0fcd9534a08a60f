"""Numerical parity with the original implementation, attn-gan-pytorch 1.2.3.

The reference networks are built from the original project's own .conf files by the
original package (see tests/reference.py); their weights go into ours through the
converter users rely on (``fagan.checkpoint``), and both must compute the same function.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference import (
    CustomLayers,
    converge_spectral_norms,
    randomize_batch_norms,
    randomize_gammas,
    reference_configs_dir,
    reference_discriminator,
    reference_generator,
)
from torch import nn

from fagan.checkpoint import convert_legacy_state_dict, load_network, load_state_into
from fagan.config import load_config
from fagan.layers import FullAttention, SelfAttention, attend, capture_attention
from fagan.networks import Discriminator, Generator

OUR_FAGAN64 = Path(__file__).resolve().parents[1] / "configs" / "fagan64"


def assert_close(
    ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-4, atol_fraction: float = 1e-5
) -> None:
    """Equal up to float32 reordering: ``rtol`` plus an absolute slack scaled to the values."""
    assert ours.shape == theirs.shape
    atol = atol_fraction * max(float(theirs.abs().max()), 1e-12)
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=atol)


def converge(model: nn.Module) -> None:
    """Puts every reference SpectralNorm's u, v at its power iteration's fixed point, as in
    a trained network: starts them at the top singular vectors (the 300 plain iterations of
    ``converge_spectral_norms`` take tens of seconds on 2 cores), then lets the original's
    own iteration run and checks it no longer moves them."""
    spectral_norms = [m for m in model.modules() if isinstance(m, CustomLayers.SpectralNorm)]
    with torch.no_grad():
        for sn in spectral_norms:
            w = sn.module.weight_bar.reshape(sn.module.weight_bar.shape[0], -1).double()
            u = torch.linalg.eigh(w @ w.T).eigenvectors[:, -1]  # top left singular vector
            v = w.T @ u
            sn.module.weight_u.copy_(u)
            sn.module.weight_v.copy_(v / v.norm())
    converge_spectral_norms(model, iterations=3)
    for sn in spectral_norms:
        u, v = sn.module.weight_u.clone(), sn.module.weight_v.clone()
        sn._update_u_v()
        torch.testing.assert_close(sn.module.weight_u, u, rtol=0, atol=1e-5)
        torch.testing.assert_close(sn.module.weight_v, v, rtol=0, atol=1e-5)


def _prepare_reference(model: nn.Module, seed: int) -> nn.Module:
    randomize_gammas(model, seed)
    randomize_batch_norms(model, seed + 1)
    converge(model)
    return model


@pytest.fixture(scope="module")
def converged_states() -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """State dicts of trained-like reference networks, made once: (run, "gen"|"dis") -> state."""
    configs = reference_configs_dir()
    states: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for number, run in enumerate(("fagan_1", "fagan_2")):
        for role, build in (("gen", reference_generator), ("dis", reference_discriminator)):
            torch.manual_seed(10 + number)
            net = _prepare_reference(build(configs / run / f"{role}.conf"), seed=2 * number)
            states[run, role] = {k: v.clone() for k, v in net.state_dict().items()}
    return states


def _reference(states, run: str, role: str) -> nn.Module:
    """A fresh reference network holding the converged weights (the original's modules
    cannot be deep-copied: its SpectralNorm leaves a non-leaf ``weight`` behind)."""
    conf = reference_configs_dir() / run / f"{role}.conf"
    net = reference_generator(conf) if role == "gen" else reference_discriminator(conf)
    net.load_state_dict(states[run, role], strict=True)
    return net


# --------------------------------------------------------------------------- whole networks
NETWORK_CASES = [
    pytest.param("fagan_1", "original-conf", id="fagan_1-conf"),
    pytest.param("fagan_2", "original-conf", id="fagan_2-conf"),
    pytest.param("fagan_1", "fagan64-yaml", id="fagan_1-weights-into-fagan64"),
    pytest.param("fagan_2", "fagan64-yaml", id="fagan_2-weights-into-fagan64"),
]


def _our_spec(run: str, role: str, config: str):
    if config == "original-conf":
        return load_config(reference_configs_dir() / run / f"{role}.conf")
    return load_config(OUR_FAGAN64 / f"{role}.yaml")


@pytest.mark.parametrize("run,config", NETWORK_CASES)
def test_generator_matches_reference(converged_states, run: str, config: str) -> None:
    ref = _reference(converged_states, run, "gen").eval()
    ours = Generator(_our_spec(run, "gen", config))
    load_state_into(ours, ref.state_dict(), "reference generator")
    ours.eval()

    gammas = ours.gammas()
    assert set(gammas) == {"model.0", "model.2", "model.5", "model.8"}
    assert all(0.1 <= g <= 0.9 for g in gammas.values())

    z = torch.randn(3, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = ref(z[:, :, None, None])
        mine = ours(z)
    assert mine.shape == (3, 3, 64, 64)
    assert float(theirs.std()) > 1e-3  # a non-degenerate image
    assert_close(mine, theirs)


@pytest.mark.parametrize("run,config", NETWORK_CASES)
def test_discriminator_matches_reference(converged_states, run: str, config: str) -> None:
    ref = _reference(converged_states, run, "dis").eval()
    ours = Discriminator(_our_spec(run, "dis", config))
    load_state_into(ours, ref.state_dict(), "reference discriminator")
    ours.eval()
    assert len(ours.gammas()) == 4 and all(g != 0 for g in ours.gammas().values())

    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        theirs = ref(x).flatten()
        mine = ours(x)
    assert mine.shape == (6,)
    # the logits are small and close together: compare them relatively, and compare what
    # distinguishes one image from another (the centred logits) on their own scale too
    assert_close(mine, theirs, rtol=1e-4, atol_fraction=1e-4)
    spread = theirs - theirs.mean()
    assert float(spread.abs().max()) > 0
    torch.testing.assert_close(
        mine - mine.mean(), spread, rtol=1e-3, atol=1e-3 * float(spread.abs().max())
    )


def test_generator_matches_reference_in_training_mode(converged_states) -> None:
    """Batch statistics (train mode) agree too, and so do the updated running statistics."""
    ref = _reference(converged_states, "fagan_1", "gen").train()
    ours = Generator(_our_spec("fagan_1", "gen", "original-conf"))
    load_state_into(ours, ref.state_dict(), "reference generator")
    ours.train()
    z = torch.randn(5, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = ref(z[:, :, None, None])
        mine = ours(z)
    assert_close(mine, theirs)
    ref_state = ref.state_dict()
    compared = 0
    for key, value in ours.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            assert_close(value, ref_state[key])
            compared += 1
    assert compared == 2 * 4  # two full attention and two conv_transpose batch norms


# --------------------------------------------------------------------------- unconverged weights
def _without_emulated_iteration(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """The converted state dict with the stored u, v as they are (no emulated iteration)."""
    naive = convert_legacy_state_dict(state, model)
    for key in naive:
        for ours_suffix, their_suffix in (
            ("parametrizations.weight.0._u", "module.weight_u"),
            ("parametrizations.weight.0._v", "module.weight_v"),
        ):
            if key.endswith(ours_suffix):
                naive[key] = state[key.replace(ours_suffix, their_suffix)]
    return naive


@pytest.mark.parametrize("role", ["gen", "dis"])
def test_unconverged_reference_checkpoint_loads_exactly(tmp_path: Path, role: str) -> None:
    """A fresh reference network (random u, v) saved with torch.save, loaded by load_network:
    ours equals the reference's next forward, which runs one more power iteration."""
    conf = reference_configs_dir() / "fagan_1" / f"{role}.conf"
    torch.manual_seed(40)
    if role == "gen":
        ref, ours = reference_generator(conf), Generator(load_config(OUR_FAGAN64 / "gen.yaml"))
        inputs = torch.randn(3, 128, generator=torch.Generator().manual_seed(6))
        run_ref = lambda: ref(inputs[:, :, None, None]).flatten(1)  # noqa: E731
        run_ours = lambda net: net(inputs).flatten(1)  # noqa: E731
    else:
        ref = reference_discriminator(conf)
        ours = Discriminator(load_config(OUR_FAGAN64 / "dis.yaml"))
        inputs = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(6)) * 2 - 1
        run_ref = lambda: ref(inputs).flatten()  # noqa: E731
        run_ours = lambda net: net(inputs)  # noqa: E731
    randomize_gammas(ref, 7)
    randomize_batch_norms(ref, 8)
    path = tmp_path / f"GAN_{role.upper()}_3.pth"
    torch.save(ref.state_dict(), path)
    saved = torch.load(path, weights_only=True)

    load_network(ours, path, "generator" if role == "gen" else "discriminator")
    naive = (Generator if role == "gen" else Discriminator)(ours.spec)
    naive.load_state_dict(_without_emulated_iteration(saved, naive), strict=True)
    ref.eval()
    ours.eval()
    naive.eval()
    with torch.no_grad():
        theirs = run_ref()
        mine = run_ours(ours)
        theirs_again = run_ref()  # the reference moved u, v again
        naive_out = run_ours(naive)
    assert_close(mine, theirs, atol_fraction=1e-4)
    # the test can tell: u, v are far from converged, so one iteration more or less matters
    assert not torch.allclose(theirs_again, theirs, rtol=1e-3, atol=0)
    assert not torch.allclose(naive_out, theirs, rtol=1e-3, atol=0)


# --------------------------------------------------------------------------- single layers
def _load_reference_layer(
    ours: nn.Module, ref: nn.Module, spectral_norm: bool, batch_norm: bool
) -> None:
    """Copies the weights of a reference attention layer into ours (both wrapped in a
    Sequential, as inside networks, so keys read ``0.query_conv.weight``)."""
    wrapped_ours, wrapped_ref = nn.Sequential(ours), nn.Sequential(ref)
    state = wrapped_ref.state_dict()
    if spectral_norm:
        state = convert_legacy_state_dict(state, wrapped_ours)
    elif not batch_norm:  # the original always creates a batch norm, used or not
        state = {k: v for k, v in state.items() if ".batch_norm." not in k}
    wrapped_ours.load_state_dict(state, strict=True)


def _attention_map(theirs: torch.Tensor) -> torch.Tensor:
    batch, n, height, width = theirs.shape
    assert n == height * width
    return theirs.reshape(batch, n, n)


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "transposed"])
@pytest.mark.parametrize("strided", [False, True], ids=["s1p0", "s2p1"])
@pytest.mark.parametrize("squeeze", [1, 8])
@pytest.mark.parametrize("spectral_norm", [False, True], ids=["nosn", "sn"])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["nobn", "bn"])
@pytest.mark.parametrize("activation", [None, 0.2], ids=["noact", "lrelu0.2"])
def test_full_attention_layer_matches_reference(
    transpose: bool,
    strided: bool,
    squeeze: int,
    spectral_norm: bool,
    batch_norm: bool,
    activation: float | None,
) -> None:
    torch.manual_seed(50)
    stride, padding = ((2, 2), (1, 1)) if strided else ((1, 1), (0, 0))
    act = (lambda: None) if activation is None else (lambda: nn.LeakyReLU(activation))
    ref = CustomLayers.FullAttention(
        16, 8, act(), (4, 4), transpose, spectral_norm, batch_norm, squeeze, stride, padding, True
    )
    ours = FullAttention(
        16,
        8,
        (4, 4),
        stride,
        padding,
        transpose=transpose,
        squeeze_factor=squeeze,
        bias=True,
        use_spectral_norm=spectral_norm,
        use_batch_norm=batch_norm,
        activation=act(),
    )
    with torch.no_grad():
        ref.gamma.fill_(0.6)  # gamma 0 would hide the attention path
    randomize_batch_norms(ref, 11)
    converge(ref)
    _load_reference_layer(ours, ref, spectral_norm, batch_norm)
    ref.eval()
    ours.eval()
    assert float(ours.gamma.detach()) == pytest.approx(0.6)
    assert (ours.batch_norm is not None) == batch_norm

    x = torch.randn(3, 16, 8, 8, generator=torch.Generator().manual_seed(12))
    side = {(False, False): 5, (False, True): 4, (True, False): 11, (True, True): 16}
    size = side[(transpose, strided)]
    with torch.no_grad():
        theirs, their_map = ref(x)
        fused = ours(x)  # SDPA path
        with capture_attention(ours) as maps:
            explicit = ours(x)
    assert fused.shape == (3, 8, size, size)
    assert_close(fused, theirs)
    assert_close(explicit, theirs)
    assert list(maps) == [""]
    ours_map, their_map = maps[""], _attention_map(their_map)
    assert ours_map.shape == (3, size * size, size * size)
    assert_close(ours_map, their_map, atol_fraction=1e-5)
    torch.testing.assert_close(ours_map.sum(-1), torch.ones(3, size * size))
    assert ours.attention is None  # nothing kept outside capture_attention


@pytest.mark.parametrize("activation", [None, 0.2], ids=["noact", "lrelu0.2"])
@pytest.mark.parametrize("squeeze", [1, 8])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_self_attention_layer_matches_reference(
    activation: float | None, squeeze: int, bias: bool
) -> None:
    torch.manual_seed(60)
    act = (lambda: None) if activation is None else (lambda: nn.LeakyReLU(activation))
    ref = CustomLayers.SelfAttention(16, act(), squeeze, bias)
    ours = SelfAttention(16, squeeze_factor=squeeze, bias=bias, activation=act())
    with torch.no_grad():
        ref.gamma.fill_(-0.7)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    ours.eval()
    x = torch.randn(2, 16, 7, 9, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        theirs, their_map = ref(x)
        fused = ours(x)
        wrapped = nn.Sequential(ours)
        with capture_attention(wrapped) as maps:
            explicit = wrapped(x)
    assert_close(fused, theirs)
    assert_close(explicit, theirs)
    assert not torch.allclose(fused, x, atol=1e-3)  # the attention path contributes
    assert list(maps) == ["0"]
    assert_close(maps["0"], _attention_map(their_map))
    torch.testing.assert_close(maps["0"].sum(-1), torch.ones(2, 63))


def test_capture_attention_in_a_network_names_every_layer(converged_states) -> None:
    ref = _reference(converged_states, "fagan_2", "gen").eval()
    ours = Generator(_our_spec("fagan_2", "gen", "original-conf"))
    load_state_into(ours, ref.state_dict(), "reference generator")
    ours.eval()
    z = torch.randn(2, 128, generator=torch.Generator().manual_seed(14))
    # the reference's maps, collected by hooks on its attention layers
    their_maps: dict[str, torch.Tensor] = {}
    for name, module in ref.named_modules():
        if isinstance(module, (CustomLayers.FullAttention, CustomLayers.SelfAttention)):
            module.register_forward_hook(
                lambda _m, _i, out, name=name: their_maps.__setitem__(name, out[1])
            )
    with torch.no_grad():
        ref(z[:, :, None, None])
        with capture_attention(ours) as maps:
            ours(z)
    assert list(maps) == ["model.0", "model.2", "model.5", "model.8"]
    sizes = {"model.0": 16, "model.2": 64, "model.5": 256, "model.8": 1024}
    for name, n in sizes.items():
        assert maps[name].shape == (2, n, n)
        assert_close(maps[name], _attention_map(their_maps[name]), atol_fraction=1e-4)


def test_convert_legacy_state_dict_of_a_bare_layer_without_batch_norm() -> None:
    torch.manual_seed(80)
    ref = CustomLayers.FullAttention(16, 8, None, (4, 4), False, True, False, 8, 2, 1)
    ours = FullAttention(
        16, 8, (4, 4), (2, 2), (1, 1), use_spectral_norm=True, use_batch_norm=False
    )
    converted = convert_legacy_state_dict(ref.state_dict(), ours)
    assert sorted(converted) == sorted(ours.state_dict())


# --------------------------------------------------------------------------- SDPA == explicit
@pytest.mark.parametrize("n", [1, 7, 64, 1024])
@pytest.mark.parametrize("cq,cv", [(2, 16), (16, 2), (1, 64), (64, 3), (8, 8)])
def test_sdpa_path_equals_explicit_path(n: int, cq: int, cv: int) -> None:
    generator = torch.Generator().manual_seed(n * 100 + cq * 10 + cv)
    # unscaled attention: q . k has variance ~4, a softmax neither flat nor one-hot
    scale = 2**0.5 / cq**0.25
    q0 = torch.randn(2, n, cq, generator=generator) * scale
    k0 = torch.randn(2, n, cq, generator=generator) * scale
    v0 = torch.randn(2, n, cv, generator=generator)
    weights = torch.randn(2, n, cv, generator=generator)

    results = []
    for keep_map in (False, True):
        q, k, v = (t.clone().requires_grad_(True) for t in (q0, k0, v0))
        out, attention = attend(q, k, v, keep_map=keep_map)
        (out * weights).sum().backward()
        results.append((out.detach(), attention, q.grad, k.grad, v.grad))
    (fast, no_map, *fast_grads), (slow, attention, *slow_grads) = results

    assert fast.shape == slow.shape == (2, n, cv)
    assert no_map is None
    assert attention.shape == (2, n, n)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, n))
    torch.testing.assert_close(slow, attention @ v0)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    for name, a, b in zip("qkv", fast_grads, slow_grads, strict=True):
        assert a is not None and b is not None, name
        scale_b = float(b.abs().max())
        torch.testing.assert_close(
            a, b, rtol=1e-4, atol=1e-5 * max(scale_b, 1.0), msg=f"gradient wrt {name}"
        )


def test_attention_is_unscaled() -> None:
    """The original has no 1/sqrt(d): a sharp dot product must select one position."""
    q = torch.tensor([[[10.0, 0.0]]])
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    v = torch.tensor([[[1.0], [0.0]]])
    for keep_map in (False, True):
        out, _ = attend(q.expand(1, 2, 2), k, v, keep_map=keep_map)
        expected = torch.sigmoid(torch.tensor(10.0))  # softmax([10, 0])[0]
        torch.testing.assert_close(out[0, :, 0], expected.expand(2))
