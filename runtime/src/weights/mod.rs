//! Model weights: named tensors read from safetensors files, torch `.pth` checkpoints (zip and
//! legacy formats) or bytes embedded in an executable, checked against what a model expects,
//! and written back as safetensors.
//!
//! Names are always torchvision's current `state_dict` names: pre-0.13 names are renamed on load
//! (see [`current_name`]). Floating-point tensors are stored as f32 (f16, bf16 and f64
//! checkpoints are converted); integer and bool tensors (`num_batches_tracked`) keep their type.
//! Contiguous f32 data stays where it was read, in the memory-mapped file or the embedded bytes,
//! whenever it is aligned; everything else is copied once.

mod error;
mod names;
mod pickle;
mod safetensors_io;
mod torch;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

pub use error::{Problem, Result, WeightsError};
pub use names::current_name;

// Tensor bytes are viewed in place as host numbers; safetensors and torch store little-endian.
#[cfg(target_endian = "big")]
compile_error!("mrc-runtime weights assume a little-endian host");

/// The element types a loaded tensor can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dtype {
    F32,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::I64 => "i64",
            Dtype::I32 => "i32",
            Dtype::I16 => "i16",
            Dtype::I8 => "i8",
            Dtype::U8 => "u8",
            Dtype::Bool => "bool",
        })
    }
}

/// Where a tensor's bytes live.
#[derive(Clone)]
enum Backing {
    /// Copied or converted data; u64 words keep it aligned for every dtype.
    Owned(Arc<Vec<u64>>),
    Mapped(Arc<Mmap>),
    Static(&'static [u8]),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Owned(words) => bytemuck::cast_slice(words.as_slice()),
            Backing::Mapped(map) => map,
            Backing::Static(bytes) => bytes,
        }
    }
}

/// One named tensor: a dtype, a shape and its row-major little-endian data.
#[derive(Clone)]
pub struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    backing: Backing,
    range: Range<usize>,
}

impl Tensor {
    /// A tensor holding a copy of `bytes`; `None` unless they are exactly `shape`'s elements.
    pub fn from_le_bytes(dtype: Dtype, shape: Vec<usize>, bytes: &[u8]) -> Option<Tensor> {
        let numel = numel(&shape)?;
        (numel.checked_mul(dtype.size()) == Some(bytes.len())).then(|| Tensor::owned(dtype, shape, bytes))
    }

    /// A tensor of f32 values; `None` unless `values` has exactly `shape`'s element count.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Option<Tensor> {
        Tensor::from_le_bytes(Dtype::F32, shape, bytemuck::cast_slice(values))
    }

    fn owned(dtype: Dtype, shape: Vec<usize>, bytes: &[u8]) -> Tensor {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Tensor { dtype, shape, backing: Backing::Owned(Arc::new(words)), range: 0..bytes.len() }
    }

    /// A view of `backing[range]`, or a copy where the bytes are not aligned for `dtype`.
    /// The caller has checked that `range` lies inside `backing` and fits `shape`.
    fn view(dtype: Dtype, shape: Vec<usize>, backing: &Backing, range: Range<usize>) -> Tensor {
        let bytes = &backing.bytes()[range.clone()];
        if (bytes.as_ptr() as usize).is_multiple_of(dtype.size()) {
            Tensor { dtype, shape, backing: backing.clone(), range }
        } else {
            Tensor::owned(dtype, shape, bytes)
        }
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements' little-endian bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        &self.backing.bytes()[self.range.clone()]
    }

    /// The values of an f32 tensor; `None` for other dtypes.
    pub fn as_f32(&self) -> Option<&[f32]> {
        // Construction keeps data aligned for its dtype, so the cast cannot fail.
        (self.dtype == Dtype::F32).then(|| bytemuck::cast_slice(self.bytes()))
    }

    /// Whether the data lives in the file or embedded bytes it was read from.
    pub fn is_borrowed(&self) -> bool {
        !matches!(self.backing, Backing::Owned(_))
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} {:?})", self.dtype, self.shape)
    }
}

fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// What a model expects of one of its state tensors.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
}

/// The on-disk formats [`Weights::open`] reads; told apart by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// `torch.save` since torch 1.6: a zip of `data.pkl` and one record per storage.
    TorchZip,
    /// `torch.save` before torch 1.6 (or with `_use_new_zipfile_serialization=False`).
    TorchLegacy,
}

impl Format {
    pub fn detect(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(b"PK\x03\x04") {
            Some(Format::TorchZip)
        } else if bytes.starts_with(torch::LEGACY_MAGIC) {
            Some(Format::TorchLegacy)
        } else if bytes.len() > 8 && bytes[8] == b'{' {
            Some(Format::Safetensors)
        } else {
            None
        }
    }
}

