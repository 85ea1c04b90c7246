//! Torch checkpoints (`torch.save`), in both of torch's formats:
//! - zip (torch ≥ 1.6): `<name>/data.pkl` holds the pickled object, `<name>/data/<key>` the raw
//!   bytes of each storage, stored uncompressed, so they are read in place;
//! - legacy (torch < 1.6): pickles of a magic number, the protocol version, system info and the
//!   object, then the list of storage keys, then each storage as an 8-byte element count
//!   followed by its raw bytes.
//!
//! In both, a tensor is `_rebuild_tensor_v2(storage, offset, size, stride)` over a storage named
//! by a persistent id. The object may be the state dict itself or a dict holding it under
//! `model` or `state_dict`.

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;

use zip::{CompressionMethod, ZipArchive};

use super::error::{corrupt, format_error, Result};
use super::pickle::{self, StorageType, TensorRef, Value};
use super::{numel, Backing, Dtype, Tensor};

/// The first pickle of a legacy checkpoint: protocol 2, the long 0x1950a86a20f9469cfc6c, STOP.
pub(super) const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

pub(super) fn read_zip(origin: &str, backing: &Backing) -> Result<Vec<(String, Tensor)>> {
    let bytes = backing.bytes();
    let zip_error =
        |e: zip::result::ZipError| corrupt(origin, format!("not a readable zip archive, truncated or corrupt? ({e})"));
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(zip_error)?;
    let mut records = HashMap::new();
    for i in 0..archive.len() {
        let record = archive.by_index_raw(i).map_err(zip_error)?;
        let name = record.name().map_err(zip_error)?.into_owned();
        if record.compression() != CompressionMethod::Stored {
            return format_error(origin, format!("record {name} is compressed; torch stores records uncompressed"));
        }
        let Some(start) = record.data_start() else {
            return format_error(origin, format!("record {name} has no readable local header"));
        };
        let range = start as usize..(start + record.compressed_size()) as usize;
        if range.end > bytes.len() {
            return format_error(origin, format!("record {name} needs bytes {range:?}, file has {}", bytes.len()));
        }
        records.insert(name, range);
    }
    // torch names the top folder after the file it saved to; `archive/` is only the usual case.
    let is_top_pickle = |name: &str| name.split_once('/').is_some_and(|(_, rest)| rest == "data.pkl");
    let Some(pickle_name) = records.keys().find(|n| is_top_pickle(n)).cloned() else {
        return format_error(origin, "zip archive without <name>/data.pkl: not a torch checkpoint");
    };
    let prefix = &pickle_name[..pickle_name.len() - "data.pkl".len()];
    if let Some(order) = records.get(&format!("{prefix}byteorder")) {
        if &bytes[order.clone()] != b"little" {
            return format_error(origin, "checkpoint was saved on a big-endian machine");
        }
    }
    let (root, _) = pickle::load(&bytes[records[&pickle_name].clone()], 0)
        .map_err(|e| corrupt(origin, format!("{pickle_name}: {e}")))?;
    let entries = state_dict(origin, root)?;
    let storages: HashMap<String, Range<usize>> = entries
        .iter()
        .filter_map(|(_, t)| {
            let key = &t.storage.key;
            records.get(&format!("{prefix}data/{key}")).map(|r| (key.clone(), r.clone()))
        })
        .collect();
    materialize_all(origin, backing, entries, &storages)
}

