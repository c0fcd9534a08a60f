"""Training-iteration benchmark: attn-gan-pytorch 1.2.3 (the original) against fagan.

One iteration is one discriminator step and one generator step on a batch of real
images, with the relativistic average hinge loss and Adam(betas=(0, 0.9)), lrs
1e-4 (G) and 4e-4 (D), as the original's training script. Both sides see the same
real 64x64 RGB images (scikit-image's LFW faces, rows 0-99, or ``--images_dir``) in
the same order and the same architecture (the original's fagan_1 ``.conf`` files for
the original, ``configs/fagan64`` — the same layers — for ours).

* original: its own ``GAN.optimize_discriminator`` / ``optimize_generator`` with its
  ``Losses.RelativisticAverageHingeGAN``;
* ours: the real :func:`fagan.train.d_step` / :func:`fagan.train.g_step` with
  :class:`fagan.train.Precision`, as ``fagan train`` runs them (no augmentation).

Every configuration runs in its own subprocess (so peak RSS is its own): warm-up
iterations, then timed ones. Reported per configuration: seconds per iteration (best
and median of the timed iterations), images/s from the best, CPU seconds per
iteration (less sensitive to other processes on the machine), peak RSS (CUDA: peak
allocated), and the ratios to the original. Writes
``benchmarks/results/train_<host>_<date>.json`` and the ``bench_train`` section of
``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/bench_train.py                     # original, fp32, bf16
    python benchmarks/bench_train.py --iters 5 --warmup 2 --variants original,fp32,bf16,fp32-cl
    python benchmarks/bench_train.py --device cuda --variants original,fp32,bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

ROOT = common.BENCH_DIR.parent
ORIGINAL_CONFIGS = ROOT.parent / "shared" / "reference" / "fagan_configs" / "fagan_1"
OUR_CONFIG = "fagan64"
LATENT = 128
IMAGE_SIZE = 64

#: variant name -> (implementation, precision, channels_last, compile); channels_last
#: None is ``fagan train``'s default (channels-last with bf16/fp16, contiguous with fp32)
VARIANTS: dict[str, tuple[str, str, bool | None, bool]] = {
    "original": ("original", "fp32", False, False),
    "fp32": ("ours", "fp32", None, False),
    "bf16": ("ours", "bf16", None, False),
    "fp16": ("ours", "fp16", None, False),
    "fp32-cl": ("ours", "fp32", True, False),
    "bf16-nocl": ("ours", "bf16", False, False),
    "fp32-compile": ("ours", "fp32", None, True),
    "bf16-compile": ("ours", "bf16", None, True),
}


# --------------------------------------------------------------------------- worker side
def real_images(images_dir: str | None) -> Any:
    """(M, 3, 64, 64) float32 in [-1, 1]: the LFW faces 0-99 or a folder's images.

    Made once in the parent and handed to every worker as a file, so that no worker
    imports fagan's data module (and its dependencies) only for this.
    """
    import torch

    from fagan.data import LFWFaces, open_dataset

    if images_dir is None:
        return LFWFaces(IMAGE_SIZE).images
    dataset = open_dataset(images_dir, IMAGE_SIZE)
    return torch.stack([dataset[i] for i in range(len(dataset))])


def _batches(images: Any, batch_size: int, count: int) -> list[Any]:
    """``count`` batches taken cyclically in index order (the same for every worker)."""
    import torch

    m = images.shape[0]
    return [
        images[torch.arange(i * batch_size, (i + 1) * batch_size) % m].contiguous()
        for i in range(count)
    ]


def _original_step_fn(device: Any, batch_size: int, conf_dir: Path) -> Any:
    """An iteration of attn-gan-pytorch's own GAN on its fagan_1 configs."""
    import torch
    import yaml
    from attn_gan_pytorch import Losses, Networks
    from attn_gan_pytorch.Utils import get_layer
    from easydict import EasyDict

    def layers(conf: Path) -> list[torch.nn.Module]:
        # The original's get_config calls yaml.load without a Loader (PyYAML 6 rejects
        # it); read the same EasyDict with the safe loader and use its own get_layer.
        with open(conf) as handle:
            data = EasyDict(yaml.safe_load(handle))
        return [get_layer(layer) for layer in data.architecture]

    gen = Networks.Generator(layers(conf_dir / "gen.conf"), LATENT)
    dis = Networks.Discriminator(layers(conf_dir / "dis.conf"))
    gan = Networks.GAN(gen, dis, device)
    gan.generator.train()
    gan.discriminator.train()
    g_opt = torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.0, 0.9))
    d_opt = torch.optim.Adam(dis.parameters(), lr=4e-4, betas=(0.0, 0.9))
    loss = Losses.RelativisticAverageHingeGAN(device, dis)

    def step(real: torch.Tensor, rng: torch.Generator) -> tuple[float, float]:
        # as GAN.train: noise (B, latent, 1, 1), a fresh draw for each step
        noise = torch.randn(batch_size, LATENT, 1, 1, generator=rng).to(device)
        d_loss = gan.optimize_discriminator(d_opt, noise, real, loss)
        noise = torch.randn(batch_size, LATENT, 1, 1, generator=rng).to(device)
        g_loss = gan.optimize_generator(g_opt, noise, real, loss)
        return d_loss, g_loss

    return step


