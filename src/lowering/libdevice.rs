//! NVIDIA's libdevice (`libdevice.10.bc`): `convert-gpu-to-nvvm` lowers `math` ops in kernels
//! (`exp` of a sigmoid, `floor`, `ceil`, `sqrt`, `log` ...) to calls of its `__nv_*` functions,
//! which must be linked into the kernels' module before PTX is generated: PTX cannot call
//! functions it does not define. It is found when a compilation needs it, first where
//! `$MRC_LIBDEVICE` says, then in the tools environment that `examples/lib/deps.sh` installs
//! ptxas into (the `nvidia-cuda-nvcc-cu12` package), then in a CUDA installation.

use std::path::{Path, PathBuf};

use super::error::LoweringError;

const FILE: &str = "libdevice.10.bc";

/// The path of libdevice, or an error saying where it was looked for and how to get it.
pub fn find() -> Result<PathBuf, LoweringError> {
    if let Some(path) = std::env::var_os("MRC_LIBDEVICE") {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(missing(&format!("$MRC_LIBDEVICE names `{}`, which is not a file", path.display()))) };
    }
    let candidates = candidates();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let searched: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        missing(&format!("it is in none of {}", searched.join(", ")))
    })
}

fn missing(why: &str) -> LoweringError {
    LoweringError::Build(format!(
        "the kernels call math functions of NVIDIA's libdevice ({FILE}), and {why}: \
         install it with `pip install nvidia-cuda-nvcc-cu12` (into $MRC_TOOLS_VENV, default ~/.cache/mrc/venv, \
         as examples/lib/deps.sh does), or set MRC_LIBDEVICE to its path"
    ))
}

/// Where libdevice may be, in order: the tools environment's Python packages, `$CUDA_HOME`,
/// `/usr/local/cuda`.
fn candidates() -> Vec<PathBuf> {
    let venv = std::env::var_os("MRC_TOOLS_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/mrc/venv")));
    let mut candidates = vec![];
    if let Some(venv) = venv {
        let lib = venv.join("lib");
        let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
            .map(|entries| entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("python3")).map(|e| e.path()).collect())
            .unwrap_or_default();
        pythons.sort();
        if pythons.is_empty() {
            pythons.push(lib.join("python3"));
        }
        candidates.extend(pythons.iter().map(|python| python.join("site-packages/nvidia/cuda_nvcc/nvvm/libdevice").join(FILE)));
    }
    if let Some(cuda) = std::env::var_os("CUDA_HOME") {
        candidates.push(Path::new(&cuda).join("nvvm/libdevice").join(FILE));
    }
    candidates.push(Path::new("/usr/local/cuda/nvvm/libdevice").join(FILE));
    candidates
}
