//! Calling a compiled forward function: tensors in, tensors out.
//!
//! Generated code exports `mrc_forward_packed(void **args)`: `args[0]` points to the results
//! (one memref descriptor per result, packed as a struct), `args[1..]` to one descriptor per
//! argument (inputs, then state tensors). Arguments are never written (they are marked
//! `bufferization.writable = false`), so memory-mapped weights are passed as they are; result
//! buffers come from `malloc` and are freed here after copying.

use std::ffi::c_void;

extern "C" {
    fn free(pointer: *mut c_void);
}

/// The packed entry point of a compiled forward function.
pub type ForwardFn = unsafe extern "C" fn(*mut *mut c_void);

/// The symbol of [`ForwardFn`] in generated code.
pub const FORWARD_PACKED: &str = "mrc_forward_packed";

/// Element types of tensors crossing the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Element {
    F32,
    I64,
    U8,
}

/// A row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub enum HostTensor {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
    U8 { shape: Vec<usize>, data: Vec<u8> },
}

impl HostTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32 { shape, .. } | HostTensor::I64 { shape, .. } | HostTensor::U8 { shape, .. } => shape,
        }
    }

    pub fn f32(&self) -> Option<&[f32]> {
        match self {
            HostTensor::F32 { data, .. } => Some(data),
            _ => None,
        }
    }

    pub fn i64(&self) -> Option<&[i64]> {
        match self {
            HostTensor::I64 { data, .. } => Some(data),
            _ => None,
        }
    }
}

/// An argument: a borrowed row-major buffer of `shape`.
#[derive(Clone, Copy, Debug)]
pub struct Argument<'a> {
    pub bytes: &'a [u8],
    pub shape: &'a [usize],
}

/// A result's element type and rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResultSpec {
    pub element: Element,
    pub rank: usize,
}

/// Calls `forward` and copies its results out.
///
/// # Safety
/// `forward` must be a compiled forward function whose arguments are `arguments` (in order, of
/// their ranks and element types) and whose results are `results`.
pub unsafe fn call(forward: ForwardFn, arguments: &[Argument], results: &[ResultSpec]) -> Vec<HostTensor> {
    let mut descriptors: Vec<Vec<i64>> = arguments
        .iter()
        .map(|a| {
            let pointer = a.bytes.as_ptr() as i64;
            let mut words = vec![pointer, pointer, 0];
            words.extend(a.shape.iter().map(|&d| d as i64));
            let mut stride = 1;
            let mut strides = vec![0; a.shape.len()];
            for axis in (0..a.shape.len()).rev() {
                strides[axis] = stride;
                stride *= a.shape[axis] as i64;
            }
            words.extend(strides);
            words
        })
        .collect();
    let mut result_words = vec![0_i64; results.iter().map(|r| 3 + 2 * r.rank).sum()];
    let mut packed: Vec<*mut c_void> = std::iter::once(result_words.as_mut_ptr() as *mut c_void)
        .chain(descriptors.iter_mut().map(|d| d.as_mut_ptr() as *mut c_void))
        .collect();
    forward(packed.as_mut_ptr());

    let mut freed: Vec<i64> = vec![];
    let mut out = vec![];
    let mut rest = result_words.as_slice();
    for result in results {
        let rank = result.rank;
        let (allocated, aligned, offset) = (rest[0], rest[1], rest[2]);
        let shape: Vec<usize> = rest[3..3 + rank].iter().map(|&d| d as usize).collect();
        let strides = &rest[3 + rank..3 + 2 * rank];
        let out_tensor = match result.element {
            Element::F32 => HostTensor::F32 { data: gather(aligned, offset, &shape, strides), shape },
            Element::I64 => HostTensor::I64 { data: gather(aligned, offset, &shape, strides), shape },
            Element::U8 => HostTensor::U8 { data: gather(aligned, offset, &shape, strides), shape },
        };
        // Two results may share a buffer, and a result that is an argument is not ours.
        if !freed.contains(&allocated) && !arguments.iter().any(|a| a.bytes.as_ptr() as i64 == allocated) {
            free(allocated as *mut c_void);
            freed.push(allocated);
        }
        out.push(out_tensor);
        rest = &rest[3 + 2 * rank..];
    }
    out
}

/// The elements of a strided view (`aligned`, `offset`, `shape`, `strides` in elements) in
/// row-major order: one copy straight into the typed vector (a contiguous view in one
/// `memcpy`; the pasted masks of R50-FPN are 325 MB).
///
/// # Safety
/// The view must lie inside a live buffer of `T`s.
unsafe fn gather<T: bytemuck::Pod>(aligned: i64, offset: i64, shape: &[usize], strides: &[i64]) -> Vec<T> {
    let count: usize = shape.iter().product();
    let mut data = Vec::with_capacity(count);
    if count == 0 {
        return data;
    }
    let base = (aligned as *const T).offset(offset as isize);
    let contiguous = (0..shape.len()).rev().try_fold(1_i64, |expected, axis| {
        (shape[axis] == 1 || strides[axis] == expected).then_some(expected * shape[axis] as i64)
    });
    if contiguous.is_some() {
        std::ptr::copy_nonoverlapping(base, data.as_mut_ptr(), count);
        data.set_len(count);
        return data;
    }
    for flat in 0..count {
        let (mut remaining, mut position) = (flat, 0_isize);
        for axis in (0..shape.len()).rev() {
            position += (remaining % shape[axis]) as isize * strides[axis] as isize;
            remaining /= shape[axis];
        }
        data.push(*base.offset(position));
    }
    data
}

