//! Reading and writing safetensors through the `safetensors` crate, with messages that say
//! what is wrong with a damaged file.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorInfo;
use safetensors::{Dtype as StDtype, SafeTensorError, SafeTensors, View};

use super::error::{format_error, Result, WeightsError};
use super::torch::floats_to_f32;
use super::{numel, Backing, Dtype, Tensor, Weights};

pub(super) fn read(origin: &str, backing: &Backing) -> Result<Vec<(String, Tensor)>> {
    let bytes = backing.bytes();
    let (header_len, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| WeightsError::Format { origin: origin.to_string(), reason: explain(bytes, e) })?;
    let data_start = 8 + header_len;
    let mut tensors = Vec::new();
    for (name, info) in metadata.tensors() {
        let (begin, end) = info.data_offsets;
        let range = data_start + begin..data_start + end;
        let tensor = match info.dtype {
            StDtype::F16 | StDtype::BF16 | StDtype::F64 => {
                // The crate checked that the range holds exactly the shape's elements.
                let values = floats_to_f32(info.dtype, &bytes[range]);
                Tensor::owned(Dtype::F32, info.shape.clone(), bytemuck::cast_slice(&values))
            }
            dtype => {
                let Some(dtype) = from_safetensors(dtype) else {
                    return format_error(origin, format!("tensor {name} has unsupported dtype {dtype:?}"));
                };
                Tensor::view(dtype, info.shape.clone(), backing, range)
            }
        };
        tensors.push((name, tensor));
    }
    Ok(tensors)
}

/// A sentence for each way the crate rejects a file; truncation names the first tensor cut off.
fn explain(bytes: &[u8], error: SafeTensorError) -> String {
    let len = bytes.len();
    match error {
        SafeTensorError::HeaderTooSmall => format!("file of {len} bytes is too short for a safetensors header"),
        SafeTensorError::HeaderTooLarge => "safetensors header length is implausibly large".into(),
        SafeTensorError::InvalidHeaderLength => {
            let header = u64::from_le_bytes(bytes[..8].try_into().expect("checked by the crate"));
            format!("safetensors header needs bytes 8..{}, file has {len}", header.saturating_add(8))
        }
        SafeTensorError::InvalidHeader
        | SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization
        | SafeTensorError::JsonError(_) => "safetensors header is not valid JSON".into(),
        SafeTensorError::InvalidOffset(name) => format!("tensor {name} has data offsets that overlap or leave gaps"),
        SafeTensorError::MetadataIncompleteBuffer => incomplete(bytes),
        other => format!("invalid safetensors file ({other:?})"),
    }
}

/// The header is valid but the data section does not end where the file does.
fn incomplete(bytes: &[u8]) -> String {
    let len = bytes.len();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("header was read")) as usize;
    let data_start = 8 + header_len;
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..data_start]).unwrap_or_default();
    let mut tensors: Vec<(String, TensorInfo)> = header
        .into_iter()
        .filter_map(|(name, v)| serde_json::from_value::<TensorInfo>(v).ok().map(|info| (name, info)))
        .collect();
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    let cut = tensors.iter().find(|(_, info)| data_start + info.data_offsets.1 > len);
    match (cut, tensors.last()) {
        (Some((name, info)), _) => format!(
            "truncated: tensor {name} needs bytes {}..{}, file has {len}",
            data_start + info.data_offsets.0,
            data_start + info.data_offsets.1
        ),
        (None, Some((_, last))) => {
            format!("{} bytes of unknown data after the last tensor", len - data_start - last.data_offsets.1)
        }
        (None, None) => format!("{} bytes of unknown data after an empty header", len - data_start),
    }
}

fn from_safetensors(dtype: StDtype) -> Option<Dtype> {
    Some(match dtype {
        StDtype::F32 => Dtype::F32,
        StDtype::I64 => Dtype::I64,
        StDtype::I32 => Dtype::I32,
        StDtype::I16 => Dtype::I16,
        StDtype::I8 => Dtype::I8,
        StDtype::U8 => Dtype::U8,
        StDtype::BOOL => Dtype::Bool,
        _ => return None,
    })
}

impl View for &Tensor {
    fn dtype(&self) -> StDtype {
        match self.dtype {
            Dtype::F32 => StDtype::F32,
            Dtype::I64 => StDtype::I64,
            Dtype::I32 => StDtype::I32,
            Dtype::I16 => StDtype::I16,
            Dtype::I8 => StDtype::I8,
            Dtype::U8 => StDtype::U8,
            Dtype::Bool => StDtype::BOOL,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.bytes())
    }

    fn data_len(&self) -> usize {
        numel(&self.shape).unwrap_or(0) * self.dtype.size()
    }
}

pub(super) fn serialize(weights: &Weights) -> Result<Vec<u8>> {
    safetensors::serialize(weights.tensors.iter(), &None).map_err(|e| WeightsError::Format {
        origin: weights.origin.clone(),
        reason: format!("cannot serialize: {e:?}"),
    })
}

pub(super) fn write_atomically(weights: &Weights, path: &Path) -> Result<()> {
    let bytes = serialize(weights)?;
    crate::program::coco::write_replacing(path, &bytes).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })
}
