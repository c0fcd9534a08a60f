"""What runs on an accelerator: networks, the training steps in each precision, batches, SWD.

Every test runs on the CPU and, where a CUDA GPU is present, on it too
(``benchmarks/gpu_check.sh`` runs this file there). On an accelerator the results are
compared with the CPU's (TF32 off, so float32 matmuls are float32); on the CPU the
tests still check what they can alone (finite losses that move the weights, exact
batches, SWD of a set against itself).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fagan.config import load_config, resolve_config_path
from fagan.data import open_training_data
from fagan.layers import fast
from fagan.losses import get_loss
from fagan.metrics.swd import swd
from fagan.networks import Discriminator, Generator
from fagan.train import Precision, d_step, g_step, make_adam

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    ),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    if not torch.cuda.is_available():
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _networks(config: str, seed: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    gen = Generator(load_config(resolve_config_path(config, "gen")), 128)
    dis = Discriminator(load_config(resolve_config_path(config, "dis")), gen.image_size)
    return gen, dis


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast", "plain"])
def test_networks_give_the_cpu_outputs(device: str, fast_paths: bool) -> None:
    gen, dis = _networks("fagan64")
    gen.eval()
    z = torch.randn(4, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), fast.disabled() if not fast_paths else _nothing():
        images = gen(z)
        logits = dis(images)
        moved_gen, moved_dis = copy.deepcopy(gen).to(device), copy.deepcopy(dis).to(device)
        images_d = moved_gen(z.to(device))
        logits_d = moved_dis(images_d)
    assert images_d.device.type == device and images_d.shape == (4, 3, 64, 64)
    assert torch.isfinite(images_d).all() and images_d.abs().max() <= 1
    torch.testing.assert_close(images_d.cpu(), images, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits_d.cpu(), logits, rtol=1e-3, atol=1e-3)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _precisions(device: str) -> list[str]:
    return ["fp32", "bf16", "fp16"] if device == "cuda" else ["fp32", "bf16"]


@pytest.mark.parametrize("device", DEVICES)
def test_training_steps_in_every_precision_move_the_weights(device: str) -> None:
    dev = torch.device(device)
    loss = get_loss("relativistic-hinge")
    for precision in _precisions(device):
        gen, dis = _networks("small32")
        gen, dis = gen.to(dev).train(), dis.to(dev).train()
        before_g = [p.detach().clone() for p in gen.parameters()]
        before_d = [p.detach().clone() for p in dis.parameters()]
        prec = Precision.create(precision, dev)
        g_opt, d_opt = make_adam(gen, 1e-4), make_adam(dis, 4e-4)
        data = torch.Generator().manual_seed(3)
        rng = torch.Generator(device=dev).manual_seed(4)
        for _ in range(2):
            real = (torch.rand(8, 3, 32, 32, generator=data) * 2 - 1).to(dev)
            d_loss = d_step(
                gen,
                dis,
                real,
                torch.randn(8, 128, generator=data).to(dev),
                loss,
                d_opt,
                prec,
                lambda x: x,
                rng,
            )
            g_loss = g_step(
                gen,
                dis,
                real,
                torch.randn(8, 128, generator=data).to(dev),
                loss,
                g_opt,
                prec,
                lambda x: x,
            )
            assert np.isfinite(d_loss) and np.isfinite(g_loss), precision
        moved_g = sum(
            not torch.equal(a, b) for a, b in zip(before_g, gen.parameters(), strict=True)
        )
        moved_d = sum(
            not torch.equal(a, b) for a, b in zip(before_d, dis.parameters(), strict=True)
        )
        assert moved_g > 0 and moved_d > 0, precision


def _image_folder(root: Path, count: int = 12) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.mark.parametrize("device", DEVICES)
def test_batches_on_the_device_hold_the_exact_pixels(device: str, tmp_path: Path) -> None:
    from fagan.data import ResumableSampler

    folder = _image_folder(tmp_path / "images")
    data = open_training_data(folder, 32, device, cache=False, progress=False)
    assert data.images is not None
    sampler = ResumableSampler(len(data), batch_size=4, seed=0)
    order = list(iter(sampler))
    sampler = ResumableSampler(len(data), batch_size=4, seed=0)
    batch = next(iter(data.batches(sampler)))
    assert batch.images.device.type == device and batch.images.dtype == torch.float32
    u8 = torch.from_numpy(data.images[np.asarray(order[:4]) % data.num_images])
    expected = u8.permute(0, 3, 1, 2).float().mul(2 / 255).sub(1)
    assert torch.equal(batch.images.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_swd_on_the_device_matches_the_cpu(device: str) -> None:
    rng = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (16, 3, 32, 32), generator=rng, dtype=torch.uint8)
    b = torch.randint(0, 128, (16, 3, 32, 32), generator=rng, dtype=torch.uint8)
    cpu = swd(a, b, patches_per_image=16, dirs_per_repeat=32)
    here = swd(a.to(device), b.to(device), patches_per_image=16, dirs_per_repeat=32)
    same = swd(a.to(device), a.to(device), patches_per_image=16, dirs_per_repeat=32)
    assert here["avg"] == pytest.approx(cpu["avg"], rel=1e-3)
    assert same["avg"] == pytest.approx(0.0, abs=1e-6) and cpu["avg"] > 1e-3
