//! Matrix-multiplication microkernels for generated code: convolutions and linear layers are
//! lowered to an im2col view (or none, for 1×1 convolutions; or, at stride 1 on the CPU, the
//! window products of [`super::window_products`]) and one of these calls, with the
//! epilogue (bias, frozen batch norm, ReLU, residual add) fused around it in MLIR. The `gemm`
//! crate provides the packed, vectorized (AVX2/AVX-512/NEON) kernel and its threading.
//!
//! In a CUDA program on the GPU the operands are device memory, which the host cannot read:
//! there the products run on the device's GEMM (cuBLAS) instead (`device_gemm`, the one
//! place that decides).

use super::MemRef;
use crate::device::{BatchedProduct, DeviceGemm, StridedMatrix};

/// The device's GEMM when the operands are memory the host cannot read (a CUDA program on the
/// GPU); `None` runs products on the host: without a device (the CPU target, `mrc run`) or on
/// the emulator, whose device memory is host memory.
pub(super) fn device_gemm() -> Option<&'static dyn DeviceGemm> {
    crate::device::selected().and_then(|device| device.device().gemm())
}

/// Runs `product` on the device's GEMM, recording why it could not (as `name`); nothing after
/// an earlier error, when the result may be unallocated.
///
/// # Safety
/// As [`DeviceGemm::batched_product`].
unsafe fn product_on_device(
    name: &str,
    gemm: &dyn DeviceGemm,
    product: &BatchedProduct,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
) {
    if product.is_empty() || super::error_pending() {
        return;
    }
    if let Err(error) = gemm.batched_product(product, a, b, c) {
        super::set_error(format!("{name}: {error}"));
    }
}

/// A matrix in memory, for [`product`]: its first element and the steps (in elements) to the
/// next row and to the next column.
#[derive(Clone, Copy)]
pub(super) struct Matrix {
    pub at: *const f32,
    pub row_step: isize,
    pub column_step: isize,
}

impl Matrix {
    pub fn new(at: *const f32, row_step: isize, column_step: isize) -> Matrix {
        Matrix { at, row_step, column_step }
    }
}

/// `dst` (m×n) = `lhs` (m×k)·`rhs` (k×n), or `dst` += `lhs`·`rhs` with `accumulate`, by the
/// `gemm` crate's kernel.
///
/// # Safety
/// The three matrices lie in live buffers; no other task writes `dst`'s elements.
#[rustfmt::skip]
pub(super) unsafe fn product([m, n, k]: [usize; 3], dst: Matrix, lhs: Matrix, rhs: Matrix, accumulate: bool, parallelism: gemm::Parallelism) {
    gemm::gemm(
        m, n, k,
        dst.at as *mut f32, dst.column_step, dst.row_step, accumulate,
        lhs.at, lhs.column_step, lhs.row_step,
        rhs.at, rhs.column_step, rhs.row_step,
        1.0, 1.0, false, false, false, parallelism,
    )
}

