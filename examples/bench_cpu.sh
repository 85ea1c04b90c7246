#!/usr/bin/env bash
# CPU benchmark: the compiled R50-FPN Mask R-CNN against torchvision (eager, same random weights)
# on one 800x1066 photo, THREADS threads each (default 2). ROUNDS times (default 3) each side runs
# in a fresh process on the image REPEAT times (default 3); the first run of each process is
# warm-up and dropped, the median of the rest is compared. Writes target/bench/summary.txt.
# Needs a Python with torch and torchvision: $MRC_TORCH_PYTHON (see examples/lib/r50.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
. examples/lib/r50.sh
r50_setup

ROUNDS=${ROUNDS:-3}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-2}
BAR=1.5

image=$BENCH/bench_800x1066.png
images=()
for _ in $(seq "$REPEAT"); do images+=("$image"); done

start=$EPOCHREALTIME
r50_compile
compile_seconds=$(awk "BEGIN { print $EPOCHREALTIME - $start }")

mrc_timings=() torch_timings=()
for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS"
    show "$R50_PROGRAM" --threads "$THREADS" --timings "$BENCH/mrc_t$round.json" \
        --json "$BENCH/mrc.json" "${images[@]}"
    show env OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" \
        "$py" examples/tools/torchvision_detect.py --weights "$R50_WEIGHTS" --threads "$THREADS" \
        --repeat "$REPEAT" --timings "$BENCH/torch_t$round.json" --json "$BENCH/torch.json" "$image"
    mrc_timings+=("$BENCH/mrc_t$round.json")
    torch_timings+=("$BENCH/torch_t$round.json")
done

"$py" examples/tools/bench_summary.py --title "R50-FPN Mask R-CNN, 800x1066, $THREADS threads, \
$ROUNDS rounds of $REPEAT runs" --compile-seconds "$compile_seconds" --bar "$BAR" \
    --mrc "${mrc_timings[@]}" --torch "${torch_timings[@]}" | tee "$BENCH/summary.txt"