/// `BatchNorm` counters: in torchvision's state dicts, but no model computation reads them.
fn is_ignored(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

/// A set of named tensors, keyed by current torchvision names.
#[derive(Clone, Debug)]
pub struct Weights {
    origin: String,
    tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    /// Reads a safetensors file or a torch checkpoint (zip or legacy), renaming pre-0.13 names.
    /// The file is memory-mapped; contiguous f32 tensors are read in place.
    pub fn open(path: impl AsRef<Path>) -> Result<Weights> {
        let path = path.as_ref();
        let io = |source| WeightsError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; like every loader of mapped weights, this assumes no one
        // truncates or rewrites the file while the program runs.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Weights::read(path.display().to_string(), Backing::Mapped(Arc::new(map)))
    }

    /// Reads safetensors bytes embedded in the executable, without copying aligned tensors.
    pub fn from_static_safetensors(bytes: &'static [u8]) -> Result<Weights> {
        let origin = "embedded weights".to_string();
        if Format::detect(bytes) != Some(Format::Safetensors) {
            return error::format_error(&origin, "not in safetensors format");
        }
        Weights::read(origin, Backing::Static(bytes))
    }

    /// Builds weights from tensors already in memory, renaming pre-0.13 names.
    pub fn from_tensors(
        origin: impl Into<String>,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<Weights> {
        let mut weights = Weights { origin: origin.into(), tensors: BTreeMap::new() };
        for (name, tensor) in tensors {
            weights.insert(name, tensor)?;
        }
        Ok(weights)
    }

    fn read(origin: String, backing: Backing) -> Result<Weights> {
        let entries = match Format::detect(backing.bytes()) {
            Some(Format::Safetensors) => safetensors_io::read(&origin, &backing)?,
            Some(Format::TorchZip) => torch::read_zip(&origin, &backing)?,
            Some(Format::TorchLegacy) => torch::read_legacy(&origin, &backing)?,
            None if !backing.bytes().is_empty()
                && (torch::LEGACY_MAGIC.starts_with(backing.bytes()) || b"PK\x03\x04".starts_with(backing.bytes())) =>
            {
                let reason = format!("truncated: a torch checkpoint cut off after {} bytes", backing.bytes().len());
                return error::format_error(&origin, reason);
            }
            None => {
                let reason = format!(
                    "not a safetensors file or a torch checkpoint ({} bytes, starting {:02x?})",
                    backing.bytes().len(),
                    &backing.bytes()[..backing.bytes().len().min(8)]
                );
                return error::format_error(&origin, reason);
            }
        };
        Weights::from_tensors(origin, entries)
    }

    fn insert(&mut self, name: String, tensor: Tensor) -> Result<()> {
        let current = current_name(&name).unwrap_or_else(|| name.clone());
        if self.tensors.contains_key(&current) {
            let reason = if current == name {
                format!("{name} appears twice")
            } else {
                format!("holds both {current} and its pre-0.13 name {name}")
            };
            return error::format_error(&self.origin, reason);
        }
        self.tensors.insert(current, tensor);
        Ok(())
    }

    /// The file these weights came from, or `embedded weights`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(name, tensor)| (name.as_str(), tensor))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Checks the tensors against a model's state; one error lists every missing, unexpected,
    /// mis-shaped and mis-typed tensor. `num_batches_tracked` entries are ignored on both sides.
    pub fn validate(&self, expected: &[TensorSpec]) -> Result<()> {
        let mut problems = Vec::new();
        for spec in expected.iter().filter(|s| !is_ignored(&s.name)) {
            let Some(tensor) = self.tensors.get(&spec.name) else {
                problems.push(Problem::Missing {
                    name: spec.name.clone(),
                    shape: spec.shape.clone(),
                    dtype: spec.dtype,
                });
                continue;
            };
            if tensor.shape != spec.shape {
                problems.push(Problem::Shape {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found: tensor.shape.clone(),
                });
            }
            if tensor.dtype != spec.dtype {
                problems.push(Problem::Dtype { name: spec.name.clone(), expected: spec.dtype, found: tensor.dtype });
            }
        }
        let known: std::collections::HashSet<&str> = expected.iter().map(|s| s.name.as_str()).collect();
        for (name, tensor) in &self.tensors {
            if !is_ignored(name) && !known.contains(name.as_str()) {
                problems.push(Problem::Unexpected {
                    name: name.clone(),
                    shape: tensor.shape.clone(),
                    dtype: tensor.dtype,
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WeightsError::Mismatch { origin: self.origin.clone(), problems })
        }
    }

    /// The tensors as a safetensors file, for embedding in an executable.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        safetensors_io::serialize(self)
    }

    /// Writes a safetensors file atomically: into a temporary file beside `path`, renamed over
    /// it only when complete, so that a failure leaves no partial file.
    pub fn write_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        safetensors_io::write_atomically(self, path.as_ref())
    }
}
