//! A small pickle virtual machine for the objects `torch.save` writes.
//!
//! It executes no code: the only callables it understands are the few that rebuild a state dict
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `_rebuild_tensor`,
//! `_rebuild_parameter`). Any other reduction becomes an opaque [`Value::Object`], so that a
//! checkpoint carrying extra entries (optimizer state, training arguments) still parses, and only
//! fails if the state dict itself needs such an object. Persistent ids, which torch uses for
//! tensor storages, become [`Value::Storage`].
//!
//! Python shares containers by reference through the memo; here `BINGET` copies. Torch never
//! mutates a container after fetching it from the memo, so both give the same state dict.

use std::collections::HashMap;

/// The element type of a torch storage, from its class (`torch FloatStorage`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub(crate) fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A storage named by a persistent id: `('storage', class, key, location, numel[, view])`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StorageRef {
    pub ty: StorageType,
    /// The storage's key: its record name in a zip checkpoint, its id in a legacy one.
    pub key: String,
    /// Elements in the storage (of the root storage for a legacy view).
    pub numel: usize,
    /// Legacy (torch < 0.4) storage views: element offset and length within the root storage.
    pub view: Option<(usize, usize)>,
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered, like `OrderedDict`.
    Dict(Vec<(Value, Value)>),
    Global {
        module: String,
        name: String,
    },
    Storage(StorageRef),
    Tensor(TensorRef),
    /// The result of calling a callable this VM does not model.
    Object {
        class: String,
    },
}

impl Value {
    pub(crate) fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global { module, name } => format!("{module}.{name}"),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Object { class } => format!("a {class} object"),
        }
    }
}

/// Runs the pickle that starts at `bytes[start..]`; returns its value and the offset just past
/// its STOP opcode. Errors are messages for the caller to prefix with the file name.
pub(crate) fn load(bytes: &[u8], start: usize) -> Result<(Value, usize), String> {
    let mut vm = Vm { bytes, pos: start, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    let value = vm.run()?;
    Ok((value, vm.pos))
}

struct Vm<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!("pickle ends early: needs bytes {}..{}, file has {}", self.pos, self.pos + n, self.bytes.len())
        })?;
        let bytes: &'a [u8] = self.bytes;
        let slice = &bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn len_u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }

    fn len_u64(&mut self) -> Result<usize, String> {
        usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| "pickle length overflows".to_string())
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("pickle ends inside a GLOBAL name")?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn string(&mut self, n: usize) -> Result<Value, String> {
        let raw = self.take(n)?;
        let text = std::str::from_utf8(raw).map_err(|_| "invalid UTF-8 in a pickled string")?;
        Ok(Value::Str(text.to_string()))
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "pickle pops an empty stack".to_string())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| "pickle reads an empty stack".to_string())
    }

    /// The values pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("pickle has no MARK to pop to")?;
        if mark > self.stack.len() {
            return Err("pickle MARK lies above the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&mut self, index: u32) -> Result<(), String> {
        let value = self.memo.get(&index).cloned().ok_or_else(|| format!("pickle reads unset memo slot {index}"))?;
        self.stack.push(value);
        Ok(())
    }

    fn memo_put(&mut self, index: u32) -> Result<(), String> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let protocol = self.u8()?;
                    if protocol > 5 {
                        return Err(format!("unsupported pickle protocol {protocol}"));
                    }
                }
                0x95 => drop(self.le::<8>()?), // FRAME: a length hint only
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => drop(self.pop()?),
                b'1' => drop(self.pop_mark()?),
                b'2' => {
                    let value = self.top()?.clone();
                    self.stack.push(value);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.len_u32()? };
                    let digits = self.take(n)?;
                    self.stack.push(Value::Int(long_from_le(digits)?));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.len_u32()?;
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                // Python 2 byte strings (SHORT_BINSTRING, BINSTRING): names in old checkpoints.
                b'U' | b'T' => {
                    let n = if op == b'U' { self.u8()? as usize } else { self.len_u32()? };
                    let raw = self.take(n)?;
                    self.stack.push(Value::Str(String::from_utf8_lossy(raw).into_owned()));
                }
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => self.u8()? as usize,
                        b'B' => self.len_u32()?,
                        _ => self.len_u64()?,
                    };
                    let raw = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(raw));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle builds a tuple from too few values".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = pairs(items)?;
                    self.stack.push(Value::Dict(dict));
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let items = pairs(items)?;
                    self.set_items(items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => self.stack.push(Value::Global { module, name }),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = match args {
                        Value::Tuple(args) => args,
                        other => return Err(format!("REDUCE with {} as arguments", other.kind())),
                    };
                    self.stack.push(reduce(callable, args)?);
                }
                0x81 => {
                    let _args = self.pop()?;
                    let class = self.pop()?;
                    self.stack.push(Value::Object { class: class.kind() });
                }
                // BUILD sets an object's attributes (an OrderedDict's `_metadata`): not needed.
                b'b' => drop(self.pop()?),
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::Storage(storage_ref(pid)?));
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.le()?);
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(i.into())?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.le()?);
                    self.memo_get(i)?;
                }
                _ => return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}")),
            }
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
        match self.top()? {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            other => Err(format!("APPEND to {}", other.kind())),
        }
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>) -> Result<(), String> {
        match self.top()? {
            Value::Dict(dict) => {
                for (key, value) in items {
                    match dict.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = value,
                        None => dict.push((key, value)),
                    }
                }
                Ok(())
            }
            other => Err(format!("SETITEM on {}", other.kind())),
        }
    }
}