/// Where an argument of the forward function comes from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Source {
    /// A network input, by name.
    Input(String),
    /// A state tensor of the weights, by name.
    State(String),
    /// A tensor computed from state tensors (`from`, by name) when the weights are loaded.
    Derived { name: String, transform: crate::transforms::WeightTransform, from: Vec<String> },
}

/// The interface of a compiled forward function: what it takes and returns, and the state
/// tensors its weights must hold.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interface {
    pub arguments: Vec<Source>,
    /// Named results.
    pub results: Vec<(String, ResultSpec)>,
    /// Every state tensor of the model (the checkpoint's contents), for validation.
    pub state: Vec<crate::weights::TensorSpec>,
}

/// A compiled forward function with its weights, ready to run.
pub struct Forward {
    function: ForwardFn,
    interface: Interface,
    weights: crate::weights::Weights,
    /// Copies of weights whose bytes are not aligned for their element type.
    aligned: std::collections::HashMap<String, Vec<u64>>,
    /// The [`Source::Derived`] arguments, computed once: (elements, shape).
    derived: std::collections::HashMap<String, (Vec<f32>, Vec<usize>)>,
}

/// Rank-0 step counters (`num_batches_tracked`) are passed but never read.
static UNUSED_COUNTER: [u64; 1] = [0];

impl Forward {
    /// Checks `weights` against the interface (every problem in one error).
    ///
    /// # Safety
    /// `function` must be the forward function that `interface` describes.
    pub unsafe fn new(function: ForwardFn, interface: Interface, weights: crate::weights::Weights) -> Result<Self, crate::weights::WeightsError> {
        weights.validate(&interface.state)?;
        let mut aligned = std::collections::HashMap::new();
        let mut derived = std::collections::HashMap::new();
        for source in &interface.arguments {
            match source {
                Source::State(name) => {
                    let bytes = weights.get(name).map(|t| t.bytes()).unwrap_or_default();
                    if bytes.as_ptr() as usize % 8 != 0 {
                        let mut words = vec![0_u64; bytes.len().div_ceil(8)];
                        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
                        aligned.insert(name.clone(), words);
                    }
                }
                Source::Derived { name, transform, from } => {
                    derived.insert(name.clone(), derive(&weights, name, transform, from)?);
                }
                Source::Input(_) => {}
            }
        }
        Ok(Forward { function, interface, weights, aligned, derived })
    }

    pub fn interface(&self) -> &Interface {
        &self.interface
    }

    /// Runs the network on `inputs` (by name); returns the named results and the time of each
    /// stage, or the error a runtime function reported.
    pub fn run(&self, inputs: &[(&str, &HostTensor)]) -> Result<(Vec<(String, HostTensor)>, Vec<(&'static str, std::time::Duration)>), String> {
        let mut arguments = vec![];
        for source in &self.interface.arguments {
            arguments.push(match source {
                Source::Input(name) => {
                    let (_, tensor) = inputs.iter().find(|(n, _)| n == name).ok_or_else(|| format!("no input named `{name}`"))?;
                    let bytes: &[u8] = match tensor {
                        HostTensor::F32 { data, .. } => bytemuck::cast_slice(data),
                        HostTensor::I64 { data, .. } => bytemuck::cast_slice(data),
                        HostTensor::U8 { data, .. } => data,
                    };
                    Argument { bytes, shape: tensor.shape() }
                }
                Source::State(name) => {
                    let tensor = self.weights.get(name).ok_or_else(|| format!("no state tensor `{name}`"))?;
                    if tensor.shape().is_empty() {
                        Argument { bytes: bytemuck::cast_slice(&UNUSED_COUNTER), shape: &[] }
                    } else {
                        let bytes = match self.aligned.get(name) {
                            Some(words) => &bytemuck::cast_slice(words)[..tensor.bytes().len()],
                            None => tensor.bytes(),
                        };
                        Argument { bytes, shape: tensor.shape() }
                    }
                }
                Source::Derived { name, .. } => {
                    let (data, shape) = &self.derived[name];
                    Argument { bytes: bytemuck::cast_slice(data), shape }
                }
            });
        }
        let specs: Vec<ResultSpec> = self.interface.results.iter().map(|(_, spec)| *spec).collect();
        super::take_error();
        super::stages::begin();
        // SAFETY: `Forward::new`'s contract: the function has this interface.
        let results = unsafe { call(self.function, &arguments, &specs) };
        let stages = super::stages::finish();
        if let Some(error) = super::take_error() {
            return Err(error);
        }
        let names = self.interface.results.iter().map(|(name, _)| name.clone());
        Ok((names.zip(results).collect(), stages))
    }
}

/// The tensor `name` computed by `transform` from the f32 state tensors `from`.
fn derive(
    weights: &crate::weights::Weights,
    name: &str,
    transform: &crate::transforms::WeightTransform,
    from: &[String],
) -> Result<(Vec<f32>, Vec<usize>), crate::weights::WeightsError> {
    let invalid = |message: String| crate::weights::WeightsError::Derived { name: name.to_owned(), origin: weights.origin().to_owned(), message };
    let mut sources = vec![];
    for source in from {
        let tensor = weights.get(source).ok_or_else(|| invalid(format!("no state tensor `{source}`")))?;
        let values = tensor.as_f32().ok_or_else(|| invalid(format!("`{source}` is {}, not f32", tensor.dtype())))?;
        sources.push((values, tensor.shape()));
    }
    transform.apply(&sources).map_err(invalid)
}
