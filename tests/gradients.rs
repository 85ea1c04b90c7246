//! Every differentiable operator's gradient rule against central differences, in double
//! precision. Each case is a small network of fixed sizes (two sizes per operator); its graph
//! is converted to f64, seeded at every output with a random tensor `r`, differentiated with
//! respect to its inputs and parameters, JIT-compiled (products as `linalg`, the only way that
//! computes in f64), and each gradient element `g_i` is compared with
//! `⟨r, f(x + h·e_i) − f(x − h·e_i)⟩ / 2h`.

use std::collections::HashMap;
use std::ffi::c_void;

use mrc::diagnostic::SourceMap;
use mrc::graph::types::DType;
use mrc::graph::{Port, StateKind};
use mrc::lowering::{create_context, emit_forward, jit, lower_to_llvm, BuiltIns, Products, Signature, FORWARD};

extern "C" {
    fn free(pointer: *mut c_void);
}

/// xorshift64*: deterministic values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// A row-major tensor of f64 (or, for step counters, i64 values stored as f64).
#[derive(Clone, Debug)]
struct Tensor {
    dims: Vec<usize>,
    data: Vec<f64>,
}

/// Calls `@forward` with one f64 (or i64) buffer per argument, in signature order; returns the
/// results by name.
fn run(engine: &melior::ExecutionEngine, signature: &Signature, arguments: &[Tensor]) -> HashMap<String, Tensor> {
    let mut buffers: Vec<Vec<u64>> = arguments
        .iter()
        .zip(&signature.arguments)
        .map(|(t, a)| match a.ty.dtype {
            DType::I64 => t.data.iter().map(|&v| v as i64 as u64).collect(),
            _ => t.data.iter().map(|v| v.to_bits()).collect(),
        })
        .collect();
    let mut descriptors: Vec<Vec<i64>> = buffers
        .iter_mut()
        .zip(arguments)
        .map(|(buffer, t)| {
            let pointer = buffer.as_mut_ptr() as i64;
            let mut strides = vec![1_i64; t.dims.len()];
            for axis in (0..t.dims.len().saturating_sub(1)).rev() {
                strides[axis] = strides[axis + 1] * t.dims[axis + 1] as i64;
            }
            let mut words = vec![pointer, pointer, 0];
            words.extend(t.dims.iter().map(|&d| d as i64));
            words.extend(strides);
            words
        })
        .collect();
    let mut result_words: Vec<i64> = vec![0; signature.results.iter().map(|r| 3 + 2 * r.ty.rank()).sum::<usize>()];
    let mut pointers: Vec<*mut i64> =
        std::iter::once(result_words.as_mut_ptr()).chain(descriptors.iter_mut().map(|d| d.as_mut_ptr())).collect();
    let mut packed: Vec<*mut ()> = pointers.iter_mut().map(|p| p as *mut *mut i64 as *mut ()).collect();
    unsafe { engine.invoke_packed(FORWARD, &mut packed) }.unwrap();

    let ours: Vec<i64> = buffers.iter().map(|b| b.as_ptr() as i64).collect();
    let mut results = HashMap::new();
    let mut words = result_words.as_slice();
    let mut freed = vec![];
    for result in &signature.results {
        let rank = result.ty.rank();
        let (allocated, aligned, offset) = (words[0], words[1], words[2]);
        let dims: Vec<usize> = words[3..3 + rank].iter().map(|&d| d as usize).collect();
        let strides = &words[3 + rank..3 + 2 * rank];
        let count = dims.iter().product();
        let data = (0..count)
            .map(|flat| {
                let (mut rest, mut position) = (flat, offset);
                for axis in (0..rank).rev() {
                    position += (rest % dims[axis]) as i64 * strides[axis];
                    rest /= dims[axis];
                }
                let bits = unsafe { *(aligned as *const u64).add(position as usize) };
                if result.ty.dtype == DType::I64 { bits as i64 as f64 } else { f64::from_bits(bits) }
            })
            .collect();
        if !ours.contains(&allocated) && !freed.contains(&allocated) {
            unsafe { free(allocated as *mut c_void) };
            freed.push(allocated);
        }
        results.insert(result.name.clone(), Tensor { dims, data });
        words = &words[3 + 2 * rank..];
    }
    results
}

