# shellcheck shell=bash
# Shared by examples/bench_cpu.sh and examples/r50_parity.sh: the Python with torch, the R50-FPN
# random weights and photos cached in target/bench/, and the compiled R50-FPN program.

BENCH=target/bench
MODEL=models/mask_rcnn.model
R50_WEIGHTS=$BENCH/r50.safetensors
R50_PROGRAM=$BENCH/maskrcnn

# Prints a command, then runs it.
show() {
    echo "+ $*" >&2
    "$@"
}

# Sets $py to $MRC_TORCH_PYTHON (default /work/venv-torch/bin/python), a Python with torch and
# torchvision kept outside the repository; installs safetensors and pillow into it if missing.
r50_torch_python() {
    py=${MRC_TORCH_PYTHON:-/work/venv-torch/bin/python}
    if ! [ -x "$py" ] || ! "$py" -c "import torch, torchvision" 2>/dev/null; then
        cat >&2 <<EOF
error: $py is not a Python with torch and torchvision. Make one outside the repository:
  python3 -m venv DIR
  DIR/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
  DIR/bin/pip install safetensors pillow
and set MRC_TORCH_PYTHON=DIR/bin/python.
EOF
        exit 2
    fi
    "$py" -c "import safetensors, PIL" 2>/dev/null ||
        show "$py" -m pip install -q safetensors pillow
}

# The random R50-FPN weights and the photos, made once.
r50_inputs() {
    mkdir -p "$BENCH"
    if ! [ -f "$R50_WEIGHTS" ]; then
        show "$py" examples/tools/make_r50_weights.py "$R50_WEIGHTS.tmp"
        mv "$R50_WEIGHTS.tmp" "$R50_WEIGHTS"
    fi
    # photos.py writes bench_800x1066.png last.
    [ -f "$BENCH/bench_800x1066.png" ] || show "$py" examples/tools/photos.py "$BENCH"
}

# What both scripts need first: the system packages, the Python with torch, mrc and the runtime
# library, the weights and the photos. The dev build: generated code is optimized by mrc (-O3)
# and the runtime and GEMM kernel are optimized even in dev builds (Cargo.toml), so a release
# build of the compiler changes nothing the benchmark measures.
r50_setup() {
    mrc_install_deps
    r50_torch_python
    cargo build --workspace
    r50_inputs
}

# Compiles models/mask_rcnn.model for the CPU with the R50 weights built in.
r50_compile() {
    show "$MRC_BIN" compile "$MODEL" --target cpu --weights "$R50_WEIGHTS" -O3 \
        -o "$R50_PROGRAM"
}