pub(super) fn read_legacy(origin: &str, backing: &Backing) -> Result<Vec<(String, Tensor)>> {
    let bytes = backing.bytes();
    let load = |pos: usize, what: &str| pickle::load(bytes, pos).map_err(|e| corrupt(origin, format!("{what}: {e}")));
    let (protocol, pos) = load(LEGACY_MAGIC.len(), "protocol version")?;
    if protocol != Value::Int(LEGACY_PROTOCOL_VERSION) {
        return format_error(origin, format!("unsupported legacy protocol version ({})", protocol.kind()));
    }
    let (system, pos) = load(pos, "system info")?;
    if let Value::Dict(items) = &system {
        if items.iter().any(|(k, v)| *k == Value::Str("little_endian".into()) && *v == Value::Bool(false)) {
            return format_error(origin, "checkpoint was saved on a big-endian machine");
        }
    }
    let (root, pos) = load(pos, "pickled object")?;
    let (keys, mut pos) = load(pos, "storage key list")?;
    let Value::List(keys) = keys else {
        return format_error(origin, format!("storage key list is {}", keys.kind()));
    };
    let mut types = HashMap::new();
    collect_storage_types(&root, &mut types);
    let mut storages = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return format_error(origin, format!("storage key is {}", key.kind()));
        };
        let Some(ty) = types.get(&key) else {
            return format_error(origin, format!("storage {key} is listed but no tensor uses it"));
        };
        let Some(count) = bytes.get(pos..pos + 8) else {
            return format_error(
                origin,
                format!("truncated: storage {key} needs bytes {}..{}, file has {}", pos, pos + 8, bytes.len()),
            );
        };
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        let start = pos + 8;
        let end = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(ty.size()))
            .and_then(|n| n.checked_add(start))
            .filter(|&end| end <= bytes.len());
        let Some(end) = end else {
            let needed = (count as u128) * ty.size() as u128 + start as u128;
            return format_error(
                origin,
                format!("truncated: storage {key} needs bytes {start}..{needed}, file has {}", bytes.len()),
            );
        };
        storages.insert(key, start..end);
        pos = end;
    }
    let entries = state_dict(origin, root)?;
    materialize_all(origin, backing, entries, &storages)
}

fn collect_storage_types(value: &Value, types: &mut HashMap<String, StorageType>) {
    match value {
        Value::Storage(s) => {
            types.insert(s.key.clone(), s.ty);
        }
        Value::Tensor(t) => {
            types.insert(t.storage.key.clone(), t.storage.ty);
        }
        Value::Tuple(items) | Value::List(items) => items.iter().for_each(|v| collect_storage_types(v, types)),
        Value::Dict(items) => items.iter().for_each(|(k, v)| {
            collect_storage_types(k, types);
            collect_storage_types(v, types);
        }),
        _ => {}
    }
}

/// The `(name, tensor)` entries of the state dict in the checkpoint's object.
fn state_dict(origin: &str, root: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(items) = root else {
        return format_error(origin, format!("holds {}, not a state dict (save model.state_dict())", root.kind()));
    };
    if !items.iter().any(|(_, v)| matches!(v, Value::Tensor(_))) {
        let wrapped = items.iter().find_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Dict(_)) if k == "model" || k == "state_dict" => Some(v.clone()),
            _ => None,
        });
        if let Some(inner @ Value::Dict(_)) = wrapped {
            return state_dict(origin, inner);
        }
        let keys: Vec<String> = items.iter().map(|(k, _)| describe_key(k)).collect();
        return format_error(
            origin,
            format!("holds a dict without tensors (keys: {}), not a state dict", keys.join(", ")),
        );
    }
    let mut entries = Vec::new();
    let mut others = Vec::new();
    for (key, value) in items {
        match (key, value) {
            (Value::Str(name), Value::Tensor(t)) => entries.push((name, t)),
            (key, value) => others.push(format!("{} is {}", describe_key(&key), value.kind())),
        }
    }
    if !others.is_empty() {
        return format_error(origin, format!("state dict entries that are not tensors: {}", others.join(", ")));
    }
    Ok(entries)
}

fn describe_key(key: &Value) -> String {
    match key {
        Value::Str(s) => s.clone(),
        other => other.kind(),
    }
}

fn materialize_all(
    origin: &str,
    backing: &Backing,
    entries: Vec<(String, TensorRef)>,
    storages: &HashMap<String, Range<usize>>,
) -> Result<Vec<(String, Tensor)>> {
    entries
        .into_iter()
        .map(|(name, t)| match materialize(backing, &t, storages) {
            Ok(tensor) => Ok((name, tensor)),
            Err(reason) => format_error(origin, format!("tensor {name}: {reason}")),
        })
        .collect()
}

