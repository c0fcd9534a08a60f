"""The ``fagan`` command: thin subcommands that parse, validate, call one function.

A bad input (flag, file, config) ends with one line ``fagan <command>: error: ...``
on stderr and exit status 2; a traceback reaching a user for a bad input is a bug.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from fagan import __version__
from fagan.errors import FaganError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- argument types
def _number(kind: Callable[[str], Any], test: Callable[[Any], bool], what: str):
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
any_int = _number(int, lambda v: True, "a whole number")
positive_float = _number(float, lambda v: v > 0, "a positive number")
percentage = _number(float, lambda v: 0 < v <= 100, "a percentage in (0, 100]")
unit_interval = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"file not found: {text}")
    return text


def existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"folder not found: {text}")
    return text


# --------------------------------------------------------------------------- train
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The original train.py's flags (same names and meaning) and the new ones."""
    o = p.add_argument_group("the original train.py's flags")
    o.add_argument("--generator_config", help="generator architecture: a .conf/.yaml file or a "
                   "built-in name (fagan64, sagan64, small32); default fagan64, or small32 for "
                   "the embedded demo")
    o.add_argument("--discriminator_config", help="discriminator architecture, likewise")
    o.add_argument("--generator_file", type=existing_file,
                   help="initial generator weights (ours or attn-gan-pytorch's GAN_GEN_*.pth)")
    o.add_argument("--discriminator_file", type=existing_file,
                   help="initial discriminator weights")
    o.add_argument("--images_dir", help="training images: a folder (flat, nested, or one "
                   "sub-folder per class) or a dataset zip from fagan prepare; default "
                   "data/celeba if present, else the embedded demo faces")
    o.add_argument("--sample_dir", default="samples/fagan_1", help="sample grids go here")
    o.add_argument("--model_dir", default="models/fagan_1",
                   help="weights, training state, logs and plots go here")
    o.add_argument("--loss_function", default="relativistic-hinge",
                   help="hinge, relativistic-hinge, standard, lsgan, wgan-gp, "
                   "relativistic-standard, relativistic-lsgan")
    o.add_argument("--latent_size", type=positive_int,
                   help="latent size (default: the generator config's input channels, 128)")
    o.add_argument("--batch_size", type=positive_int, default=32)
    o.add_argument("--start", type=positive_int, default=1, help="number of the first epoch")
    o.add_argument("--num_epochs", type=positive_int, default=12, help="number of the last epoch")
    o.add_argument("--feedback_factor", type=positive_int, default=62,
                   help="loss logs and sample grids per epoch")
    o.add_argument("--checkpoint_factor", type=positive_int, default=1,
                   help="save weights every N epochs")
    o.add_argument("--g_lr", type=positive_float, default=0.0001)
    o.add_argument("--d_lr", type=positive_float, default=0.0004)
    o.add_argument("--data_percentage", type=percentage, default=100.0,
                   help="share of the data used per epoch")
    o.add_argument("--num_workers", type=non_negative_int, default=3,
                   help="data loading processes")
    n = p.add_argument_group("beyond the original")
    n.add_argument("--seed", type=any_int, default=0)
    n.add_argument("--resume", action="store_true",
                   help="continue exactly from the training state in --model_dir")
    n.add_argument("--ema_decay", type=unit_interval, default=0.999,
                   help="decay of the generator's moving average used for samples (0: off)")
    n.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="bf16 autocast (CPU and GPU) or fp16 with a gradient scaler (GPU)")
    n.add_argument("--image_size", type=positive_int,
                   help="training image size (must match the generator's output)")
    n.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    n.add_argument("--n_critic", type=positive_int, default=1,
                   help="discriminator steps per generator step")
    n.add_argument("--augment", help="DiffAugment policy such as color,translation,cutout, or "
                   "none (default: that policy for the embedded demo, none for folders)")
    n.add_argument("--max_steps", type=positive_int,
                   help="stop after this many steps in all, saving a resumable state")
    n.add_argument("--time_limit", type=positive_float,
                   help="stop after this many seconds, saving a resumable state")
    n.add_argument("--num_samples", type=positive_int, default=64,
                   help="images in each sample grid")
    n.add_argument("--no_tensorboard", dest="tensorboard", action="store_false",
                   help="do not write TensorBoard events")
    cl = n.add_mutually_exclusive_group()
    cl.add_argument("--channels_last", dest="channels_last", action="store_true", default=None,
                    help="channels-last memory format (default: on with --precision bf16/fp16)")
    cl.add_argument("--no_channels_last", dest="channels_last", action="store_false",
                    help="contiguous (NCHW) memory format, also with bf16/fp16")
    n.add_argument("--compile", action="store_true", help="torch.compile both networks")
    n.add_argument("--eval_every", type=positive_int,
                   help="every N steps, measure the EMA generator against real images "
                   "(logged to stats.jsonl and TensorBoard)")
    n.add_argument("--eval_metrics", default="swd",
                   help="metrics for --eval_every: swd, fid, kid, is (fid/kid/is need "
                   "--inception_weights)")
    n.add_argument("--eval_num_samples", type=positive_int, default=1000,
                   help="real (and generated) images per evaluation")
    n.add_argument("--inception_weights", type=existing_file,
                   help="InceptionV3 weights file for FID/KID/IS (never downloaded)")


