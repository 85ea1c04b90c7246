#!/usr/bin/env bash
# Installs what is missing, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
. examples/lib/deps.sh
mrc_install_deps
# Built first: the tests of `mrc compile` link programs with the runtime library beside `mrc`.
cargo build --workspace
cargo test --workspace "$@"
