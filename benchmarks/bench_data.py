"""Data-pipeline benchmark: images/s delivered to the training loop, and CPU time per image.

What the training loop receives is a float32 batch ``(32, 3, 64, 64)`` in ``[-1, 1]`` on
the training device (``--device``). Three ways to get there, each measured in its own
subprocess over whole epochs of a :class:`fagan.data.ResumableSampler`:

* ``folder-per-file``: the per-file path (each image decoded, resized and scaled on every
  access by :class:`fagan.data.ImageFolderDataset` in ``--loader_workers`` data-loader
  workers, 3 being ``fagan train``'s default), from a folder of JPEGs;
* ``zip-stream``: the dataset zip written by ``fagan prepare``, streamed by
  ``--stream_workers`` data-loader workers (what data larger than the memory budget uses);
* ``memory``: the same zip decoded once into a uint8 array (memory-mapped from the cache),
  batches gathered in the training process (what ``fagan train`` uses for data that fits).

Also timed once: ``fagan prepare`` of the folder, decoding the folder into memory, and
opening the zip again from the cache. CPU time per image counts the process and its
loader workers (user + system); the batch conversion runs on ``--threads`` torch threads.

Images: the ~3,700 Noto emoji of the npm package ``emoji-datasource-google`` (64x64
RGBA PNGs composited on white, written as ``--jpeg_size`` JPEGs), from ``--emoji`` (the
package's .tgz or extracted folder; by default ``npm pack`` fetches it into a temporary
folder), or any ``--images_dir``.

Writes ``benchmarks/results/data_<host>_<date>.json`` and the ``bench_data`` section
(Data pipeline) of ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/bench_data.py                           # emoji via npm pack, CPU
    python benchmarks/bench_data.py --emoji emoji-datasource-google-16.0.0.tgz --epochs 3
    python benchmarks/bench_data.py --images_dir data/celeba/img_align_celeba --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common
import _train_loop

ROOT = common.BENCH_DIR.parent
EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"
EMOJI_DIR = "package/img/google/64"
IMAGE_SIZE = 64
VARIANTS = ("folder-per-file", "zip-stream", "memory")


# --------------------------------------------------------------------------- images
def emoji_folder(emoji: str | None, tmp: Path) -> Path:
    """The emoji PNG folder: from a .tgz, an extracted package, or ``npm pack``."""
    if emoji is not None and Path(emoji).is_dir():
        folder = Path(emoji) / EMOJI_DIR
        return folder if folder.is_dir() else Path(emoji)
    if emoji is None:
        print(f"[bench_data] npm pack {EMOJI_PACKAGE} ...", file=sys.stderr, flush=True)
        subprocess.run(
            ["npm", "pack", EMOJI_PACKAGE, "--silent"],
            cwd=tmp,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        emoji = str(next(tmp.glob("emoji-datasource-google-*.tgz")))
    with tarfile.open(emoji) as archive:
        members = [
            m
            for m in archive.getmembers()
            if m.name.startswith(EMOJI_DIR + "/") and m.name.endswith(".png")
        ]
        archive.extractall(tmp / "emoji", members=members, filter="data")
    return tmp / "emoji" / EMOJI_DIR


def write_jpegs(pngs: Path, out: Path, size: int) -> int:
    """Each RGBA PNG composited on white, resized to ``size``, saved as a quality-90 JPEG."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(pngs.glob("*.png")):
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.LANCZOS)
        rgb.save(out / f"{path.stem}.jpg", quality=90)
        count += 1
    return count


