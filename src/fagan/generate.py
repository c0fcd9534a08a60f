"""Images from a trained generator: loading it from any accepted file, latents, batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from fagan.checkpoint import is_training_state, load_file, load_state_into, network_state_dict
from fagan.config import load_config, parse_config, resolve_config_path
from fagan.errors import FaganError
from fagan.latents import seeded_generator, truncated_normal
from fagan.networks import Generator
from fagan.sample import save_grid, save_individual


def load_generator(
    generator_file: str | Path,
    generator_config: str | Path | None = None,
    *,
    latent_size: int | None = None,
    device: torch.device | str = "cpu",
    prefer_ema: bool = True,
) -> Generator:
    """Builds a generator and loads its weights, in eval mode.

    Args:
        generator_file: a plain state dict (ours or attn-gan-pytorch's, such as the
            original project's ``GAN_GEN_<epoch>.pth``) or a training state written by
            ``fagan train`` (whose EMA generator is used when ``prefer_ema``).
        generator_config: the architecture file or built-in name; optional for a
            training state, which carries its own.
        latent_size: defaults to the config's first layer's input channels.
        device: where to put the network.
        prefer_ema: take the EMA generator from a training state when it has one.

    Raises:
        FaganError: unreadable or unsafe file, missing config, weights that do not fit.
    """
    obj = load_file(generator_file)
    if generator_config is not None:
        spec = load_config(resolve_config_path(str(generator_config), "gen"))
    elif is_training_state(obj):
        spec = parse_config(obj["generator_config"], f"{generator_file} (generator config)")
        latent_size = latent_size or obj.get("latent_size")
    else:
        raise FaganError(
            f"{generator_file} is a plain state dict: give --generator_config for its architecture"
        )
    generator = Generator(spec, latent_size or spec.in_channels)
    state = network_state_dict(obj, "generator", prefer_ema=prefer_ema, source=str(generator_file))
    load_state_into(generator, state, f"generator weights {generator_file}")
    return generator.to(device).eval()


def read_latents(path: str | Path, latent_size: int) -> Tensor:
    """Reads an N x latent_size float tensor saved with ``torch.save``.

    (N, latent_size, 1, 1) is accepted too, as the original fed its generator.

    Raises:
        FaganError: for anything else, saying what was found.
    """
    latents = load_file(path)
    if not isinstance(latents, Tensor):
        raise FaganError(f"{path}: expected a tensor of latents, found {type(latents).__name__}")
    if latents.dim() == 4 and latents.shape[2:] == (1, 1):
        latents = latents.flatten(1)
    if latents.dim() != 2 or latents.shape[1] != latent_size or latents.shape[0] < 1:
        raise FaganError(
            f"{path}: expected latents of shape N x {latent_size}, found {list(latents.shape)}"
        )
    if not latents.is_floating_point():
        raise FaganError(f"{path}: latents must be floating point, found {latents.dtype}")
    if not torch.isfinite(latents).all():
        raise FaganError(f"{path}: latents contain NaN or infinite values")
    return latents.float()


def make_latents(num_samples: int, latent_size: int, seed: int,
                 truncation: float | None = None) -> Tensor:
    """``num_samples`` latents from ``seed``, optionally truncated to ``|z| <= truncation``.

    Raises:
        FaganError: a seed PyTorch does not accept, a bad count, size or truncation.
    """
    return truncated_normal(num_samples, latent_size, truncation, seeded_generator(seed))


@torch.no_grad()
def generate_batches(generator: Generator, latents: Tensor,
                     batch_size: int = 64) -> Iterator[Tensor]:
    """Yields generated images (B, 3, S, S) in [-1, 1] on the CPU, batch by batch."""
    device = next(generator.parameters()).device
    for start in range(0, latents.shape[0], batch_size):
        yield generator(latents[start:start + batch_size].to(device)).float().cpu()


def write_images(generator: Generator, latents: Tensor, output_dir: str | Path, *,
                 batch_size: int = 64, grid: bool = False) -> list[Path]:
    """Generates one image per latent and writes ``000000.png``... or one ``grid.png``."""
    output_dir = Path(output_dir)
    if grid:
        images = torch.cat(list(generate_batches(generator, latents, batch_size)))
        return [save_grid(images, output_dir / "grid.png")]
    written: list[Path] = []
    for images in generate_batches(generator, latents, batch_size):
        written += save_individual(images, output_dir, start_index=len(written))
    return written
