#!/usr/bin/env bash
# The prepared GPU check: on a CUDA machine, in under 8 minutes, it runs
#   1. the tests that touch devices (tests/test_device.py: networks, the training steps in
#      fp32/bf16/fp16, exact batches, SWD, each against the CPU),
#   2. bench_train.py --device cuda: fp32, bf16, fp16 and bf16 with torch.compile,
#   3. bench_data.py --device cuda: the data paths delivering batches to the GPU,
#   4. `fagan prepare` of the images into a dataset zip, then `fagan train` from it for
#      about 2 minutes (bf16, --eval_every) on the GPU,
# and prints one table of what each part measured. Everything it writes goes under
# $OUT (default: a new temporary folder); the benchmarks also update
# benchmarks/RESULTS.md and benchmarks/results/ as they do when run by hand.
#
# Images: $IMAGES (a folder of images) or $EMOJI (emoji-datasource-google-16.0.0.tgz,
# see bench_data.py); without either, `npm pack` fetches the emoji where a registry is
# reachable. The suite itself never needs a GPU.
#
# Usage:
#   EMOJI=emoji-datasource-google-16.0.0.tgz bash benchmarks/gpu_check.sh
#   DEVICE=cpu QUICK=1 IMAGES=some/folder bash benchmarks/gpu_check.sh   # the plumbing, on a CPU
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d)}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

NO_WRITE=()
if [ "$QUICK" = 1 ]; then  # a plumbing check: the benchmarks write no results
    NO_WRITE=(--no_write)
    ITERS=2 WARMUP=1 TRAIN_SECONDS=20 EVAL_EVERY=5 VARIANTS=fp32,bf16
else
    ITERS=20 WARMUP=5 TRAIN_SECONDS=120 EVAL_EVERY=200 VARIANTS=fp32,bf16,fp16,bf16-compile
fi
if [ "$DEVICE" = cpu ]; then VARIANTS=${VARIANTS/,fp16/}; fi

STATUS="$OUT/status.tsv"
: >"$STATUS"
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, logs it, records its status and time
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" >&2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STATUS"
    tail -n 3 "$OUT/$name.log" >&2
    return 0
}

if [ "$DEVICE" != cpu ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; run with DEVICE=cpu QUICK=1 to check the plumbing" >&2
    exit 2
fi

# -- the images: a folder for bench_data and fagan prepare
DATA_ARGS=()
if [ -n "${IMAGES:-}" ]; then
    DATA_ARGS=(--images_dir "$IMAGES")
    FOLDER=$IMAGES
else
    [ -n "${EMOJI:-}" ] && DATA_ARGS=(--emoji "$EMOJI")
    FOLDER="$OUT/emoji"
    "$PY" - "$FOLDER" "${EMOJI:-}" <<'EOF' || { echo "gpu_check: could not get the emoji images; set IMAGES or EMOJI" >&2; exit 2; }
import sys, tempfile
from pathlib import Path
sys.path.insert(0, "benchmarks")
import bench_data
out, emoji = Path(sys.argv[1]), sys.argv[2] or None
with tempfile.TemporaryDirectory() as tmp:
    pngs = bench_data.emoji_folder(emoji, Path(tmp))
    bench_data.write_jpegs(pngs, out, 64)
print(f"{len(list(out.iterdir()))} images in {out}")
EOF
fi

step device-tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py
step bench-train 420 "$PY" benchmarks/bench_train.py --device "$DEVICE" --variants "$VARIANTS" \
    --iters "$ITERS" --warmup "$WARMUP" --batch_size 64 "${NO_WRITE[@]}"
step bench-data 240 "$PY" benchmarks/bench_data.py --device "$DEVICE" "${DATA_ARGS[@]}" "${NO_WRITE[@]}"
step prepare 120 "$PY" -m fagan prepare --source "$FOLDER" --output "$OUT/data.zip" --resolution 64 --overwrite
step train $((TRAIN_SECONDS + 120)) "$PY" -m fagan train --images_dir "$OUT/data.zip" --device "$DEVICE" \
    --precision bf16 --batch_size 64 --time_limit "$TRAIN_SECONDS" --eval_every "$EVAL_EVERY" \
    --eval_num_samples 500 --model_dir "$OUT/run" --sample_dir "$OUT/run" --overwrite

"$PY" - "$OUT" "$DEVICE" "$QUICK" <<'EOF'
import json, sys
from pathlib import Path
import torch
out, device = Path(sys.argv[1]), sys.argv[2]
rows = [line.split("\t") for line in (out / "status.tsv").read_text().splitlines()]
name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
print(f"\ngpu_check on {name} (torch {torch.__version__}); logs in {out}\n")
print(f"{'part':<14} {'exit':>4} {'s':>5}  result")
results = [] if sys.argv[3] == "1" else sorted(
    Path("benchmarks/results").glob("*.json"), key=lambda p: p.stat().st_mtime
)
def newest(kind):
    found = [p for p in results if p.name.startswith(kind + "_")]
    return json.loads(found[-1].read_text()) if found else None
for part, rc, secs in rows:
    log = (out / f"{part}.log").read_text(errors="replace").strip().splitlines()
    detail = log[-1] if log else ""
    if part == "bench-train" and (r := newest("train")):
        detail = ", ".join(
            f"{x['variant']} {x['images_per_s']:.0f} img/s" for x in r["results"] if "error" not in x
        )
    elif part == "bench-data" and (r := newest("data")):
        detail = ", ".join(
            f"{x['variant']} {x['images_per_s']:,.0f} img/s" for x in r["results"] if "error" not in x
        )
    elif part == "train" and (out / "run" / "stats.jsonl").is_file():
        stats = [json.loads(s) for s in (out / "run" / "stats.jsonl").read_text().splitlines()]
        steps = [s for s in stats if "images_per_s" in s]
        evals = [s["eval"] for s in stats if "eval" in s]
        last = steps[-1] if steps else {}
        detail = f"{last.get('step', 0)} steps, {last.get('images_per_s', 0):.0f} img/s"
        if evals:
            detail += f", {len(evals)} evaluations, last: " + ", ".join(
                f"{k} {v:.3f}" for k, v in evals[-1].items() if not k[-1].isdigit()
            )
    print(f"{part:<14} {rc:>4} {secs:>5}  {detail[:150]}")
EOF