/// Python's two's-complement little-endian LONG encoding, for values that fit in 64 bits.
fn long_from_le(digits: &[u8]) -> Result<i64, String> {
    if digits.len() > 8 {
        return Err(format!("pickled integer of {} bytes is too large", digits.len()));
    }
    let negative = digits.last().is_some_and(|&b| b & 0x80 != 0);
    let mut buf = [if negative { 0xff } else { 0 }; 8];
    buf[..digits.len()].copy_from_slice(digits);
    Ok(i64::from_le_bytes(buf))
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("pickle builds a dict from an odd number of values".into());
    }
    let mut iter = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn reduce(callable: Value, args: Vec<Value>) -> Result<Value, String> {
    let Value::Global { module, name } = &callable else {
        return Err(format!("REDUCE calls {}", callable.kind()));
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") if args.is_empty() => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => rebuild_tensor(args),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            args.into_iter().next().ok_or_else(|| "_rebuild_parameter without arguments".to_string())
        }
        _ => Ok(Value::Object { class: format!("{module}.{name}") }),
    }
}

fn rebuild_tensor(args: Vec<Value>) -> Result<Value, String> {
    let mut args = args.into_iter();
    let (Some(Value::Storage(storage)), Some(offset), Some(shape), Some(strides)) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        return Err("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)".into());
    };
    let offset = non_negative(&offset)?;
    let shape = usize_tuple(shape)?;
    let strides = usize_tuple(strides)?;
    if shape.len() != strides.len() {
        return Err(format!("tensor of {} dimensions has {} strides", shape.len(), strides.len()));
    }
    Ok(Value::Tensor(TensorRef { storage, offset, shape, strides }))
}

fn non_negative(value: &Value) -> Result<usize, String> {
    match value {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(format!("expected a non-negative integer, found {}", other.kind())),
    }
}

fn usize_tuple(value: Value) -> Result<Vec<usize>, String> {
    match value {
        Value::Tuple(items) | Value::List(items) => items.iter().map(non_negative).collect(),
        other => Err(format!("expected a tuple of sizes, found {}", other.kind())),
    }
}

fn storage_ref(pid: Value) -> Result<StorageRef, String> {
    let Value::Tuple(fields) = pid else {
        return Err(format!("persistent id is {}, not a tuple", pid.kind()));
    };
    match fields.as_slice() {
        [Value::Str(tag), Value::Global { name: class, .. }, Value::Str(key), _location, numel, rest @ ..]
            if tag == "storage" =>
        {
            let ty = StorageType::from_class(class).ok_or_else(|| format!("unsupported storage type {class}"))?;
            let view = match rest {
                [] | [Value::None] => None,
                [Value::Tuple(view)] => match view.as_slice() {
                    [_view_key, offset, len] => Some((non_negative(offset)?, non_negative(len)?)),
                    _ => return Err("malformed storage view in a persistent id".into()),
                },
                _ => return Err("malformed persistent id".into()),
            };
            Ok(StorageRef { ty, key: key.clone(), numel: non_negative(numel)?, view })
        }
        _ => Err("persistent id is not a ('storage', type, key, location, size) tuple".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_and_wide_longs() {
        assert_eq!(long_from_le(&[0xff]), Ok(-1));
        assert_eq!(long_from_le(&[0x00, 0x01]), Ok(256));
        assert_eq!(long_from_le(&[]), Ok(0));
        assert!(long_from_le(&[0; 9]).is_err());
    }

    #[test]
    fn memo_dup_and_dict() {
        // {'a': [1, 1]}: MEMOIZE, DUP, APPENDS, SETITEMS, then BINGET 1 and POP of the key 'a'.
        let pickle = b"\x80\x04}\x94(\x8c\x01a\x94]\x94(K\x012eu\x68\x01\x30.";
        let (value, end) = load(pickle, 0).unwrap();
        assert_eq!(end, pickle.len());
        let expected = Value::Dict(vec![(Value::Str("a".into()), Value::List(vec![Value::Int(1), Value::Int(1)]))]);
        assert_eq!(value, expected);
    }

    #[test]
    fn unknown_opcode_and_truncation_are_errors() {
        assert!(load(b"\x80\x02\xff", 0).unwrap_err().contains("opcode 0xff"));
        assert!(load(b"\x80\x02X\x10\x00\x00\x00ab", 0).unwrap_err().contains("ends early"));
        assert!(load(b"\x80\x02", 0).unwrap_err().contains("ends early"));
    }

    #[test]
    fn unknown_callables_stay_opaque() {
        let pickle = b"\x80\x02cargparse\nNamespace\n)R}b.";
        let (value, _) = load(pickle, 0).unwrap();
        assert_eq!(value, Value::Object { class: "argparse.Namespace".into() });
    }
}
