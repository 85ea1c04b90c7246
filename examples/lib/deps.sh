# shellcheck shell=bash
# Shared by the examples and tests/run.sh: installs what mrc needs and is missing.
# Debian 12: LLVM/MLIR 22 and the C libraries the melior crates link against.

# The mrc that `cargo build` makes, wherever $CARGO_TARGET_DIR puts the build; used by the
# scripts that source this file.
# shellcheck disable=SC2034
MRC_BIN=${CARGO_TARGET_DIR:-target}/debug/mrc

MRC_APT_PACKAGES="llvm-22-dev libmlir-22-dev mlir-22-tools libpolly-22-dev libclang-22-dev \
libzstd-dev libz3-dev libxml2-dev zlib1g-dev graphviz"

mrc_install_deps() {
    mrc_check_dev_null || return 1
    local missing=()
    for p in $MRC_APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
    fi
    if ! command -v cargo >/dev/null; then
        echo "error: cargo not found; install Rust (https://rustup.rs)" >&2
        return 1
    fi
}

# Cargo gives rustc its probe source on standard input from /dev/null. Where something running
# as root renamed a file over /dev/null, it is a regular file holding whatever programs threw
# away, and a fresh build fails reading that as Rust ("unknown start of token"). Put the device
# back where we can, and say so.
mrc_check_dev_null() {
    [ -c /dev/null ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "warning: /dev/null was not a character device (a file replaced it); recreating it" >&2
        rm -f /dev/null && mknod -m 666 /dev/null c 1 3 && return 0
    fi
    echo "error: /dev/null is not a character device; as root: rm /dev/null && mknod -m 666 /dev/null c 1 3" >&2
    return 1
}

# ptxas, which assembles the CUDA target's PTX: NVIDIA's PyPI package `nvidia-cuda-nvcc-cu12`
# in a virtual environment outside the repository (Debian 12's pip refuses system-wide
# installs). Sets MRC_PTXAS to its path.
MRC_TOOLS_VENV=${MRC_TOOLS_VENV:-$HOME/.cache/mrc/venv}

mrc_install_ptxas() {
    local ptxas
    ptxas=$(ls "$MRC_TOOLS_VENV"/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas 2>/dev/null | head -1)
    if [ -z "$ptxas" ]; then
        if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
            local sudo=""
            [ "$(id -u)" -ne 0 ] && sudo="sudo"
            $sudo apt-get update -q
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3-venv
        fi
        echo "installing ptxas (nvidia-cuda-nvcc-cu12) into $MRC_TOOLS_VENV"
        python3 -m venv "$MRC_TOOLS_VENV"
        "$MRC_TOOLS_VENV/bin/pip" install -q nvidia-cuda-nvcc-cu12
        ptxas=$(ls "$MRC_TOOLS_VENV"/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas 2>/dev/null | head -1)
    fi
    if [ -z "$ptxas" ]; then
        echo "error: ptxas not found after installing nvidia-cuda-nvcc-cu12 into $MRC_TOOLS_VENV" >&2
        return 1
    fi
    export MRC_PTXAS="$ptxas"
}
