"""The ``fagan`` command: thin subcommands that parse, validate, call one function.

A bad input (flag, file, config) ends with one line ``fagan <command>: error: ...``
on stderr and exit status 2; a traceback reaching a user for a bad input is a bug. Any
other failure ends with one line ``... error: internal error: <type>: <message>; details
in <crash log>`` and exit status 1. ``fagan train`` stopped by SIGINT/SIGTERM exits with
130/143 after saving its state.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import NoReturn

from fagan import __version__, options
from fagan.errors import FaganError
from fagan.options import (
    EXISTING_DIR,
    EXISTING_FILE,
    FLAG,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    TEXT,
    int_range,
    option,
)
from fagan.train_options import TrainOptions

EXIT_USAGE = 2
#: An unexpected failure (a bug, out of memory): one line, and the traceback in a file.
EXIT_INTERNAL = 1
_MAX_MESSAGE = 300


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- argument types
# for the subcommands whose flags are not built from an option dataclass: the same kinds
positive_int = POSITIVE_INT.argparse_type()
positive_float = POSITIVE_FLOAT.argparse_type()
seed = SEED.argparse_type()
any_int = options.Kind(int, lambda v: isinstance(v, int), "a whole number").argparse_type()


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"file not found: {text}")
    return text


def existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"folder not found: {text}")
    return text


# --------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from fagan.train import train

    opts = options.from_namespace(TrainOptions, args)
    if opts.images_dir is None and not opts.resume and Path("data/celeba").is_dir():
        opts.images_dir = "data/celeba"  # the original's default
    result = train(opts, given=options.given_options(args))
    return result.stopped.exit_status


# --------------------------------------------------------------------------- generate
@dataclass(kw_only=True)
class GenerateOptions:
    """``fagan generate``: images from a trained generator."""

    generator_file: str = option(
        MISSING, EXISTING_FILE, "GAN_GEN_*.pth (ours or attn-gan-pytorch's) or a training_state.pth"
    )
    generator_config: str | None = option(
        None, TEXT, "architecture file or built-in name (optional for a training state)"
    )
    output_dir: str = option(MISSING, TEXT, "where the PNGs go")
    latents: str | None = option(
        None,
        EXISTING_FILE,
        "N x latent_size float tensor saved with torch.save (instead of --num_samples)",
    )
    num_samples: int | None = option(
        None,
        int_range(1, 1_000_000),
        "number of images (default 64), written batch by batch; with --class, images per "
        "class (default 64, 8 with --grid)",
    )
    classes: list[str] | None = option(
        None,
        TEXT,
        "a class-conditional generator's class, by name or index (repeat it or separate "
        "with commas for several): one sub-folder of --output_dir per class, or one "
        "--grid row per class, from the same latents",
        flag="class",
        repeat=True,
    )
    seed: int = option(0, SEED, "seed of the latents")
    latent_size: int | None = option(
        None, POSITIVE_INT, "latent size (default: from the config, 128 for the original's)"
    )
    truncation: float | None = option(
        None, POSITIVE_FLOAT, "truncate latents to |z| <= T (truncation trick)"
    )
    batch_size: int = option(64, int_range(1, 4096), "images per forward pass")
    grid: bool = option(False, FLAG, "one grid.png instead of one file each")
    prefer_ema: bool = option(
        True,
        FLAG,
        "from a training state, use the raw generator, not its EMA",
        negative_flag="no_ema",
    )
    device: str = option("auto", TEXT, "auto, cpu, cuda, cuda:N or mps")

    def validate(self) -> None:
        """Checks every option, then the ones that exclude each other."""
        options.check_fields(self)
        if self.latents is not None and self.num_samples is not None:
            raise FaganError(
                "--latents and --num_samples exclude each other: the file's latents are the images"
            )
        if self.latents is not None and self.truncation is not None:
            raise FaganError("--truncation applies to sampled latents, not to a --latents file")


def cmd_generate(args: argparse.Namespace) -> int:
    from fagan.classes import abbreviate, describe_classes, generator_classes, resolve_classes
    from fagan.distributed import resolve_device
    from fagan.generate import (
        load_generator,
        read_latents,
        write_class_images,
        write_images,
        write_samples,
    )

    opts = options.from_namespace(GenerateOptions, args)
    opts.validate()
    device = resolve_device(opts.device)
    generator = load_generator(
        opts.generator_file,
        opts.generator_config,
        latent_size=opts.latent_size,
        device=device,
        prefer_ema=opts.prefer_ema,
    )
    num_classes, names = generator_classes(generator)
    classes = resolve_classes(
        opts.classes, num_classes, names, required=True, source=opts.generator_file
    )
    latents = None if opts.latents is None else read_latents(opts.latents, generator.latent_size)
    if classes is not None:
        per_class = opts.num_samples or (8 if opts.grid else 64)
        count = len(latents) if latents is not None else per_class
        written = write_class_images(
            generator,
            opts.output_dir,
            classes,
            latents=latents,
            num_samples=count,
            seed=opts.seed,
            truncation=opts.truncation,
            batch_size=opts.batch_size,
            grid=opts.grid,
        )
        folders = list(dict.fromkeys(path.parent.name for path in written))
        where = (
            f" as {written[0].name} (one row per class)"
            if opts.grid
            else f" (one sub-folder per class: {abbreviate(folders)})"
        )
        print(
            f"wrote {count} image(s) for each of {len(classes)} class(es) "
            f"({describe_classes(num_classes, names, classes)}) to {opts.output_dir}{where}"
        )
        return 0
    if latents is not None:
        count = len(latents)
        written = write_images(
            generator, latents, opts.output_dir, batch_size=opts.batch_size, grid=opts.grid
        )
    else:  # latents drawn and images written batch by batch: memory stays bounded
        count = opts.num_samples or 64
        written = write_samples(
            generator,
            opts.output_dir,
            count,
            seed=opts.seed,
            truncation=opts.truncation,
            batch_size=opts.batch_size,
            grid=opts.grid,
        )
    print(
        f"wrote {count} image(s) to {opts.output_dir}"
        + (f" as {written[0].name}" if opts.grid else "")
    )
    return 0


# --------------------------------------------------------------------------- plots, gif
@dataclass(kw_only=True)
class PlotLossesOptions:
    """``fagan plot-losses``: a run's loss curves as an image."""

    loss_file: str = option(MISSING, EXISTING_FILE, "a loss.log")
    plot_file: str = option(MISSING, TEXT, "the image to write, such as loss.png")


