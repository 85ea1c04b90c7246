//! A JIT-compiled segment called through `_mlir_ciface_forward` with memref descriptors.

use super::{HostTensor, RunError};
use crate::graph::types::DType;
use crate::graph::Port;
use crate::lowering::{jit, LoweringError, Signature, FORWARD};
use melior::ir::Module;
use melior::ExecutionEngine;
use mrc_runtime::weights::Weights;
use std::collections::HashMap;
use std::ffi::c_void;

extern "C" {
    /// Result buffers of compiled code come from `malloc`.
    fn free(pointer: *mut c_void);
}

pub struct CompiledSegment {
    engine: ExecutionEngine,
    signature: Signature,
    /// Arguments that are values computed outside the segment, by argument name.
    boundary: HashMap<String, Port>,
    /// The original ports of the results, in result order.
    results: Vec<Port>,
}

impl CompiledSegment {
    pub fn new(
        module: Module,
        signature: Signature,
        boundary: HashMap<String, Port>,
        results: Vec<Port>,
    ) -> Result<Self, LoweringError> {
        let engine = jit(&module, 3)?;
        Ok(CompiledSegment { engine, signature, boundary, results })
    }

    /// Calls the segment; arguments come from `values` (boundary) or `weights` (state).
    pub fn run(&self, values: &HashMap<Port, HostTensor>, weights: &Weights) -> Result<Vec<(Port, HostTensor)>, RunError> {
        // Compiled code may write into its arguments' buffers (bufferization treats function
        // arguments as writable), so it gets copies, never the memory-mapped weights.
        let mut buffers: Vec<Vec<f32>> = vec![];
        let mut step_counters = vec![0_i64; self.signature.arguments.len()];
        let mut descriptors: Vec<Vec<i64>> = vec![];
        for (argument, counter) in self.signature.arguments.iter().zip(&mut step_counters) {
            if argument.ty.dtype == DType::I64 && argument.ty.rank() == 0 {
                // BatchNorm's step counter: passed, never read.
                let pointer = counter as *mut i64 as i64;
                descriptors.push(vec![pointer, pointer, 0]);
                continue;
            }
            let (shape, data) = match self.boundary.get(&argument.name) {
                Some(port) => match &values[port] {
                    HostTensor::F32 { shape, data } => (shape.clone(), data.clone()),
                    other => {
                        return Err(RunError::Builtin {
                            op: "segment",
                            node: argument.name.clone(),
                            message: format!("expected an f32 tensor, found {:?}", other.shape()),
                        })
                    }
                },
                None => {
                    let tensor = weights.get(&argument.name).expect("weights were validated against the graph");
                    let data = match tensor.as_f32() {
                        Some(values) => values.to_vec(),
                        None => tensor.bytes().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                    };
                    (tensor.shape().to_vec(), data)
                }
            };
            buffers.push(data);
            descriptors.push(descriptor(buffers.last_mut().unwrap().as_mut_ptr() as i64, &shape));
        }
        let words: usize = self.signature.results.iter().map(|r| 3 + 2 * r.ty.rank()).sum();
        let mut result_words = vec![0_i64; words];
        let mut pointers: Vec<*mut i64> =
            std::iter::once(result_words.as_mut_ptr()).chain(descriptors.iter_mut().map(|d| d.as_mut_ptr())).collect();
        let mut packed: Vec<*mut ()> = pointers.iter_mut().map(|p| p as *mut *mut i64 as *mut ()).collect();
        // SAFETY: `packed` holds a pointer to the result descriptors, then one pointer per argument
        // descriptor, each describing a live buffer of the argument's shape: the C interface of
        // `@forward` as emitted for `self.signature`.
        unsafe { self.engine.invoke_packed(FORWARD, &mut packed) }.map_err(|e| LoweringError::Build(e.to_string()))?;

        let ours: Vec<i64> = buffers.iter().map(|b| b.as_ptr() as i64).collect();
        let mut freed: Vec<i64> = vec![];
        let mut out = vec![];
        let mut rest = result_words.as_slice();
        for (result, port) in self.signature.results.iter().zip(&self.results) {
            let rank = result.ty.rank();
            let (allocated, aligned, offset) = (rest[0], rest[1], rest[2]);
            let shape: Vec<usize> = rest[3..3 + rank].iter().map(|&d| d as usize).collect();
            let strides = &rest[3 + rank..3 + 2 * rank];
            let count: usize = shape.iter().product();
            let mut data = vec![0f32; count];
            for (flat, value) in data.iter_mut().enumerate() {
                let mut remaining = flat;
                let mut position = offset;
                for axis in (0..rank).rev() {
                    position += (remaining % shape[axis]) as i64 * strides[axis];
                    remaining /= shape[axis];
                }
                // SAFETY: the descriptor describes `shape` elements inside the result buffer.
                *value = unsafe { *(aligned as *const f32).add(position as usize) };
            }
            // Two results may share a buffer, and a result may be an argument's buffer.
            if !ours.contains(&allocated) && !freed.contains(&allocated) {
                // SAFETY: compiled code allocated this buffer with malloc and hands it over.
                unsafe { free(allocated as *mut c_void) };
                freed.push(allocated);
            }
            out.push((*port, HostTensor::F32 { shape, data }));
            rest = &rest[3 + 2 * rank..];
        }
        Ok(out)
    }
}

/// Words of a row-major memref descriptor: allocated, aligned, offset, sizes, strides.
fn descriptor(pointer: i64, shape: &[usize]) -> Vec<i64> {
    let mut words = vec![pointer, pointer, 0];
    words.extend(shape.iter().map(|&d| d as i64));
    let mut stride = 1;
    let mut strides = vec![0; shape.len()];
    for axis in (0..shape.len()).rev() {
        strides[axis] = stride;
        stride *= shape[axis] as i64;
    }
    words.extend(strides);
    words
}
