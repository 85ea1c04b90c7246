//! Every dense operator, lowered by its own `lower`, JIT-compiled and run on random inputs and
//! weights, against a straightforward Rust implementation of torch's definition. Each case is a
//! one-operator network with symbolic sizes (`?` in MLIR), compiled once and run at two input
//! sizes, once per way of computing products and once after the CPU target's graph passes
//! (batch norms folded into derived weights, epilogues fused into convolutions, weights packed
//! for the GEMM).

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::PathBuf;

use mrc::diagnostic::SourceMap;
use mrc::graph::types::DType;
use mrc::lowering::{BuiltIns, create_context, emit_forward, interface, jit, lower_to_llvm, Products, Signature, FORWARD};
use mrc_runtime::abi::forward::{Interface, Source};

extern "C" {
    /// Frees the result buffers that JIT-compiled code allocated with `malloc`.
    fn free(pointer: *mut c_void);
}

// ---- harness ------------------------------------------------------------------------------------

/// A row-major f32 tensor.
#[derive(Clone, Debug)]
struct Tensor {
    dims: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    fn zeros(dims: &[usize]) -> Tensor {
        Tensor { dims: dims.to_vec(), data: vec![0.0; dims.iter().product()] }
    }

    fn at(&self, index: &[usize]) -> f32 {
        self.data[self.offset(index)]
    }

    fn at_mut(&mut self, index: &[usize]) -> &mut f32 {
        let offset = self.offset(index);
        &mut self.data[offset]
    }

    fn offset(&self, index: &[usize]) -> usize {
        index.iter().zip(&self.dims).fold(0, |acc, (i, d)| {
            assert!(i < d, "index {index:?} out of {:?}", self.dims);
            acc * d + i
        })
    }
}

/// xorshift64*: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn tensor(&mut self, dims: &[usize]) -> Tensor {
        let mut t = Tensor::zeros(dims);
        t.data.iter_mut().for_each(|v| *v = self.next());
        t
    }
}

/// A network compiled to `@forward`, callable on tensors.
struct Compiled<'a> {
    engine: &'a melior::ExecutionEngine,
    signature: &'a Signature,
    /// The state (the model's) and the derived arguments (computed from it here, as programs do
    /// when they load weights).
    interface: &'a Interface,
}

