//! The MLIR toolchain end to end: modules built with melior's builders or parsed from text,
//! lowered by mrc's pipelines, JIT-compiled by MLIR's `ExecutionEngine` and run, with results
//! checked against Rust; errors for broken input; and CUDA kernels turned into PTX.

use std::ffi::c_void;

use melior::{
    dialect::{arith, func},
    helpers::{ArithBlockExt, BuiltinBlockExt},
    ir::{
        attribute::{StringAttribute, TypeAttribute},
        operation::{OperationBuilder, OperationLike},
        r#type::{FunctionType, IntegerType},
        Attribute, Block, BlockLike, Identifier, Location, Module, Region, RegionLike, Type,
    },
    Context,
};
use mrc::lowering::{
    create_context, extract_ptx, jit, lower_gpu_to_ptx, lower_to_llvm, parse_module, run_pipeline, LoweringError,
};

extern "C" {
    /// Frees buffers that JIT-compiled code allocated with `malloc` and returned to us.
    fn free(pointer: *mut c_void);
}

/// A ranked memref descriptor, laid out as MLIR's C interface passes it
/// (`StridedMemRefType<T, RANK>` in `mlir/ExecutionEngine/CRunnerUtils.h`).
#[repr(C)]
struct StridedMemRef<T, const RANK: usize> {
    allocated: *mut T,
    aligned: *mut T,
    offset: i64,
    sizes: [i64; RANK],
    strides: [i64; RANK],
}

impl<T, const RANK: usize> StridedMemRef<T, RANK> {
    /// Describes `data` as a contiguous row-major array of shape `sizes`.
    fn row_major(data: &mut [T], sizes: [i64; RANK]) -> Self {
        assert_eq!(data.len() as i64, sizes.iter().product::<i64>());
        let mut strides = [1; RANK];
        for dimension in (0..RANK.saturating_sub(1)).rev() {
            strides[dimension] = strides[dimension + 1] * sizes[dimension + 1];
        }
        Self { allocated: data.as_mut_ptr(), aligned: data.as_mut_ptr(), offset: 0, sizes, strides }
    }

    /// An empty descriptor for JIT-compiled code to fill in.
    fn unset() -> Self {
        Self {
            allocated: std::ptr::null_mut(),
            aligned: std::ptr::null_mut(),
            offset: 0,
            sizes: [0; RANK],
            strides: [0; RANK],
        }
    }
}

/// One argument of `ExecutionEngine::invoke_packed`: a pointer to the argument's value.
fn packed<T>(argument: &mut T) -> *mut () {
    argument as *mut T as *mut ()
}

/// Row-major `a` (m×k) times `b` (k×n).
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut product = vec![0.0; m * n];
    for row in 0..m {
        for column in 0..n {
            product[row * n + column] = (0..k).map(|i| a[row * k + i] * b[i * n + column]).sum();
        }
    }
    product
}

fn assert_close(actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len());
    for (index, (actual, expected)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (actual - expected).abs() <= 1e-5 * expected.abs().max(1.0),
            "element {index}: {actual} != {expected}\nactual:   {actual:?}\nexpected: {expected:?}"
        );
    }
}

/// The Rust reference for `square_plus_triangle`: x² + 3 + (0 + 1 + … + (n − 1)).
fn square_plus_triangle(x: i64, n: i64) -> i64 {
    x * x + 3 + (0..n).sum::<i64>()
}