def cmd_plot_losses(args: argparse.Namespace) -> int:
    from fagan.plots import plot_losses

    opts = options.from_namespace(PlotLossesOptions, args)
    options.check_fields(opts)
    print(f"wrote {plot_losses(opts.loss_file, opts.plot_file)}")
    return 0


@dataclass(kw_only=True)
class MakeGifOptions:
    """``fagan make-gif``: a run's sample grids as an animation."""

    sample_dir: str = option(MISSING, EXISTING_DIR, "folder of gen_<epoch>_<batch>.png grids")
    output: str = option(MISSING, TEXT, "the .gif (or .mp4) to write")
    fps: float = option(4.0, POSITIVE_FLOAT, "frames per second")


def cmd_make_gif(args: argparse.Namespace) -> int:
    from fagan.animation import make_progress_gif

    opts = options.from_namespace(MakeGifOptions, args)
    options.check_fields(opts)
    print(f"wrote {make_progress_gif(opts.sample_dir, opts.output, fps=opts.fps)}")
    return 0


def _declared(cls: type) -> Callable[[argparse.ArgumentParser], None]:
    """The ``add_arguments`` of a subcommand whose options are the dataclass ``cls``."""
    return lambda parser: options.add_arguments(parser, cls)


def _add_generator_source(p: argparse.ArgumentParser) -> None:
    """The generator's weights and (optional for a training state) architecture flags."""
    p.add_argument(
        "--generator_file",
        type=existing_file,
        required=True,
        help="GAN_GEN_*.pth (ours or attn-gan-pytorch's) or a training_state.pth",
    )
    p.add_argument(
        "--generator_config",
        help="architecture file or built-in name (optional for a training state)",
    )


