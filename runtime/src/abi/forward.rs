//! Calling a compiled forward function: tensors in, tensors out.
//!
//! Generated code exports `mrc_forward_packed(void **args)`: `args[0]` points to the results
//! (one memref descriptor per result, packed as a struct), `args[1..]` to one descriptor per
//! argument (inputs, then state tensors). Arguments are never written (they are marked
//! `bufferization.writable = false`), so memory-mapped weights are passed as they are; result
//! buffers come from `malloc` and become the results' vectors where they are whole (no copy),
//! else are freed here after copying.
//!
//! A forward function compiled for a device ([`Forward::new_on_device`]) takes and returns
//! device memory: its weights are uploaded once, its inputs at each call, and its results
//! (contiguous) are copied back and freed with the device's free.

use std::ffi::c_void;

use crate::device::{DeviceBuffer, DeviceError, SelectedDevice};

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

impl<'a> Argument<'a> {
    /// The input named `name` among `inputs`.
    pub fn input(inputs: &[(&str, &'a HostTensor)], name: &str) -> Result<Argument<'a>, String> {
        let (_, tensor) = inputs.iter().find(|(n, _)| *n == name).ok_or_else(|| format!("no input named `{name}`"))?;
        let bytes: &[u8] = match tensor {
            HostTensor::F32 { data, .. } => bytemuck::cast_slice(data),
            HostTensor::I64 { data, .. } => bytemuck::cast_slice(data),
            HostTensor::U8 { data, .. } => data,
        };
        Ok(Argument { bytes, shape: tensor.shape() })
    }
}

/// A result's element type and rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResultSpec {
    pub element: Element,
    pub rank: usize,
}

/// Runs `work` on a thread of the runtime's pool (at once if this is one), the caller waiting.
/// A training step is called so: its parallel loops, built-ins and products then wait for
/// their tasks by running the pool's work rather than by sleeping until a pool thread wakes
/// them, and with one pool thread per core no thread outside the pool competes for the cores
/// (`Forward::run` says why inference is not).
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

/// Calls `forward` and takes its results out: a whole result buffer becomes its tensor's
/// vector, any other is copied and freed.
///
/// # Safety
/// `forward` must be a compiled forward function whose arguments are `arguments` (in order, of
/// their ranks and element types) and whose results are `results`.
pub unsafe fn call(forward: ForwardFn, arguments: &[Argument], results: &[ResultSpec]) -> Vec<HostTensor> {
    let placed: Vec<Placed> = arguments.iter().map(|a| Placed { pointer: a.bytes.as_ptr() as i64, shape: a.shape }).collect();
    match call_placed(forward, &placed, results, &HostResults) {
        Ok(tensors) => tensors,
        Err(never) => match never {},
    }
}

/// An argument where the forward function reads it: the address of its first element (host
/// or device memory) and its shape.
struct Placed<'a> {
    pointer: i64,
    shape: &'a [usize],
}

/// Where a forward function leaves its results, and how they are read and freed.
trait ResultMemory {
    type Error;
    /// Waits until the results are written.
    fn finished(&self) -> Result<(), Self::Error>;
    /// The elements of a view in row-major order.
    ///
    /// # Safety
    /// The view must lie inside a live result buffer of `T`s.
    unsafe fn read<T: bytemuck::Pod>(&self, aligned: i64, offset: i64, shape: &[usize], strides: &[i64]) -> Result<Vec<T>, Self::Error>;
    /// Frees a result buffer.
    ///
    /// # Safety
    /// `allocated` is a result buffer, freed once.
    unsafe fn release(&self, allocated: i64) -> Result<(), Self::Error>;
    /// The result buffer itself as the vector of its elements, where that needs no copy; its
    /// owner is then the vector.
    ///
    /// # Safety
    /// As [`ResultMemory::read`]; the buffer is no other result's and is not released.
    unsafe fn adopt<T: bytemuck::Pod>(&self, _allocated: i64, _aligned: i64, _offset: i64, _shape: &[usize], _strides: &[i64]) -> Option<Vec<T>> {
        None
    }
}

/// Results in host memory from `malloc`.
struct HostResults;

impl ResultMemory for HostResults {
    type Error = std::convert::Infallible;

    fn finished(&self) -> Result<(), Self::Error> {
        Ok(())
    }

    unsafe fn read<T: bytemuck::Pod>(&self, aligned: i64, offset: i64, shape: &[usize], strides: &[i64]) -> Result<Vec<T>, Self::Error> {
        Ok(gather(aligned, offset, shape, strides))
    }

    unsafe fn release(&self, allocated: i64) -> Result<(), Self::Error> {
        free(allocated as *mut c_void);
        Ok(())
    }

