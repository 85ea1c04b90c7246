#!/usr/bin/env bash
# Installs what is missing, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
mrc_install_deps
mrc_install_ptxas
cargo test --workspace "$@"