/// The kernel's thread count for a product of `flops` multiply-adds: rayon's pool, except for
/// products too small to gain from splitting.
pub(super) fn parallelism(flops: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && flops >= 1 << 20 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Runs `product(item, parallelism)` for the `n` items of a batch of products of `per_item`
/// multiply-adds: one product per task (each kernel on one thread) when there are images
/// enough for every thread or the products are too small to split (the mask head's RoIs),
/// else one after the other, each kernel on every thread.
pub(super) fn for_each_item(n: usize, per_item: usize, product: impl Fn(usize, gemm::Parallelism) + Sync) {
    if n > 1 && (per_item < 1 << 24 || n >= rayon::current_num_threads()) {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(|item| product(item, gemm::Parallelism::None));
    } else {
        for item in 0..n {
            product(item, parallelism(per_item));
        }
    }
}

/// `C[b] = A × B[b]` for every batch index `b`: `a` [M, K] shared, `b` [N, K, P], `c` [N, M, P]
/// viewed as [N, M, H, W] with `hw` = [H, W], H·W = P (a convolution's weights against each
/// image's im2col matrix, giving NCHW images). Any strides.
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_conv_matmul(
    out: *mut MemRef<f32, 4>,
    a: *const MemRef<f32, 2>,
    b: *const MemRef<f32, 3>,
    hw: *const MemRef<i64, 1>,
) {
    *out = conv_matmul("mrc_conv_matmul", Lhs::of_matrix(&*a), &*b, &*hw, device_gemm());
}

/// [`_mlir_ciface_mrc_conv_matmul`] with the weights packed for the GEMM at load time: `a_t` is
/// A's column-major form [K, M], which the kernel reads in place without packing it.
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_conv_matmul_packed(
    out: *mut MemRef<f32, 4>,
    a_t: *const MemRef<f32, 2>,
    b: *const MemRef<f32, 3>,
    hw: *const MemRef<i64, 1>,
) {
    *out = conv_matmul("mrc_conv_matmul_packed", Lhs::of_transposed(&*a_t), &*b, &*hw, device_gemm());
}

/// The left operand A [M, K] of a product: its address and strides (row `rs`, column `cs`).
#[derive(Clone, Copy)]
pub(super) struct Lhs {
    pub base: usize,
    pub m: usize,
    pub k: usize,
    pub rs: isize,
    pub cs: isize,
}

impl Lhs {
    /// A given as [M, K].
    pub fn of_matrix(a: &MemRef<f32, 2>) -> Lhs {
        let [m, k] = a.shape();
        Lhs {
            base: a.aligned.wrapping_offset(a.offset as isize) as usize,
            m,
            k,
            rs: a.strides[0] as isize,
            cs: a.strides[1] as isize,
        }
    }

    /// A given as its transpose [K, M] (the packed weights' column-major form).
    pub fn of_transposed(a_t: &MemRef<f32, 2>) -> Lhs {
        let [k, m] = a_t.shape();
        Lhs {
            base: a_t.aligned.wrapping_offset(a_t.offset as isize) as usize,
            m,
            k,
            rs: a_t.strides[1] as isize,
            cs: a_t.strides[0] as isize,
        }
    }

    /// A as an operand shared by every item of a batch.
    fn shared(&self) -> StridedMatrix {
        StridedMatrix {
            rows: self.m,
            cols: self.k,
            row_stride: self.rs as i64,
            col_stride: self.cs as i64,
            batch_stride: 0,
        }
    }
}

/// A convolution's product: A shared by the images, each image's im2col matrix `b` [K, P] and
/// its [M, P] block of the fresh row-major result.
fn conv_product(a: &Lhs, b: &MemRef<f32, 3>) -> BatchedProduct {
    let [n, k, p] = b.shape();
    let m = a.m;
    BatchedProduct {
        batch: n,
        a: a.shared(),
        b: StridedMatrix {
            rows: k,
            cols: p,
            row_stride: b.strides[1],
            col_stride: b.strides[2],
            batch_stride: b.strides[0],
        },
        c: StridedMatrix { rows: m, cols: p, row_stride: p as i64, col_stride: 1, batch_stride: (m * p) as i64 },
    }
}

/// A linear layer's product `X × Wᵀ` into the fresh row-major result [M, N].
fn linear_product(x: &MemRef<f32, 2>, w: &MemRef<f32, 2>) -> BatchedProduct {
    let ([m, k], [n, _]) = (x.shape(), w.shape());
    BatchedProduct {
        batch: 1,
        a: StridedMatrix { rows: m, cols: k, row_stride: x.strides[0], col_stride: x.strides[1], batch_stride: 0 },
        // Wᵀ [K, N]: element (k, n) is w[n, k].
        b: StridedMatrix { rows: k, cols: n, row_stride: w.strides[1], col_stride: w.strides[0], batch_stride: 0 },
        c: StridedMatrix { rows: m, cols: n, row_stride: n as i64, col_stride: 1, batch_stride: 0 },
    }
}

/// The convolution product `name`, on `device`'s GEMM where there is one, else on the host.
unsafe fn conv_matmul(
    name: &str,
    a: Lhs,
    b: &MemRef<f32, 3>,
    hw: &MemRef<i64, 1>,
    device: Option<&dyn DeviceGemm>,
) -> MemRef<f32, 4> {
    let Lhs { m, k, .. } = a;
    let [n, k2, p] = b.shape();
    let (h, w) = match hw.elements()[..] {
        [h, w] => (h as usize, w as usize),
        _ => (0, 0),
    };
    if k != k2 || h * w != p {
        super::set_error(format!("{name}: [{m}, {k}] × [{n}, {k2}, {p}] as {h}×{w} images"));
        return MemRef::allocate([0, m, h, w]);
    }
    let c = MemRef::<f32, 4>::allocate([n, m, h, w]);
    // Addresses, so that the tasks below can share them; each task writes its own [M, P] block.
    let (b_base, c_base) = (b.aligned.wrapping_offset(b.offset as isize) as usize, c.aligned as usize);
    if let Some(gemm) = device {
        product_on_device(name, gemm, &conv_product(&a, b), a.base as *const f32, b_base as *const f32, c.aligned);
        return c;
    }
    let b_strides = b.strides.map(|s| s as isize);
    let product = move |item: usize, parallelism| {
        product(
            [m, p, k],
            Matrix::new((c_base as *const f32).add(item * m * p), p as isize, 1),
            Matrix::new(a.base as *const f32, a.rs, a.cs),
            Matrix::new((b_base as *const f32).offset(item as isize * b_strides[0]), b_strides[1], b_strides[2]),
            false,
            parallelism,
        )
    };
    for_each_item(n, m * k * p, product);
    c
}

/// `Y = X × Wᵀ`: `x` [M, K], `w` [N, K] (torch's `linear` weight layout), `y` [M, N].
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_linear(
    out: *mut MemRef<f32, 2>,
    x: *const MemRef<f32, 2>,
    w: *const MemRef<f32, 2>,
) {
    *out = linear(&*x, &*w, device_gemm());
}

/// The linear product, on `device`'s GEMM where there is one, else on the host.
unsafe fn linear(x: &MemRef<f32, 2>, w: &MemRef<f32, 2>, device: Option<&dyn DeviceGemm>) -> MemRef<f32, 2> {
    let [m, k] = x.shape();
    let [n, k2] = w.shape();
    if k != k2 {
        super::set_error(format!("mrc_linear: [{m}, {k}] × [{n}, {k2}]ᵀ"));
        return MemRef::allocate([0, n]);
    }
    let y = MemRef::<f32, 2>::allocate([m, n]);
    let (x_base, w_base) = (x.aligned.wrapping_offset(x.offset as isize), w.aligned.wrapping_offset(w.offset as isize));
    if let Some(gemm) = device {
        product_on_device("mrc_linear", gemm, &linear_product(x, w), x_base, w_base, y.aligned);
        return y;
    }
    // Addresses and strides as plain numbers, so that the parts can run on any thread.
    let (x_base, w_base) = (x_base as usize, w_base as usize);
    let (xs, ws) = (x.strides.map(|s| s as isize), w.strides.map(|s| s as isize));
    // X[:, k0..k1] × W[:, k0..k1]ᵀ into `dst` [M, N] (row stride N).
    let part = |dst: *mut f32, k0: usize, k1: usize, parallelism: gemm::Parallelism| {
        product(
            [m, n, k1 - k0],
            Matrix::new(dst, n as isize, 1),
            Matrix::new((x_base as *const f32).wrapping_offset(k0 as isize * xs[1]), xs[0], xs[1]),
            // Wᵀ [K, N]: element (k, n) is w[n, k].
            Matrix::new((w_base as *const f32).wrapping_offset(k0 as isize * ws[1]), ws[1], ws[0]),
            false,
            parallelism,
        )
    };
    let parts = split_k_parts(m * n, k);
    if parts == 1 {
        part(y.aligned, 0, k, parallelism(m * n * k));
        return y;
    }
    // A small result over a long sum (a weight gradient over a batch's every position): the
    // GEMM splits only M and N among threads, so the sum is split, and the parts added.
    use rayon::prelude::*;
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|i| {
            let mut partial = vec![0.0_f32; m * n];
            part(partial.as_mut_ptr(), k * i / parts, k * (i + 1) / parts, gemm::Parallelism::None);
            partial
        })
        .collect();
    let total = std::slice::from_raw_parts_mut(y.aligned, m * n);
    total.copy_from_slice(&partials[0]);
    for partial in &partials[1..] {
        total.iter_mut().zip(partial).for_each(|(t, p)| *t += p);
    }
    y
}

