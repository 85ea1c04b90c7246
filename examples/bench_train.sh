#!/usr/bin/env bash
# Training benchmark: ITERATIONS steps (default 20) of `mrc train models/mini.model` against
# torchvision training the same architecture (examples/tools/train_torchvision.py) with the same
# recipe on the same batches of shapes/train, THREADS threads each (default 2), one after the
# other in this run. Each side's first step is warm-up and dropped; the medians of the rest are
# compared (mrc's per-iteration wall time from its metrics.jsonl, which includes waiting for the
# loader; torchvision's steps run on batches decoded beforehand). mrc's step compilation is
# reported apart. Writes target/bench/train_summary.txt.
#
#   examples/bench_train.sh [SHAPES_TRAIN_JSON]
#
# Needs a Python with torch and torchvision: $MRC_TORCH_PYTHON (see examples/lib/r50.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
. examples/lib/r50.sh

ITERATIONS=${ITERATIONS:-20}
THREADS=${THREADS:-2}
BAR=0.8
data=${1:-../shared/datasets/shapes/train/annotations.json}
if [ ! -f "$data" ]; then
    echo "error: $data not found (make a set with: mrc data shapes --n 200 -o DIR)" >&2
    exit 1
fi

mrc_install_deps
r50_torch_python
"$py" -c "import pycocotools" 2>/dev/null || show "$py" -m pip install -q pycocotools
cargo build --workspace
mkdir -p "$BENCH"
run=$BENCH/train_run
rm -rf "$run"

start=$EPOCHREALTIME
show "$MRC_BIN" train models/mini.model --data "$data" --iterations "$ITERATIONS" --threads "$THREADS" \
    --checkpoint-every 0 -o "$run"
mrc_seconds=$(awk "BEGIN { print $EPOCHREALTIME - $start }")
show env OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" "$py" examples/tools/train_torchvision.py \
    --data "$data" --iterations "$ITERATIONS" --threads "$THREADS" --timings "$BENCH/train_torch.json"

"$py" - "$run/metrics.jsonl" "$BENCH/train_torch.json" "$mrc_seconds" "$ITERATIONS" "$THREADS" "$BAR" <<'PY' |
import json, statistics, sys
metrics, torch_timings, mrc_total, iterations, threads, bar = sys.argv[1:]
mrc = [json.loads(line)["seconds"] for line in open(metrics)]
torch = json.load(open(torch_timings))["seconds"]
mrc_step, torch_step = statistics.median(mrc[1:]), statistics.median(torch[1:])
compile_seconds = float(mrc_total) - sum(mrc)
ratio = mrc_step / torch_step
print(f"Training step, mini Mask R-CNN, 4 images of 256x256 (320x320 after the transform), {threads} threads, "
      f"{iterations} iterations each, first dropped")
print(f"  mrc          {mrc_step:.3f} s per iteration (median; min {min(mrc[1:]):.3f}, max {max(mrc[1:]):.3f})")
print(f"  torchvision  {torch_step:.3f} s per iteration (median; min {min(torch[1:]):.3f}, max {max(torch[1:]):.3f})")
print(f"  mrc / torchvision: {ratio:.2f} (bar: {bar}){'' if ratio <= float(bar) else '  ABOVE THE BAR'}")
print(f"  mrc's start-up (compiling the step, loading data): {compile_seconds:.1f} s")
PY
    tee "$BENCH/train_summary.txt"
