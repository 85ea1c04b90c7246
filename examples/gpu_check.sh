#!/usr/bin/env bash
# For a machine with an NVIDIA GPU (driver, and cuBLAS: `pip install nvidia-cublas-cu12` or a
# CUDA installation on LD_LIBRARY_PATH). Compiles mini and R50-FPN for CUDA, runs them on the
# GPU on the shipped images and the photos, checks their detections against the CPU programs by
# the parity criteria (compare_detections.py), and times R50-FPN at batch 1 on the 800x1066
# photo against torchvision on CUDA when this Python's torch has CUDA (ratio printed; TF32 off
# on both sides). Needs $MRC_TORCH_PYTHON (see examples/lib/r50.sh). REPEAT runs per process
# (default 10, the first dropped as warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
. examples/lib/r50.sh
r50_setup
REPEAT=${REPEAT:-10}
out=$BENCH/gpu_check
mkdir -p "$out"

# The mini model: the fixture network and weights on the fixture images.
mini_weights=tests/fixtures/model/weights.safetensors
show "$MRC_BIN" compile models/mini.model --target cpu --weights "$mini_weights" -o "$out/mini_cpu"
show "$MRC_BIN" compile models/mini.model --target cuda --weights "$mini_weights" -o "$out/mini_cuda"
show "$out/mini_cpu" --json "$out/mini_cpu.json" tests/fixtures/model/images
show "$out/mini_cuda" --timings "$out/mini_cuda_t.json" --json "$out/mini_cuda.json" tests/fixtures/model/images
show "$py" examples/tools/compare_detections.py "$out/mini_cpu.json" "$out/mini_cuda.json" --min-match 0.95

# R50-FPN on the photos and the benchmark photo.
if ! [ "$R50_PROGRAM" -nt "$MRC_BIN" ] || ! [ "$R50_PROGRAM" -nt "$R50_WEIGHTS" ]; then
    r50_compile
fi
start=$EPOCHREALTIME
show "$MRC_BIN" compile "$MODEL" --target cuda --weights "$R50_WEIGHTS" -O3 -o "$out/maskrcnn_cuda"
compile_seconds=$(awk "BEGIN { print $EPOCHREALTIME - $start }")
photos=("$BENCH"/photo*.png "$BENCH/bench_800x1066.png")
show "$R50_PROGRAM" --json "$out/r50_cpu.json" "${photos[@]}"
show "$out/maskrcnn_cuda" --json "$out/r50_cuda.json" "${photos[@]}"
show "$py" examples/tools/compare_detections.py "$out/r50_cpu.json" "$out/r50_cuda.json" --min-match 0.95

# Batch-1 latency on the benchmark photo.
image=$BENCH/bench_800x1066.png
images=()
for _ in $(seq "$REPEAT"); do images+=("$image"); done
show "$out/maskrcnn_cuda" --timings "$out/mrc_cuda_t.json" --json "$out/latency.json" "${images[@]}"
if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    show "$py" examples/tools/torchvision_detect.py --device cuda --weights "$R50_WEIGHTS" --threads 1 \
        --repeat "$REPEAT" --timings "$out/torch_cuda_t.json" --json "$out/torch_cuda.json" "$image"
    "$py" examples/tools/bench_summary.py --title "R50-FPN Mask R-CNN on CUDA, 800x1066, batch 1, \
$REPEAT runs" --compile-seconds "$compile_seconds" --bar 1.0 --mrc "$out/mrc_cuda_t.json" --torch "$out/torch_cuda_t.json" |
        tee "$out/summary.txt"
else
    echo "torch has no CUDA here: mrc's times only (see $out/mrc_cuda_t.json)"
    cat "$out/mrc_cuda_t.json"
fi