impl Compiled<'_> {
    /// Random state (positive running variances), named by their state paths.
    fn random_state(&self, rng: &mut Rng) -> HashMap<String, Tensor> {
        let mut state = HashMap::new();
        for spec in &self.interface.state {
            let mut tensor = rng.tensor(&spec.shape);
            if spec.name.ends_with("running_var") {
                tensor.data.iter_mut().for_each(|v| *v = 0.5 + v.abs());
            }
            state.insert(spec.name.clone(), tensor);
        }
        state
    }

    /// `tensors` with the derived arguments added, computed from the state tensors.
    fn with_derived(&self, tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
        let mut all = tensors.clone();
        for source in &self.interface.arguments {
            if let Source::Derived { name, transform, from } = source {
                let sources: Vec<(&[f32], &[usize])> = from.iter().map(|f| (tensors[f].data.as_slice(), tensors[f].dims.as_slice())).collect();
                let (data, dims) = transform.apply(&sources).unwrap();
                all.insert(name.clone(), Tensor { dims, data });
            }
        }
        all
    }

    /// Calls `_mlir_ciface_forward` with a memref descriptor per argument (looked up by name in
    /// `tensors`), and returns the results.
    fn run(&self, tensors: &HashMap<String, Tensor>) -> Vec<Tensor> {
        let tensors = &self.with_derived(tensors);
        // Descriptors as words: allocated, aligned, offset, sizes, strides.
        let mut buffers: Vec<Vec<f32>> = vec![];
        let mut counters = vec![0_i64; self.signature.arguments.len()];
        let mut descriptors: Vec<Vec<i64>> = vec![];
        for (argument, counter) in self.signature.arguments.iter().zip(&mut counters) {
            if argument.ty.dtype == DType::I64 {
                // The step counter of a batch norm: rank 0, unused by the computation.
                let pointer = counter as *mut i64 as i64;
                descriptors.push(vec![pointer, pointer, 0]);
                continue;
            }
            let tensor = tensors.get(&argument.name).unwrap_or_else(|| panic!("no tensor for `{}`", argument.name));
            assert_eq!(tensor.dims.len(), argument.ty.rank(), "rank of `{}`", argument.name);
            buffers.push(tensor.data.clone());
            let pointer = buffers.last_mut().unwrap().as_mut_ptr() as i64;
            descriptors.push(descriptor(pointer, &tensor.dims));
        }
        let mut result_words: Vec<i64> =
            vec![0; self.signature.results.iter().map(|r| 3 + 2 * r.ty.rank()).sum::<usize>()];
        let mut pointers: Vec<*mut i64> = std::iter::once(result_words.as_mut_ptr())
            .chain(descriptors.iter_mut().map(|d| d.as_mut_ptr()))
            .collect();
        let mut packed: Vec<*mut ()> = pointers.iter_mut().map(|p| p as *mut *mut i64 as *mut ()).collect();
        unsafe { self.engine.invoke_packed(FORWARD, &mut packed) }.unwrap();

        let ours: Vec<i64> = buffers.iter().map(|b| b.as_ptr() as i64).collect();
        let mut results = vec![];
        let mut words = result_words.as_slice();
        for result in &self.signature.results {
            let rank = result.ty.rank();
            let (allocated, aligned, offset) = (words[0], words[1], words[2]);
            let dims: Vec<usize> = words[3..3 + rank].iter().map(|&d| d as usize).collect();
            let strides = &words[3 + rank..3 + 2 * rank];
            let mut tensor = Tensor::zeros(&dims);
            for (flat, value) in tensor.data.iter_mut().enumerate() {
                let mut rest = flat;
                let mut position = offset;
                for axis in (0..rank).rev() {
                    position += (rest % dims[axis]) as i64 * strides[axis];
                    rest /= dims[axis];
                }
                *value = unsafe { *(aligned as *const f32).add(position as usize) };
            }
            if !ours.contains(&allocated) {
                unsafe { free(allocated as *mut c_void) };
            }
            results.push(tensor);
            words = &words[3 + 2 * rank..];
        }
        results
    }
}

fn descriptor(pointer: i64, dims: &[usize]) -> Vec<i64> {
    let mut strides = vec![1_i64; dims.len()];
    for axis in (0..dims.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * dims[axis + 1] as i64;
    }
    let mut words = vec![pointer, pointer, 0];
    words.extend(dims.iter().map(|&d| d as i64));
    words.extend(strides);
    words
}

/// Expands `source` (a model file's text), emits and lowers its network, and hands the
/// compiled function to `body`, once per distinct way of computing products.
fn with_compiled(source: &str, body: impl Fn(&Compiled)) {
    let directory = tempfile::tempdir().unwrap();
    let path: PathBuf = directory.path().join(format!("{:016x}.model", fingerprint(source)));
    std::fs::write(&path, source).unwrap();
    let mut sources = SourceMap::default();
    let model = mrc::expand::load(&mut sources, &path, None)
        .unwrap_or_else(|d| panic!("model does not expand:\n{}\n{source}", d.render(&sources)));

    // Every target's way of computing products, and the graph passes, where they change the
    // code (convolutions, linear layers, batch norms, residual blocks).
    let context = create_context();
    let mut optimized = model.graph.clone();
    mrc::passes::run(&mut optimized, &mrc::targets::Target::graph_passes(&mrc::targets::cpu::Cpu));
    let mut seen = vec![];
    // The CPU's passes derive what only its own products read (Winograd's filters).
    let unoptimized = [Products::RuntimeGemm, Products::HostGemm, Products::Linalg];
    for (graph, all_products) in [(&model.graph, &unoptimized[..]), (&optimized, &[Products::HostGemm][..])] {
        for &products in all_products {
            let (mut module, signature) = emit_forward(&context, graph, products, BuiltIns::Runtime).unwrap_or_else(|e| panic!("{e}\n{source}"));
            let emitted = module.as_operation().to_string();
            if seen.contains(&emitted) {
                continue;
            }
            lower_to_llvm(&context, &mut module).unwrap_or_else(|e| panic!("{e}\n{emitted}"));
            let engine = jit(&module, 2).unwrap();
            let interface = interface(graph, &signature);
            body(&Compiled { engine: &engine, signature: &signature, interface: &interface });
            seen.push(emitted);
        }
    }
}

fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn assert_close(actual: &Tensor, expected: &Tensor, case: &str) {
    assert_eq!(actual.dims, expected.dims, "{case}: shape");
    for (index, (a, e)) in actual.data.iter().zip(&expected.data).enumerate() {
        assert!((a - e).abs() <= 1e-4 * e.abs().max(1.0), "{case}: element {index}: {a} != {e}");
    }
}

/// Compiles a one-operator network `y = call` of an input `x: f32[N, C, H, W]` (C fixed, the
/// rest symbolic), and checks it at every input shape in `shapes` against `reference`, which
/// gets the input and the random state by name.
fn check_unary(
    case: &str,
    channels: usize,
    call: &str,
    output_rank: usize,
    shapes: &[[usize; 4]],
    reference: impl Fn(&Tensor, &HashMap<String, Tensor>) -> Tensor,
) {
    let output = vec!["_"; output_rank].join(", ");
    let source = format!("network t(x: f32[N, {channels}, H, W]) -> (y: f32[{output}]) {{\n    return {call}\n}}\n");
    with_compiled(&source, |compiled| {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ fingerprint(case));
        for shape in shapes {
            let mut tensors = compiled.random_state(&mut rng);
            let x = rng.tensor(shape);
            tensors.insert("x".into(), x.clone());
            let actual = compiled.run(&tensors);
            assert_close(&actual[0], &reference(&x, &tensors), &format!("{case} at {shape:?}"));
        }
    });
}

// ---- references (torch semantics) ---------------------------------------------------------------

#[derive(Clone, Copy)]
struct Conv {
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
}

/// `torch.nn.functional.conv2d`.
fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv) -> Tensor {
    let (n, c, h, wd) = (x.dims[0], x.dims[1], x.dims[2] as i64, x.dims[3] as i64);
    let (o, cg, kh, kw) = (w.dims[0], w.dims[1], w.dims[2], w.dims[3]);
    let out = |size: i64, axis: usize, k: usize| {
        ((size + 2 * p.padding[axis] as i64 - (p.dilation[axis] * (k - 1)) as i64 - 1) / p.stride[axis] as i64 + 1) as usize
    };
    let (oh, ow) = (out(h, 0, kh), out(wd, 1, kw));
    let og = o / p.groups;
    assert_eq!(cg * p.groups, c);
    let mut y = Tensor::zeros(&[n, o, oh, ow]);
    for ni in 0..n {
        for oi in 0..o {
            let g = oi / og;
            for yi in 0..oh {
                for xi in 0..ow {
                    let mut sum = b.map_or(0.0, |b| b.data[oi]);
                    for ci in 0..cg {
                        for i in 0..kh {
                            for j in 0..kw {
                                let hy = (yi * p.stride[0] + i * p.dilation[0]) as i64 - p.padding[0] as i64;
                                let wx = (xi * p.stride[1] + j * p.dilation[1]) as i64 - p.padding[1] as i64;
                                if hy >= 0 && hy < h && wx >= 0 && wx < wd {
                                    sum += x.at(&[ni, g * cg + ci, hy as usize, wx as usize]) * w.at(&[oi, ci, i, j]);
                                }
                            }
                        }
                    }
                    *y.at_mut(&[ni, oi, yi, xi]) = sum;
                }
            }
        }
    }
    y
}

