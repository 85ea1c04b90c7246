#!/usr/bin/env bash
# The CUDA target's performance on paper, for R50-FPN on the 800x1066 benchmark photo: kernels,
# their registers and shared memory (ptxas -v for sm_90), FLOPs and bytes moved per stage and
# the roofline bound on an A100 and an H100 (examples/tools/cuda_roofline.py), and the kernel
# launches per image measured on the emulated device (examples/emulate_r50.sh's timings, when
# it has run). Needs $MRC_TORCH_PYTHON (see examples/lib/r50.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
. examples/lib/r50.sh
r50_setup
mrc_install_ptxas
show "$MRC_BIN" compile "$MODEL" --target cuda:sm_90 --emit ptx -o "$BENCH/r50_sm90.ptx"
"$MRC_PTXAS" -v -arch=sm_90 "$BENCH/r50_sm90.ptx" -o /dev/null 2>&1 | python3 examples/tools/ptxas_summary.py
if [ -f "$BENCH/emulate_cuda_t.json" ]; then
    echo "on the emulated device (examples/emulate_r50.sh): $(cat "$BENCH/emulate_cuda_t.json")"
fi
show "$py" examples/tools/cuda_roofline.py --weights "$R50_WEIGHTS" --json "$BENCH/roofline.json" \
    "$BENCH/bench_800x1066.png"
