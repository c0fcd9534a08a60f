"""Shared helpers of the benchmarks: machine description, subprocess workers, RESULTS.md.

Each measured configuration runs in its own Python subprocess so that its peak
resident memory is its own (read from ``VmHWM``: ``ru_maxrss`` is inherited from the
parent across ``subprocess``'s vfork + exec); the worker prints one JSON line prefixed
with :data:`RESULT_PREFIX` that the parent collects.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
RESULT_PREFIX = "BENCH_RESULT "


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector-unit flags that matter for PyTorch's CPU kernels."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    match = re.search(r"^flags\s*:(.*)$", text, re.M)
    flags = set(match.group(1).split()) if match else set()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def load_average() -> tuple[float, float, float] | None:
    """The 1/5/15-minute load averages, or None where unavailable."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return None
    return round(one, 2), round(five, 2), round(fifteen, 2)


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def now() -> str:
    """The local date and time, to the second."""
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status in MiB (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    On Linux ``VmHWM`` (the high-water mark of this process's own memory map), not
    ``ru_maxrss``: a child started by ``subprocess`` (vfork + exec) inherits its
    parent's ``ru_maxrss``, so a worker started from a large parent would report the
    parent's size.
    """
    import resource

    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """This process's current resident set size in MiB (Linux; else the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def emit(result: dict[str, Any]) -> None:
    """Prints a worker's result for the parent to collect."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


#: glibc malloc settings that return freed large blocks to the system at once (no
#: dynamic mmap threshold, no retained heap top): lower peak RSS, some page faults.
TUNED_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, with this checkout's ``src`` first on
    ``PYTHONPATH``: what a benchmark's child process (a worker, ``python -m fagan``) runs in."""
    env = dict(os.environ) | (extra or {})
    src = str(BENCH_DIR.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_worker(
    args: list[str], timeout: float | None = None, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Runs ``python <args>`` in a subprocess and returns its result (or the error)."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=child_env(extra_env),
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {"error": f"worker exited with {proc.returncode}", "stderr_tail": tail}


def update_results_md(section: str, body: str, path: Path = RESULTS_MD) -> Path:
    """Replaces (or appends) the ``section`` block of benchmarks/RESULTS.md (or ``path``)."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if path.is_file():
        text = path.read_text()
    else:
        text = (
            "# Benchmark results\n\n"
            "Written by the scripts in this folder (`bench_train.py`, `bench_attention.py`); "
            "each run replaces its own section. Raw numbers are in `results/`.\n"
        )
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width table for the terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*row) for row in rows)])


def result_path(kind: str) -> Path:
    """benchmarks/results/<kind>_<host>_<date>.json."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    date = _dt.date.today().isoformat()
    return RESULTS_DIR / f"{kind}_{host}_{date}.json"


def command_line() -> str:
    """The command that ran this script, as typed (relative to the repo root)."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(BENCH_DIR.parent)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])