def cmd_train(args: argparse.Namespace) -> int:
    from fagan.train import TrainOptions, train

    values = {k: v for k, v in vars(args).items() if k not in ("command", "func", "parser")}
    if values["images_dir"] is None and Path("data/celeba").is_dir():
        values["images_dir"] = "data/celeba"  # the original's default
    train(TrainOptions(**values))
    return 0


# --------------------------------------------------------------------------- generate
def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generator_file", type=existing_file, required=True,
                   help="GAN_GEN_*.pth (ours or attn-gan-pytorch's) or a training_state.pth")
    p.add_argument("--generator_config",
                   help="architecture file or built-in name (optional for a training state)")
    p.add_argument("--output_dir", required=True, help="where the PNGs go")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--latents", type=existing_file,
                     help="N x latent_size float tensor saved with torch.save")
    src.add_argument("--num_samples", type=positive_int, help="number of images (default 64)")
    p.add_argument("--seed", type=any_int, default=0, help="seed of the latents")
    p.add_argument("--latent_size", type=positive_int,
                   help="latent size (default: from the config, 128 for the original's)")
    p.add_argument("--truncation", type=positive_float,
                   help="truncate latents to |z| <= T (truncation trick)")
    p.add_argument("--batch_size", type=positive_int, default=64)
    p.add_argument("--grid", action="store_true", help="one grid.png instead of one file each")
    p.add_argument("--no_ema", dest="prefer_ema", action="store_false",
                   help="from a training state, use the raw generator, not its EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def cmd_generate(args: argparse.Namespace) -> int:
    from fagan.distributed import resolve_device
    from fagan.generate import load_generator, make_latents, read_latents, write_images

    device = resolve_device(args.device)
    generator = load_generator(args.generator_file, args.generator_config,
                               latent_size=args.latent_size, device=device,
                               prefer_ema=args.prefer_ema)
    if args.latents is not None:
        if args.truncation is not None:
            raise FaganError("--truncation applies to sampled latents, not to a --latents file")
        latents = read_latents(args.latents, generator.latent_size)
    else:
        latents = make_latents(args.num_samples or 64, generator.latent_size, args.seed,
                               args.truncation)
    written = write_images(generator, latents, args.output_dir, batch_size=args.batch_size,
                           grid=args.grid)
    print(f"wrote {len(latents)} image(s) to {args.output_dir}"
          + (f" as {written[0].name}" if args.grid else ""))
    return 0


# --------------------------------------------------------------------------- plots, gif
def add_plot_losses_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss_file", type=existing_file, required=True, help="a loss.log")
    p.add_argument("--plot_file", required=True, help="the image to write, such as loss.png")


def cmd_plot_losses(args: argparse.Namespace) -> int:
    from fagan.plots import plot_losses

    print(f"wrote {plot_losses(args.loss_file, args.plot_file)}")
    return 0


def add_make_gif_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample_dir", type=existing_dir, required=True,
                   help="folder of gen_<epoch>_<batch>.png grids")
    p.add_argument("--output", required=True, help="the .gif (or .mp4) to write")
    p.add_argument("--fps", type=positive_float, default=4.0)


