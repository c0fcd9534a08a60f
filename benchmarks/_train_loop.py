"""``fagan train`` end to end against the pure training step, for bench_data.py.

The pure step is :mod:`bench_train`'s worker (one D step and one G step on batches
already on the device, fagan64, fp32, relativistic hinge, batch 32: ``fagan train``'s
defaults with an images folder). The end-to-end rate is ``fagan train`` itself, with its
default flags, from the folder and from the dataset zip prepared from it: data loading,
the EMA update, loss logs, sample grids and the epoch's checkpoint included. Its
per-step time comes from the run's ``stats.jsonl`` (seconds since the loop started, one
record a step), between a warm-up step and the last one, so start-up (imports, opening
the data, building the networks) is reported apart. The pure step is measured before
and after the training runs and averaged, so that a change of load during the runs
shows up in both.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as common

#: steps of a training run not counted (the first ones build caches and warm up)
WARMUP_STEPS = 3


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pure_step(images_file: Path, iters: int, device: str, batch_size: int) -> dict[str, Any]:
    """bench_train.py's fp32 worker: seconds per D+G step on batches already on the device."""
    return common.run_worker(
        [
            str(common.BENCH_DIR / "bench_train.py"),
            "--worker",
            "fp32",
            "--images_file",
            str(images_file),
            "--iters",
            str(iters),
            "--warmup",
            str(WARMUP_STEPS),
            "--batch_size",
            str(batch_size),
            "--device",
            device,
        ]
    )


def train_run(
    source: Path, run_dir: Path, steps: int, device: str, env: dict[str, str]
) -> dict[str, Any]:
    """``fagan train --images_dir source --max_steps steps`` with default flags; its timings."""
    cmd = [
        sys.executable,
        "-m",
        "fagan",
        "train",
        "--images_dir",
        str(source),
        "--max_steps",
        str(steps),
        "--model_dir",
        str(run_dir),
        "--sample_dir",
        str(run_dir),
        "--device",
        device,
    ]
    full_env = common.child_env(env)
    cpu0, t0 = _cpu_children(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
    wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    if proc.returncode != 0:
        return {
            "error": f"fagan train exited with {proc.returncode}",
            "stderr_tail": proc.stderr.strip().splitlines()[-15:],
        }
    records = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    times = {r["step"]: r["time"] for r in records}
    first, last = WARMUP_STEPS, max(times)
    loop_s = times[last] - times[first]
    per_step = loop_s / (last - first)
    checkpoints = sorted(p.name for p in run_dir.glob("GAN_GEN_[0-9]*.pth"))
    grids = sorted(run_dir.glob("gen_*.png"))
    return {
        "steps": last,
        "wall_s": wall,
        "cpu_s": cpu,
        "loop_s_per_step": per_step,
        "startup_s": wall - times[last],
        "grids": len(grids),
        "checkpoints": checkpoints,
    }


def measure(
    folder: Path,
    zip_path: Path,
    images_file: Path,
    tmp: Path,
    *,
    steps: int,
    iters: int,
    device: str,
    batch_size: int,
    env: dict[str, str],
) -> dict[str, Any]:
    """The pure step (before and after), then ``fagan train`` from the zip and the folder."""
    out: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "warmup_steps": WARMUP_STEPS}
    print("[bench_data] pure step (bench_train fp32) ...", file=sys.stderr, flush=True)
    before = pure_step(images_file, iters, device, batch_size)
    runs = {}
    for name, source in (("zip", zip_path), ("folder", folder)):
        print(
            f"[bench_data] fagan train from the {name}, {steps} steps ...",
            file=sys.stderr,
            flush=True,
        )
        runs[name] = train_run(source, tmp / f"train-{name}", steps, device, env)
        if "error" not in runs[name]:
            runs[name]["images_per_s"] = batch_size / runs[name]["loop_s_per_step"]
    print("[bench_data] pure step again ...", file=sys.stderr, flush=True)
    after = pure_step(images_file, iters, device, batch_size)
    out["pure_runs"] = [before, after]
    pure_times = [t for r in (before, after) if "error" not in r for t in r["times_s"]]
    if pure_times:
        out["pure_s_per_step"] = statistics.mean(pure_times)
        out["pure_cpu_s_per_step"] = statistics.mean(
            c for r in (before, after) if "error" not in r for c in r["cpu_times_s"]
        )
    out["train"] = runs
    return out


def lines(result: dict[str, Any], data_cpu_us: float | None) -> list[str]:
    """The end-to-end table and its verdict, as markdown lines."""
    pure = result.get("pure_s_per_step")
    if pure is None:
        return ["- end to end: the pure step failed; no comparison"]
    bs = result["batch_size"]
    header = [
        "what",
        "s/step",
        "images/s",
        "vs pure step",
        "start-up s",
        "process wall s",
        "process CPU s",
        "grids",
        "checkpoints",
    ]
    rows = [
        [
            "bench_train fp32 step (mean, before + after)",
            f"{pure:.3f}",
            f"{bs / pure:.1f}",
            "1.00x",
            "-",
            "-",
            "-",
            "-",
            "-",
        ]
    ]
    for name, r in result["train"].items():
        if "error" in r:
            rows.append([f"fagan train from the {name}", "error", "", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                f"fagan train from the {name} ({r['steps']} steps)",
                f"{r['loop_s_per_step']:.3f}",
                f"{bs / r['loop_s_per_step']:.1f}",
                f"{pure / r['loop_s_per_step']:.2f}x",
                f"{r['startup_s']:.1f}",
                f"{r['wall_s']:.0f}",
                f"{r['cpu_s']:.0f}",
                str(r["grids"]),
                str(len(r["checkpoints"])),
            ]
        )
    out = [common.markdown_table(header, rows), ""]
    for name, r in result["train"].items():
        if "error" in r:
            continue
        gap = r["loop_s_per_step"] / pure - 1
        out.append(
            f"- target `fagan train` from the {name} within 10% of the pure step: "
            f"{gap:+.1%} per step ({'met' if gap <= 0.10 else 'not met'})"
        )
    if data_cpu_us is not None:
        out.append(
            f"- data path CPU per image (in memory, gather + cast + flip): {data_cpu_us:.0f} us, "
            f"{data_cpu_us * bs / 1e6 / pure:.3%} of a step's time per batch of {bs}"
        )
    return [*out, ""]