/// Compiles the network of `source` in f64 with its gradients (in training mode with
/// `training`), and checks every gradient element against central differences.
fn check(case: &str, source: &str, training: bool) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("case.model");
    std::fs::write(&path, source).unwrap();
    let mut sources = SourceMap::default();
    let model = mrc::expand::load(&mut sources, &path, None).unwrap_or_else(|d| panic!("{case}: {}", d.render(&sources)));
    let mut graph = model.graph;
    graph.convert_floats(DType::F64);
    let outputs: Vec<(String, Port)> = graph.outputs.clone();
    if training {
        mrc::autodiff::to_training_mode(&mut graph).unwrap();
    }
    // The inputs and the trainable parameters (a frozen batch norm's tensors are buffers).
    let parameters = graph.state.iter().copied().filter(|&s| graph.state_kind(s) == Some(StateKind::Parameter));
    let wrt: Vec<_> = graph.inputs.iter().copied().chain(parameters).filter(|&n| graph.nodes[n].outputs[0].dtype == DType::F64).collect();
    let mut seeds = vec![];
    for (name, port) in &outputs {
        let ty = graph.ty(*port).clone();
        let seed = graph.add_input(&format!("seed:{name}"), ty, None);
        seeds.push((*port, Port { node: seed, output: 0 }));
    }
    let grads = mrc::autodiff::backward(&mut graph, &seeds, &wrt).unwrap_or_else(|e| panic!("{case}: {e}"));

    let context = create_context();
    let (mut module, signature) = emit_forward(&context, &graph, Products::Linalg, BuiltIns::Runtime).unwrap_or_else(|e| panic!("{case}: {e}"));
    lower_to_llvm(&context, &mut module).unwrap_or_else(|e| panic!("{case}: {e}"));
    let engine = jit(&module, 2).unwrap();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ case.len() as u64);
    let mut arguments: Vec<Tensor> = signature
        .arguments
        .iter()
        .map(|a| {
            let dims: Vec<usize> = a.ty.dims.iter().map(|d| d.value().expect("fixed sizes") as usize).collect();
            let count = dims.iter().product();
            let data = match a.ty.dtype {
                DType::I64 => vec![3.0; count],
                _ if a.name.ends_with("running_var") => (0..count).map(|_| 0.5 + rng.next().abs()).collect(),
                _ => (0..count).map(|_| rng.next()).collect(),
            };
            Tensor { dims, data }
        })
        .collect();
    let position = |name: &str| signature.arguments.iter().position(|a| a.name == name);
    let seeded: Vec<(String, usize)> = outputs.iter().map(|(name, _)| (name.clone(), position(&format!("seed:{name}")).expect("seeds are arguments"))).collect();
    let objective = |arguments: &[Tensor]| -> f64 {
        let results = run(&engine, &signature, arguments);
        seeded.iter().map(|(name, seed)| results[name].data.iter().zip(&arguments[*seed].data).map(|(y, r)| y * r).sum::<f64>()).sum()
    };

    let results = run(&engine, &signature, &arguments);
    let h = 1e-6;
    let mut checked = 0;
    for (node, grad_name) in wrt.iter().zip(&grads) {
        let name = graph.nodes[*node].name.clone();
        let Some(slot) = position(&name) else { continue };
        let grad = &results[grad_name];
        let scale = grad.data.iter().map(|g| g * g).sum::<f64>().sqrt().max(1e-3);
        // Every element of small tensors, a spread sample of large ones.
        let count = grad.data.len();
        let step = (count / 64).max(1);
        for i in (0..count).step_by(step) {
            let original = arguments[slot].data[i];
            arguments[slot].data[i] = original + h;
            let plus = objective(&arguments);
            arguments[slot].data[i] = original - h;
            let minus = objective(&arguments);
            arguments[slot].data[i] = original;
            let numeric = (plus - minus) / (2.0 * h);
            let analytic = grad.data[i];
            assert!(
                (numeric - analytic).abs() <= 1e-6 * scale + 1e-7 * numeric.abs().max(1.0),
                "{case}: d/d{name}[{i}]: analytic {analytic}, central difference {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "{case}: nothing checked");
}

/// A network of one call on `x` of the given size.
fn unary(call: &str, x: &str, y: &str) -> String {
    format!("network t(x: f64[{x}]) -> (y: f64[{y}]) {{\n    return {call}\n}}\n")
}

#[test]
fn convolutions() {
    for size in [5, 8] {
        check(&format!("conv 3x3 {size}"), &unary("conv2d(x, out: 4, kernel: 3, padding: 1) @conv", &format!("2, 3, {size}, {}", size + 1), "_, _, _, _"), false);
        check(&format!("conv 7x7/2 {size}"), &unary("conv2d(x, out: 2, kernel: 7, stride: 2, padding: 3, bias: false) @conv", &format!("1, 2, {size}, {size}"), "_, _, _, _"), false);
        check(&format!("conv 1x1/2 {size}"), &unary("conv2d(x, out: 3, kernel: 1, stride: 2, bias: false) @conv", &format!("2, 2, {size}, {size}"), "_, _, _, _"), false);
        check(&format!("conv 3x3 groups 2 {size}"), &unary("conv2d(x, out: 4, kernel: 3, padding: 1, groups: 2) @conv", &format!("2, 4, {size}, {size}"), "_, _, _, _"), false);
        check(&format!("conv 3x3/2 groups 2 {size}"), &unary("conv2d(x, out: 2, kernel: 3, stride: 2, padding: 1, groups: 2, bias: false) @conv", &format!("1, 4, {size}, {size}"), "_, _, _, _"), false);
        check(&format!("conv 3x3 dilated {size}"), &unary("conv2d(x, out: 2, kernel: 3, padding: 2, dilation: 2) @conv", &format!("1, 2, {size}, {size}"), "_, _, _, _"), false);
        check(&format!("conv_transpose 2x2/2 {size}"), &unary("conv_transpose2d(x, out: 3, kernel: 2, stride: 2) @deconv", &format!("2, 2, {size}, {size}"), "_, _, _, _"), false);
        check(&format!("conv_transpose 3x3/2 {size}"), &unary("conv_transpose2d(x, out: 2, kernel: 3, stride: 2, padding: 1) @deconv", &format!("1, 3, {size}, {size}"), "_, _, _, _"), false);
    }
}

#[test]
fn linear_layers() {
    for rows in [3, 7] {
        check(&format!("linear {rows}"), &unary("linear(x, out: 5) @fc", &format!("{rows}, 6"), "_, _"), false);
        check(&format!("flatten linear {rows}"), &unary("linear(flatten(x), out: 4, bias: false) @fc", &format!("{rows}, 2, 3, 3"), "_, _"), false);
    }
}

#[test]
fn elementwise() {
    for size in [4, 9] {
        let x = format!("2, 3, {size}, {size}");
        check(&format!("relu {size}"), &unary("relu(x)", &x, "_, _, _, _"), false);
        check(&format!("sigmoid {size}"), &unary("sigmoid(x)", &x, "_, _, _, _"), false);
        check(&format!("add mul {size}"), &unary("x * relu(x) + x", &x, "_, _, _, _"), false);
    }
}

#[test]
fn normalization() {
    for size in [3, 6] {
        let x = format!("2, 3, {size}, {size}");
        check(&format!("batch_norm training {size}"), &unary("batch_norm(x) @bn", &x, "_, _, _, _"), true);
        // Channels last and in the middle of three axes: the batch's sums over the axes around them.
        check(&format!("batch_norm training [N, C] {size}"), &unary("batch_norm(x) @bn", &format!("{size}, 3"), "_, _"), true);
        check(&format!("batch_norm training [N, C, L] {size}"), &unary("batch_norm(x) @bn", &format!("2, 3, {size}"), "_, _, _"), true);
        check(&format!("frozen_batch_norm {size}"), &unary("frozen_batch_norm(conv2d(x, out: 2, kernel: 1) @conv) @bn", &x, "_, _, _, _"), false);
    }
}

#[test]
fn pooling_and_upsampling() {
    for size in [6, 9] {
        let x = format!("2, 2, {size}, {size}");
        check(&format!("max_pool 3x3/2 {size}"), &unary("max_pool2d(x, kernel: 3, stride: 2, padding: 1)", &x, "_, _, _, _"), false);
        check(&format!("max_pool 1x1/2 {size}"), &unary("max_pool2d(x, kernel: 1, stride: 2)", &x, "_, _, _, _"), false);
        check(&format!("max_pool 2x2/1 {size}"), &unary("max_pool2d(x, kernel: 2, stride: 1)", &x, "_, _, _, _"), false);
        check(&format!("avg_pool 3x3/2 {size}"), &unary("avg_pool2d(x, kernel: 3, stride: 2, padding: 1)", &x, "_, _, _, _"), false);
        check(&format!("avg_pool 2x2 {size}"), &unary("avg_pool2d(x, kernel: 2)", &x, "_, _, _, _"), false);
        check(&format!("adaptive_avg_pool 1x1 {size}"), &unary("adaptive_avg_pool2d(x, output: 1)", &x, "_, _, _, _"), false);
        check(&format!("adaptive_avg_pool 3x3 {size}"), &unary("adaptive_avg_pool2d(x, output: 3)", &x, "_, _, _, _"), false);
        let source = format!("network t(x: f64[1, 2, {size}, {size}], like: f64[1, 2, {}, {}]) -> (y: f64[_, _, _, _]) {{\n    return upsample_nearest(x, like: like)\n}}\n", 2 * size, 2 * size + 3);
        check(&format!("upsample_nearest {size}"), &source, false);
    }
}
