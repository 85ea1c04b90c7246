#!/usr/bin/env bash
# R50-FPN compiled for CUDA and run on the emulated device (each kernel's CPU form, every
# allocation, copy and launch as on a GPU) on the 800x1066 benchmark photo, compared with the
# CPU program by the parity criteria (compare_detections.py: 95% of the CPU program's detections
# at least). Needs $MRC_TORCH_PYTHON for the weights and the photo (see examples/lib/r50.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
. examples/lib/r50.sh
r50_setup
if ! [ "$R50_PROGRAM" -nt "$MRC_BIN" ] || ! [ "$R50_PROGRAM" -nt "$R50_WEIGHTS" ]; then
    r50_compile
fi
cuda_program=$BENCH/maskrcnn_cuda
if ! [ "$cuda_program" -nt "$MRC_BIN" ] || ! [ "$cuda_program" -nt "$R50_WEIGHTS" ]; then
    show "$MRC_BIN" compile "$MODEL" --target cuda --weights "$R50_WEIGHTS" -O3 -o "$cuda_program"
fi

photo=$BENCH/bench_800x1066.png
show "$R50_PROGRAM" --json "$BENCH/emulate_cpu.json" "$photo"
show "$cuda_program" --device emulator --timings "$BENCH/emulate_cuda_t.json" --json "$BENCH/emulate_cuda.json" "$photo"
show "$py" examples/tools/compare_detections.py \
    "$BENCH/emulate_cpu.json" "$BENCH/emulate_cuda.json" --min-match 0.95
