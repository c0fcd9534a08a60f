"""Builds networks with the original package, attn-gan-pytorch 1.2.3, for parity tests.

Its ``get_config`` calls ``yaml.load`` without a Loader, which PyYAML 6 rejects; the
config is read here with the safe loader into the same EasyDict it would have made, and
every layer is built by the original's own ``get_layer``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

attn_gan = pytest.importorskip("attn_gan_pytorch")
from attn_gan_pytorch import CustomLayers, Losses, Networks  # noqa: E402
from attn_gan_pytorch.Utils import get_layer  # noqa: E402
from easydict import EasyDict  # noqa: E402

#: The original project's .conf files, kept in the repository (tests/fixtures).
REFERENCE_CONFIGS = Path(__file__).resolve().parent / "fixtures" / "fagan_configs"
#: The byte-for-byte originals beside the repository, where a checkout has them.
SHARED_REFERENCE_CONFIGS = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "fagan_configs"
)


def reference_configs_dir() -> Path:
    """The original project's config folder (``fagan_1``/``fagan_2``, each with
    ``gen.conf`` and ``dis.conf``), as the repository's fixtures hold it."""
    return REFERENCE_CONFIGS


def reference_layers(conf: Path) -> list[torch.nn.Module]:
    with open(conf) as handle:
        data = EasyDict(yaml.safe_load(handle))
    return [get_layer(layer) for layer in data.architecture]


def reference_generator(conf: Path, latent_size: int = 128) -> Networks.Generator:
    return Networks.Generator(reference_layers(conf), latent_size)


def reference_discriminator(conf: Path) -> Networks.Discriminator:
    return Networks.Discriminator(reference_layers(conf))


def converge_spectral_norms(model: torch.nn.Module, iterations: int = 300) -> None:
    """Runs the reference SpectralNorm's power iteration until u and v are fixed points."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CustomLayers.SpectralNorm):
                for _ in range(iterations):
                    module._update_u_v()


def randomize_gammas(model: torch.nn.Module, seed: int = 0) -> None:
    """Sets every attention gamma to a non-zero value so the attention path shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (CustomLayers.SelfAttention, CustomLayers.FullAttention)):
                module.gamma.copy_(torch.rand(1, generator=generator) * 0.8 + 0.1)


def randomize_batch_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Gives batch norms non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)


__all__ = [
    "CustomLayers",
    "Losses",
    "Networks",
    "REFERENCE_CONFIGS",
    "SHARED_REFERENCE_CONFIGS",
    "converge_spectral_norms",
    "randomize_batch_norms",
    "randomize_gammas",
    "reference_configs_dir",
    "reference_discriminator",
    "reference_generator",
    "reference_layers",
]