def _our_step_fn(
    device: Any, precision: str, channels_last: bool | None, compile_: bool, config: str
) -> Any:
    """An iteration of fagan's d_step + g_step, set up as fagan.train does."""
    import torch

    from fagan.config import load_config, resolve_config_path
    from fagan.losses import get_loss
    from fagan.networks import Discriminator, Generator
    from fagan.train import Precision, d_step, g_step, make_adam, uses_channels_last

    G = Generator(load_config(resolve_config_path(config, "gen")), LATENT)
    D = Discriminator(load_config(resolve_config_path(config, "dis")), IMAGE_SIZE)
    memory_format = (
        torch.channels_last
        if uses_channels_last(precision, channels_last)
        else torch.contiguous_format
    )
    G.to(device, memory_format=memory_format).train()
    D.to(device, memory_format=memory_format).train()
    g_opt = make_adam(G, 1e-4)
    d_opt = make_adam(D, 4e-4)
    prec = Precision.create(precision, device)
    loss = get_loss("relativistic-hinge")
    G_train: torch.nn.Module = torch.compile(G) if compile_ else G
    D_train: torch.nn.Module = torch.compile(D) if compile_ else D
    aug_rng = torch.Generator(device=device).manual_seed(1)

    def no_augment(x: torch.Tensor) -> torch.Tensor:
        return x

    def step(real: torch.Tensor, rng: torch.Generator) -> tuple[float, float]:
        real = real.contiguous(memory_format=memory_format)
        z = torch.randn(real.shape[0], LATENT, generator=rng).to(device)
        d_loss = d_step(G_train, D_train, real, z, loss, d_opt, prec, no_augment, aug_rng)
        z = torch.randn(real.shape[0], LATENT, generator=rng).to(device)
        g_loss = g_step(G_train, D_train, real, z, loss, g_opt, prec, no_augment)
        return d_loss, g_loss

    return step


def worker(args: argparse.Namespace) -> None:
    """Measures one variant in this process and emits its result."""
    import torch

    impl, precision, channels_last, compile_ = VARIANTS[args.worker]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if impl == "original":
        from attn_gan_pytorch import Losses, Networks, Utils  # noqa: F401

        resolved_cl = False
    else:
        from fagan.train import uses_channels_last

        resolved_cl = uses_channels_last(precision, channels_last)
    rss_imports = common.current_rss_mb()
    images = torch.load(args.images_file, weights_only=True)
    batches = [b.to(device) for b in _batches(images, args.batch_size, args.warmup + args.iters)]
    if impl == "original":
        step = _original_step_fn(device, args.batch_size, Path(args.original_configs))
    else:
        step = _our_step_fn(device, precision, channels_last, compile_, args.config)
    rng = torch.Generator().manual_seed(args.seed)
    rss_before = common.current_rss_mb()

    times, cpu_times, losses = [], [], []
    warmup_s = 0.0
    for i, real in enumerate(batches):
        sync()
        if i == args.warmup and cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0, c0 = time.perf_counter(), time.process_time()
        d_loss, g_loss = step(real, rng)
        sync()
        t1, c1 = time.perf_counter(), time.process_time()
        if i < args.warmup:
            warmup_s += t1 - t0
        else:
            times.append(t1 - t0)
            cpu_times.append(c1 - c0)
            losses.append((d_loss, g_loss))
    best, median = min(times), statistics.median(times)
    result = {
        "variant": args.worker,
        "implementation": impl,
        "precision": precision,
        "channels_last": resolved_cl,
        "compile": compile_,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "iters": args.iters,
        "times_s": times,
        "cpu_times_s": cpu_times,
        "warmup_s": warmup_s,
        "best_s": best,
        "median_s": median,
        "images_per_s": args.batch_size / best,
        "images_per_s_median": args.batch_size / median,
        "cpu_s_per_iter": min(cpu_times),
        "peak_rss_mb": common.peak_rss_mb(),
        "rss_after_imports_mb": rss_imports,
        "rss_before_steps_mb": rss_before,
        "peak_above_imports_mb": common.peak_rss_mb() - rss_imports,
        "losses": losses,
        "threads": torch.get_num_threads(),
        "load_after": common.load_average(),
    }
    if cuda:
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    common.emit(result)


