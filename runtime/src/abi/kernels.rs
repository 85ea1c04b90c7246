//! Matrix-multiplication microkernels for generated code: convolutions and linear layers are
//! lowered to an im2col view (or none, for 1×1 convolutions) and one of these calls, with the
//! epilogue (bias, frozen batch norm, ReLU, residual add) fused around it in MLIR. The `gemm`
//! crate provides the packed, vectorized (AVX2/AVX-512/NEON) kernel and its threading.

use super::MemRef;

/// The kernel's thread count for a product of `flops` multiply-adds: rayon's pool, except for
/// products too small to gain from splitting.
fn parallelism(flops: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && flops >= 1 << 20 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
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
    let a = &*a;
    let [m, k] = a.shape();
    let lhs = Lhs { base: a.aligned.offset(a.offset as isize) as usize, m, k, rs: a.strides[0] as isize, cs: a.strides[1] as isize };
    *out = conv_matmul("mrc_conv_matmul", lhs, &*b, &*hw);
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
    let a_t = &*a_t;
    let [k, m] = a_t.shape();
    let lhs = Lhs { base: a_t.aligned.offset(a_t.offset as isize) as usize, m, k, rs: a_t.strides[1] as isize, cs: a_t.strides[0] as isize };
    *out = conv_matmul("mrc_conv_matmul_packed", lhs, &*b, &*hw);
}

/// The left operand A [M, K] of a product: its address and strides (row `rs`, column `cs`).
#[derive(Clone, Copy)]
struct Lhs {
    base: usize,
    m: usize,
    k: usize,
    rs: isize,
    cs: isize,
}

unsafe fn conv_matmul(name: &str, a: Lhs, b: &MemRef<f32, 3>, hw: &MemRef<i64, 1>) -> MemRef<f32, 4> {
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
    let (b_base, c_base) = (b.aligned.offset(b.offset as isize) as usize, c.aligned as usize);
    let b_strides = b.strides.map(|s| s as isize);
    let product = move |item: usize, parallelism| {
        gemm::gemm(
            m,
            p,
            k,
            (c_base as *mut f32).add(item * m * p),
            1,
            p as isize,
            false,
            a.base as *const f32,
            a.cs,
            a.rs,
            (b_base as *const f32).offset(item as isize * b_strides[0]),
            b_strides[2],
            b_strides[1],
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    };
    // Large products thread inside the kernel; a batch of small ones (mask head RoIs) is
    // spread over the pool one product per task instead.
    let per_item = m * k * p;
    if n > 1 && per_item < 1 << 24 {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(|item| product(item, gemm::Parallelism::None));
    } else {
        for item in 0..n {
            product(item, parallelism(per_item));
        }
    }
    c
}

/// `Y = X × Wᵀ`: `x` [M, K], `w` [N, K] (torch's `linear` weight layout), `y` [M, N].
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_linear(out: *mut MemRef<f32, 2>, x: *const MemRef<f32, 2>, w: *const MemRef<f32, 2>) {
    let (x, w) = (&*x, &*w);
    let [m, k] = x.shape();
    let [n, k2] = w.shape();
    if k != k2 {
        super::set_error(format!("mrc_linear: [{m}, {k}] × [{n}, {k2}]ᵀ"));
        *out = MemRef::allocate([0, n]);
        return;
    }
    let y = MemRef::<f32, 2>::allocate([m, n]);
    gemm::gemm(
        m,
        n,
        k,
        y.aligned,
        1,
        n as isize,
        false,
        x.aligned.offset(x.offset as isize),
        x.strides[1] as isize,
        x.strides[0] as isize,
        // Wᵀ [K, N]: element (k, n) is w[n, k].
        w.aligned.offset(w.offset as isize),
        w.strides[0] as isize,
        w.strides[1] as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        parallelism(m * n * k),
    );
    *out = y;
}
