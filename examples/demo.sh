#!/usr/bin/env bash
# The mrc demo: installs what is missing, builds mrc, checks the shipped models and writes their
# graphs (text, Graphviz dot, and SVG where Graphviz is installed) under out/demo/, compiles the
# mini model (trained on synthetic shapes) to a native program and runs it on the shipped images,
# writing COCO results and overlays, then runs it in process and keeps intermediate tensors. Its
# weights, models/mini.safetensors, are the ones mrc trained (examples/train_shapes.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
mrc_install_deps

# The workspace: mrc and the runtime library that compiled programs link.
cargo build --workspace
out=out/demo
mkdir -p "$out"
weights=models/mini.safetensors

demo_model() {
    local name=$1; shift
    echo "== $name: mrc check $*"
    "$MRC_BIN" check "$@"
    "$MRC_BIN" params "$@" > "$out/$name.params.txt"
    "$MRC_BIN" graph "$@" > "$out/$name.graph.txt"
    "$MRC_BIN" graph "$@" --format dot > "$out/$name.dot"
    if command -v dot >/dev/null; then
        dot -Tsvg "$out/$name.dot" -o "$out/$name.svg"
    fi
}

demo_model mask_rcnn_r50_fpn models/mask_rcnn.model
demo_model mask_rcnn_r101_fpn models/mask_rcnn.model --config models/resnet101.yaml
demo_model mask_rcnn_x101_fpn models/mask_rcnn.model --config models/resnext101_32x8d.yaml
demo_model mini models/mini.model

echo
echo "== mrc compile models/mini.model ($weights embedded) -> $out/mini"
time "$MRC_BIN" compile models/mini.model --target cpu --weights "$weights" -o "$out/mini"

echo
echo "== $out/mini on the shipped images: results JSON and overlays"
"$out/mini" tests/fixtures/model/images/ --json "$out/mini_results.json" --overlay "$out/overlays"

echo
echo "== mini.model on the shipped images, in process (mrc run), FPN level 0 and proposals kept"
"$MRC_BIN" run models/mini.model --weights "$weights" \
    tests/fixtures/model/images/*.png \
    --dump-tensors backbone.fpn.layer_blocks.0.0,rpn.proposals --dump-dir "$out"

echo
echo "wrote $(ls "$out" | wc -l) files to $out/:"
ls "$out"