def cmd_make_gif(args: argparse.Namespace) -> int:
    from fagan.sample import make_progress_gif

    print(f"wrote {make_progress_gif(args.sample_dir, args.output, fps=args.fps)}")
    return 0


# --------------------------------------------------------------------------- interpolate
def add_interpolate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generator_file", type=existing_file, required=True,
                   help="GAN_GEN_*.pth (ours or attn-gan-pytorch's) or a training_state.pth")
    p.add_argument("--generator_config",
                   help="architecture file or built-in name (optional for a training state)")
    p.add_argument("--seeds", required=True,
                   help="two or more comma-separated seeds whose latents are the key frames")
    p.add_argument("--steps", type=positive_int, default=16,
                   help="frames from one seed to the next")
    p.add_argument("--loop", action="store_true",
                   help="return to the first seed at the end (a seamless loop)")
    p.add_argument("--truncation", type=positive_float,
                   help="truncate the key latents to |z| <= T (truncation trick)")
    p.add_argument("--output", required=True,
                   help="the .gif to write (an .mp4 goes beside it where imageio-ffmpeg works)")
    p.add_argument("--fps", type=positive_float, default=16.0)
    p.add_argument("--no_mp4", dest="mp4", action="store_false", help="write the GIF only")
    p.add_argument("--strip", help="also write a .png of the key frames side by side")
    p.add_argument("--strip_frames", type=positive_int,
                   help="show this many evenly spaced frames in the strip instead of the keys")
    p.add_argument("--batch_size", type=positive_int, default=64)
    p.add_argument("--no_ema", dest="prefer_ema", action="store_false",
                   help="from a training state, use the raw generator, not its EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def cmd_interpolate(args: argparse.Namespace) -> int:
    from fagan.distributed import resolve_device
    from fagan.generate import load_generator
    from fagan.interpolate import interpolate, parse_seeds, write_interpolation

    seeds = parse_seeds(args.seeds)
    if Path(args.output).suffix.lower() not in (".gif", ".mp4"):
        raise FaganError(f"--output must end in .gif or .mp4, got {args.output}")
    if args.strip is not None and Path(args.strip).suffix.lower() != ".png":
        raise FaganError(f"--strip must end in .png, got {args.strip}")
    generator = load_generator(args.generator_file, args.generator_config,
                               device=resolve_device(args.device), prefer_ema=args.prefer_ema)
    walk = interpolate(generator, seeds, steps=args.steps, loop=args.loop,
                       truncation=args.truncation, batch_size=args.batch_size)
    files = write_interpolation(walk, args.output, fps=args.fps, mp4=args.mp4,
                                strip=args.strip, strip_frames=args.strip_frames)
    written = [str(p) for p in (files.gif, files.mp4, files.strip) if p is not None]
    print(f"wrote {files.num_frames} frames through seeds {','.join(map(str, seeds))}: "
          + ", ".join(written))
    return 0


# --------------------------------------------------------------------------- evaluate
def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real_dir", type=existing_dir, required=True, help="folder of real images")
    fake = p.add_mutually_exclusive_group(required=True)
    fake.add_argument("--fake_dir", type=existing_dir, help="folder of generated images")
    fake.add_argument("--generator_file", type=existing_file,
                      help="GAN_GEN_*.pth or a training_state.pth (its EMA generator)")
    p.add_argument("--generator_config",
                   help="architecture file or built-in name (optional for a training state)")
    p.add_argument("--metrics", default="swd",
                   help="comma-separated: swd, fid, kid, is (fid/kid/is need the Inception "
                   "weights file)")
    p.add_argument("--num_samples", type=positive_int,
                   help="images to generate (default: as many as real images, at most 10000)")
    p.add_argument("--seed", type=any_int, default=0, help="seed of the generated latents")
    p.add_argument("--truncation", type=positive_float,
                   help="truncate the generated latents to |z| <= T")
    p.add_argument("--inception_weights",
                   help="the InceptionV3 weights file weights-inception-2015-12-05-6726825d.pth "
                   "(default: $FAGAN_INCEPTION_WEIGHTS, then the torch hub cache)")
    p.add_argument("--image_size", type=positive_int,
                   help="compare at S x S (default: the generator's size; 64 for two folders)")
    p.add_argument("--output", help="write the results here as JSON")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch_size", type=positive_int, default=64,
                   help="images per generator and Inception forward pass")
    p.add_argument("--cache_dir", help="cache of real-image Inception features "
                   "(default ~/.cache/fagan/stats)")
    p.add_argument("--no_floor", dest="swd_floor", action="store_false",
                   help="skip the real-vs-real SWD floor")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from fagan.distributed import resolve_device
    from fagan.evaluate import format_table, run_evaluation

    if args.generator_config is not None and args.generator_file is None:
        raise FaganError("--generator_config goes with --generator_file")
    results = run_evaluation(
        args.real_dir, fake_dir=args.fake_dir, generator_file=args.generator_file,
        generator_config=args.generator_config, metrics=args.metrics,
        num_samples=args.num_samples, seed=args.seed, truncation=args.truncation,
        image_size=args.image_size, inception_weights=args.inception_weights,
        device=resolve_device(args.device), batch_size=args.batch_size,
        cache_dir=args.cache_dir, swd_floor=args.swd_floor,
        log=lambda message: print(message, file=sys.stderr))
    meta = results["meta"]
    print(f"{meta['n_real']} real images ({meta['real_dir']}) vs {meta['n_fake']} "
          f"generated ({meta['fake_source']}) at {meta['image_size']}x{meta['image_size']}")
    print(format_table(results))
    if args.output is not None:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {output}")
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
    net.add_argument("--generator_file", type=existing_file,
                     help="show the generator's layers on an image it generates")
    net.add_argument("--discriminator_file", type=existing_file,
                     help="show the discriminator's layers on a real image (--image)")
    p.add_argument("--generator_config",
                   help="architecture file or built-in name (optional for a training state)")
    p.add_argument("--discriminator_config",
                   help="architecture file or built-in name (optional for a training state)")
    p.add_argument("--seed", type=any_int, default=0, help="seed of the generated image")
    p.add_argument("--truncation", type=positive_float,
                   help="truncate the latent to |z| <= T")
    p.add_argument("--image", help="the real image for the discriminator")
    p.add_argument("--query", type=query_point, action="append",
                   help="x,y: a query position in image pixels (repeat for more); default "
                   "a grid of queries")
    p.add_argument("--query_grid", type=positive_int, default=3,
                   help="N: an N x N grid of evenly spaced queries when no --query is given")
    p.add_argument("--output_dir", required=True,
                   help="one attention_<layer>.png per attention layer goes here")
    p.add_argument("--save_maps", help="also save the raw (N, N) maps by layer name to this .pt")
    p.add_argument("--no_ema", dest="prefer_ema", action="store_false",
                   help="from a training state, use the raw generator, not its EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def cmd_attention(args: argparse.Namespace) -> int:
    from fagan.attention_maps import (
        capture_layers,
        default_queries,
        load_discriminator,
        load_image,
        query_cell,
        write_attention_figures,
    )
    from fagan.distributed import resolve_device
    from fagan.generate import load_generator, make_latents

    device = resolve_device(args.device)
    if args.generator_file is not None:
        if args.image is not None or args.discriminator_config is not None:
            raise FaganError("--image and --discriminator_config go with --discriminator_file")
        model = load_generator(args.generator_file, args.generator_config, device=device,
                               prefer_ema=args.prefer_ema)
        size = model.image_size
        inputs = make_latents(1, model.latent_size, args.seed, args.truncation).to(device)
        source = f"generated image (seed {args.seed})"
    else:
        if args.image is None:
            raise FaganError("--discriminator_file needs --image, the real image to look at")
        if args.generator_config is not None or args.truncation is not None:
            raise FaganError("--generator_config and --truncation go with --generator_file")
        model = load_discriminator(args.discriminator_file, args.discriminator_config,
                                   device=device)
        size = model.image_size
        inputs = load_image(args.image, size).unsqueeze(0).to(device)
        source = f"image {args.image}"
    queries = args.query or default_queries(size, size, args.query_grid)
    for query in queries:
        query_cell(query, (size, size), (1, 1))  # outside the image: fail before any work
    layers, output = capture_layers(model, inputs)
    image = output[0] if args.generator_file is not None else inputs[0]
    written = write_attention_figures(layers, image.cpu(), args.output_dir, queries,
                                      save_maps=args.save_maps)
    for path, layer in zip(written, layers.values(), strict=True):
        print(f"{layer.name}: {layer.kind}, {layer.grid[0]}x{layer.grid[1]} positions, "
              f"g = {layer.gamma:.4g} -> {path}")
    print(f"{len(written)} attention layer(s) on the {source}, {len(queries)} queries"
          + (f"; maps saved to {args.save_maps}" if args.save_maps else ""))
    return 0


# --------------------------------------------------------------------------- prepare
def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="images folder (flat, nested, or one sub-folder per class) or a zip "
                   "(fagan's, StyleGAN2-ADA's, or any zip of images)")
    p.add_argument("--output", required=True, help="the dataset .zip to write")
    p.add_argument("--resolution", type=positive_int, default=64,
                   help="side of the square images written (default 64)")
    p.add_argument("--crop", choices=("center", "none"), default="center",
                   help="center: resize the shorter side, keep the centre square (as training "
                   "from a folder does); none: resize the whole image (stretching non-square)")
    p.add_argument("--labels", choices=("auto", "none"), default="auto",
                   help="auto: class labels from class sub-folders or the zip's dataset.json; "
                   "none: unlabelled")
    p.add_argument("--max_images", type=positive_int, help="write at most this many images")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--workers", type=positive_int,
                   help="decoding processes (default: the usable CPU cores)")
    p.add_argument("--compress_level", type=_number(int, lambda v: 0 <= v <= 9, "0-9"),
                   default=0, help="PNG zlib level, 0 (StyleGAN2-ADA's; fastest to read) to 9")