/// Reads one tensor from its storage: in place when contiguous f32 (or another kept dtype),
/// else gathered through its strides and converted to f32 where it is another float type.
fn materialize(
    backing: &Backing,
    t: &TensorRef,
    storages: &HashMap<String, Range<usize>>,
) -> std::result::Result<Tensor, String> {
    let storage = &t.storage;
    let key = &storage.key;
    let range = storages.get(key).ok_or_else(|| format!("its storage {key} is not in the file"))?;
    let elem = storage.ty.size();
    if storage.numel.checked_mul(elem).is_none_or(|n| n > range.len()) {
        return Err(format!(
            "storage {key} should hold {} elements of {elem} bytes, the file has {} bytes",
            storage.numel,
            range.len()
        ));
    }
    let (view_start, view_len) = storage.view.unwrap_or((0, storage.numel));
    if view_start.checked_add(view_len).is_none_or(|end| end > storage.numel) {
        return Err(format!(
            "storage view {view_start}+{view_len} exceeds storage {key} of {} elements",
            storage.numel
        ));
    }
    let count = numel(&t.shape).ok_or("element count overflows")?;
    let dtype = kept_dtype(storage.ty);
    if count == 0 {
        // An empty tensor reads nothing, whatever its offset says.
        return Ok(Tensor::owned(dtype.unwrap_or(Dtype::F32), t.shape.clone(), &[]));
    }
    let last = t.shape.iter().zip(&t.strides).try_fold(t.offset, |acc, (&size, &stride)| {
        (size - 1).checked_mul(stride).and_then(|step| acc.checked_add(step))
    });
    if last.is_none_or(|last| last >= view_len) {
        return Err(format!(
            "shape {:?}, strides {:?} and offset {} read past the {view_len} elements of storage {key}",
            t.shape, t.strides, t.offset
        ));
    }
    if let (true, Some(dtype)) = (is_contiguous(&t.shape, &t.strides), dtype) {
        let first = range.start + (view_start + t.offset) * elem;
        return Ok(Tensor::view(dtype, t.shape.clone(), backing, first..first + count * elem));
    }
    let source = &backing.bytes()[range.start + view_start * elem..];
    let mut out = Vec::with_capacity(count * dtype.map_or(4, Dtype::size));
    for_each_offset(&t.shape, &t.strides, t.offset, count, |index| {
        push_element(storage.ty, &source[index * elem..(index + 1) * elem], &mut out);
    });
    Ok(Tensor::owned(dtype.unwrap_or(Dtype::F32), t.shape.clone(), &out))
}

/// The dtype a storage type keeps in memory, or `None` for floats converted to f32.
fn kept_dtype(ty: StorageType) -> Option<Dtype> {
    match ty {
        StorageType::F32 => Some(Dtype::F32),
        StorageType::I64 => Some(Dtype::I64),
        StorageType::I32 => Some(Dtype::I32),
        StorageType::I16 => Some(Dtype::I16),
        StorageType::I8 => Some(Dtype::I8),
        StorageType::U8 => Some(Dtype::U8),
        StorageType::Bool => Some(Dtype::Bool),
        StorageType::F64 | StorageType::F16 | StorageType::BF16 => None,
    }
}

/// Row-major layout; strides of size-1 dimensions do not matter, as in torch.
fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1;
    for (&size, &stride) in shape.iter().zip(strides).rev() {
        if size != 1 && stride != expected {
            return false;
        }
        expected *= size;
    }
    true
}

/// Calls `visit` with the storage index of each of the `count` elements, in row-major order.
fn for_each_offset(shape: &[usize], strides: &[usize], offset: usize, count: usize, mut visit: impl FnMut(usize)) {
    let mut index = vec![0usize; shape.len()];
    let mut flat = offset;
    for _ in 0..count {
        visit(flat);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            flat += strides[d];
            if index[d] < shape[d] {
                break;
            }
            flat -= strides[d] * shape[d];
            index[d] = 0;
        }
    }
}

fn push_element(ty: StorageType, src: &[u8], out: &mut Vec<u8>) {
    match ty {
        StorageType::F64 | StorageType::F16 | StorageType::BF16 => {
            out.extend_from_slice(&float_to_f32(ty, src).to_le_bytes())
        }
        _ => out.extend_from_slice(src),
    }
}