    /// A buffer whose elements start where `malloc`'s block does (the runtime's results: the
    /// pasted masks), contiguous: Rust's global allocator is the system's `malloc`, whose
    /// `free` the vector calls with any layout of this alignment.
    unsafe fn adopt<T: bytemuck::Pod>(&self, allocated: i64, aligned: i64, offset: i64, shape: &[usize], strides: &[i64]) -> Option<Vec<T>> {
        let len: usize = shape.iter().product();
        let whole = allocated == aligned && offset == 0 && len > 0 && is_contiguous(shape, strides);
        (whole && aligned as usize % std::mem::align_of::<T>() == 0).then(|| Vec::from_raw_parts(aligned as *mut T, len, len))
    }
}

/// Results in device memory from `mgpuMemAlloc`.
struct DeviceResults(&'static SelectedDevice);

impl ResultMemory for DeviceResults {
    type Error = DeviceError;

    fn finished(&self) -> Result<(), DeviceError> {
        // Generated code's kernels run on streams of their own.
        self.0.synchronize()
    }

    unsafe fn read<T: bytemuck::Pod>(&self, aligned: i64, offset: i64, shape: &[usize], strides: &[i64]) -> Result<Vec<T>, DeviceError> {
        // Results are fresh buffers in the identity layout: one copy each.
        if !is_contiguous(shape, strides) {
            return Err(DeviceError::NonContiguousResult { shape: shape.to_vec(), strides: strides.to_vec() });
        }
        let mut data = vec![T::zeroed(); shape.iter().product()];
        if !data.is_empty() {
            self.0.download((aligned as *const T).offset(offset as isize).cast(), bytemuck::cast_slice_mut(&mut data))?;
        }
        Ok(data)
    }

    unsafe fn release(&self, allocated: i64) -> Result<(), DeviceError> {
        self.0.free(allocated as *mut c_void, std::ptr::null_mut())
    }
}

/// Calls `forward` on `arguments` and copies its results out of `memory`, freeing them there.
/// Every result is freed even when one cannot be read; the first error is returned.
///
/// # Safety
/// As [`call`], the arguments and results being where `memory` and the pointers say.
unsafe fn call_placed<M: ResultMemory>(forward: ForwardFn, arguments: &[Placed], results: &[ResultSpec], memory: &M) -> Result<Vec<HostTensor>, M::Error> {
    let mut descriptors: Vec<Vec<i64>> = arguments
        .iter()
        .map(|a| {
            let mut words = vec![a.pointer, a.pointer, 0];
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
    let mut first_error = memory.finished().err();

    let mut freed: Vec<i64> = vec![];
    let mut out = vec![];
    let buffers: Vec<i64> = {
        let mut rest = result_words.as_slice();
        results
            .iter()
            .map(|result| {
                let allocated = rest[0];
                rest = &rest[3 + 2 * result.rank..];
                allocated
            })
            .collect()
    };
    let mut rest = result_words.as_slice();
    for result in results {
        let rank = result.rank;
        let (allocated, aligned, offset) = (rest[0], rest[1], rest[2]);
        let shape: Vec<usize> = rest[3..3 + rank].iter().map(|&d| d as usize).collect();
        let strides = &rest[3 + rank..3 + 2 * rank];
        // Two results may share a buffer, and a result that is an argument is not ours.
        let ours = !arguments.iter().any(|a| a.pointer == allocated);
        let alone = ours && buffers.iter().filter(|&&buffer| buffer == allocated).count() == 1;
        if first_error.is_none() && alone {
            let adopted = match result.element {
                Element::F32 => memory.adopt(allocated, aligned, offset, &shape, strides).map(|data| HostTensor::F32 { data, shape: shape.clone() }),
                Element::I64 => memory.adopt(allocated, aligned, offset, &shape, strides).map(|data| HostTensor::I64 { data, shape: shape.clone() }),
                Element::U8 => memory.adopt(allocated, aligned, offset, &shape, strides).map(|data| HostTensor::U8 { data, shape: shape.clone() }),
            };
            if let Some(tensor) = adopted {
                out.push(tensor);
                rest = &rest[3 + 2 * rank..];
                continue;
            }
        }
        if first_error.is_none() {
            let read = match result.element {
                Element::F32 => memory.read(aligned, offset, &shape, strides).map(|data| HostTensor::F32 { data, shape }),
                Element::I64 => memory.read(aligned, offset, &shape, strides).map(|data| HostTensor::I64 { data, shape }),
                Element::U8 => memory.read(aligned, offset, &shape, strides).map(|data| HostTensor::U8 { data, shape }),
            };
            match read {
                Ok(tensor) => out.push(tensor),
                Err(error) => first_error = Some(error),
            }
        }
        if !freed.contains(&allocated) && ours {
            if let Err(error) = memory.release(allocated) {
                first_error.get_or_insert(error);
            }
            freed.push(allocated);
        }
        rest = &rest[3 + 2 * rank..];
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(out),
    }
}

/// Whether a view's elements are row-major and contiguous (axes of one element aside).
fn is_contiguous(shape: &[usize], strides: &[i64]) -> bool {
    (0..shape.len())
        .rev()
        .try_fold(1_i64, |expected, axis| (shape[axis] == 1 || strides[axis] == expected).then_some(expected * shape[axis] as i64))
        .is_some()
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
    if is_contiguous(shape, strides) {
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
    placement: Placement,
}

/// Where the forward function takes its arguments and leaves its results.
enum Placement {
    Host,
    /// On a device, with the weight arguments' copies there, by argument position (`None` for
    /// the inputs, uploaded at each call).
    Device { device: &'static SelectedDevice, weights: Vec<Option<DeviceBuffer>> },
}

/// Why a forward function cannot be prepared on a device.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error("cannot upload the weights: {0}")]
    Device(#[from] DeviceError),
    #[error("{0}")]
    Argument(String),
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
                    if !(bytes.as_ptr() as usize).is_multiple_of(8) {
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
        Ok(Forward { function, interface, weights, aligned, derived, placement: Placement::Host })
    }

    /// [`Forward::new`] for a forward function compiled for `device`, which takes device
    /// memory: the weights (state and derived tensors) are uploaded now, once.
    ///
    /// # Safety
    /// As [`Forward::new`]; the function's device code runs on `device`.
    pub unsafe fn new_on_device(
        function: ForwardFn,
        interface: Interface,
        weights: crate::weights::Weights,
        device: &'static SelectedDevice,
    ) -> Result<Self, ForwardError> {
        let mut forward = Forward::new(function, interface, weights)?;
        let mut uploaded = Vec::with_capacity(forward.interface.arguments.len());
        for source in &forward.interface.arguments {
            uploaded.push(match source {
                Source::Input(_) => None,
                weight => Some(device.upload(forward.weight_argument(weight).map_err(ForwardError::Argument)?.bytes)?),
            });
        }
        forward.placement = Placement::Device { device, weights: uploaded };
        Ok(forward)
    }

    pub fn interface(&self) -> &Interface {
        &self.interface
    }

    /// The host bytes of a state or derived argument.
    fn weight_argument(&self, source: &Source) -> Result<Argument<'_>, String> {
        match source {
            Source::Input(name) => Err(format!("`{name}` is an input, not a weight")),
            Source::State(name) => {
                let tensor = self.weights.get(name).ok_or_else(|| format!("no state tensor `{name}`"))?;
                if tensor.shape().is_empty() {
                    Ok(Argument { bytes: bytemuck::cast_slice(&UNUSED_COUNTER), shape: &[] })
                } else {
                    let bytes = match self.aligned.get(name) {
                        Some(words) => &bytemuck::cast_slice(words)[..tensor.bytes().len()],
                        None => tensor.bytes(),
                    };
                    Ok(Argument { bytes, shape: tensor.shape() })
                }
            }
            Source::Derived { name, .. } => {
                let (data, shape) = &self.derived[name];
                Ok(Argument { bytes: bytemuck::cast_slice(data), shape })
            }
        }
    }

    /// Runs the network on `inputs` (by name); returns the named results and the time of each
    /// stage, or the error a runtime function (or the device) reported.
    pub fn run(&self, inputs: &[(&str, &HostTensor)]) -> Result<(Vec<(String, HostTensor)>, Vec<(&'static str, std::time::Duration)>), String> {
        let mut arguments = vec![];
        for source in &self.interface.arguments {
            arguments.push(match source {
                Source::Input(name) => Argument::input(inputs, name)?,
                weight => self.weight_argument(weight)?,
            });
        }
        let specs: Vec<ResultSpec> = self.interface.results.iter().map(|(_, spec)| *spec).collect();
        super::take_error();
        super::stages::begin();
        // SAFETY: `Forward::new`'s contract: the function has this interface (and, on a device,
        // runs there). On this thread, not `on_pool`: there R50 took 2.5 s per image against
        // 2.15 s, its `paste_masks` twice as long (likely the pool thread's malloc arena, which
        // returns freed memory to the system sooner than the main one).
        let results = unsafe {
            match &self.placement {
                Placement::Host => Ok(call(self.function, &arguments, &specs)),
                Placement::Device { device, weights } => call_on_device(self.function, device, &arguments, weights, &specs),
            }
        };
        let stages = super::stages::finish();
        if let Some(error) = super::take_error() {
            return Err(error);
        }
        let results = results.map_err(|error| error.to_string())?;
        let names = self.interface.results.iter().map(|(name, _)| name.clone());
        Ok((names.zip(results).collect(), stages))
    }
}

/// [`call`] on a device: the arguments without an uploaded copy (the inputs) are uploaded for
/// the call, the results copied back and freed there.
///
/// # Safety
/// As [`call`]; `uploaded` has one entry per argument, and `forward` runs on `device`.
pub unsafe fn call_on_device(
    forward: ForwardFn,
    device: &'static SelectedDevice,
    arguments: &[Argument],
    uploaded: &[Option<DeviceBuffer>],
    results: &[ResultSpec],
) -> Result<Vec<HostTensor>, DeviceError> {
    let mut inputs = vec![];
    let mut placed = vec![];
    for (argument, weight) in arguments.iter().zip(uploaded) {
        let buffer = match weight {
            Some(buffer) => buffer,
            None => {
                inputs.push(device.upload(argument.bytes)?);
                &inputs[inputs.len() - 1]
            }
        };
        placed.push(Placed { pointer: buffer.pointer() as i64, shape: argument.shape });
    }
    // The inputs are freed (when `inputs` drops) after the results were read, so after the
    // device finished with them.
    call_placed(forward, &placed, results, &DeviceResults(device))
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
