"""Full-attention layer benchmark: peak memory and time at a 128x128 output, and the
per-size choice between the explicit and the fused attention paths.

Part 1 (``layer``): one :class:`fagan.layers.FullAttention` with a 128 x 128 output
(16,384 positions), batch 8, forward + backward, each case in its own subprocess:

* ``conv``: 64 -> 64 channels, squeeze 8 (q/k 8 channels), 3x3, stride 1, padding 1,
  on a 128x128 input;
* ``transposed``: the same channels, 4x4 transposed convolution, stride 2,
  padding 1, on a 64x64 input.

Memory is the process's peak RSS minus its RSS after the imports, the layer and
the input (on CUDA: peak allocated minus allocated before). The fast path is the
layer as used in training; ``--explicit`` adds the explicit path (the layer inside
``capture_attention``), whose (B, N, N) map takes 1 GiB per sample at N = 16,384,
so it runs at ``--explicit_batch`` (default 1) and only when asked.

Part 2 (``policy``): ``attention.attend_explicit`` against ``fast.attend_fused`` at the
attention shapes of the fagan64 networks (batch 32), forward + backward and forward
without a graph: the evidence for ``fast.EXPLICIT_MAX_POSITIONS``.

Writes ``benchmarks/results/attention-<part>_<host>_<date>.json`` and the
``bench_attention_<part>`` sections of ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --explicit --parts layer
    python benchmarks/bench_attention.py --device cuda --parts layer
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import _common as common

#: name -> (in, out, kernel, stride, padding, transpose, input side)
LAYERS: dict[str, tuple[int, int, int, int, int, bool, int]] = {
    "conv": (64, 64, 3, 1, 1, False, 128),
    "transposed": (64, 64, 4, 2, 1, True, 64),
}
SQUEEZE = 8

#: the attention calls of the fagan64 networks: name -> (N, Cq, Cv)
POLICY_SHAPES: dict[str, tuple[int, int, int]] = {
    "G.0 full 1->4": (16, 16, 512),
    "D.8 self 4x4": (16, 64, 512),
    "G.2 full 4->8": (64, 64, 256),
    "D.3 full 16->8": (64, 16, 256),
    "D.5 self 8x8": (64, 32, 256),
    "G.5 self 16x16": (256, 16, 128),
    "(N=512)": (512, 8, 64),
    "G.8 self 32x32": (1024, 8, 64),
    "D.0 full 64->32": (1024, 3, 64),
}


# --------------------------------------------------------------------------- workers
def layer_worker(args: argparse.Namespace) -> None:
    """Forward + backward of one FullAttention configuration; emits time and memory."""
    import torch

    from fagan.layers import FullAttention, capture_attention

    name, path, batch = args.case, args.path, args.batch
    cin, cout, kernel, stride, padding, transpose, side = LAYERS[name]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layer = (
        FullAttention(
            cin,
            cout,
            (kernel, kernel),
            (stride, stride),
            (padding, padding),
            transpose=transpose,
            squeeze_factor=SQUEEZE,
            activation=torch.nn.LeakyReLU(0.2),
        )
        .to(device)
        .train()
    )
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    x = torch.randn(batch, cin, side, side, device=device, requires_grad=True)
    weights = None  # the output's shape is known only after a forward pass
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def run() -> tuple[float, float]:
        nonlocal weights
        layer.zero_grad(set_to_none=True)
        x.grad = None
        t0 = time.perf_counter()
        if path == "explicit":
            with capture_attention(layer), autocast:
                out = layer(x)
        else:
            with autocast:
                out = layer(x)
        if cuda:
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        if weights is None:
            weights = torch.randn(out.shape, device=device)
        (out.float() * weights).sum().backward()
        if cuda:
            torch.cuda.synchronize(device)
        return t1 - t0, time.perf_counter() - t0

    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = common.current_rss_mb()
    times = [run() for _ in range(args.repeats)]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else common.peak_rss_mb()
    n = (side * stride if transpose else side) ** 2
    common.emit(
        {
            "case": name,
            "path": path,
            "batch": batch,
            "dtype": args.dtype,
            "positions": n,
            "cq": cin // SQUEEZE,
            "cv": cout,
            "forward_s": min(t[0] for t in times),
            "forward_backward_s": min(t[1] for t in times),
            "times_s": times,
            "baseline_mb": base,
            "peak_mb": peak,
            "peak_delta_mb": peak - base,
            "map_mb": batch * n * n * 4 / 2**20,
            "memory": "cuda max_memory_allocated" if cuda else "peak RSS - RSS before",
            "threads": torch.get_num_threads(),
        }
    )


def policy_worker(args: argparse.Namespace) -> None:
    """Explicit vs fused attention at the fagan64 shapes; emits a list of timings."""
    import torch

    from fagan.layers.attention import attend_explicit
    from fagan.layers.fast import attend_fused

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = 32
    rows = []

    def explicit(q: Any, k: Any, v: Any) -> Any:
        return attend_explicit(q, k, v)[0]

    for label, (n, cq, cv) in POLICY_SHAPES.items():
        torch.manual_seed(n + cq + cv)
        # laid out as the layers produce them: channel-major conv outputs, transposed
        y = torch.randn(batch, 2 * cq + cv, n, device=device) * 0.5
        row: dict[str, Any] = {"shape": label, "N": n, "cq": cq, "cv": cv, "dtype": args.dtype}
        cases = [
            (f"{name}_{'fwd_bwd' if grad else 'fwd_nograd'}_ms", fn, grad)
            for name, fn in (("explicit", explicit), ("fused", attend_fused))
            for grad in (True, False)
        ]
        best = dict.fromkeys((key for key, _, _ in cases), float("inf"))
        for _ in range(args.repeats):  # interleaved, so that other load hits all alike
            for key, fn, grad in cases:
                yy = y.detach().clone().requires_grad_(grad)
                t0 = time.perf_counter()
                with (
                    torch.set_grad_enabled(grad),
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"),
                ):
                    q, k, v = (p.transpose(1, 2) for p in yy.split([cq, cq, cv], 1))
                    out = fn(q, k, v)
                if grad:
                    out.float().sum().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best[key] = min(best[key], time.perf_counter() - t0)
        row |= {key: seconds * 1e3 for key, seconds in best.items()}
        rows.append(row)
        print(f"[policy] {label}: {row}", file=sys.stderr, flush=True)
    common.emit({"policy": rows, "threads": torch.get_num_threads()})


# --------------------------------------------------------------------------- parent
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="layer,policy", help="layer, policy or both")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument(
        "--explicit",
        action="store_true",
        help="also run the explicit path (1 GiB map per sample at 128x128)",
    )
    parser.add_argument("--explicit_batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policy_repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no_write", action="store_true")
    # worker-only
    parser.add_argument("--worker", choices=["layer", "policy"], help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=sorted(LAYERS), help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=["fast", "explicit"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "layer":
        layer_worker(args)
        return 0
    if args.worker == "policy":
        policy_worker(args)
        return 0

    parts = {p.strip() for p in args.parts.split(",")}
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    common_args = ["--device", args.device, "--threads", str(args.threads)]
    started, load_before = common.now(), common.load_average()
    layer_results, policy_results = [], []
    if "layer" in parts:
        cases = [(c, "fast", args.batch, d) for c in LAYERS for d in dtypes]
        if args.explicit:
            cases += [(c, "explicit", args.explicit_batch, "fp32") for c in LAYERS]
            cases += [(c, "fast", args.explicit_batch, "fp32") for c in LAYERS]
        for case, path, batch, dtype in cases:
            print(
                f"[bench_attention] layer {case} {path} batch {batch} {dtype} ...",
                file=sys.stderr,
                flush=True,
            )
            result = common.run_worker(
                [
                    __file__,
                    "--worker",
                    "layer",
                    "--case",
                    case,
                    "--path",
                    path,
                    "--batch",
                    str(batch),
                    "--dtype",
                    dtype,
                    "--repeats",
                    str(args.repeats),
                    *common_args,
                ]
            )
            result.update(case=case, path=path, batch=batch, dtype=dtype)
            layer_results.append(result)
    if "policy" in parts:
        for dtype in dtypes:
            print(f"[bench_attention] policy {dtype} ...", file=sys.stderr, flush=True)
            result = common.run_worker(
                [
                    __file__,
                    "--worker",
                    "policy",
                    "--dtype",
                    dtype,
                    "--repeats",
                    str(args.policy_repeats),
                    *common_args,
                ]
            )
            policy_results.extend(result.get("policy", [result]))
    load_after = common.load_average()

    sections = []
    if layer_results:
        header = [
            "case",
            "path",
            "dtype",
            "batch",
            "N",
            "forward s",
            "fwd+bwd s",
            "peak memory MB",
            "explicit map MB",
            "< 1 GB",
        ]
        rows = []
        for r in layer_results:
            if "error" in r:
                rows.append(
                    [r["case"], r["path"], r["dtype"], str(r["batch"]), "error", *["-"] * 5]
                )
                continue
            rows.append(
                [
                    r["case"],
                    r["path"],
                    r["dtype"],
                    str(r["batch"]),
                    str(r["positions"]),
                    f"{r['forward_s']:.2f}",
                    f"{r['forward_backward_s']:.2f}",
                    f"{r['peak_delta_mb']:.0f}",
                    f"{r['map_mb']:.0f}",
                    "yes" if r["peak_delta_mb"] < 1024 else "no",
                ]
            )
        print(common.text_table(header, rows))
        sections.append(("layer", header, rows))
    if policy_results:
        header = [
            "shape (fagan64, batch 32)",
            "dtype",
            "N",
            "Cq/Cv",
            "explicit fwd+bwd ms",
            "fused fwd+bwd ms",
            "explicit fwd ms",
            "fused fwd ms",
            "attend uses",
        ]
        from fagan.layers.fast import EXPLICIT_MAX_POSITIONS

        rows = []
        for r in policy_results:
            if "error" in r:
                rows.append(["error", *["-"] * (len(header) - 1)])
                continue
            rows.append(
                [
                    r["shape"],
                    r["dtype"],
                    str(r["N"]),
                    f"{r['cq']}/{r['cv']}",
                    f"{r['explicit_fwd_bwd_ms']:.1f}",
                    f"{r['fused_fwd_bwd_ms']:.1f}",
                    f"{r['explicit_fwd_nograd_ms']:.1f}",
                    f"{r['fused_fwd_nograd_ms']:.1f}",
                    "explicit" if r["N"] <= EXPLICIT_MAX_POSITIONS else "fused",
                ]
            )
        print(common.text_table(header, rows))
        sections.append(("policy", header, rows))
    print(f"load average before {load_before}, after {load_after}")
    if args.no_write:
        return 0

    machine = common.machine_info(args.device)
    mem = (
        "peak CUDA memory allocated minus allocated before"
        if args.device.startswith("cuda")
        else "peak RSS minus RSS after imports, layer and input"
    )
    written = []
    for kind, header, rows in sections:
        results = layer_results if kind == "layer" else policy_results
        record = {
            "benchmark": f"attention-{kind}",
            "date": started,
            "command": common.command_line(),
            "machine": machine,
            "load_before": load_before,
            "load_after": load_after,
            "results": results,
        }
        path = common.result_path(f"attention-{kind}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        if kind == "layer":
            title = "## Attention layer at 128x128 (bench_attention.py, layer)"
            intro = (
                "FullAttention with a 128x128 output (16,384 positions), 64 -> 64 "
                f"channels, q/k {64 // SQUEEZE} channels; forward + backward; times are "
                f"the best of {args.repeats}; memory = {mem}; each row its own process."
            )
        else:
            title = "## Explicit vs fused attention per size (bench_attention.py, policy)"
            intro = (
                "`attend_explicit` vs `attend_fused` at the fagan64 attention shapes "
                f"(batch 32), best of {args.policy_repeats} interleaved repeats; `attend` "
                "picks explicit up to `EXPLICIT_MAX_POSITIONS` positions."
            )
        lines = [
            title,
            "",
            f"- date: {started}",
            f"- command: `{record['command']}`",
            f"- machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, "
            f"torch {machine['torch']}, device {args.device}",
            f"- load average (1/5/15 min) before {load_before}, after {load_after}",
            "",
            intro,
            "",
            common.markdown_table(header, rows),
            "",
            f"Raw: `{path.relative_to(common.BENCH_DIR.parent)}`",
        ]
        common.update_results_md(f"bench_attention_{kind}", "\n".join(lines))
        written.append(path)
    print(f"wrote {', '.join(map(str, written))} and {common.RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
