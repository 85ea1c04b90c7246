//! What `mrc compile` appends to a program: its weights and its [`ProgramManifest`], read back
//! from the program's own file at start-up.
//!
//! Layout at the end of the file: weights (safetensors, empty when none are embedded), the
//! manifest as JSON, their lengths as little-endian u64, then [`TRAILER_MAGIC`].

use std::path::Path;

use crate::abi::forward::Interface;

pub const TRAILER_MAGIC: &[u8; 8] = b"MRCPROG1";

/// The model as the compiled program knows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProgramManifest {
    pub model_name: String,
    /// Label names, indexed by label (empty when the model config has no `class_names`).
    pub class_names: Vec<String>,
    pub interface: Interface,
}

/// The trailer of a program file: the manifest (a [`ProgramManifest`], or a training program's
/// `TrainingManifest`), and the embedded weights' bytes (memory-mapped
/// for the life of the process) if any.
pub fn read<M: serde::de::DeserializeOwned>(path: &Path) -> Result<(M, Option<&'static [u8]>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the program's own file, not modified while it runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes: &'static [u8] = Box::leak(Box::new(map));
    let corrupt = || format!("{}: no model trailer (was this file written by `mrc compile`?)", path.display());
    let end = bytes.len().checked_sub(24).ok_or_else(corrupt)?;
    if &bytes[end + 16..] != TRAILER_MAGIC {
        return Err(corrupt());
    }
    let length = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let (weights_len, manifest_len) = (length(end), length(end + 8));
    let manifest_start = end.checked_sub(manifest_len).ok_or_else(corrupt)?;
    let weights_start = manifest_start.checked_sub(weights_len).ok_or_else(corrupt)?;
    let manifest = serde_json::from_slice(&bytes[manifest_start..end]).map_err(|e| format!("{}: model trailer: {e}", path.display()))?;
    let weights = (weights_len > 0).then(|| &bytes[weights_start..manifest_start]);
    Ok((manifest, weights))
}
