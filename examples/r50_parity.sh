#!/usr/bin/env bash
# R50-FPN parity: the compiled program and torchvision, same random weights, on the project's
# photos at their own sizes; compare_detections.py checks the match criteria (95% of
# torchvision's detections at least). Reuses target/bench/maskrcnn when it is newer than mrc, the
# model file and the weights. Needs $MRC_TORCH_PYTHON (see examples/lib/r50.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
. examples/lib/r50.sh
r50_setup
if ! [ "$R50_PROGRAM" -nt "$MRC_BIN" ] || ! [ "$R50_PROGRAM" -nt "$MODEL" ] ||
    ! [ "$R50_PROGRAM" -nt "$R50_WEIGHTS" ]; then
    r50_compile
fi

photos=("$BENCH"/photo*.png)
show "$R50_PROGRAM" --json "$BENCH/parity_mrc.json" "${photos[@]}"
show "$py" examples/tools/torchvision_detect.py --weights "$R50_WEIGHTS" --threads "$(nproc)" \
    --json "$BENCH/parity_torch.json" "${photos[@]}"
show "$py" examples/tools/compare_detections.py \
    "$BENCH/parity_torch.json" "$BENCH/parity_mrc.json" --min-match 0.95
