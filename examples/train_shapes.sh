#!/usr/bin/env bash
# Trains models/mini.model from torchvision's initialization with the recipe of its `train`
# section (the one that trained the fixtures' torchvision model: 2,000 iterations of the next 4
# images of shapes/train, SGD lr 0.02 with warm-up and steps), then compiles the trained weights
# and evaluates them on shapes/val with COCO's AP. Prints the training time and box/mask AP
# (torchvision's model: box 0.366, mask 0.389, 65 minutes on 2 threads).
#
#   examples/train_shapes.sh [SHAPES_DIR] [RUN_DIR] [ITERATIONS]
#
# SHAPES_DIR holds train/ and val/ (default ../shared/datasets/shapes); a short ITERATIONS
# (e.g. 20) checks the pipeline end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
mrc_install_deps

shapes=${1:-../shared/datasets/shapes}
run=${2:-out/train_shapes}
iterations=${3:-2000}
for set in train val; do
    if [ ! -f "$shapes/$set/annotations.json" ]; then
        echo "error: $shapes/$set/annotations.json not found (make a set with: mrc data shapes --n 8000 -o DIR/train)" >&2
        exit 1
    fi
done

cargo build --workspace
rm -rf "$run"
mkdir -p "$(dirname "$run")"
start=$(date +%s)
"$MRC_BIN" train models/mini.model --data "$shapes/train/annotations.json" --iterations "$iterations" --threads 2 -o "$run"
trained=$(( $(date +%s) - start ))

"$MRC_BIN" compile models/mini.model --weights "$run/weights.safetensors" -o "$run/mini"
"$run/mini" "$shapes/val/images" --threads 2 --json "$run/val_results.json" --coco "$shapes/val/annotations.json" > "$run/val_eval.txt"
"$MRC_BIN" eval "$run/val_results.json" --gt "$shapes/val/annotations.json" --json "$run/val_stats.json" > /dev/null

# The demo compiles the mini model with these weights when they are there.
cp "$run/weights.safetensors" models/mini.safetensors
echo "wrote models/mini.safetensors (examples/demo.sh uses it)"

python3 - "$run/val_stats.json" "$iterations" "$trained" <<'PY'
import json, sys
stats, iterations, seconds = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
print(f"trained {iterations} iterations in {seconds} s, compiling the step included ({seconds / max(iterations, 1):.2f} s per iteration)")
for kind, reference in (("bbox", 0.366), ("segm", 0.389)):
    ap = stats[kind]["summary"][0]
    print(f"{kind} AP {ap:.3f} (torchvision's model: {reference})")
PY
