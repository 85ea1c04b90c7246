#!/usr/bin/env bash
# CPU benchmark: the compiled R50-FPN Mask R-CNN against torchvision (eager, same random weights)
# and, when `onnxruntime` is importable by the same Python, against ONNX Runtime running
# torchvision's ONNX export of the same model (examples/tools/onnxruntime_detect.py), on one
# 800x1066 photo, THREADS threads each (default 2). ROUNDS times (default 3) each side runs in a
# fresh process on the image REPEAT times (default 3); the first run of each process is warm-up
# and dropped, the median of the rest is compared. Prints both ratios and the three peak RSS
# figures; writes target/bench/summary.txt.
# Needs a Python with torch and torchvision: $MRC_TORCH_PYTHON (see examples/lib/r50.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
. examples/lib/r50.sh
r50_setup

ROUNDS=${ROUNDS:-3}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-2}
BAR=0.6
ONNXRUNTIME_BAR=0.8

image=$BENCH/bench_800x1066.png
images=()
for _ in $(seq "$REPEAT"); do images+=("$image"); done

start=$EPOCHREALTIME
r50_compile
compile_seconds=$(awk "BEGIN { print $EPOCHREALTIME - $start }")

mrc_timings=() torch_timings=() ort_timings=()
with_ort=false
"$py" -c "import onnxruntime" 2>/dev/null && with_ort=true
for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS"
    show "$R50_PROGRAM" --threads "$THREADS" --timings "$BENCH/mrc_t$round.json" \
        --json "$BENCH/mrc.json" "${images[@]}"
    show env OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" \
        "$py" examples/tools/torchvision_detect.py --weights "$R50_WEIGHTS" --threads "$THREADS" \
        --repeat "$REPEAT" --timings "$BENCH/torch_t$round.json" --json "$BENCH/torch.json" "$image"
    mrc_timings+=("$BENCH/mrc_t$round.json")
    torch_timings+=("$BENCH/torch_t$round.json")
    if $with_ort; then
        show env OMP_NUM_THREADS="$THREADS" "$py" examples/tools/onnxruntime_detect.py --weights "$R50_WEIGHTS" \
            --onnx "$BENCH/r50.onnx" --threads "$THREADS" --repeat "$REPEAT" --timings "$BENCH/ort_t$round.json" \
            --json "$BENCH/ort.json" "$image"
        ort_timings+=("$BENCH/ort_t$round.json")
    fi
done
ort_args=()
if $with_ort; then
    ort_args=(--onnxruntime "${ort_timings[@]}" --onnxruntime-bar "$ONNXRUNTIME_BAR")
else
    echo "(ONNX Runtime not importable by $py: pip install onnxruntime onnx to compare with it too)"
fi

"$py" examples/tools/bench_summary.py --title "R50-FPN Mask R-CNN, 800x1066, $THREADS threads, \
$ROUNDS rounds of $REPEAT runs" --compile-seconds "$compile_seconds" --bar "$BAR" \
    --mrc "${mrc_timings[@]}" --torch "${torch_timings[@]}" "${ort_args[@]}" | tee "$BENCH/summary.txt"