# --------------------------------------------------------------------------- parent side
def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def report(results: list[dict[str, Any]], device: str) -> tuple[list[str], list[list[str]]]:
    """The table: one row per run, ratios against the original (its fastest run)."""
    # listed more than once, the original's fastest run is the one compared against
    originals = [r for r in results if r.get("variant") == "original" and "error" not in r]
    base = max(originals, key=lambda r: r["images_per_s"], default=None)
    mem_key = "peak_cuda_mb" if device.startswith("cuda") else "peak_rss_mb"
    header = [
        "variant",
        "s/iter best",
        "s/iter median",
        "CPU s/iter",
        "warm-up s",
        "images/s",
        "speed vs original",
        "peak mem MB",
        "mem vs original",
    ]
    if not device.startswith("cuda"):
        header += ["RSS after imports MB", "peak - imports MB", "vs original"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["variant"], "error", *["-"] * (len(header) - 2)])
            continue
        speed = None if base is None else r["images_per_s"] / base["images_per_s"]
        mem = None if base is None else r[mem_key] / base[mem_key]
        rows.append(
            [
                r["variant"],
                f"{r['best_s']:.3f}",
                f"{r['median_s']:.3f}",
                f"{r['cpu_s_per_iter']:.2f}",
                f"{r['warmup_s']:.1f}",
                f"{r['images_per_s']:.1f}",
                _fmt_ratio(speed),
                f"{r[mem_key]:.0f}",
                _fmt_ratio(mem),
            ]
        )
        if not device.startswith("cuda"):
            above = (
                None
                if base is None
                else (r["peak_above_imports_mb"] / base["peak_above_imports_mb"])
            )
            rows[-1] += [
                f"{r['rss_after_imports_mb']:.0f}",
                f"{r['peak_above_imports_mb']:.0f}",
                _fmt_ratio(above),
            ]
    return header, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        default="original,fp32,bf16",
        help=f"comma-separated, from: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--images_dir",
        default=None,
        help="a folder of images (default: LFW faces 0-99 from scikit-image)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--config",
        default=OUR_CONFIG,
        help="our architecture: a built-in name or a folder/.conf pair",
    )
    parser.add_argument(
        "--original_configs",
        default=str(ORIGINAL_CONFIGS),
        help="folder with the original's gen.conf and dis.conf",
    )
    parser.add_argument(
        "--tuned_malloc",
        action="store_true",
        help="run every worker with glibc's MALLOC_MMAP_THRESHOLD_ and "
        "MALLOC_TRIM_THRESHOLD_ at 128 KiB (returns freed memory at once)",
    )
    parser.add_argument(
        "--no_write", action="store_true", help="print only: no results JSON, no RESULTS.md update"
    )
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--images_file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if args.worker:
        worker(args)
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if "original" in variants and not (Path(args.original_configs) / "gen.conf").is_file():
        parser.error(f"original configs not found in {args.original_configs}")

    passthrough = [
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--batch_size",
        str(args.batch_size),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--config",
        args.config,
        "--original_configs",
        args.original_configs,
    ]
    import torch

    started = common.now()
    load_before = common.load_average()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        images_file = str(Path(tmp) / "images.pt")
        torch.save(real_images(args.images_dir), images_file)
        passthrough += ["--images_file", images_file]
        for variant in variants:
            print(f"[bench_train] {variant} ...", file=sys.stderr, flush=True)
            result = common.run_worker(
                [__file__, "--worker", variant, *passthrough],
                extra_env=common.TUNED_MALLOC_ENV if args.tuned_malloc else None,
            )
            result.setdefault("variant", variant)
            results.append(result)
            if "error" in result:
                print(
                    f"[bench_train] {variant} failed:\n  " + "\n  ".join(result["stderr_tail"]),
                    file=sys.stderr,
                )
    load_after = common.load_average()

    header, rows = report(results, args.device)
    machine = common.machine_info(args.device)
    machine["torch_threads"] = next(
        (r["threads"] for r in results if "threads" in r), torch.get_num_threads()
    )
    print(common.text_table(header, rows))
    print(f"load average before {load_before}, after {load_after}")
    if args.no_write:
        return 0

    record = {
        "benchmark": "train",
        "date": started,
        "command": common.command_line(),
        "machine": machine,
        "load_before": load_before,
        "load_after": load_after,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "no_write")},
        "results": results,
    }
    path = common.result_path("train")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    mem_label = "peak CUDA memory allocated" if args.device.startswith("cuda") else "peak RSS"
    body = "\n".join(
        [
            "## Training iteration (bench_train.py)",
            "",
            f"- date: {started}",
            f"- command: `{record['command']}`",
            f"- machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
            f"({', '.join(machine['cpu_flags'])}), torch {machine['torch']}, "
            f"{machine['torch_threads']} threads, device {args.device}"
            + (f" ({machine['gpu']})" if "gpu" in machine else ""),
            f"- load average (1/5/15 min) before {load_before}, after {load_after}",
            f"- one iteration = one D step + one G step, batch {args.batch_size}, 64x64, "
            "relativistic hinge, Adam(0, 0.9), lrs 1e-4/4e-4; "
            f"{args.warmup} warm-up + {args.iters} timed iterations per run, each run in its "
            "own process; images/s and ratios from each run's best iteration, against the "
            "original's fastest run where it ran more than once; "
            f"memory = {mem_label} of the whole process"
            + (
                "; glibc malloc tuned for every variant (MALLOC_MMAP_THRESHOLD_ = "
                "MALLOC_TRIM_THRESHOLD_ = 131072)"
                if args.tuned_malloc
                else ""
            ),
            "",
            common.markdown_table(header, rows),
            "",
            f"Raw: `{path.relative_to(ROOT)}`",
        ]
    )
    common.update_results_md("bench_train", body)
    print(f"wrote {path} and {common.RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
