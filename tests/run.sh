#!/usr/bin/env bash
# Installs what is missing, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
mrc_install_deps
mrc_install_ptxas
# glibc fills freed memory with this byte: a buffer that generated code frees before its last
# use (src/lowering/liveness.rs) then reads as garbage and fails the comparisons with torchvision.
export MALLOC_PERTURB_=${MALLOC_PERTURB_:-165}
cargo test --workspace "$@"