/// Into how many parts along K a host product of an `output`-element result is split: one per
/// thread where the result is small and each part keeps a long sum, else 1.
fn split_k_parts(output: usize, k: usize) -> usize {
    const MAX_OUTPUT: usize = 1 << 17;
    const MIN_PART: usize = 2048;
    let threads = rayon::current_num_threads();
    if threads > 1 && output <= MAX_OUTPUT && k >= 2 * MIN_PART {
        threads.min(k / MIN_PART)
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cublas::{reference_sgemm_strided_batched, SgemmStridedBatched};
    use crate::device::DeviceError;
    use cudarc::cublas::sys::cublasOperation_t;

    /// cuBLAS as the device would run it, on host memory: the product's plan executed by the
    /// reference `cublasSgemmStridedBatched`.
    struct ReferenceCublas;

    /// How many elements from its base a stored operand of the call spans.
    fn stored_extent(operation: cublasOperation_t, rows: i32, cols: i32, ld: i32, stride: i64, batch: i32) -> usize {
        let (stored_rows, stored_cols) =
            if operation == cublasOperation_t::CUBLAS_OP_N { (rows, cols) } else { (cols, rows) };
        let last = (batch as i64 - 1) * stride + (stored_cols as i64 - 1) * ld as i64 + stored_rows as i64 - 1;
        last as usize + 1
    }

    impl DeviceGemm for ReferenceCublas {
        unsafe fn batched_product(
            &self,
            product: &BatchedProduct,
            a: *const f32,
            b: *const f32,
            c: *mut f32,
        ) -> Result<(), DeviceError> {
            let plan = SgemmStridedBatched::plan(product)?;
            let (first, second) = plan.operands(a, b);
            let p = plan;
            let first =
                std::slice::from_raw_parts(first, stored_extent(p.transa, p.m, p.k, p.lda, p.stride_a, p.batch));
            let second =
                std::slice::from_raw_parts(second, stored_extent(p.transb, p.k, p.n, p.ldb, p.stride_b, p.batch));
            let c = std::slice::from_raw_parts_mut(
                c,
                stored_extent(cublasOperation_t::CUBLAS_OP_N, p.m, p.n, p.ldc, p.stride_c, p.batch),
            );
            reference_sgemm_strided_batched(&plan, first, second, c)
                .map_err(|message| DeviceError::Cublas { call: "cublasSgemmStridedBatched", message })
        }

        fn set_tf32(&self, _: bool) -> Result<(), DeviceError> {
            Ok(())
        }
    }

    /// A strided view at `offset` into a buffer whose every other element is NaN (so that a
    /// product reading outside the view shows), each element a small integer (so that products
    /// and sums are exact whatever their order).
    struct View<const R: usize> {
        buffer: Vec<f32>,
        memref: MemRef<f32, R>,
    }

    // SAFETY: a view's descriptor points into its own buffer, which nothing mutates.
    unsafe impl<const R: usize> Sync for View<R> {}

    impl<const R: usize> View<R> {
        fn new(shape: [usize; R], strides: [i64; R], offset: usize, seed: usize) -> View<R> {
            let count: usize = shape.iter().product();
            let last: i64 = (0..R).map(|axis| (shape[axis] as i64 - 1) * strides[axis]).sum();
            let mut buffer = vec![f32::NAN; offset + last as usize + 1];
            for flat in 0..count {
                buffer[offset + Self::position(shape, strides, flat)] = ((flat * 7 + seed) % 11) as f32 - 5.0;
            }
            let pointer = buffer.as_mut_ptr();
            let memref = MemRef {
                allocated: pointer,
                aligned: pointer,
                offset: offset as i64,
                sizes: shape.map(|d| d as i64),
                strides,
            };
            View { buffer, memref }
        }

        /// The position from the view's base of the row-major `flat`-th element.
        fn position(shape: [usize; R], strides: [i64; R], flat: usize) -> usize {
            let (mut rest, mut position) = (flat, 0);
            for axis in (0..R).rev() {
                position += (rest % shape[axis]) as i64 * strides[axis];
                rest /= shape[axis];
            }
            position as usize
        }

        fn at(&self, index: [usize; R]) -> f32 {
            let position: i64 = (0..R).map(|axis| index[axis] as i64 * self.memref.strides[axis]).sum();
            self.buffer[self.memref.offset as usize + position as usize]
        }
    }

    /// The elements of a result the runtime allocated, freeing it.
    unsafe fn take<const R: usize>(result: MemRef<f32, R>) -> Vec<f32> {
        extern "C" {
            fn free(pointer: *mut std::ffi::c_void);
        }
        let elements = result.elements().into_owned();
        free(result.allocated.cast());
        elements
    }

    /// A convolution's product (`packed`: A given as its transpose [K, M]) on the reference
    /// cuBLAS, against the row-major product of the views.
    unsafe fn check_conv(packed: bool, a: View<2>, b: View<3>, hw: [i64; 2]) {
        let [n, k, p] = b.memref.shape();
        let m = if packed { a.memref.shape()[1] } else { a.memref.shape()[0] };
        let hw = MemRef::borrowed(&hw, [2]);
        let lhs = if packed { Lhs::of_transposed(&a.memref) } else { Lhs::of_matrix(&a.memref) };
        let c = take(conv_matmul("conv", lhs, &b.memref, &hw, Some(&ReferenceCublas)));
        assert_eq!(crate::abi::take_error(), None);
        assert_eq!(c.len(), n * m * p);
        for item in 0..n {
            for i in 0..m {
                for j in 0..p {
                    let expected = (0..k).fold(0.0, |sum, l| {
                        let a = if packed { a.at([l, i]) } else { a.at([i, l]) };
                        sum + a * b.at([item, l, j])
                    });
                    assert_eq!(c[(item * m + i) * p + j], expected, "C[{item}][{i}, {j}]");
                }
            }
        }
    }

    #[test]
    fn convolutions_on_cublas_match_the_row_major_product() {
        let (m, k, n, [h, w]) = (4, 5, 3, [2_usize, 3]);
        let p = h * w;
        let hw = [h as i64, w as i64];
        // SAFETY: every view holds its elements; results are taken once.
        unsafe {
            // Contiguous operands; then rows padded and offsets; then A column-major and each
            // image's im2col matrix stored transposed ([P, K]).
            check_conv(
                false,
                View::new([m, k], [k as i64, 1], 0, 1),
                View::new([n, k, p], [(k * p) as i64, p as i64, 1], 0, 2),
                hw,
            );
            check_conv(false, View::new([m, k], [7, 1], 2, 3), View::new([n, k, p], [43, 8, 1], 1, 4), hw);
            check_conv(
                false,
                View::new([m, k], [1, m as i64], 0, 5),
                View::new([n, k, p], [(k * p) as i64, 1, k as i64], 0, 6),
                hw,
            );
            // One image.
            check_conv(
                false,
                View::new([m, k], [k as i64, 1], 0, 7),
                View::new([1, k, p], [(k * p) as i64, p as i64, 1], 3, 8),
                hw,
            );
        }
    }

    #[test]
    fn packed_convolutions_on_cublas_match_the_row_major_product() {
        let (m, k, n, [h, w]) = (4, 5, 3, [3_usize, 2]);
        let p = h * w;
        let hw = [h as i64, w as i64];
        // SAFETY: as above.
        unsafe {
            // A's column-major form [K, M]: contiguous, rows padded, and stored row-major again.
            check_conv(
                true,
                View::new([k, m], [m as i64, 1], 0, 1),
                View::new([n, k, p], [(k * p) as i64, p as i64, 1], 0, 2),
                hw,
            );
            check_conv(true, View::new([k, m], [6, 1], 3, 3), View::new([n, k, p], [43, 8, 1], 1, 4), hw);
            check_conv(
                true,
                View::new([k, m], [1, k as i64], 0, 5),
                View::new([n, k, p], [(k * p) as i64, 1, k as i64], 2, 6),
                hw,
            );
        }
    }

    #[test]
    fn linear_layers_on_cublas_match_the_row_major_product() {
        let (m, k, n) = (3, 5, 4);
        let cases = [
            (View::new([m, k], [k as i64, 1], 0, 1), View::new([n, k], [k as i64, 1], 0, 2)),
            (View::new([m, k], [1, m as i64], 0, 3), View::new([n, k], [1, n as i64], 0, 4)),
            (View::new([m, k], [8, 1], 2, 5), View::new([n, k], [7, 1], 1, 6)),
            (View::new([1, k], [k as i64, 1], 0, 7), View::new([n, k], [1, n as i64], 1, 8)),
        ];
        for (x, w) in cases {
            let rows = x.memref.shape()[0];
            // SAFETY: both views hold their elements; the result is taken once.
            let y = unsafe { take(linear(&x.memref, &w.memref, Some(&ReferenceCublas))) };
            assert_eq!(crate::abi::take_error(), None);
            for i in 0..rows {
                for j in 0..n {
                    let expected = (0..k).fold(0.0, |sum, l| sum + x.at([i, l]) * w.at([j, l]));
                    assert_eq!(y[i * n + j], expected, "Y[{i}, {j}]");
                }
            }
        }
    }

    /// A small result over a long sum is split along K among the threads; integer-valued
    /// operands make every order of the sum exact.
    #[test]
    fn a_long_sum_split_among_threads_equals_the_whole_sum() {
        let (m, k, n) = (3, 3 * 2048 + 5, 4);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("a pool");
        assert_eq!(pool.install(|| split_k_parts(m * n, k)), 3);
        assert_eq!(pool.install(|| split_k_parts(1 << 18, k)), 1, "a large result: the GEMM's own threads");
        let cases = [
            (View::new([m, k], [k as i64, 1], 0, 1), View::new([n, k], [k as i64, 1], 0, 2)),
            (View::new([m, k], [1, m as i64], 2, 3), View::new([n, k], [1, n as i64], 1, 4)),
        ];
        for (x, w) in cases {
            // SAFETY: both views hold their elements; the result is taken once.
            let (x, w) = (&x, &w);
            let y = pool.install(|| unsafe { take(linear(&x.memref, &w.memref, None)) });
            for i in 0..m {
                for j in 0..n {
                    let expected = (0..k).fold(0.0, |sum, l| sum + x.at([i, l]) * w.at([j, l]));
                    assert_eq!(y[i * n + j], expected, "Y[{i}, {j}]");
                }
            }
        }
    }

    #[test]
    fn an_operand_cublas_cannot_read_is_an_error_naming_the_call() {
        let (m, k, n, p) = (2, 3, 2, 4);
        let a = View::new([m, k], [k as i64, 1], 0, 1);
        // Every other element of each row: no axis is unit-strided.
        let b = View::new([n, k, p], [(2 * k * p) as i64, (2 * p) as i64, 2], 0, 2);
        let hw = MemRef::borrowed(&[2_i64, 2], [2]);
        // SAFETY: the views hold their elements; the result is freed once.
        unsafe {
            take(conv_matmul("mrc_conv_matmul", Lhs::of_matrix(&a.memref), &b.memref, &hw, Some(&ReferenceCublas)));
        }
        assert_eq!(
            crate::abi::take_error().as_deref(),
            Some("mrc_conv_matmul: B [3, 4] has strides [8, 2]: cuBLAS needs a unit stride along one axis")
        );
    }
}