/// Builds, with melior's builders, `func.func @square_plus_triangle(%x: i64, %n: i64) -> i64`
/// computing [`square_plus_triangle`] with `arith` ops and an `scf.for` carrying the sum.
fn build_square_plus_triangle(context: &Context) -> Module<'_> {
    let location = Location::unknown(context);
    let i64_type: Type = IntegerType::new(context, 64).into();
    let index_type = Type::index(context);
    let module = Module::new(location);

    let entry = Block::new(&[(i64_type, location), (i64_type, location)]);
    let x = entry.arg(0).unwrap();
    let n = entry.arg(1).unwrap();
    let square = entry.muli(x, x, location).unwrap();
    let three = entry.const_int(context, location, 3, 64).unwrap();
    let square_plus_three = entry.addi(square, three, location).unwrap();

    let lower = entry.const_int_from_type(context, location, 0, index_type).unwrap();
    let step = entry.const_int_from_type(context, location, 1, index_type).unwrap();
    let upper = entry.append_op_result(arith::index_cast(n, index_type, location)).unwrap();

    let loop_body = Block::new(&[(index_type, location), (i64_type, location)]);
    let counter = loop_body.append_op_result(arith::index_cast(loop_body.arg(0).unwrap(), i64_type, location)).unwrap();
    let running_sum = loop_body.addi(loop_body.arg(1).unwrap(), counter, location).unwrap();
    loop_body.append_operation(melior::dialect::scf::r#yield(&[running_sum], location));
    let loop_region = Region::new();
    loop_region.append_block(loop_body);

    // melior's `scf::for` helper has no iteration arguments; build the op with its sum operand.
    let sum = entry
        .append_op_result(
            OperationBuilder::new("scf.for", location)
                .add_operands(&[lower, upper, step, square_plus_three])
                .add_results(&[i64_type])
                .add_regions([loop_region])
                .build()
                .unwrap(),
        )
        .unwrap();
    entry.append_operation(func::r#return(&[sum], location));

    let body = Region::new();
    body.append_block(entry);
    module.body().append_operation(func::func(
        context,
        StringAttribute::new(context, "square_plus_triangle"),
        TypeAttribute::new(FunctionType::new(context, &[i64_type, i64_type], &[i64_type]).into()),
        body,
        &[(Identifier::new(context, "llvm.emit_c_interface"), Attribute::unit(context))],
        location,
    ));
    assert!(module.as_operation().verify(), "{}", module.as_operation());
    module
}

#[test]
fn builder_scalar_function_runs_in_jit() {
    let context = create_context();
    let mut module = build_square_plus_triangle(&context);
    lower_to_llvm(&context, &mut module).unwrap();
    let engine = jit(&module, 2).unwrap();

    for (mut x, mut n) in [(0_i64, 0_i64), (7, 1), (-12, 10), (1 << 20, 1000)] {
        let mut result = i64::MIN;
        unsafe {
            engine.invoke_packed("square_plus_triangle", &mut [packed(&mut x), packed(&mut n), packed(&mut result)])
        }
        .unwrap();
        assert_eq!(result, square_plus_triangle(x, n), "x = {x}, n = {n}");
    }
}

/// Matmul, bias and tanh on static tensors; the result tensor comes back as a buffer that the
/// function allocated, which exercises bufferization across the function boundary.
const MATMUL_BIAS_TANH: &str = r#"
#rows_columns = affine_map<(i, j) -> (i, j)>
#columns = affine_map<(i, j) -> (j)>
module {
  func.func @matmul_bias_tanh(%a: tensor<2x3xf32>, %b: tensor<3x4xf32>, %bias: tensor<4xf32>)
      -> tensor<2x4xf32> attributes { llvm.emit_c_interface } {
    %zero = arith.constant 0.0 : f32
    %empty = tensor.empty() : tensor<2x4xf32>
    %init = linalg.fill ins(%zero : f32) outs(%empty : tensor<2x4xf32>) -> tensor<2x4xf32>
    %product = linalg.matmul ins(%a, %b : tensor<2x3xf32>, tensor<3x4xf32>)
                             outs(%init : tensor<2x4xf32>) -> tensor<2x4xf32>
    %activated = linalg.generic {
        indexing_maps = [#rows_columns, #columns, #rows_columns],
        iterator_types = ["parallel", "parallel"]}
        ins(%product, %bias : tensor<2x4xf32>, tensor<4xf32>) outs(%empty : tensor<2x4xf32>) {
      ^bb0(%p: f32, %c: f32, %out: f32):
        %sum = arith.addf %p, %c : f32
        %t = math.tanh %sum : f32
        linalg.yield %t : f32
    } -> tensor<2x4xf32>
    return %activated : tensor<2x4xf32>
  }
}
"#;

#[test]
fn linalg_on_tensors_returns_buffer_through_c_interface() {
    let context = create_context();
    let mut module = parse_module(&context, MATMUL_BIAS_TANH).unwrap();
    lower_to_llvm(&context, &mut module).unwrap();
    let engine = jit(&module, 2).unwrap();

    let mut a: Vec<f32> = (0..6).map(|i| 0.1 * i as f32 - 0.2).collect();
    let mut b: Vec<f32> = (0..12).map(|i| 0.05 * (i % 5) as f32 - 0.1).collect();
    let mut bias = vec![0.3_f32, -0.2, 0.0, 0.1];
    let mut a_memref = StridedMemRef::row_major(&mut a, [2, 3]);
    let mut b_memref = StridedMemRef::row_major(&mut b, [3, 4]);
    let mut bias_memref = StridedMemRef::row_major(&mut bias, [4]);
    let mut result = StridedMemRef::<f32, 2>::unset();

    // `invoke_packed` calls the C interface `_mlir_ciface_matmul_bias_tanh(result*, a*, b*, bias*)`
    // with a pointer to each of its arguments.
    let mut result_pointer: *mut StridedMemRef<f32, 2> = &mut result;
    let mut a_pointer: *mut StridedMemRef<f32, 2> = &mut a_memref;
    let mut b_pointer: *mut StridedMemRef<f32, 2> = &mut b_memref;
    let mut bias_pointer: *mut StridedMemRef<f32, 1> = &mut bias_memref;
    unsafe {
        engine.invoke_packed(
            "matmul_bias_tanh",
            &mut [
                packed(&mut result_pointer),
                packed(&mut a_pointer),
                packed(&mut b_pointer),
                packed(&mut bias_pointer),
            ],
        )
    }
    .unwrap();

    assert_eq!(result.sizes, [2, 4]);
    assert_eq!(result.strides, [4, 1]);
    assert!(!result.aligned.is_null());
    let actual = unsafe { std::slice::from_raw_parts(result.aligned.add(result.offset as usize), 8) }.to_vec();
    unsafe { free(result.allocated as *mut c_void) };

    let expected: Vec<f32> =
        matmul(&a, &b, 2, 3, 4).iter().enumerate().map(|(index, value)| (value + bias[index % 4]).tanh()).collect();
    assert_close(&actual, &expected);
}

/// Matmul on dynamically shaped memrefs owned by the caller, computed on tensors and written
/// into the caller's output buffer, as compiled programs will do with the runtime's buffers.
const MATMUL_INTO_DESTINATION: &str = r#"
module {
  func.func @matmul_into(%a: memref<?x?xf32>, %b: memref<?x?xf32>, %out: memref<?x?xf32>)
      attributes { llvm.emit_c_interface } {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %zero = arith.constant 0.0 : f32
    %ta = bufferization.to_tensor %a restrict : memref<?x?xf32> to tensor<?x?xf32>
    %tb = bufferization.to_tensor %b restrict : memref<?x?xf32> to tensor<?x?xf32>
    %m = tensor.dim %ta, %c0 : tensor<?x?xf32>
    %n = tensor.dim %tb, %c1 : tensor<?x?xf32>
    %empty = tensor.empty(%m, %n) : tensor<?x?xf32>
    %init = linalg.fill ins(%zero : f32) outs(%empty : tensor<?x?xf32>) -> tensor<?x?xf32>
    %product = linalg.matmul ins(%ta, %tb : tensor<?x?xf32>, tensor<?x?xf32>)
                             outs(%init : tensor<?x?xf32>) -> tensor<?x?xf32>
    bufferization.materialize_in_destination %product in restrict writable %out
        : (tensor<?x?xf32>, memref<?x?xf32>) -> ()
    return
  }
}
"#;

#[test]
fn linalg_matmul_writes_into_caller_buffer() {
    let context = create_context();
    let mut module = parse_module(&context, MATMUL_INTO_DESTINATION).unwrap();
    lower_to_llvm(&context, &mut module).unwrap();
    let engine = jit(&module, 3).unwrap();

    let (m, k, n) = (5, 7, 3);
    let mut a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let mut b: Vec<f32> = (0..k * n).map(|i| ((i * 3) % 13) as f32 * 0.5 - 3.0).collect();
    let mut out = vec![f32::NAN; m * n];
    let mut a_memref = StridedMemRef::row_major(&mut a, [m as i64, k as i64]);
    let mut b_memref = StridedMemRef::row_major(&mut b, [k as i64, n as i64]);
    let mut out_memref = StridedMemRef::row_major(&mut out, [m as i64, n as i64]);

    let mut a_pointer: *mut StridedMemRef<f32, 2> = &mut a_memref;
    let mut b_pointer: *mut StridedMemRef<f32, 2> = &mut b_memref;
    let mut out_pointer: *mut StridedMemRef<f32, 2> = &mut out_memref;
    unsafe {
        engine.invoke_packed(
            "matmul_into",
            &mut [packed(&mut a_pointer), packed(&mut b_pointer), packed(&mut out_pointer)],
        )
    }
    .unwrap();

    assert_close(&out, &matmul(&a, &b, m, k, n));
}

#[test]
fn unparsable_text_is_an_error_with_diagnostics() {
    let context = create_context();
    match parse_module(&context, "func.func @f( {") {
        Err(LoweringError::ParseModule { diagnostics }) => {
            assert!(!diagnostics.is_empty());
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(matches!(parse_module(&context, "module {}\0"), Err(LoweringError::ParseModule { .. })));
}

#[test]
fn unknown_pass_is_an_error() {
    let context = create_context();
    let mut module = build_square_plus_triangle(&context);
    match run_pipeline(&context, &mut module, "builtin.module(no-such-pass)") {
        Err(error @ LoweringError::ParsePipeline { .. }) => {
            assert!(error.to_string().contains("no-such-pass"), "{error}");
        }
        other => panic!("expected a pipeline parse error, got {other:?}"),
    }
}

#[test]
fn invalid_module_is_an_error_with_diagnostics() {
    let context = create_context();
    let location = Location::unknown(&context);
    let i64_type: Type = IntegerType::new(&context, 64).into();
    let i32_type: Type = IntegerType::new(&context, 32).into();
    let mut module = Module::new(location);

    // Declared to return i32, returns its i64 argument: fails verification.
    let entry = Block::new(&[(i64_type, location)]);
    entry.append_operation(func::r#return(&[entry.arg(0).unwrap()], location));
    let body = Region::new();
    body.append_block(entry);
    module.body().append_operation(func::func(
        &context,
        StringAttribute::new(&context, "mistyped"),
        TypeAttribute::new(FunctionType::new(&context, &[i64_type], &[i32_type]).into()),
        body,
        &[],
        location,
    ));

    match lower_to_llvm(&context, &mut module) {
        Err(LoweringError::InvalidModule { diagnostics }) => {
            assert!(diagnostics.iter().any(|line| line.contains("func.return")), "{diagnostics:?}");
        }
        other => panic!("expected a verification error, got {other:?}"),
    }
}

#[test]
fn failing_pass_is_an_error_with_diagnostics() {
    let context = create_context();
    // Elementwise `math` on a whole tensor has no bufferization: one-shot bufferization fails.
    let mut module = parse_module(
        &context,
        r#"
        func.func @absolute(%t: tensor<4xf32>) -> tensor<4xf32> {
          %a = math.absf %t : tensor<4xf32>
          return %a : tensor<4xf32>
        }
        "#,
    )
    .unwrap();
    match lower_to_llvm(&context, &mut module) {
        Err(LoweringError::PassFailed { diagnostics, .. }) => {
            assert!(diagnostics.iter().any(|line| line.contains("op was not bufferized")), "{diagnostics:?}");
        }
        other => panic!("expected a pass failure, got {other:?}"),
    }
}

#[test]
fn lowering_that_leaves_other_dialects_is_an_error() {
    let context = create_context();
    // No conversion removes this cast, and `reconcile-unrealized-casts` keeps live casts.
    let mut module = parse_module(
        &context,
        r#"
        func.func @unreconcilable(%x: i64) -> i32 {
          %y = builtin.unrealized_conversion_cast %x : i64 to i32
          return %y : i32
        }
        "#,
    )
    .unwrap();
    match lower_to_llvm(&context, &mut module) {
        Err(LoweringError::NotLlvmDialect { operation }) => {
            assert_eq!(operation, "builtin.unrealized_conversion_cast");
        }
        other => panic!("expected a not-lowered error, got {other:?}"),
    }
}

#[test]
fn jit_rejects_module_not_lowered() {
    let context = create_context();
    let module = build_square_plus_triangle(&context);
    match jit(&module, 0) {
        Err(LoweringError::NotLlvmDialect { operation }) => assert_eq!(operation, "func.func"),
        Err(other) => panic!("expected a not-lowered error, got {other:?}"),
        Ok(_) => panic!("expected a not-lowered error, got an engine"),
    }
}

/// An outlined kernel scaling a vector in place, and the host function launching it.
const SCALE_KERNEL: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @scale(%data: memref<256xf32>, %factor: f32) kernel {
      %block = gpu.block_id x
      %block_size = gpu.block_dim x
      %thread = gpu.thread_id x
      %base = arith.muli %block, %block_size : index
      %i = arith.addi %base, %thread : index
      %value = memref.load %data[%i] : memref<256xf32>
      %scaled = arith.mulf %value, %factor : f32
      memref.store %scaled, %data[%i] : memref<256xf32>
      gpu.return
    }
  }
  func.func @launch(%data: memref<256xf32>, %factor: f32) {
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c128 = arith.constant 128 : index
    gpu.launch_func @kernels::@scale blocks in (%c2, %c1, %c1) threads in (%c128, %c1, %c1)
        args(%data : memref<256xf32>, %factor : f32)
    return
  }
}
"#;

#[test]
fn gpu_kernel_to_ptx() {
    let context = create_context();
    let mut module = parse_module(&context, SCALE_KERNEL).unwrap();
    lower_gpu_to_ptx(&context, &mut module, "sm_90").unwrap();

    let printed = module.as_operation().to_string();
    assert!(printed.contains("gpu.binary @kernels"), "{printed}");
    assert!(printed.contains("llvm.func @launch"), "{printed}");

    let binaries = extract_ptx(&module);
    assert_eq!(binaries.len(), 1, "{binaries:?}");
    assert_eq!(binaries[0].module_name, "kernels");
    let ptx = &binaries[0].ptx;
    assert!(ptx.contains(".version "), "{ptx}");
    assert!(ptx.contains(".target sm_90"), "{ptx}");
    assert!(ptx.contains(".entry scale("), "{ptx}");
    assert!(ptx.contains("mul.rn.f32"), "{ptx}");
}

/// A kernel computing a sigmoid and a ceiling: `math.exp` and `math.ceil`, which NVVM has no
/// instructions for, become calls of libdevice's functions.
const MATH_KERNEL: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @sigmoid_ceil(%data: memref<256xf32>) kernel {
      %i = gpu.thread_id x
      %x = memref.load %data[%i] : memref<256xf32>
      %one = arith.constant 1.0 : f32
      %minus = arith.negf %x : f32
      %exp = math.exp %minus : f32
      %sum = arith.addf %one, %exp : f32
      %sigmoid = arith.divf %one, %sum : f32
      %ceil = math.ceil %x : f32
      %y = arith.addf %sigmoid, %ceil : f32
      memref.store %y, %data[%i] : memref<256xf32>
      gpu.return
    }
  }
  func.func @launch(%data: memref<256xf32>) {
    %c1 = arith.constant 1 : index
    %c256 = arith.constant 256 : index
    gpu.launch_func @kernels::@sigmoid_ceil blocks in (%c1, %c1, %c1) threads in (%c256, %c1, %c1)
        args(%data : memref<256xf32>)
    return
  }
}
"#;

/// libdevice is linked into kernels that call it, so their PTX calls nothing outside it; where
/// it cannot be found, the error says how to get it. (The only test of this binary that reads
/// `MRC_LIBDEVICE`.)
#[test]
fn kernels_calling_math_functions_link_libdevice() {
    let context = create_context();
    std::env::set_var("MRC_LIBDEVICE", "/nonexistent/libdevice.10.bc");
    let mut module = parse_module(&context, MATH_KERNEL).unwrap();
    let error = lower_gpu_to_ptx(&context, &mut module, "sm_80").unwrap_err().to_string();
    std::env::remove_var("MRC_LIBDEVICE");
    assert!(error.contains("/nonexistent/libdevice.10.bc") && error.contains("pip install nvidia-cuda-nvcc-cu12"), "{error}");

    let mut module = parse_module(&context, MATH_KERNEL).unwrap();
    lower_gpu_to_ptx(&context, &mut module, "sm_80").unwrap();
    let ptx = &extract_ptx(&module)[0].ptx;
    assert!(ptx.contains(".entry sigmoid_ceil("), "{ptx}");
    assert!(!ptx.contains(".extern") && !ptx.contains("__nv_"), "PTX calls outside itself:\n{ptx}");
    assert!(ptx.contains("cvt.rpi.f32.f32") || ptx.contains("ex2.approx"), "no ceiling or exponential in\n{ptx}");
}