# --------------------------------------------------------------------------- interpolate
def add_interpolate_arguments(p: argparse.ArgumentParser) -> None:
    _add_generator_source(p)
    p.add_argument(
        "--seeds",
        required=True,
        help="two or more comma-separated seeds whose latents are the key frames",
    )
    p.add_argument(
        "--steps", type=positive_int, default=16, help="frames from one seed to the next"
    )
    p.add_argument(
        "--loop", action="store_true", help="return to the first seed at the end (a seamless loop)"
    )
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="the class of every frame, by name or index (required by a class-conditional "
        "generator)",
    )
    p.add_argument(
        "--truncation",
        type=positive_float,
        help="truncate the key latents to |z| <= T (truncation trick)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="the .gif to write (an .mp4 goes beside it where imageio-ffmpeg works)",
    )
    p.add_argument("--fps", type=positive_float, default=16.0)
    p.add_argument("--no_mp4", dest="mp4", action="store_false", help="write the GIF only")
    p.add_argument("--strip", help="also write a .png of the key frames side by side")
    p.add_argument(
        "--strip_frames",
        type=positive_int,
        help="show this many evenly spaced frames in the strip instead of the keys",
    )
    p.add_argument("--batch_size", type=positive_int, default=64)
    p.add_argument(
        "--no_ema",
        dest="prefer_ema",
        action="store_false",
        help="from a training state, use the raw generator, not its EMA",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def cmd_interpolate(args: argparse.Namespace) -> int:
    from fagan.classes import describe_classes, generator_classes, resolve_one_class
    from fagan.distributed import resolve_device
    from fagan.generate import load_generator
    from fagan.interpolate import interpolate, parse_seeds, write_interpolation

    seeds = parse_seeds(args.seeds)
    if Path(args.output).suffix.lower() not in (".gif", ".mp4"):
        raise FaganError(f"--output must end in .gif or .mp4, got {args.output}")
    if args.strip is not None and Path(args.strip).suffix.lower() != ".png":
        raise FaganError(f"--strip must end in .png, got {args.strip}")
    generator = load_generator(
        args.generator_file,
        args.generator_config,
        device=resolve_device(args.device),
        prefer_ema=args.prefer_ema,
    )
    num_classes, names = generator_classes(generator)
    label = resolve_one_class(
        args.classes,
        num_classes,
        names,
        required=True,
        source=args.generator_file,
        why="an interpolation is of one class: run it once per class",
    )
    walk = interpolate(
        generator,
        seeds,
        steps=args.steps,
        loop=args.loop,
        truncation=args.truncation,
        batch_size=args.batch_size,
        label=label,
    )
    files = write_interpolation(
        walk,
        args.output,
        fps=args.fps,
        mp4=args.mp4,
        strip=args.strip,
        strip_frames=args.strip_frames,
    )
    written = [str(p) for p in (files.gif, files.mp4, files.strip) if p is not None]
    of_class = "" if label is None else f" of class {describe_classes(num_classes, names, [label])}"
    print(
        f"wrote {files.num_frames} frames{of_class} through seeds {','.join(map(str, seeds))}: "
        + ", ".join(written)
    )
    return 0


# --------------------------------------------------------------------------- evaluate
def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Flags from :class:`fagan.evaluate.EvaluateOptions`; the two image sources as a pair."""
    from dataclasses import fields

    from fagan.evaluate import EvaluateOptions
    from fagan.options import add_arguments

    declared = {f.name: f.metadata for f in fields(EvaluateOptions)}
    source = p.add_mutually_exclusive_group(required=True)
    for name in ("fake_dir", "generator_file"):
        source.add_argument(
            f"--{name}", type=declared[name]["kind"].argparse_type(), help=declared[name]["help"]
        )
    add_arguments(p, EvaluateOptions)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fagan.evaluate import EvaluateOptions, format_table, run_evaluation, write_results
    from fagan.options import from_namespace

    opts = from_namespace(EvaluateOptions, args)
    opts.fake_dir, opts.generator_file = args.fake_dir, args.generator_file
    results = run_evaluation(opts, log=lambda message: print(message, file=sys.stderr))
    meta = results["meta"]
    print(
        f"{meta['n_real']} real images ({meta['real_dir']}) vs {meta['n_fake']} "
        f"generated ({meta['fake_source']}) at {meta['image_size']}x{meta['image_size']}"
    )
    print(format_table(results))
    if opts.output is not None:
        print(f"wrote {write_results(results, opts.output)}")
    return 0


# --------------------------------------------------------------------------- attention
def query_point(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        x, y = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x,y pixel coordinates, got {text!r}") from None
    return x, y


query_point.__name__ = "x,y pixel coordinates"


def add_attention_arguments(p: argparse.ArgumentParser) -> None:
    net = p.add_mutually_exclusive_group(required=True)
    net.add_argument(
        "--generator_file",
        type=existing_file,
        help="show the generator's layers on an image it generates",
    )
    net.add_argument(
        "--discriminator_file",
        type=existing_file,
        help="show the discriminator's layers on a real image (--image)",
    )
    p.add_argument(
        "--generator_config",
        help="architecture file or built-in name (optional for a training state)",
    )
    p.add_argument(
        "--discriminator_config",
        help="architecture file or built-in name (optional for a training state)",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of the generated image")
    p.add_argument("--truncation", type=positive_float, help="truncate the latent to |z| <= T")
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="a class-conditional generator's class for the image, by name or index "
        "(required for it; a conditional discriminator's maps do not depend on the class)",
    )
    p.add_argument("--image", help="the real image for the discriminator")
    p.add_argument(
        "--query",
        type=query_point,
        action="append",
        help="x,y: a query position in image pixels (repeat for more); default a grid of queries",
    )
    p.add_argument(
        "--query_grid",
        type=positive_int,
        default=3,
        help="N: an N x N grid of evenly spaced queries when no --query is given",
    )
    p.add_argument(
        "--output_dir",
        required=True,
        help="one attention_<layer>.png per attention layer goes here",
    )
    p.add_argument("--save_maps", help="also save the raw (N, N) maps by layer name to this .pt")
    p.add_argument(
        "--no_ema",
        dest="prefer_ema",
        action="store_false",
        help="from a training state, use the raw generator, not its EMA",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def cmd_attention(args: argparse.Namespace) -> int:
    import torch

    from fagan.attention_maps import (
        capture_layers,
        default_queries,
        load_discriminator,
        load_image,
        query_cell,
        write_attention_figures,
    )
    from fagan.classes import describe_classes, generator_classes, resolve_one_class
    from fagan.distributed import resolve_device
    from fagan.generate import load_generator, make_latents

    device = resolve_device(args.device)
    labels = None
    if args.generator_file is not None:
        if args.image is not None or args.discriminator_config is not None:
            raise FaganError("--image and --discriminator_config go with --discriminator_file")
        model = load_generator(
            args.generator_file, args.generator_config, device=device, prefer_ema=args.prefer_ema
        )
        num_classes, names = generator_classes(model)
        label = resolve_one_class(
            args.classes,
            num_classes,
            names,
            required=True,
            source=args.generator_file,
            why="the maps of one image",
        )
        size = model.image_size
        inputs = make_latents(1, model.latent_size, args.seed, args.truncation).to(device)
        source = f"generated image (seed {args.seed}"
        if label is not None:
            labels = torch.tensor([label], device=device)
            source += f", class {describe_classes(num_classes, names, [label])}"
        source += ")"
    else:
        if args.image is None:
            raise FaganError("--discriminator_file needs --image, the real image to look at")
        if args.generator_config is not None or args.truncation is not None:
            raise FaganError("--generator_config and --truncation go with --generator_file")
        if args.classes is not None:
            raise FaganError(
                "--class goes with --generator_file (a discriminator's maps do not depend "
                "on the class)"
            )
        model = load_discriminator(
            args.discriminator_file, args.discriminator_config, device=device
        )
        if model.num_classes:  # any class: the maps are the same for all
            labels = torch.zeros(1, dtype=torch.long, device=device)
        size = model.image_size
        inputs = load_image(args.image, size).unsqueeze(0).to(device)
        source = f"image {args.image}"
    queries = args.query or default_queries(size, size, args.query_grid)
    for query in queries:
        query_cell(query, (size, size), (1, 1))  # outside the image: fail before any work
    layers, output = capture_layers(model, inputs, labels)
    image = output[0] if args.generator_file is not None else inputs[0]
    written = write_attention_figures(
        layers, image.cpu(), args.output_dir, queries, save_maps=args.save_maps
    )
    for path, layer in zip(written, layers.values(), strict=True):
        print(
            f"{layer.name}: {layer.kind}, {layer.grid[0]}x{layer.grid[1]} positions, "
            f"g = {layer.gamma:.4g} -> {path}"
        )
    print(
        f"{len(written)} attention layer(s) on the {source}, {len(queries)} queries"
        + (f"; maps saved to {args.save_maps}" if args.save_maps else "")
    )
    return 0


# --------------------------------------------------------------------------- explore
def port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


port_number.__name__ = "port"


def add_explore_arguments(p: argparse.ArgumentParser) -> None:
    _add_generator_source(p)
    p.add_argument(
        "--discriminator_file",
        type=existing_file,
        help="also show the critic's score and attention (GAN_DIS_*.pth or a training_state.pth)",
    )
    p.add_argument(
        "--discriminator_config",
        help="architecture file or built-in name (optional for a training state)",
    )
    p.add_argument(
        "--truncation",
        type=positive_float,
        help="start with latents truncated to |z| <= T (and export with it)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--port", type=port_number, default=7860, help="port to listen on (0: any free port)"
    )
    p.add_argument(
        "--export",
        metavar="PAGE.html",
        help="write one self-contained HTML page for --seeds and exit (no server)",
    )
    p.add_argument(
        "--seeds", help="comma-separated seeds precomputed for --export (default 0,1,2,3)"
    )
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="a class-conditional generator's class, by name or index: the class the page "
        "starts with; with --export, the classes embedded (repeat it or separate with "
        "commas; default every class)",
    )
    p.add_argument(
        "--no_ema",
        dest="prefer_ema",
        action="store_false",
        help="from a training state, use the raw generator, not its EMA",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def cmd_explore(args: argparse.Namespace) -> int:
    from fagan.attention_maps import load_discriminator
    from fagan.classes import describe_classes, generator_classes, resolve_classes
    from fagan.distributed import resolve_device
    from fagan.explore import Explorer, export_page, make_server
    from fagan.explore.params import TRUNCATION_RANGE, parse_seed_list
    from fagan.generate import load_generator

    if args.discriminator_config is not None and args.discriminator_file is None:
        raise FaganError("--discriminator_config goes with --discriminator_file")
    if args.export is None and args.seeds is not None:
        raise FaganError("--seeds goes with --export")
    if args.export is not None and Path(args.export).suffix.lower() not in (".html", ".htm"):
        raise FaganError(f"--export must end in .html, got {args.export}")
    seeds = parse_seed_list(args.seeds or "0,1,2,3")
    low, high = TRUNCATION_RANGE
    if args.truncation is not None and not low <= args.truncation <= high:
        raise FaganError(f"--truncation must be from {low:g} to {high:g}, got {args.truncation}")
    device = resolve_device(args.device)
    generator = load_generator(
        args.generator_file, args.generator_config, device=device, prefer_ema=args.prefer_ema
    )
    num_classes, names = generator_classes(generator)
    classes = resolve_classes(args.classes, num_classes, names, source=args.generator_file)
    if classes is not None and len(classes) > 1 and args.export is None:
        raise FaganError(
            "the page starts with one class (it offers them all): give one --class, or "
            "several with --export"
        )
    discriminator = None
    if args.discriminator_file is not None:
        discriminator = load_discriminator(
            args.discriminator_file, args.discriminator_config, device=device
        )
    explorer = Explorer(
        generator,
        discriminator,
        truncation=args.truncation,
        label=None if classes is None else classes[0],
    )
    if args.export is not None:
        path = export_page(explorer, seeds, args.export, classes=classes)
        embedded = (
            f", classes {describe_classes(num_classes, names, classes or range(num_classes))}"
            if num_classes
            else ""
        )
        print(
            f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, seeds "
            f"{','.join(map(str, seeds))}{embedded}): open it in any browser, no server needed"
        )
        return 0
    server = make_server(explorer, args.host, args.port)
    with server:
        print(f"fagan explore: serving on {server.url} (Ctrl-C stops)", flush=True)
        server.serve_forever()
    return 0


# --------------------------------------------------------------------------- prepare
def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        required=True,
        help="images folder (flat, nested, or one sub-folder per class) or a zip "
        "(fagan's, StyleGAN2-ADA's, or any zip of images)",
    )
    p.add_argument("--output", required=True, help="the dataset .zip to write")
    p.add_argument(
        "--resolution",
        type=POSITIVE_INT.argparse_type(),
        default=64,
        help="side of the square images written (default 64)",
    )
    p.add_argument(
        "--crop",
        choices=("center", "none"),
        default="center",
        help="center: resize the shorter side, keep the centre square (as training "
        "from a folder does); none: resize the whole image (stretching non-square)",
    )
    p.add_argument(
        "--labels",
        choices=("auto", "none"),
        default="auto",
        help="auto: class labels from class sub-folders or the zip's dataset.json; "
        "none: unlabelled",
    )
    p.add_argument(
        "--max_images", type=POSITIVE_INT.argparse_type(), help="write at most this many images"
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument(
        "--workers",
        type=POSITIVE_INT.argparse_type(),
        help="decoding processes (default: the usable CPU cores)",
    )
    p.add_argument(
        "--compress_level",
        type=int_range(0, 9).argparse_type(),
        default=0,
        help="PNG zlib level, 0 (StyleGAN2-ADA's; fastest to read) to 9",
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    from fagan.prepare import prepare_dataset

    prepare_dataset(
        args.source,
        args.output,
        args.resolution,
        crop=args.crop,
        labels=args.labels,
        max_images=args.max_images,
        overwrite=args.overwrite,
        workers=args.workers,
        compress_level=args.compress_level,
        log=print,
    )
    return 0


# --------------------------------------------------------------------------- main
COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "train": ("train a FAGAN (the original train.py's flags)", _declared(TrainOptions), cmd_train),
    "generate": ("write images from a trained generator", _declared(GenerateOptions), cmd_generate),
    "plot-losses": ("plot a loss.log", _declared(PlotLossesOptions), cmd_plot_losses),
    "make-gif": ("animate the sample grids of a run", _declared(MakeGifOptions), cmd_make_gif),
    "interpolate": (
        "animate a walk through the latents of chosen seeds",
        add_interpolate_arguments,
        cmd_interpolate,
    ),
    "evaluate": (
        "measure generated images against real ones (SWD, FID, KID, IS)",
        add_evaluate_arguments,
        cmd_evaluate,
    ),
    "attention": (
        "draw where each attention layer looks, for chosen query positions",
        add_attention_arguments,
        cmd_attention,
    ),
    "prepare": (
        "write a dataset zip (StyleGAN2-ADA's format) from a folder or zip of images",
        add_prepare_arguments,
        cmd_prepare,
    ),
    "explore": (
        "a local page: images, and where each attention layer looks under the pointer",
        add_explore_arguments,
        cmd_explore,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fagan", description="Full Attention GANs: train, sample, measure, inspect."
    )
    parser.add_argument("--version", action="version", version=f"fagan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (help_text, add_arguments, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(func=func, parser=p)
    return parser


def run_command(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Runs one subcommand with its own parser (used by the root train.py)."""
    help_text, add_arguments, func = COMMANDS[name]
    parser = _Parser(prog=prog or f"fagan {name}", description=help_text)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.command = name
    return _guarded(func, args, parser.prog)


def _guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    def one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
        return f"{prog}: warning: {' '.join(str(message).split())}\n"

    previous_format = warnings.formatwarning
    warnings.formatwarning = one_line_warning
    try:
        return func(args)
    except FaganError as error:
        return _fail(prog, str(error))
    except OSError as error:  # a path that is a file, a full disk, no permission
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        return _fail(prog, f"{error.strerror or error}{where}")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            f"{prog}: error: out of memory (try a smaller --batch_size or --num_samples)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    except Exception as error:  # a bug or a library's failure: one line, the rest in a file
        return _internal_error(prog, error)
    finally:
        warnings.formatwarning = previous_format


def _internal_error(prog: str, error: Exception) -> int:
    """Reports an unexpected exception in one line; its traceback goes to a crash log."""
    name = type(error).__name__
    message = " ".join(str(error).split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    trace = "".join(traceback.format_exception(error))
    path = Path(tempfile.gettempdir()) / f"fagan-crash-{os.getpid()}-{int(time.time())}.log"
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"{prog} (fagan {__version__}): {' '.join(sys.argv)}\n{trace}")
        details = f"details in {path}"
    except OSError:
        details = "the traceback could not be written to a file"
    print(f"{prog}: error: internal error: {name}: {message}; {details}", file=sys.stderr)
    return EXIT_INTERNAL


def _fail(prog: str, message: str) -> int:
    message = " ".join(message.split())  # one line, whatever the message held
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fagan`` console script and ``python -m fagan``."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand, as `fagan train: error: ...`
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return _guarded(args.func, args, f"fagan {args.command}")