fn float_to_f32(ty: StorageType, src: &[u8]) -> f32 {
    match ty {
        StorageType::F64 => f64::from_le_bytes(src.try_into().expect("8 bytes")) as f32,
        StorageType::F16 => f16_to_f32(u16::from_le_bytes(src.try_into().expect("2 bytes"))),
        StorageType::BF16 => f32::from_bits((u16::from_le_bytes(src.try_into().expect("2 bytes")) as u32) << 16),
        _ => f32::from_le_bytes(src.try_into().expect("4 bytes")),
    }
}

/// Converts packed f64, f16 or bf16 values (a safetensors tensor) to f32.
pub(super) fn floats_to_f32(dtype: safetensors::Dtype, bytes: &[u8]) -> Vec<f32> {
    let ty = match dtype {
        safetensors::Dtype::F64 => StorageType::F64,
        safetensors::Dtype::F16 => StorageType::F16,
        safetensors::Dtype::BF16 => StorageType::BF16,
        _ => StorageType::F32,
    };
    bytes.chunks_exact(ty.size()).map(|c| float_to_f32(ty, c)).collect()
}

/// IEEE half precision to single, exactly (every f16 is representable as an f32).
fn f16_to_f32(half: u16) -> f32 {
    let sign = if half & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = (half >> 10) & 0x1f;
    let mantissa = (half & 0x3ff) as u32;
    match exponent {
        0 => sign * mantissa as f32 * 2f32.powi(-24),
        0x1f => f32::from_bits(((half as u32 & 0x8000) << 16) | 0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(((half as u32 & 0x8000) << 16) | ((exponent as u32 + 112) << 23) | (mantissa << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(view: Option<(usize, usize)>) -> (Backing, HashMap<String, Range<usize>>, pickle::StorageRef) {
        static VALUES: [f32; 8] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let backing = Backing::Static(bytemuck::cast_slice(&VALUES));
        let storages = HashMap::from([("0".to_string(), 0..32)]);
        (backing, storages, pickle::StorageRef { ty: StorageType::F32, key: "0".into(), numel: 8, view })
    }

    #[test]
    fn strides_that_read_past_the_storage_are_rejected() {
        let (backing, storages, storage) = storage(None);
        let t = TensorRef { storage, offset: 1, shape: vec![2, 4], strides: vec![4, 1] };
        let error = materialize(&backing, &t, &storages).unwrap_err();
        assert!(error.contains("read past the 8 elements"), "{error}");
    }

    #[test]
    fn empty_tensors_ignore_their_offset() {
        let (backing, storages, storage) = storage(None);
        let t = TensorRef { storage, offset: usize::MAX, shape: vec![0, 3], strides: vec![3, 1] };
        let tensor = materialize(&backing, &t, &storages).unwrap();
        assert_eq!((tensor.shape(), tensor.bytes().len()), (&[0usize, 3][..], 0));
    }

    #[test]
    fn legacy_storage_views_shift_the_offset() {
        let (backing, storages, storage) = storage(Some((4, 4)));
        let t = TensorRef { storage: storage.clone(), offset: 1, shape: vec![3], strides: vec![1] };
        let tensor = materialize(&backing, &t, &storages).unwrap();
        assert_eq!(tensor.as_f32(), Some(&[5.0f32, 6.0, 7.0][..]));
        let past = TensorRef { storage, offset: 2, shape: vec![3], strides: vec![1] };
        assert!(materialize(&backing, &past, &storages).is_err());
    }

    #[test]
    fn half_precision() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn contiguity_ignores_unit_dimensions() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[2, 1, 3], &[3, 7, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert!(is_contiguous(&[], &[]));
    }

    #[test]
    fn strided_offsets_in_row_major_order() {
        let mut seen = Vec::new();
        // A transposed 2x3 matrix: shape [3, 2], strides [1, 3], starting at element 1.
        for_each_offset(&[3, 2], &[1, 3], 1, 6, |i| seen.push(i));
        assert_eq!(seen, [1, 4, 2, 5, 3, 6]);
    }
}
