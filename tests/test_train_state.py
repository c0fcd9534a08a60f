"""The training state: saved and loaded whole, and where a resumed run continues."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch

from fagan.config import load_config, resolve_config_path
from fagan.losses import get_loss
from fagan.networks import Discriminator, Generator
from fagan.train import Precision, d_step, ema_update, g_step, make_adam
from fagan.train_state import TrainState, resume_position, sampler_key, seeded_generators

CPU = torch.device("cpu")
KEY = sampler_key(seed=0, batch_size=2, world_size=1, data_percentage=100.0, dataset_len=10)


def _state(seed: int, key: dict[str, Any] = KEY) -> TrainState:
    """A small32 training state on the CPU with networks initialised from ``seed``."""
    torch.manual_seed(seed)
    g_spec = load_config(resolve_config_path("small32", "gen"))
    G = Generator(g_spec, g_spec.in_channels).train()
    D = Discriminator(load_config(resolve_config_path("small32", "dis")), 32).train()
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    latent_rng, aug_rng = seeded_generators(seed, 0, CPU)
    scaler = Precision.create("fp32", CPU).scaler
    return TrainState(
        G,
        D,
        ema,
        make_adam(G, 1e-4),
        make_adam(D, 4e-4),
        scaler,
        latent_rng,
        aug_rng,
        torch.randn(4, G.latent_size),
        dict(key),
        {"image_size": 32},
    )


def _step(state: TrainState, real: torch.Tensor) -> None:
    """One D and one G step of ``state`` on ``real``, with its own random streams."""
    loss, prec = get_loss("relativistic-hinge"), Precision.create("fp32", CPU)
    prec.scaler = state.scaler
    G, D, n = state.generator, state.discriminator, len(real)
    z = torch.randn(n, G.latent_size, generator=state.latent_rng)
    d_step(G, D, real, z, loss, state.d_opt, prec, lambda x: x, state.aug_rng)
    z = torch.randn(n, G.latent_size, generator=state.latent_rng)
    g_step(G, D, real, z, loss, state.g_opt, prec, lambda x: x)
    ema_update(state.ema, G, 0.9)
    state.step, state.batch = state.step + 1, state.batch + 1


def _through_a_file(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` saved and read back as ``training_state.pth`` is (weights only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_equal(a: Any, b: Any, where: str = "state") -> None:
    """Equal all the way down: same keys, same tensors bit for bit, same numbers."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


def test_state_dict_round_trip_is_identical_and_trains_on_alike() -> None:
    real = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
    saved_state = _state(1)
    for _ in range(2):
        _step(saved_state, real)
    saved_state.epoch = 3
    saved = _through_a_file(saved_state.state_dict())
    assert saved["g_optimizer"]["state"], "the optimisers have moments to restore"

    loaded = _state(2)  # other weights, other random streams
    assert not torch.equal(loaded.fixed_latents, saved_state.fixed_latents)
    assert loaded.load_state_dict(saved, batches_per_epoch=5) is True
    assert_equal(loaded.state_dict(), saved)
    assert (loaded.epoch, loaded.batch, loaded.step) == (3, 2, 2)

    _step(saved_state, real)
    _step(loaded, real)
    assert_equal(loaded.state_dict(), saved_state.state_dict())


def test_a_changed_data_order_loads_the_networks_but_starts_the_next_epoch() -> None:
    saved_state = _state(1)
    _step(saved_state, torch.zeros(2, 3, 32, 32))
    saved = _through_a_file(saved_state.state_dict())
    other = sampler_key(seed=0, batch_size=2, world_size=1, data_percentage=100.0, dataset_len=12)
    loaded = _state(2, other)
    latent_before = loaded.latent_rng.get_state()
    assert loaded.load_state_dict(saved, batches_per_epoch=6) is False
    assert (loaded.epoch, loaded.batch, loaded.step) == (2, 0, 1)
    assert torch.equal(loaded.latent_rng.get_state(), latent_before)  # fresh streams
    assert_equal(loaded.generator.state_dict(), saved["generator"])
    assert_equal(loaded.d_opt.state_dict(), saved["d_optimizer"])


@pytest.mark.parametrize(
    ("saved", "exact", "batches", "expected"),
    [
        ((1, 3), True, 4, (1, 3)),  # mid-epoch: where it stopped
        ((1, 0), True, 4, (1, 0)),
        ((1, 4), True, 4, (2, 0)),  # a finished epoch: the next one
        ((1, 3), False, 4, (2, 0)),  # the data order changed: the next epoch, from its start
        ((1, 4), False, 4, (2, 0)),
        ((5, 1), False, 2, (6, 0)),
    ],
)
def test_resume_position(
    saved: tuple[int, int], exact: bool, batches: int, expected: tuple[int, int]
) -> None:
    assert resume_position(*saved, exact, batches) == expected