# --------------------------------------------------------------------------- worker side
def _cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _shutdown(loader: Any) -> None:
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def worker(args: argparse.Namespace) -> None:
    """Measures one variant in this process and emits its result."""
    import torch

    from fagan.data import (
        ImageFolderDataset,
        ResumableSampler,
        build_loader,
        open_training_data,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variant = args.worker
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    close = None
    if variant == "folder-per-file":
        dataset = ImageFolderDataset(args.folder, IMAGE_SIZE)
        n = len(dataset)
        sampler = ResumableSampler(n, batch_size=args.batch_size, seed=0)
        loader = build_loader(
            dataset, sampler, args.batch_size, args.loader_workers, pin_memory=device.type == "cuda"
        )

        def epoch_batches() -> Any:
            for batch in loader:
                yield batch.to(device, non_blocking=True)

        def close() -> None:
            _shutdown(loader)
    else:
        data = open_training_data(
            args.zip,
            IMAGE_SIZE,
            device,
            num_workers=args.stream_workers,
            progress=False,
            max_memory=0 if variant == "zip-stream" else None,
        )
        n = data.num_images
        sampler = ResumableSampler(len(data), batch_size=args.batch_size, seed=0)

        def epoch_batches() -> Any:
            for batch in data.batches(sampler):
                yield batch.images

        close = data.close
    open_s = time.perf_counter() - t0

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    images, first_s = 0, None
    cpu1, t1 = _cpu_seconds(), time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for x in epoch_batches():
            assert x.shape == (args.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
            assert x.dtype == torch.float32 and x.device.type == device.type
            images += x.shape[0]
            if first_s is None:
                sync()
                first_s = time.perf_counter() - t1
                t_steady, n_steady0 = time.perf_counter(), images
    sync()
    t2 = time.perf_counter()
    close()
    cpu2 = _cpu_seconds()
    steady = (images - n_steady0) / (t2 - t_steady) if t2 > t_steady else float("nan")
    common.emit(
        {
            "variant": variant,
            "images": images,
            "dataset_images": n,
            "epochs": args.epochs,
            "open_s": round(open_s, 3),
            "open_cpu_s": round(cpu1 - cpu0, 3),
            "first_batch_s": round(first_s or 0.0, 4),
            "images_per_s": round(images / (t2 - t1), 1),
            "steady_images_per_s": round(steady, 1),
            "cpu_us_per_image": round((cpu2 - cpu1) / images * 1e6, 1),
            "wall_us_per_image": round((t2 - t1) / images * 1e6, 1),
            "peak_rss_mb": round(common.peak_rss_mb(), 1),
            "threads": torch.get_num_threads(),
            "workers": {
                "folder-per-file": args.loader_workers,
                "zip-stream": args.stream_workers,
                "memory": 0,
            }[variant],
        }
    )


def timed_once(what: str, code: str, env: dict[str, str]) -> dict[str, Any]:
    """Runs ``code`` (which defines ``run()`` returning the image count) in a subprocess."""
    script = (
        "import resource, time, json, sys\n"
        f"{code}\n"
        "def cpu():\n"
        "    a = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    b = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime\n"
        "c0, t0 = cpu(), time.perf_counter()\n"
        "n = run()\n"
        "dt, dc = time.perf_counter() - t0, cpu() - c0\n"
        f"print({common.RESULT_PREFIX!r} + json.dumps({{'variant': {what!r}, 'images': n, "
        "'seconds': round(dt, 3), 'images_per_s': round(n / dt, 1), "
        "'cpu_us_per_image': round(dc / n * 1e6, 1)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=common.child_env(env)
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(common.RESULT_PREFIX):
            return json.loads(line[len(common.RESULT_PREFIX) :])
    return {
        "variant": what,
        "error": f"exited with {proc.returncode}",
        "stderr_tail": proc.stderr.strip().splitlines()[-10:],
    }


# --------------------------------------------------------------------------- report
def report(
    runs: list[dict[str, Any]], once: list[dict[str, Any]]
) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    header = [
        "path",
        "workers",
        "images/s",
        "steady images/s",
        "CPU us/image",
        "images/s per busy core",
        "first batch s",
        "open s",
        "peak RSS MB",
    ]
    rows = []
    for r in runs:
        if "error" in r:
            rows.append([r["variant"], "-", "error", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                r["variant"],
                str(r["workers"]),
                f"{r['images_per_s']:,.0f}",
                f"{r['steady_images_per_s']:,.0f}",
                f"{r['cpu_us_per_image']:.0f}",
                f"{1e6 / r['cpu_us_per_image']:,.0f}",
                f"{r['first_batch_s']:.2f}",
                f"{r['open_s']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
            ]
        )
    once_header = ["one-time step", "images", "seconds", "images/s", "CPU us/image"]
    once_rows = [
        [
            o["variant"],
            f"{o.get('images', 0):,}",
            f"{o.get('seconds', 0):.2f}",
            f"{o.get('images_per_s', 0):,.0f}",
            f"{o.get('cpu_us_per_image', 0):.0f}",
        ]
        if "error" not in o
        else [o["variant"], "error", "", "", ""]
        for o in once
    ]
    return header, rows, once_header, once_rows


def summary_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Ratios to the per-file path, and the targets (50,000 images/s from memory in one
    process; 2,000 images/s streamed with 2 workers on 2 cores)."""
    by = {r["variant"]: r for r in runs if "error" not in r}
    lines = []
    base = by.get("folder-per-file")
    for name in ("zip-stream", "memory"):
        r = by.get(name)
        if r is not None and base is not None:
            lines.append(
                f"- {name}: {r['images_per_s'] / base['images_per_s']:.1f}x the per-file "
                f"path's images/s at {base['cpu_us_per_image'] / r['cpu_us_per_image']:.1f}x "
                "less CPU per image"
            )
    targets = (("memory", 50_000, 1), ("zip-stream", 2_000, 2))
    for name, target, cores in targets:
        r = by.get(name)
        if r is None:
            continue
        capacity = cores * 1e6 / r["cpu_us_per_image"]
        lines.append(
            f"- target {name} >= {target:,} images/s: measured {r['images_per_s']:,.0f} "
            f"({'met' if r['images_per_s'] >= target else 'not met'}); its CPU cost allows "
            f"{capacity:,.0f} on {cores} idle core(s)"
        )
    return [*lines, ""] if lines else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images_dir", help="a folder of images (default: the emoji set)")
    parser.add_argument(
        "--emoji", help="emoji-datasource-google's .tgz or extracted folder (default: npm pack it)"
    )
    parser.add_argument(
        "--jpeg_size",
        type=int,
        default=128,
        help="side of the emoji JPEGs written (resized to 64 when read)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measured path")
    parser.add_argument(
        "--memory_epochs", type=int, default=20, help="epochs for the in-memory path (it is fast)"
    )
    parser.add_argument(
        "--loader_workers",
        type=int,
        default=3,
        help="workers of the per-file path (fagan train's --num_workers)",
    )
    parser.add_argument("--stream_workers", type=int, default=2, help="workers streaming the zip")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the training process (batch conversion; 0: torch's default, "
        "as fagan train runs)",
    )
    parser.add_argument(
        "--train_steps",
        type=int,
        default=0,
        help="also time `fagan train` (default flags) for this many steps from the folder and "
        "the zip, against bench_train's pure fp32 step (0: skip; >= 130 crosses the emoji "
        "set's first epoch, so its checkpoint is counted)",
    )
    parser.add_argument(
        "--train_iters", type=int, default=10, help="timed pure steps, before and after"
    )
    parser.add_argument(
        "--no_write", action="store_true", help="print only: no results JSON, no RESULTS.md update"
    )
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--zip", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.train_steps and args.train_steps <= _train_loop.WARMUP_STEPS + 1:
        parser.error(f"--train_steps must be 0 or more than {_train_loop.WARMUP_STEPS + 1}")

    started = common.now()
    load_before = common.load_average()
    runs: list[dict[str, Any]] = []
    once: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.images_dir is not None:
            folder, source = Path(args.images_dir), args.images_dir
        else:
            folder = tmp / "jpegs"
            count = write_jpegs(emoji_folder(args.emoji, tmp), folder, args.jpeg_size)
            source = (
                f"{count:,} Noto emoji ({EMOJI_PACKAGE}) as {args.jpeg_size}x{args.jpeg_size} JPEGs"
            )
        zip_path = tmp / "data.zip"
        env = {"FAGAN_DATA_CACHE": str(tmp / "cache")}
        print("[bench_data] prepare, decode once, cache hit ...", file=sys.stderr, flush=True)
        once.append(
            timed_once(
                "fagan prepare (folder -> zip)",
                (
                    "from fagan.prepare import prepare_dataset\n"
                    f"def run():\n    return prepare_dataset({str(folder)!r}, {str(zip_path)!r}, "
                    f"{IMAGE_SIZE}, progress=False).count"
                ),
                env,
            )
        )
        once.append(
            timed_once(
                "decode the folder into memory",
                (
                    "from fagan.data import open_training_data\n"
                    f"def run():\n    return open_training_data({str(folder)!r}, {IMAGE_SIZE}, "
                    "cache=False, progress=False).num_images"
                ),
                env,
            )
        )
        once.append(
            timed_once(
                "decode the zip into the cache",
                (
                    "from fagan.data import open_training_data\n"
                    f"def run():\n    return open_training_data({str(zip_path)!r}, {IMAGE_SIZE}, "
                    "cache=True, progress=False).num_images"
                ),
                env,
            )
        )
        once.append(
            timed_once(
                "open the zip again (cache hit)",
                (
                    "from fagan.data import open_training_data\n"
                    f"def run():\n    return open_training_data({str(zip_path)!r}, {IMAGE_SIZE}, "
                    "cache=True, progress=False).num_images"
                ),
                env,
            )
        )
        for variant in variants:
            print(f"[bench_data] {variant} ...", file=sys.stderr, flush=True)
            epochs = args.memory_epochs if variant == "memory" else args.epochs
            cmd = [
                __file__,
                "--worker",
                variant,
                "--folder",
                str(folder),
                "--zip",
                str(zip_path),
                "--device",
                args.device,
                "--batch_size",
                str(args.batch_size),
                "--epochs",
                str(epochs),
                "--loader_workers",
                str(args.loader_workers),
                "--stream_workers",
                str(args.stream_workers),
                "--threads",
                str(args.threads),
            ]
            result = common.run_worker(cmd, extra_env=env)
            result.setdefault("variant", variant)
            runs.append(result)
            if "error" in result:
                print(
                    f"[bench_data] {variant} failed:\n  " + "\n  ".join(result["stderr_tail"]),
                    file=sys.stderr,
                )
        end_to_end = None
        if args.train_steps:
            import torch
            from bench_train import real_images

            images_file = tmp / "images.pt"
            torch.save(real_images(str(folder))[:512].clone(), images_file)
            end_to_end = _train_loop.measure(
                folder,
                zip_path,
                images_file,
                tmp,
                steps=args.train_steps,
                iters=args.train_iters,
                device=args.device,
                batch_size=args.batch_size,
                env=env,
            )
    load_after = common.load_average()
    threads = next((r["threads"] for r in runs if "threads" in r), args.threads)
    memory = next((r for r in runs if r.get("variant") == "memory" and "error" not in r), None)
    train_lines = (
        []
        if end_to_end is None
        else _train_loop.lines(end_to_end, memory["cpu_us_per_image"] if memory else None)
    )

    header, rows, once_header, once_rows = report(runs, once)
    machine = common.machine_info(args.device)
    print(
        f"CPU: {machine['cpu']} ({machine['logical_cpus']} logical CPUs); device "
        f"{args.device}; {source}; batch {args.batch_size} at {IMAGE_SIZE}x{IMAGE_SIZE}"
    )
    print(common.text_table(header, rows))
    print(common.text_table(once_header, once_rows))
    print("\n".join(summary_lines(runs)))
    print("\n".join(train_lines))
    print(f"load average before {load_before}, after {load_after}")
    if args.no_write:
        return 0

    record = {
        "benchmark": "data",
        "date": started,
        "command": common.command_line(),
        "machine": machine,
        "load_before": load_before,
        "load_after": load_after,
        "source": source,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("worker", "no_write", "folder", "zip")
        },
        "results": runs,
        "one_time": once,
        "end_to_end": end_to_end,
    }
    path = common.result_path("data")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    body = "\n".join(
        [
            "## Data pipeline (bench_data.py)",
            "",
            f"- date: {started}",
            f"- command: `{record['command']}`",
            f"- machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, torch "
            f"{machine['torch']}, device {args.device}"
            + (f" ({machine['gpu']})" if "gpu" in machine else ""),
            f"- load average (1/5/15 min) before {load_before}, after {load_after}",
            f"- images: {source}",
            f"- delivered: float32 batches of {args.batch_size} x 3 x {IMAGE_SIZE} x {IMAGE_SIZE} "
            f"in [-1, 1] on {args.device}; {args.epochs} epochs per path ({args.memory_epochs} "
            f"in memory), each path in its own process, {threads} torch thread(s) in the "
            "training process; steady = after the first batch; CPU = process + loader workers; "
            "images/s per busy core = 1e6 / CPU us per image (what the path would deliver per "
            "core with the machine to itself)",
            "",
            common.markdown_table(header, rows),
            "",
            common.markdown_table(once_header, once_rows),
            "",
            *summary_lines(runs),
            *(
                [
                    f"`fagan train --images_dir <folder or zip> --max_steps {args.train_steps}` "
                    "with default flags (fagan64, fp32, relativistic hinge, EMA, batch "
                    f"{args.batch_size}; loss log, sample grids every 20 steps and the epoch's "
                    "checkpoint included) against bench_train.py's pure fp32 D+G step on "
                    "batches already in memory. s/step of a run: from its stats.jsonl, between "
                    f"step {_train_loop.WARMUP_STEPS} and the last; start-up = the rest of the "
                    "process's wall time (imports, opening the data, building the networks, the "
                    "final save).",
                    "",
                    *train_lines,
                ]
                if train_lines
                else []
            ),
            f"Raw: `{path.relative_to(ROOT)}`",
        ]
    )
    common.update_results_md("bench_data", body)
    print(f"wrote {path} and {common.RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