/// `torch.nn.functional.conv_transpose2d`: every input element scatters through the kernel.
fn conv_transpose2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv, output_padding: [usize; 2]) -> Tensor {
    let (n, c, h, wd) = (x.dims[0], x.dims[1], x.dims[2], x.dims[3]);
    let (og, kh, kw) = (w.dims[1], w.dims[2], w.dims[3]);
    let cg = c / p.groups;
    let o = og * p.groups;
    let out = |size: usize, axis: usize, k: usize| {
        (size - 1) * p.stride[axis] + p.dilation[axis] * (k - 1) + output_padding[axis] + 1 - 2 * p.padding[axis]
    };
    let (oh, ow) = (out(h, 0, kh), out(wd, 1, kw));
    let mut y = Tensor::zeros(&[n, o, oh, ow]);
    for ni in 0..n {
        for oi in 0..o {
            let bias = b.map_or(0.0, |b| b.data[oi]);
            for yi in 0..oh {
                for xi in 0..ow {
                    *y.at_mut(&[ni, oi, yi, xi]) = bias;
                }
            }
        }
        for ci in 0..c {
            let g = ci / cg;
            for hi in 0..h {
                for wi in 0..wd {
                    let v = x.at(&[ni, ci, hi, wi]);
                    for f in 0..og {
                        for i in 0..kh {
                            for j in 0..kw {
                                let yi = (hi * p.stride[0] + i * p.dilation[0]) as i64 - p.padding[0] as i64;
                                let xi = (wi * p.stride[1] + j * p.dilation[1]) as i64 - p.padding[1] as i64;
                                if yi >= 0 && (yi as usize) < oh && xi >= 0 && (xi as usize) < ow {
                                    *y.at_mut(&[ni, g * og + f, yi as usize, xi as usize]) += v * w.at(&[ci, f, i, j]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

/// `max_pool2d` or `avg_pool2d` (`count_include_pad=True`), `ceil_mode=False`.
fn pool2d(x: &Tensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], max: bool) -> Tensor {
    let (n, c, h, w) = (x.dims[0], x.dims[1], x.dims[2] as i64, x.dims[3] as i64);
    let out = |size: i64, axis: usize| ((size + 2 * padding[axis] as i64 - kernel[axis] as i64) / stride[axis] as i64 + 1) as usize;
    let (oh, ow) = (out(h, 0), out(w, 1));
    let mut y = Tensor::zeros(&[n, c, oh, ow]);
    for ni in 0..n {
        for ci in 0..c {
            for yi in 0..oh {
                for xi in 0..ow {
                    let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                    for i in 0..kernel[0] {
                        for j in 0..kernel[1] {
                            let hy = (yi * stride[0] + i) as i64 - padding[0] as i64;
                            let wx = (xi * stride[1] + j) as i64 - padding[1] as i64;
                            if hy >= 0 && hy < h && wx >= 0 && wx < w {
                                let v = x.at(&[ni, ci, hy as usize, wx as usize]);
                                acc = if max { acc.max(v) } else { acc + v };
                            }
                        }
                    }
                    *y.at_mut(&[ni, ci, yi, xi]) = if max { acc } else { acc / (kernel[0] * kernel[1]) as f32 };
                }
            }
        }
    }
    y
}

/// `adaptive_avg_pool2d`: window `[⌊i·H/out⌋, ⌈(i+1)·H/out⌉)`.
fn adaptive_avg_pool2d(x: &Tensor, output: [usize; 2]) -> Tensor {
    let (n, c, h, w) = (x.dims[0], x.dims[1], x.dims[2], x.dims[3]);
    let mut y = Tensor::zeros(&[n, c, output[0], output[1]]);
    for ni in 0..n {
        for ci in 0..c {
            for yi in 0..output[0] {
                for xi in 0..output[1] {
                    let (h0, h1) = (yi * h / output[0], ((yi + 1) * h).div_ceil(output[0]));
                    let (w0, w1) = (xi * w / output[1], ((xi + 1) * w).div_ceil(output[1]));
                    let mut sum = 0.0;
                    for hy in h0..h1 {
                        for wx in w0..w1 {
                            sum += x.at(&[ni, ci, hy, wx]);
                        }
                    }
                    *y.at_mut(&[ni, ci, yi, xi]) = sum / ((h1 - h0) * (w1 - w0)) as f32;
                }
            }
        }
    }
    y
}

/// `interpolate(x, size=(oh, ow), mode="nearest")`: source index `min(floorf(dst · (in/out)), in-1)`
/// with the scale in f32, as torch's CPU kernel computes it.
fn upsample_nearest(x: &Tensor, oh: usize, ow: usize) -> Tensor {
    let (n, c, h, w) = (x.dims[0], x.dims[1], x.dims[2], x.dims[3]);
    let source = |dst: usize, input: usize, output: usize| {
        let scale = input as f32 / output as f32;
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    };
    let mut y = Tensor::zeros(&[n, c, oh, ow]);
    for ni in 0..n {
        for ci in 0..c {
            for yi in 0..oh {
                for xi in 0..ow {
                    *y.at_mut(&[ni, ci, yi, xi]) = x.at(&[ni, ci, source(yi, h, oh), source(xi, w, ow)]);
                }
            }
        }
    }
    y
}

/// Eval-mode batch norm: `(x - mean) / sqrt(var + eps) * weight + bias` along axis 1.
fn batch_norm(x: &Tensor, state: &HashMap<String, Tensor>, scope: &str, eps: f32) -> Tensor {
    let get = |name: &str| &state[&format!("{scope}.{name}")].data;
    let (weight, bias, mean, var) = (get("weight"), get("bias"), get("running_mean"), get("running_var"));
    let inner: usize = x.dims[2..].iter().product();
    let mut y = x.clone();
    for (flat, v) in y.data.iter_mut().enumerate() {
        let c = flat / inner % x.dims[1];
        *v = (*v - mean[c]) / (var[c] + eps).sqrt() * weight[c] + bias[c];
    }
    y
}

fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor { dims: x.dims.clone(), data: x.data.iter().map(|&v| f(v)).collect() }
}

/// Two batches of different spatial sizes (and batch sizes) for every case.
const SHAPES: [[usize; 4]; 2] = [[1, 0, 9, 7], [2, 0, 6, 10]];

fn shapes(channels: usize) -> Vec<[usize; 4]> {
    SHAPES.iter().map(|&[n, _, h, w]| [n, channels, h, w]).collect()
}

// ---- convolutions -------------------------------------------------------------------------------

fn check_conv(case: &str, c: usize, out: usize, kernel: [usize; 2], p: Conv, bias: bool) {
    let call = format!(
        "conv2d(x, out: {out}, kernel: {kernel:?}, stride: {:?}, padding: {:?}, dilation: {:?}, groups: {}, bias: {bias}) @conv",
        p.stride, p.padding, p.dilation, p.groups
    );
    check_unary(case, c, &call, 4, &shapes(c), |x, state| {
        conv2d(x, &state["conv.weight"], bias.then(|| &state["conv.bias"]), p)
    });
}

const PLAIN: Conv = Conv { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 };

#[test]
fn conv2d_plain_with_and_without_bias() {
    check_conv("conv 3x3", 3, 4, [3, 3], PLAIN, true);
    check_conv("conv 3x3 no bias", 3, 4, [3, 3], PLAIN, false);
    check_conv("conv 1x1", 5, 2, [1, 1], PLAIN, true);
}

#[test]
fn conv2d_strides_and_padding() {
    check_conv("conv stride 2 pad 1", 3, 4, [3, 3], Conv { stride: [2, 2], padding: [1, 1], ..PLAIN }, true);
    check_conv("conv stride 2x1 pad 0x2", 2, 3, [3, 2], Conv { stride: [2, 1], padding: [0, 2], ..PLAIN }, false);
    check_conv("conv 7x7 stride 2 pad 3", 3, 2, [7, 7], Conv { stride: [2, 2], padding: [3, 3], ..PLAIN }, false);
}

#[test]
fn conv2d_dilation() {
    check_conv("conv dilation 2 pad 2", 2, 3, [3, 3], Conv { padding: [2, 2], dilation: [2, 2], ..PLAIN }, true);
    check_conv("conv dilation 2x1 stride 2", 2, 3, [2, 3], Conv { stride: [2, 2], dilation: [2, 1], ..PLAIN }, true);
}

#[test]
fn conv2d_groups() {
    check_conv("conv groups 2", 4, 6, [3, 3], Conv { padding: [1, 1], groups: 2, ..PLAIN }, true);
    check_conv("conv depthwise stride 2", 3, 3, [3, 3], Conv { stride: [2, 2], padding: [1, 1], groups: 3, ..PLAIN }, false);
    check_conv("conv groups 2 dilation 2", 4, 2, [3, 3], Conv { dilation: [2, 2], padding: [1, 1], groups: 2, ..PLAIN }, true);
}

fn check_conv_transpose(case: &str, c: usize, out: usize, kernel: [usize; 2], p: Conv, output_padding: [usize; 2], bias: bool) {
    let call = format!(
        "conv_transpose2d(x, out: {out}, kernel: {kernel:?}, stride: {:?}, padding: {:?}, output_padding: {output_padding:?}, dilation: {:?}, groups: {}, bias: {bias}) @deconv",
        p.stride, p.padding, p.dilation, p.groups
    );
    check_unary(case, c, &call, 4, &shapes(c), |x, state| {
        conv_transpose2d(x, &state["deconv.weight"], bias.then(|| &state["deconv.bias"]), p, output_padding)
    });
}

#[test]
fn conv_transpose2d_mask_head_kernel_2_stride_2() {
    check_conv_transpose("deconv 2x2 stride 2", 4, 3, [2, 2], Conv { stride: [2, 2], ..PLAIN }, [0, 0], true);
    check_conv_transpose("deconv 2x2 stride 2 no bias", 3, 2, [2, 2], Conv { stride: [2, 2], ..PLAIN }, [0, 0], false);
    // Kernel equal to the stride, not square: the pixel-shuffle path with a 3×2 tap grid.
    check_conv_transpose("deconv 3x2 stride 3x2", 2, 3, [3, 2], Conv { stride: [3, 2], ..PLAIN }, [0, 0], true);
}

#[test]
fn conv_transpose2d_padding_output_padding_dilation_groups() {
    let strided = Conv { stride: [2, 2], padding: [1, 1], ..PLAIN };
    check_conv_transpose("deconv 3x3 stride 2 pad 1 out pad 1", 3, 2, [3, 3], strided, [1, 1], true);
    check_conv_transpose("deconv 3x3 stride 1 pad 1", 2, 3, [3, 3], Conv { padding: [1, 1], ..PLAIN }, [0, 0], true);
    check_conv_transpose("deconv stride 3x2 dilation 2x1", 2, 2, [3, 2], Conv { stride: [3, 2], dilation: [2, 1], ..PLAIN }, [2, 1], false);
    check_conv_transpose("deconv groups 2", 4, 6, [3, 3], Conv { stride: [2, 2], groups: 2, ..PLAIN }, [0, 0], true);
}

#[test]
fn conv_transpose2d_padding_beyond_the_kernel_crops() {
    // padding 2 > dilation·(kernel − 1) = 1: the spread input would need negative padding.
    check_conv_transpose("deconv 2x2 stride 2 pad 2", 2, 3, [2, 2], Conv { stride: [2, 2], padding: [2, 1], ..PLAIN }, [1, 0], true);
}

// ---- dense layers, normalization, elementwise ---------------------------------------------------

#[test]
fn flatten_then_linear_with_and_without_bias() {
    for bias in [true, false] {
        let source = format!(
            "network t(x: f32[N, 3, 2, 2]) -> (y: f32[N, 5]) {{\n    return linear(flatten(x), out: 5, bias: {bias}) @fc\n}}\n"
        );
        with_compiled(&source, |compiled| {
            let mut rng = Rng(7);
            for n in [1, 4] {
                let mut tensors = compiled.random_state(&mut rng);
                let x = rng.tensor(&[n, 3, 2, 2]);
                tensors.insert("x".into(), x.clone());
                let (w, b) = (&tensors["fc.weight"], tensors.get("fc.bias"));
                let mut expected = Tensor::zeros(&[n, 5]);
                for row in 0..n {
                    for o in 0..5 {
                        let dot: f32 = (0..12).map(|k| x.data[row * 12 + k] * w.data[o * 12 + k]).sum();
                        *expected.at_mut(&[row, o]) = dot + b.map_or(0.0, |b| b.data[o]);
                    }
                }
                assert_close(&compiled.run(&tensors)[0], &expected, &format!("linear bias={bias} n={n}"));
            }
        });
    }
}

#[test]
fn flatten_of_symbolic_axes() {
    check_unary("flatten from 1", 3, "flatten(x)", 2, &shapes(3), |x, _| Tensor {
        dims: vec![x.dims[0], x.dims[1..].iter().product()],
        data: x.data.clone(),
    });
    check_unary("flatten from 2", 3, "flatten(x, start: 2)", 3, &shapes(3), |x, _| Tensor {
        dims: vec![x.dims[0], x.dims[1], x.dims[2] * x.dims[3]],
        data: x.data.clone(),
    });
}

#[test]
fn batch_norm_and_frozen_batch_norm_in_eval_mode() {
    check_unary("batch_norm", 4, "batch_norm(x, eps: 0.001) @bn", 4, &shapes(4), |x, state| {
        batch_norm(x, state, "bn", 1e-3)
    });
    check_unary("frozen_batch_norm", 3, "frozen_batch_norm(x) @bn", 4, &shapes(3), |x, state| {
        batch_norm(x, state, "bn", 1e-5)
    });
    // torchvision's v1 COCO weights use eps = 0.
    check_unary("frozen_batch_norm eps 0", 2, "frozen_batch_norm(x, eps: 0.0) @bn", 4, &shapes(2), |x, state| {
        batch_norm(x, state, "bn", 0.0)
    });
}

#[test]
fn relu_and_sigmoid() {
    check_unary("relu", 3, "relu(x)", 4, &shapes(3), |x, _| map(x, |v| v.max(0.0)));
    check_unary("sigmoid", 3, "sigmoid(x * x + x)", 4, &shapes(3), |x, _| {
        map(x, |v| 1.0 / (1.0 + (-(v * v + v)).exp()))
    });
}

#[test]
fn add_and_mul_of_two_inputs() {
    let source = "network t(x: f32[N, 2, H, W], z: f32[N, 2, H, W]) -> (s: f32[N, 2, H, W], p: f32[N, 2, H, W]) {\n    return (x + z, x * z)\n}\n";
    with_compiled(source, |compiled| {
        let mut rng = Rng(11);
        for shape in shapes(2) {
            let (x, z) = (rng.tensor(&shape), rng.tensor(&shape));
            let tensors = HashMap::from([("x".to_string(), x.clone()), ("z".to_string(), z.clone())]);
            let results = compiled.run(&tensors);
            let zip = |f: fn(f32, f32) -> f32| Tensor {
                dims: x.dims.clone(),
                data: x.data.iter().zip(&z.data).map(|(&a, &b)| f(a, b)).collect(),
            };
            assert_close(&results[0], &zip(|a, b| a + b), "add");
            assert_close(&results[1], &zip(|a, b| a * b), "mul");
        }
    });
}

// ---- pooling and resampling ---------------------------------------------------------------------

#[test]
fn max_pool2d_windows_and_padding() {
    for (kernel, stride, padding) in [([3, 3], [2, 2], [1, 1]), ([2, 2], [2, 2], [0, 0]), ([1, 1], [2, 2], [0, 0]), ([3, 2], [1, 2], [1, 0_usize])] {
        let call = format!("max_pool2d(x, kernel: {kernel:?}, stride: {stride:?}, padding: {padding:?})");
        check_unary(&call, 3, &call, 4, &shapes(3), |x, _| pool2d(x, kernel, stride, padding, true));
    }
}

#[test]
fn max_pool2d_padding_never_wins_over_negative_inputs() {
    let source = "network t(x: f32[N, 2, H, W]) -> (y: f32[N, 2, _, _]) {\n    return max_pool2d(x, kernel: 3, stride: 2, padding: 1)\n}\n";
    with_compiled(source, |compiled| {
        let mut rng = Rng(13);
        for shape in shapes(2) {
            let x = map(&rng.tensor(&shape), |v| -1.0 - v.abs());
            let actual = compiled.run(&HashMap::from([("x".to_string(), x.clone())]));
            assert!(actual[0].data.iter().all(|&v| v <= -1.0), "padding leaked into the maximum");
            assert_close(&actual[0], &pool2d(&x, [3, 3], [2, 2], [1, 1], true), "max_pool of negatives");
        }
    });
}

#[test]
fn avg_pool2d_counts_padding() {
    for (kernel, stride, padding) in [([3, 3], [2, 2], [1, 1]), ([2, 2], [2, 2], [0, 0]), ([3, 2], [1, 1], [1, 1_usize])] {
        let call = format!("avg_pool2d(x, kernel: {kernel:?}, stride: {stride:?}, padding: {padding:?})");
        check_unary(&call, 2, &call, 4, &shapes(2), |x, _| pool2d(x, kernel, stride, padding, false));
    }
    // The stride defaults to the kernel.
    check_unary("avg_pool2d default stride", 2, "avg_pool2d(x, kernel: 2)", 4, &shapes(2), |x, _| pool2d(x, [2, 2], [2, 2], [0, 0], false));
}

#[test]
fn adaptive_avg_pool2d_global_on_symbolic_sizes() {
    check_unary("adaptive_avg_pool2d 1x1", 3, "adaptive_avg_pool2d(x)", 4, &shapes(3), |x, _| adaptive_avg_pool2d(x, [1, 1]));
}

#[test]
fn adaptive_avg_pool2d_to_divisors_of_a_known_size() {
    let source = "network t(x: f32[N, 2, 8, 6]) -> (y: f32[N, 2, 4, 3]) {\n    return adaptive_avg_pool2d(x, output: [4, 3])\n}\n";
    with_compiled(source, |compiled| {
        let mut rng = Rng(5);
        for n in [1, 3] {
            let x = rng.tensor(&[n, 2, 8, 6]);
            let actual = compiled.run(&HashMap::from([("x".to_string(), x.clone())]));
            assert_close(&actual[0], &adaptive_avg_pool2d(&x, [4, 3]), "adaptive_avg_pool2d 4x3");
        }
    });
}

/// Upsamples `x` to the spatial size of `like`, at two pairs of sizes.
fn check_upsample(case: &str, sizes: [([usize; 2], [usize; 2]); 2]) {
    let source = "network t(x: f32[N, 2, H, W], like: f32[N, 2, Hl, Wl]) -> (y: f32[N, 2, Hl, Wl]) {\n    return upsample_nearest(x, like: like)\n}\n";
    with_compiled(source, |compiled| {
        let mut rng = Rng(fingerprint(case));
        for ([h, w], [oh, ow]) in sizes {
            let x = rng.tensor(&[2, 2, h, w]);
            let tensors = HashMap::from([("x".to_string(), x.clone()), ("like".to_string(), Tensor::zeros(&[2, 2, oh, ow]))]);
            let actual = compiled.run(&tensors);
            assert_close(&actual[0], &upsample_nearest(&x, oh, ow), &format!("{case} {h}x{w} -> {oh}x{ow}"));
        }
    });
}

#[test]
fn upsample_nearest_by_two() {
    check_upsample("upsample x2", [([4, 5], [8, 10]), ([13, 7], [26, 14])]);
}

#[test]
fn upsample_nearest_by_non_integer_ratios() {
    check_upsample("upsample non-integer", [([3, 5], [7, 8]), ([25, 19], [50, 38])]);
    check_upsample("downsample non-integer", [([7, 9], [3, 5]), ([10, 4], [3, 3])]);
}

// ---- composition --------------------------------------------------------------------------------

#[test]
fn residual_block_composes() {
    let source = "\
network t(x: f32[N, 4, H, W]) -> (y: f32[N, 4, _, _]) {
    let a = relu(batch_norm(conv2d(x, out: 4, kernel: 3, padding: 1, bias: false) @conv1) @bn1)
    let b = batch_norm(conv2d(a, out: 4, kernel: 3, padding: 1, bias: false) @conv2) @bn2
    return max_pool2d(relu(b + x), kernel: 3, stride: 2, padding: 1)
}
";
    with_compiled(source, |compiled| {
        let mut rng = Rng(3);
        for shape in shapes(4) {
            let mut tensors = compiled.random_state(&mut rng);
            let x = rng.tensor(&shape);
            tensors.insert("x".into(), x.clone());
            let conv = |x: &Tensor, name: &str| conv2d(x, &tensors[name], None, Conv { padding: [1, 1], ..PLAIN });
            let a = map(&batch_norm(&conv(&x, "conv1.weight"), &tensors, "bn1", 1e-5), |v| v.max(0.0));
            let b = batch_norm(&conv(&a, "conv2.weight"), &tensors, "bn2", 1e-5);
            let sum = Tensor { dims: b.dims.clone(), data: b.data.iter().zip(&x.data).map(|(p, q)| (p + q).max(0.0)).collect() };
            assert_close(&compiled.run(&tensors)[0], &pool2d(&sum, [3, 3], [2, 2], [1, 1], true), "residual block");
        }
    });
}
