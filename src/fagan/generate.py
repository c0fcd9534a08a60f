"""Images from a trained generator: loading it from any accepted file, latents, batches.

Sampled latents are drawn from one seeded CPU generator in blocks of at most
:data:`LATENT_BLOCK_ELEMENTS` numbers (:func:`latent_blocks`), so that writing a million
images holds one block of latents and one batch of images at a time
(:func:`write_samples`). A count whose latents fit in one block (32,768 latents of size
128) is drawn in one call, exactly as :func:`fagan.latents.truncated_normal` draws it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fagan.checkpoint import (
    check_conditioning_metadata,
    is_network_file,
    is_training_state,
    load_file,
    load_state_into,
    network_metadata,
    network_state_dict,
)
from fagan.config import (
    NetworkSpec,
    load_config,
    parse_config,
    parse_config_text,
    resolve_config_path,
)
from fagan.errors import FaganError, brief_repr
from fagan.fileio import check_output_dir, check_output_file
from fagan.latents import seeded_generator, truncated_normal
from fagan.networks import Generator
from fagan.sample import grid_uint8_batches, save_individual, write_grid

__all__ = [
    "LATENT_BLOCK_ELEMENTS",
    "MAX_BATCH_SIZE",
    "MAX_GRID_IMAGES",
    "MAX_NUM_SAMPLES",
    "check_batch_size",
    "check_num_samples",
    "generate_batches",
    "latent_blocks",
    "load_generator",
    "make_latents",
    "read_latents",
    "stored_network",
    "write_class_images",
    "write_images",
    "write_samples",
]

#: Most images one command generates (``--num_samples``, rows of a ``--latents`` file).
MAX_NUM_SAMPLES = 1_000_000
#: Most images in one forward pass (``--batch_size``).
MAX_BATCH_SIZE = 4096
#: Most images in one ``--grid`` picture (a 64 x 64 grid).
MAX_GRID_IMAGES = 4096
#: Most pixels in one ``--grid`` picture (16384 x 16384).
MAX_GRID_PIXELS = 1 << 28
#: Latents are drawn in blocks of at most this many numbers (16 MiB of float32).
LATENT_BLOCK_ELEMENTS = 1 << 22
#: Floating-point types a ``--latents`` file may hold.
_LATENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def stored_network(
    obj: Any, source: str | Path, role: str, config: str | Path | None = None
) -> tuple[NetworkSpec, int | None, int | None, dict[str, Any], tuple[str, ...] | None]:
    """What a loaded weights file says about the network it holds.

    Args:
        obj: the loaded file: a plain state dict, a network file of a class-conditional
            run (:func:`fagan.checkpoint.network_file`) or a training state.
        source: the file, for messages.
        role: ``"generator"`` or ``"discriminator"``.
        config: an architecture file or built-in name that replaces the file's own; needed
            for a plain state dict.

    Returns:
        The architecture, the latent size and image size the file states (or None), the
        conditioning keyword arguments of :class:`~fagan.networks.Generator` /
        :class:`~fagan.networks.Discriminator` (empty for an unconditional network), and
        the class names (None for an unconditional network).

    Raises:
        FaganError: a plain state dict without ``config``, or file metadata that is wrong.
    """
    conditioning, class_names = network_metadata(obj)
    check_conditioning_metadata(
        conditioning, None if class_names is None else list(class_names), str(source)
    )
    if is_network_file(obj) and obj.get("role") != role:
        raise FaganError(
            f"{source}: this file holds {brief_repr(obj.get('role'), 40)} weights, not {role} "
            "weights"
        )
    short = "gen" if role == "generator" else "dis"
    latent_size = image_size = None
    if is_training_state(obj) or is_network_file(obj):
        latent_size, image_size = obj.get("latent_size"), obj.get("image_size")
        for name, value in (("latent_size", latent_size), ("image_size", image_size)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise FaganError(f"{source}: '{name}' is not a positive integer: {value!r}")
    if config is not None:
        spec = load_config(resolve_config_path(str(config), short))
    elif is_training_state(obj):
        spec = parse_config(obj[f"{role}_config"], f"{source} ({role} config)")
    elif is_network_file(obj):
        spec = parse_config_text(obj.get("config"), f"{source} ({role} config)")
    else:
        raise FaganError(
            f"{source} is a plain state dict: give --{role}_config for its architecture"
        )
    if conditioning is not None and role == "discriminator":
        if conditioning["conditioning"] == "projection":  # its embedding is the feature size
            conditioning = {**conditioning, "embedding_dim": None}
    return spec, latent_size, image_size, conditioning or {}, class_names


def load_generator(
    generator_file: str | Path,
    generator_config: str | Path | None = None,
    *,
    latent_size: int | None = None,
    device: torch.device | str = "cpu",
    prefer_ema: bool = True,
) -> Generator:
    """Builds a generator and loads its weights, in eval mode.

    A class-conditional generator is built with the conditioning its file states, and
    ``generator.class_names`` is set to the class names (a tuple of strings, label ``k``
    named by entry ``k``), or None for an unconditional generator.

    Args:
        generator_file: a plain state dict (ours or attn-gan-pytorch's, such as the
            original project's ``GAN_GEN_<epoch>.pth``), a class-conditional run's
            ``GAN_GEN_<epoch>.pth`` (a network file that carries its architecture) or a
            training state written by ``fagan train`` (whose EMA generator is used when
            ``prefer_ema``).
        generator_config: the architecture file or built-in name; optional for a
            training state or a network file, which carry their own.
        latent_size: defaults to the file's, else the config's first layer's input channels.
        device: where to put the network.
        prefer_ema: take the EMA generator from a training state when it has one.

    Raises:
        FaganError: unreadable or unsafe file, missing config, weights that do not fit.
    """
    obj = load_file(generator_file)
    spec, stored_latent, _, conditioning, class_names = stored_network(
        obj, generator_file, "generator", generator_config
    )
    state = network_state_dict(obj, "generator", prefer_ema=prefer_ema, source=str(generator_file))
    if generator_config is None:
        latent_size = latent_size or stored_latent
    generator = Generator(spec, latent_size or spec.in_channels, **conditioning)
    load_state_into(generator, state, f"generator weights {generator_file}")
    generator.class_names = class_names
    return generator.to(device).eval()


# --------------------------------------------------------------------------- bounds
def check_num_samples(num_samples: int, what: str = "--num_samples") -> int:
    """``num_samples`` when it is a whole number in 1..:data:`MAX_NUM_SAMPLES`.

    Raises:
        FaganError: otherwise, naming ``what``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise FaganError(f"{what} must be a whole number, got {num_samples!r}")
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise FaganError(f"{what} must be between 1 and {MAX_NUM_SAMPLES:,}, got {num_samples}")
    return num_samples


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` when it is a whole number in 1..:data:`MAX_BATCH_SIZE`.

    Raises:
        FaganError: otherwise.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise FaganError(f"--batch_size must be a whole number, got {batch_size!r}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise FaganError(f"--batch_size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    return batch_size


def _check_grid(count: int, image_size: int | None, columns: int | None = None) -> None:
    """Refuses a ``--grid`` of more than :data:`MAX_GRID_IMAGES` images or pixels.

    ``columns`` defaults to the square-ish layout of :func:`fagan.sample.grid_uint8`.
    """
    if count > MAX_GRID_IMAGES:
        raise FaganError(
            f"--grid holds at most {MAX_GRID_IMAGES} images, asked for {count} "
            "(leave out --grid for one file per image)"
        )
    if image_size:
        columns = min(columns or max(1, int(count**0.5)), count)
        rows = -(-count // columns)
        pixels = ((image_size + 2) * columns + 2) * ((image_size + 2) * rows + 2)
        if pixels > MAX_GRID_PIXELS:
            raise FaganError(
                f"a --grid of {count} images of {image_size}x{image_size} would "
                f"have {pixels:,} pixels, more than {MAX_GRID_PIXELS:,} "
                "(leave out --grid for one file per image)"
            )


# --------------------------------------------------------------------------- latents
def read_latents(path: str | Path, latent_size: int) -> Tensor:
    """Reads an N x latent_size float tensor saved with ``torch.save``.

    (N, latent_size, 1, 1) is accepted too, as the original fed its generator. The file
    is refused before it is read when it is larger than :data:`MAX_NUM_SAMPLES` float64
    latents could be, and the tensor must be dense, of a float type, finite, with at
    most :data:`MAX_NUM_SAMPLES` rows.

    Raises:
        FaganError: for anything else, saying what was found.
    """
    path = Path(path)
    if path.is_file():
        limit = MAX_NUM_SAMPLES * latent_size * 8 + (1 << 20)
        size = path.stat().st_size
        if size > limit:
            raise FaganError(
                f"{path} is {size:,} bytes, more than {MAX_NUM_SAMPLES:,} latents "
                f"of size {latent_size} can take ({limit:,} bytes)"
            )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        latents = load_file(path)
    if not isinstance(latents, Tensor):
        raise FaganError(f"{path}: expected a tensor of latents, found {type(latents).__name__}")
    if latents.is_nested or latents.layout != torch.strided:
        layout = "nested" if latents.is_nested else str(latents.layout).removeprefix("torch.")
        raise FaganError(f"{path}: latents must be a dense tensor, found a {layout} tensor")
    if latents.device.type != "cpu":  # map_location moves all but meta tensors
        raise FaganError(f"{path}: the latents hold no values (a {latents.device.type} tensor)")
    if latents.dtype not in _LATENT_DTYPES:
        raise FaganError(
            f"{path}: latents must be floating point (float16, bfloat16, float32 "
            f"or float64), found {str(latents.dtype).removeprefix('torch.')}"
        )
    if latents.dim() == 4 and latents.shape[2:] == (1, 1):
        latents = latents.flatten(1)
    if latents.dim() != 2 or latents.shape[1] != latent_size or latents.shape[0] < 1:
        raise FaganError(
            f"{path}: expected latents of shape N x {latent_size}, found {list(latents.shape)}"
        )
    if latents.shape[0] > MAX_NUM_SAMPLES:
        raise FaganError(
            f"{path} holds {latents.shape[0]:,} latents; at most "
            f"{MAX_NUM_SAMPLES:,} are generated at once"
        )
    for block in latents.split(max(1, LATENT_BLOCK_ELEMENTS // latent_size)):
        if not torch.isfinite(block).all():
            raise FaganError(f"{path}: latents contain NaN or infinite values")
    for warning in caught:  # torch's remarks on a file that is accepted, passed on
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return latents.detach().float()


def latent_blocks(
    num_samples: int, latent_size: int, seed: int, truncation: float | None = None
) -> Iterator[Tensor]:
    """``num_samples`` latents from ``seed``, in blocks of at most ``LATENT_BLOCK_ELEMENTS``.

    All blocks come from one CPU generator seeded with ``seed``, each drawn with
    :func:`fagan.latents.truncated_normal`; concatenated they are
    :func:`make_latents`. Every argument is checked before the first block is drawn.

    Raises:
        FaganError: a count outside 1..:data:`MAX_NUM_SAMPLES`, a seed PyTorch does not
            accept, a bad latent size or truncation.
    """
    check_num_samples(num_samples)
    if latent_size < 1:
        raise FaganError(f"latent size must be at least 1, got {latent_size}")
    generator = seeded_generator(seed)
    rows = max(1, LATENT_BLOCK_ELEMENTS // latent_size)
    first = truncated_normal(min(rows, num_samples), latent_size, truncation, generator)

    def blocks() -> Iterator[Tensor]:
        yield first
        for start in range(rows, num_samples, rows):
            yield truncated_normal(
                min(rows, num_samples - start), latent_size, truncation, generator
            )

    return blocks()


def make_latents(
    num_samples: int, latent_size: int, seed: int, truncation: float | None = None
) -> Tensor:
    """``num_samples`` latents from ``seed``, optionally truncated to ``|z| <= truncation``.

    The blocks of :func:`latent_blocks` in one tensor: for a count that fits in one block
    this is exactly ``truncated_normal(num_samples, latent_size, truncation,
    seeded_generator(seed))``.

    Raises:
        FaganError: a seed PyTorch does not accept, a bad count, size or truncation.
    """
    if num_samples == 0:  # an empty draw, as truncated_normal gives it
        return truncated_normal(0, latent_size, truncation, seeded_generator(seed))
    return torch.cat(list(latent_blocks(num_samples, latent_size, seed, truncation)))


def _rebatch(blocks: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """The rows of ``blocks`` in batches of ``batch_size`` (the last one may be smaller)."""
    pending: list[Tensor] = []
    held = 0
    for block in blocks:
        while block.shape[0]:
            take = min(batch_size - held, block.shape[0])
            pending.append(block[:take])
            held += take
            block = block[take:]
            if held == batch_size:
                yield pending[0] if len(pending) == 1 else torch.cat(pending)
                pending, held = [], 0
    if held:
        yield pending[0] if len(pending) == 1 else torch.cat(pending)


# --------------------------------------------------------------------------- images
def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError)
        and ("can't allocate memory" in text or "out of memory" in text)
    )


@torch.no_grad()
def generate_batches(
    generator: Generator,
    latents: Tensor | Iterable[Tensor],
    batch_size: int = 64,
    *,
    label: int | None = None,
) -> Iterator[Tensor]:
    """Yields generated images (B, 3, S, S) in [-1, 1] on the CPU, batch by batch.

    Args:
        generator: the network, in the mode it is in.
        latents: a (N, latent_size) tensor, or blocks of latents such as
            :func:`latent_blocks` gives (regrouped into batches of ``batch_size``).
        batch_size: latents per forward pass.
        label: the class of every image, for a class-conditional generator.

    Raises:
        FaganError: when a batch does not fit in memory (asking for a smaller batch), a
            class for an unconditional generator or none for a conditional one.
    """
    device = next(generator.parameters()).device
    batches = (
        latents.split(batch_size) if isinstance(latents, Tensor) else _rebatch(latents, batch_size)
    )
    for batch in batches:
        try:
            if label is None:
                images = generator(batch.to(device))
            else:
                labels = torch.full((batch.shape[0],), label, dtype=torch.long, device=device)
                images = generator(batch.to(device), labels)
            images = images.float().cpu()
        except (RuntimeError, MemoryError) as error:
            if not _out_of_memory(error):
                raise
            raise FaganError(
                f"out of memory generating {batch.shape[0]} images at once on "
                f"{device}: give a smaller --batch_size"
            ) from None
        yield images


def _write(
    generator: Generator,
    latents: Tensor | Iterable[Tensor],
    count: int,
    output_dir: Path,
    batch_size: int,
    grid: bool,
) -> list[Path]:
    """Checks every bound and output path, then generates and writes batch by batch."""
    check_batch_size(batch_size)
    check_num_samples(count, "the number of images")
    if grid:
        _check_grid(count, getattr(generator, "image_size", None))
        target = check_output_file(output_dir / "grid.png")
        picture = grid_uint8_batches(generate_batches(generator, latents, batch_size), count)
        return [write_grid(picture, target)]
    check_output_dir(output_dir)
    written: list[Path] = []
    for images in generate_batches(generator, latents, batch_size):
        written += save_individual(images, output_dir, start_index=len(written))
    return written


def write_images(
    generator: Generator,
    latents: Tensor,
    output_dir: str | Path,
    *,
    batch_size: int = 64,
    grid: bool = False,
) -> list[Path]:
    """Generates one image per latent and writes ``000000.png``... or one ``grid.png``.

    Bounds (batch size, number of images, grid size) and the output folder are checked
    before any image is generated; images are generated and written batch by batch.

    Raises:
        FaganError: a bound exceeded, an output folder that cannot be written, a batch
            that does not fit in memory.
    """
    return _write(generator, latents, int(latents.shape[0]), Path(output_dir), batch_size, grid)


def write_samples(
    generator: Generator,
    output_dir: str | Path,
    num_samples: int,
    *,
    seed: int = 0,
    truncation: float | None = None,
    batch_size: int = 64,
    grid: bool = False,
) -> list[Path]:
    """Generates ``num_samples`` images from ``seed`` and writes them, holding one batch.

    The same images as ``write_images(generator, make_latents(num_samples, ...), ...)``,
    with the latents drawn block by block (:func:`latent_blocks`) instead of all at once:
    memory stays bounded whatever ``num_samples`` is (up to :data:`MAX_NUM_SAMPLES`).

    Raises:
        FaganError: a bound exceeded, a bad seed or truncation, an output folder that
            cannot be written, a batch that does not fit in memory.
    """
    check_batch_size(batch_size)
    blocks = latent_blocks(num_samples, generator.latent_size, seed, truncation)
    return _write(generator, blocks, num_samples, Path(output_dir), batch_size, grid)


def write_class_images(
    generator: Generator,
    output_dir: str | Path,
    classes: Sequence[int],
    *,
    latents: Tensor | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    truncation: float | None = None,
    batch_size: int = 64,
    grid: bool = False,
) -> list[Path]:
    """The same latents through a class-conditional generator once per class.

    Every class gets the same latents (a ``--latents`` file's, or ``num_samples`` drawn
    from ``seed`` as :func:`write_samples` draws them), so images differ by class only.
    Without ``grid`` each class's images go to their own sub-folder of ``output_dir``
    (:func:`fagan.classes.class_folder_names`: the class name, or ``class_<i>``), as
    ``000000.png``...; with ``grid``, one ``grid.png`` with one row per class, in the
    order of ``classes``, and one column per latent.

    Bounds (batch size, images per class and in all, grid size) and every output path
    are checked before any image is generated.

    Args:
        generator: a class-conditional generator.
        output_dir: where the sub-folders or the grid go.
        classes: class indices, each in ``[0, num_classes)``.
        latents: (N, latent_size) latents; or None to draw ``num_samples`` from ``seed``.
        num_samples: images per class when ``latents`` is None.
        seed: seed of drawn latents.
        truncation: truncate drawn latents to ``|z| <= truncation``.
        batch_size: images per forward pass.
        grid: one grid picture instead of one file per image.

    Returns:
        The files written.

    Raises:
        FaganError: a bound exceeded, an unconditional generator or a class out of range,
            a bad seed or truncation, an output that cannot be written, a batch that does
            not fit in memory.
    """
    from fagan.classes import class_folder_names, generator_classes

    num_classes, names = generator_classes(generator)
    if not num_classes:
        raise FaganError("images by class need a class-conditional generator")
    if not classes:
        raise FaganError("no class to generate images of")
    for index in classes:
        if not 0 <= index < num_classes:
            raise FaganError(f"class {index} is out of range (0 to {num_classes - 1})")
    check_batch_size(batch_size)
    if latents is not None:
        count = int(latents.shape[0])

        def class_latents() -> Iterable[Tensor]:
            return [latents]
    else:
        count = check_num_samples(num_samples if num_samples is not None else 64)
        latent_blocks(count, generator.latent_size, seed, truncation)  # checks, draws one block

        def class_latents() -> Iterable[Tensor]:
            return latent_blocks(count, generator.latent_size, seed, truncation)

    check_num_samples(count, "the number of images per class")
    check_num_samples(count * len(classes), "the number of images")
    output_dir = Path(output_dir)

    def images_of(index: int) -> Iterator[Tensor]:
        return generate_batches(generator, class_latents(), batch_size, label=index)

    if grid:
        total = count * len(classes)
        _check_grid(total, getattr(generator, "image_size", None), columns=count)
        target = check_output_file(output_dir / "grid.png")
        batches = (images for index in classes for images in images_of(index))
        return [write_grid(grid_uint8_batches(batches, total, nrow=count), target)]
    folders = [output_dir / name for name in class_folder_names(classes, names)]
    for folder in folders:
        check_output_dir(folder)
    written: list[Path] = []
    for index, folder in zip(classes, folders, strict=True):
        done = 0
        for images in images_of(index):
            written += save_individual(images, folder, start_index=done)
            done += images.shape[0]
    return written
