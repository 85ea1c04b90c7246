#!/usr/bin/env bash
# Training benchmark: mrc's training step for models/mini.model against torchvision training the
# same architecture (examples/tools/train_torchvision.py) with the same recipe on the same batches
# of shapes/train, THREADS threads each (default 2). The step is compiled once (`mrc compile
# --train`: the step `mrc train` runs, as a standalone program); then ROUNDS rounds (default 3)
# each run ITERATIONS steps (default 10) of mrc, then of torchvision. Alternating rounds keeps a
# slow minute of a shared machine from falling on one side only. Each run's first step is
# warm-up and dropped; the medians of all the other steps are compared (mrc's per-iteration wall
# time from its metrics.jsonl, which includes waiting for the loader; torchvision's steps run on
# batches decoded beforehand). Writes target/bench/train_summary.txt.
#
#   examples/bench_train.sh [SHAPES_TRAIN_JSON]
#
# Needs a Python with torch and torchvision: $MRC_TORCH_PYTHON (see examples/lib/r50.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
. examples/lib/r50.sh

ITERATIONS=${ITERATIONS:-10}
ROUNDS=${ROUNDS:-3}
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
program=$BENCH/train_program
start=$EPOCHREALTIME
show "$MRC_BIN" compile models/mini.model --train --target cpu -o "$program"
compile_seconds=$(awk "BEGIN { print $EPOCHREALTIME - $start }")

for round in $(seq 1 "$ROUNDS"); do
    run=$BENCH/train_run_$round
    rm -rf "$run"
    show "$program" --data "$data" --iterations "$ITERATIONS" --threads "$THREADS" --checkpoint-every 0 -o "$run"
    show env OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" "$py" examples/tools/train_torchvision.py \
        --data "$data" --iterations "$ITERATIONS" --threads "$THREADS" --timings "$BENCH/train_torch_$round.json"
done

"$py" - "$BENCH" "$ROUNDS" "$compile_seconds" "$ITERATIONS" "$THREADS" "$BAR" <<'PY' |
import json, statistics, sys
bench, rounds, compile_seconds, iterations, threads, bar = sys.argv[1:]
mrc, torch = [], []
print(f"Training step, mini Mask R-CNN, 4 images of 256x256 (320x320 after the transform), {threads} threads, "
      f"{rounds} alternating rounds of {iterations} iterations each, each run's first dropped")
for round in range(1, int(rounds) + 1):
    m = [json.loads(line)["seconds"] for line in open(f"{bench}/train_run_{round}/metrics.jsonl")][1:]
    t = json.load(open(f"{bench}/train_torch_{round}.json"))["seconds"][1:]
    mrc += m
    torch += t
    print(f"  round {round}: mrc {statistics.median(m):.3f} s, torchvision {statistics.median(t):.3f} s, "
          f"ratio {statistics.median(m) / statistics.median(t):.2f}")
mrc_step, torch_step = statistics.median(mrc), statistics.median(torch)
ratio = mrc_step / torch_step
print(f"  mrc          {mrc_step:.3f} s per iteration (median of {len(mrc)}; min {min(mrc):.3f}, max {max(mrc):.3f})")
print(f"  torchvision  {torch_step:.3f} s per iteration (median of {len(torch)}; min {min(torch):.3f}, max {max(torch):.3f})")
print(f"  mrc / torchvision: {ratio:.2f} (bar: {bar}){'' if ratio <= float(bar) else '  ABOVE THE BAR'}")
print(f"  compiling the step (mrc compile --train): {float(compile_seconds):.1f} s")
PY
    tee "$BENCH/train_summary.txt"