def cmd_prepare(args: argparse.Namespace) -> int:
    from fagan.prepare import prepare_dataset

    prepare_dataset(args.source, args.output, args.resolution, crop=args.crop,
                    labels=args.labels, max_images=args.max_images, overwrite=args.overwrite,
                    workers=args.workers, compress_level=args.compress_level, log=print)
    return 0


# --------------------------------------------------------------------------- main
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "train": ("train a FAGAN (the original train.py's flags)", add_train_arguments, cmd_train),
    "generate": ("write images from a trained generator", add_generate_arguments, cmd_generate),
    "plot-losses": ("plot a loss.log", add_plot_losses_arguments, cmd_plot_losses),
    "make-gif": ("animate the sample grids of a run", add_make_gif_arguments, cmd_make_gif),
    "interpolate": ("animate a walk through the latents of chosen seeds",
                    add_interpolate_arguments, cmd_interpolate),
    "evaluate": ("measure generated images against real ones (SWD, FID, KID, IS)",
                 add_evaluate_arguments, cmd_evaluate),
    "attention": ("draw where each attention layer looks, for chosen query positions",
                  add_attention_arguments, cmd_attention),
    "prepare": ("write a dataset zip (StyleGAN2-ADA's format) from a folder or zip of images",
                add_prepare_arguments, cmd_prepare),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fagan", description="Full Attention GANs: train, sample, measure, "
                     "inspect.")
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


def _guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace,
             prog: str) -> int:
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
    finally:
        warnings.formatwarning = previous_format


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
