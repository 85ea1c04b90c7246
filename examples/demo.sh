#!/usr/bin/env bash
# The mrc demo: installs what is missing, builds mrc, checks the shipped models and writes their
# graphs (text, Graphviz dot, and SVG where Graphviz is installed) under out/demo/, then runs the
# mini model on the shipped images in process and keeps some intermediate tensors.
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
mrc_install_deps

cargo build --bin mrc
mrc=target/debug/mrc
out=out/demo
mkdir -p "$out"

demo_model() {
    local name=$1; shift
    echo "== $name: mrc check $*"
    "$mrc" check "$@"
    "$mrc" params "$@" > "$out/$name.params.txt"
    "$mrc" graph "$@" > "$out/$name.graph.txt"
    "$mrc" graph "$@" --format dot > "$out/$name.dot"
    if command -v dot >/dev/null; then
        dot -Tsvg "$out/$name.dot" -o "$out/$name.svg"
    fi
}

demo_model mask_rcnn_r50_fpn models/mask_rcnn.model
demo_model mask_rcnn_r101_fpn models/mask_rcnn.model --config models/resnet101.yaml
demo_model mask_rcnn_x101_fpn models/mask_rcnn.model --config models/resnext101_32x8d.yaml
demo_model mini models/mini.model

echo
echo "== mini.model on the shipped images, in process (mrc run), FPN level 0 and proposals kept"
"$mrc" run models/mini.model --weights tests/fixtures/model/weights.safetensors \
    tests/fixtures/model/images/*.png \
    --dump-tensors backbone.fpn.layer_blocks.0.0,rpn.proposals --dump-dir "$out"

echo
echo "wrote $(ls "$out" | wc -l) files to $out/:"
ls "$out"
