//! Stride-1 convolutions as products without an im2col matrix (the CPU target's choice for
//! kernels larger than 1×1). On the padded input `x` [N, C, Hp, Wp] flattened per channel, the
//! window position (i, j) reads, for the output pixel at flat position `q = y·Wp + x`, the input
//! element `q + i·dh·Wp + j·dw`: a shifted view of the input is that position's [C, Q] matrix,
//! with unit column stride. So a convolution is kh·kw products accumulated into an output laid
//! out on the input's width (`[N, M, Ho, Wp]`, of which the caller reads the first Wo columns),
//! and its weight gradient kh·kw products of the gradient (on the same grid, zero beyond Wo)
//! with the transposed views. `Q = (Ho − 1)·Wp + Wo` keeps every read inside the input.
//!
//! The products read host memory: the CUDA target does not emit these calls, and one that runs
//! where the device's GEMM is needed records an error.

use super::kernels::{device_gemm, for_each_item, product, Lhs, Matrix};
use super::MemRef;

/// The window of a stride-1 convolution: kernel size and dilation per axis.
struct Window {
    kernel: [usize; 2],
    dilation: [usize; 2],
}

impl Window {
    /// From a runtime call's `[kh, kw, dh, dw]`.
    fn of(window: &[i64], name: &str) -> Option<Window> {
        match *window {
            [kh, kw, dh, dw] if kh > 0 && kw > 0 && dh > 0 && dw > 0 => {
                Some(Window { kernel: [kh as usize, kw as usize], dilation: [dh as usize, dw as usize] })
            }
            ref other => {
                super::set_error(format!("{name}: window {other:?} is not [kh, kw, dh, dw]"));
                None
            }
        }
    }

    /// The output size for an input of `[hp, wp]` (padded), if there is one.
    fn output(&self, [hp, wp]: [usize; 2]) -> Option<[usize; 2]> {
        let reach = [0, 1].map(|axis| self.dilation[axis] * (self.kernel[axis] - 1));
        (hp > reach[0] && wp > reach[1]).then(|| [hp - reach[0], wp - reach[1]])
    }

    /// The window positions: their (i, j) and their offset in a plane `wp` wide.
    fn positions(&self, wp: usize) -> impl Iterator<Item = (usize, usize, isize)> + '_ {
        let [kh, kw] = self.kernel;
        (0..kh).flat_map(move |i| {
            (0..kw).map(move |j| (i, j, (i * self.dilation[0] * wp + j * self.dilation[1]) as isize))
        })
    }
}

/// Zeros around each image of a convolution's input: rows above and columns left of it, rows
/// below and columns right of it.
pub(super) type Padding = [usize; 4];

/// `x` [N, C, H, W] (any strides) with `padding`'s zeros around each plane: a new row-major
/// [N, C, Hp, Wp], the input the window products read. The planes are split among the threads.
///
/// # Safety
/// `x` describes a live buffer.
pub(super) unsafe fn padded(x: &MemRef<f32, 4>, [top, left, bottom, right]: Padding) -> MemRef<f32, 4> {
    let [n, c, h, w] = x.shape();
    let (hp, wp) = (h + top + bottom, w + left + right);
    let mut y = MemRef::<f32, 4>::allocate([n, c, hp, wp]);
    if n * c * hp * wp == 0 {
        return y;
    }
    let source = x.elements();
    use rayon::prelude::*;
    y.as_mut_slice().par_chunks_mut(hp * wp).enumerate().for_each(|(plane, out)| {
        out.fill(0.0);
        for row in 0..h {
            let start = (plane * h + row) * w;
            out[(top + row) * wp + left..][..w].copy_from_slice(&source[start..start + w]);
        }
    });
    y
}

/// Whether the products cannot run here: a device needs its own GEMM (the error recorded).
pub(super) fn on_device(name: &str) -> bool {
    let on_device = device_gemm().is_some();
    if on_device {
        super::set_error(format!("{name}: not available on a GPU (the CUDA target uses im2col products)"));
    }
    on_device
}

/// `f` of `x` with its rows contiguous, as the flattening needs: `x` itself, or a row-major
/// copy of a view.
///
/// # Safety
/// `x` describes a live buffer.
unsafe fn with_contiguous_rows<T>(x: &MemRef<f32, 4>, f: impl FnOnce(&MemRef<f32, 4>) -> T) -> T {
    let [_, _, _, width] = x.shape();
    if x.strides[3] == 1 && x.strides[2] == width as i64 {
        return f(x);
    }
    let copy = x.elements().into_owned();
    f(&MemRef::borrowed(&copy, x.shape()))
}

/// `A` [M, C·kh·kw] (or packed, its transpose) convolved with `x` [N, C, Hp, Wp] at stride 1:
/// the result [N, M, Ho, Wp], its columns from Wo on unwritten.
unsafe fn convolve(name: &str, a: Lhs, x: &MemRef<f32, 4>, window: &MemRef<i64, 1>) -> MemRef<f32, 4> {
    let [n, c, hp, wp] = x.shape();
    let Some(window) = Window::of(&window.elements(), name) else { return MemRef::allocate([0, a.m, 0, 0]) };
    let [kh, kw] = window.kernel;
    let Some([ho, wo]) = window.output([hp, wp]).filter(|_| a.k == c * kh * kw) else {
        super::set_error(format!("{name}: [{}, {}] × [{n}, {c}, {hp}, {wp}] with a {kh}×{kw} window", a.m, a.k));
        return MemRef::allocate([0, a.m, 0, 0]);
    };
    if on_device(name) {
        return MemRef::allocate([0, a.m, 0, 0]);
    }
    with_contiguous_rows(x, |x| convolve_rows(a, x, &window, [ho, wo]))
}

/// [`convolve`] of `x` with contiguous rows, whose output is `[ho, wo]`.
unsafe fn convolve_rows(a: Lhs, x: &MemRef<f32, 4>, window: &Window, [ho, wo]: [usize; 2]) -> MemRef<f32, 4> {
    let [n, c, _, wp] = x.shape();
    let [kh, kw] = window.kernel;
    let y = MemRef::<f32, 4>::allocate([n, a.m, ho, wp]);
    let q = (ho - 1) * wp + wo;
    let (x_base, y_base) = (x.aligned.wrapping_offset(x.offset as isize) as usize, y.aligned as usize);
    let (image_stride, channel_stride) = (x.strides[0] as isize, x.strides[1] as isize);
    let positions: Vec<(usize, usize, isize)> = window.positions(wp).collect();
    let product = |item: usize, parallelism| {
        for (first, &(i, j, shift)) in positions.iter().enumerate() {
            // The weights of window position (i, j): columns i·kw + j, kh·kw apart.
            let column = (i * kw + j) as isize;
            product(
                [a.m, q, c],
                Matrix::new((y_base as *const f32).add(item * a.m * ho * wp), (ho * wp) as isize, 1),
                Matrix::new((a.base as *const f32).offset(column * a.cs), a.rs, a.cs * (kh * kw) as isize),
                Matrix::new((x_base as *const f32).offset(item as isize * image_stride + shift), channel_stride, 1),
                first > 0,
                parallelism,
            )
        }
    };
    for_each_item(n, a.m * c * kh * kw * q, product);
    y
}

/// A stride-1 convolution of the padded input `x` [N, C, Hp, Wp] with the weights `a`
/// [M, C·kh·kw] (a convolution's [M, C, kh, kw]), `window` = [kh, kw, dh, dw]: the result
/// [N, M, Ho, Wp], whose first Wo columns are the convolution's.
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_conv_windows(
    out: *mut MemRef<f32, 4>,
    a: *const MemRef<f32, 2>,
    x: *const MemRef<f32, 4>,
    window: *const MemRef<i64, 1>,
) {
    *out = convolve("mrc_conv_windows", Lhs::of_matrix(&*a), &*x, &*window);
}

/// [`_mlir_ciface_mrc_conv_windows`] with the weights packed at load time (column-major
/// [C·kh·kw, M]).
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_conv_windows_packed(
    out: *mut MemRef<f32, 4>,
    a_t: *const MemRef<f32, 2>,
    x: *const MemRef<f32, 4>,
    window: *const MemRef<i64, 1>,
) {
    *out = convolve("mrc_conv_windows_packed", Lhs::of_transposed(&*a_t), &*x, &*window);
}

/// The weight gradient [M, C, kh, kw] of a stride-1 convolution of the input `x` [N, C, H, W]
/// from its output gradient `grad` [N, M, Ho, Wo], `window` = [kh, kw, dh, dw, top, left,
/// bottom, right] (the zeros around the input): Winograd's where it pays, else for each window
/// position the products of the gradient (laid on the padded input's width, zero from column
/// Wo on) with the shifted padded input's transpose, summed over the images.
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_conv_windows_weight_grad(
    out: *mut MemRef<f32, 4>,
    x: *const MemRef<f32, 4>,
    grad: *const MemRef<f32, 4>,
    window: *const MemRef<i64, 1>,
) {
    *out = weight_gradient("mrc_conv_windows_weight_grad", &*x, &*grad, &*window);
}

unsafe fn weight_gradient(
    name: &str,
    x: &MemRef<f32, 4>,
    grad: &MemRef<f32, 4>,
    window: &MemRef<i64, 1>,
) -> MemRef<f32, 4> {
    let ([n, c, h, w], [n2, m, ho2, wo2]) = (x.shape(), grad.shape());
    let settings = window.elements();
    let (window, padding) = settings.split_at(settings.len().min(4));
    let (Some(window), Some(padding)) = (Window::of(window, name), padding_of(padding, name)) else {
        return MemRef::allocate([m, 0, 0, 0]);
    };
    let [kh, kw] = window.kernel;
    let [hp, wp] = [h + padding[0] + padding[2], w + padding[1] + padding[3]];
    let Some([ho, wo]) = window.output([hp, wp]).filter(|&output| n == n2 && output == [ho2, wo2]) else {
        super::set_error(format!("{name}: input [{n}, {c}, {h}, {w}] padded by {padding:?}, gradient [{n2}, {m}, {ho2}, {wo2}], {kh}×{kw} window"));
        return MemRef::allocate([m, c, kh, kw]);
    };
    if on_device(name) {
        return MemRef::allocate([m, c, kh, kw]);
    }
    if window.kernel == [3, 3] && window.dilation == [1, 1] && super::winograd::pays_for_weight_gradient(n, [ho, wo]) {
        return super::winograd::weight_gradient(x, padding, grad, [ho, wo]);
    }
    let (x, on_grid) = (padded(x, padding), padded(grad, [0, 0, 0, wp - wo]));
    let dw = weight_gradient_rows(&x, &on_grid, &window, [ho, wo]);
    x.free();
    on_grid.free();
    dw
}

/// The zeros around a convolution's input, `[top, left, bottom, right]`, from a runtime call's
/// settings; `None` (the error recorded) when they are not.
pub(super) fn padding_of(settings: &[i64], name: &str) -> Option<Padding> {
    match *settings {
        [top, left, bottom, right] if [top, left, bottom, right].iter().all(|&p| p >= 0) => {
            Some([top, left, bottom, right].map(|p| p as usize))
        }
        ref other => {
            super::set_error(format!("{name}: padding {other:?} is not [top, left, bottom, right]"));
            None
        }
    }
}

/// [`weight_gradient`] of `x` and `grad` with contiguous rows, the output `[ho, wo]`.
unsafe fn weight_gradient_rows(
    x: &MemRef<f32, 4>,
    grad: &MemRef<f32, 4>,
    window: &Window,
    [ho, wo]: [usize; 2],
) -> MemRef<f32, 4> {
    let ([_, c, _, wp], [_, m, _, _]) = (x.shape(), grad.shape());
    let [kh, kw] = window.kernel;
    let q = (ho - 1) * wp + wo;
    let x_base = x.aligned.wrapping_offset(x.offset as isize) as usize;
    let transposed = transposed_gradients(grad, q);
    // One task per window position, each summing over the images into its own [M, C] block
    // (column-major): the products are too narrow (M by C) for the kernel to split. The
    // gradient's transpose is read in place (M contiguous), where the gradient itself would be
    // packed anew for each position.
    let positions: Vec<(usize, usize, isize)> = window.positions(wp).collect();
    let x_strides = x.strides.map(|s| s as isize);
    let mut blocks = vec![0.0_f32; positions.len() * m * c];
    {
        use rayon::prelude::*;
        blocks.par_chunks_mut(m * c).zip(&positions).for_each(|(block, &(_, _, shift))| {
            for (item, grad_t) in transposed.chunks(q * m).enumerate() {
                product(
                    [m, c, q],
                    Matrix::new(block.as_ptr(), 1, m as isize),
                    Matrix::new(grad_t.as_ptr(), 1, m as isize),
                    // The shifted input's transpose [Q, C]: element (q, c) at q + c·channel stride.
                    Matrix::new((x_base as *const f32).offset(item as isize * x_strides[0] + shift), 1, x_strides[1]),
                    item > 0,
                    gemm::Parallelism::None,
                );
            }
        });
    }
    let dw = MemRef::<f32, 4>::allocate([m, c, kh, kw]);
    for (position, block) in blocks.chunks(m * c).enumerate() {
        for (index, &value) in block.iter().enumerate() {
            // Element (o, ch) of position (i, j), at ch·M + o, is dw[o, ch, i, j].
            let (ch, o) = (index / m, index % m);
            *dw.aligned.add((o * c + ch) * kh * kw + position) = value;
        }
    }
    dw
}

/// The first `q` positions of each image's and channel's gradient `grad` [N, M, ·, ·] (rows
/// contiguous), transposed: per image a [Q, M] row-major matrix, the images one after the
/// other. Chunks of 64 positions are split among the threads; a chunk reads each channel's
/// 64 positions (four cache lines) while it writes them.
unsafe fn transposed_gradients(grad: &MemRef<f32, 4>, q: usize) -> Vec<f32> {
    const POSITIONS: usize = 64;
    let [n, m, _, _] = grad.shape();
    let strides = grad.strides.map(|s| s as isize);
    let base = grad.aligned.wrapping_offset(grad.offset as isize) as usize;
    let mut transposed = vec![0.0_f32; n * q * m];
    use rayon::prelude::*;
    transposed.par_chunks_mut(POSITIONS * m).enumerate().for_each(|(chunk, out)| {
        for (row, values) in out.chunks_mut(m).enumerate() {
            let flat = chunk * POSITIONS + row;
            let (item, position) = (flat / q, flat % q);
            let image = (base as *const f32).offset(item as isize * strides[0] + position as isize);
            for (channel, value) in values.iter_mut().enumerate() {
                *value = *image.offset(channel as isize * strides[1]);
            }
        }
    });
    transposed
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Small integers, so that sums are exact in any order.
    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count).map(|i| ((i * 7 + seed * 13) % 11) as f32 - 5.0).collect()
    }

    /// The direct convolution of `x` [N, C, Hp, Wp] with `w` [M, C, kh, kw] at stride 1.
    pub(in crate::abi) fn direct(
        x: &[f32],
        [n, c, hp, wp]: [usize; 4],
        w: &[f32],
        [m, kh, kw]: [usize; 3],
        [dh, dw]: [usize; 2],
    ) -> (Vec<f32>, [usize; 2]) {
        let (ho, wo) = (hp - dh * (kh - 1), wp - dw * (kw - 1));
        let mut y = vec![0.0; n * m * ho * wo];
        for (b, o, r, s) in itertools(n, m, ho, wo) {
            let mut sum = 0.0;
            for ch in 0..c {
                for i in 0..kh {
                    for j in 0..kw {
                        sum +=
                            w[((o * c + ch) * kh + i) * kw + j] * x[((b * c + ch) * hp + r + i * dh) * wp + s + j * dw];
                    }
                }
            }
            y[((b * m + o) * ho + r) * wo + s] = sum;
        }
        (y, [ho, wo])
    }

    fn itertools(a: usize, b: usize, c: usize, d: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..a).flat_map(move |i| (0..b).flat_map(move |j| (0..c).flat_map(move |k| (0..d).map(move |l| (i, j, k, l)))))
    }

    #[test]
    fn window_products_equal_the_direct_convolution_and_its_weight_gradient() {
        let (n, c, hp, wp, m) = (2, 3, 7, 9, 4);
        for (kh, kw, dh, dw) in [(3, 3, 1, 1), (3, 2, 2, 1), (1, 3, 1, 2)] {
            let x = values(n * c * hp * wp, 1);
            let w = values(m * c * kh * kw, 2);
            let (expected, [ho, wo]) = direct(&x, [n, c, hp, wp], &w, [m, kh, kw], [dh, dw]);
            let window = MemRef::<i64, 1>::owned(&[kh as i64, kw as i64, dh as i64, dw as i64], [4]);
            let x_ref = MemRef::<f32, 4>::owned(&x, [n, c, hp, wp]);
            let w_ref = MemRef::<f32, 2>::owned(&w, [m, c * kh * kw]);
            let mut y = MemRef::<f32, 4>::allocate([0, 0, 0, 0]);
            unsafe { _mlir_ciface_mrc_conv_windows(&mut y, &w_ref, &x_ref, &window) };
            assert_eq!(y.shape(), [n, m, ho, wp]);
            let grid = unsafe { y.elements() }.into_owned();
            for (b, o, r, s) in itertools(n, m, ho, wo) {
                assert_eq!(
                    grid[((b * m + o) * ho + r) * wp + s],
                    expected[((b * m + o) * ho + r) * wo + s],
                    "{kh}x{kw} /{dh},{dw}"
                );
            }
            // The input as a view whose rows are 3 elements apart from the next row's start
            // beyond its width: copied to contiguous rows first.
            let wide: Vec<f32> = x.chunks(wp).flat_map(|row| row.iter().copied().chain([f32::NAN; 3])).collect();
            let mut view = MemRef::<f32, 4>::borrowed(&wide, [n, c, hp, wp + 3]);
            view.sizes[3] = wp as i64;
            let mut y_view = MemRef::<f32, 4>::allocate([0, 0, 0, 0]);
            unsafe { _mlir_ciface_mrc_conv_windows(&mut y_view, &w_ref, &view, &window) };
            let view_grid = unsafe { y_view.elements() }.into_owned();
            for (b, o, r, s) in itertools(n, m, ho, wo) {
                let at = ((b * m + o) * ho + r) * wp + s;
                assert_eq!(view_grid[at], grid[at], "strided input {kh}x{kw}");
            }

            // The packed form: the weights' transpose [C·kh·kw, M].
            let k = c * kh * kw;
            let transposed: Vec<f32> = (0..k * m).map(|e| w[(e % m) * k + e / m]).collect();
            let packed = MemRef::<f32, 2>::owned(&transposed, [k, m]);
            let mut y_packed = MemRef::<f32, 4>::allocate([0, 0, 0, 0]);
            unsafe { _mlir_ciface_mrc_conv_windows_packed(&mut y_packed, &packed, &x_ref, &window) };
            let packed_grid = unsafe { y_packed.elements() }.into_owned();
            for (b, o, r, s) in itertools(n, m, ho, wo) {
                let at = ((b * m + o) * ho + r) * wp + s;
                assert_eq!(packed_grid[at], grid[at]);
            }

            // The weight gradient for an output gradient g: Σ g[b, o, r, s] · x[b, ch, r + i·dh,
            // s + j·dw], of the input unpadded (`padding` rows and columns of zeros around it
            // in x) and of x itself.
            let g = values(n * m * ho * wo, 3);
            let g_ref = MemRef::<f32, 4>::owned(&g, [n, m, ho, wo]);
            let [top, left, bottom, right] = [1, 2, 0, 1];
            let (h, w) = (hp - top - bottom, wp - left - right);
            let mut padded_x = x.clone();
            for (b, ch, r, s) in itertools(n, c, hp, wp) {
                if r < top || r >= top + h || s < left || s >= left + w {
                    padded_x[((b * c + ch) * hp + r) * wp + s] = 0.0;
                }
            }
            let inner: Vec<f32> = itertools(n, c, h, w)
                .map(|(b, ch, r, s)| padded_x[((b * c + ch) * hp + r + top) * wp + s + left])
                .collect();
            let calls = [
                (x_ref, [0; 4], &x),
                (MemRef::<f32, 4>::owned(&inner, [n, c, h, w]), [top, left, bottom, right], &padded_x),
            ];
            for (input, padding, reference) in calls {
                let mut settings = vec![kh as i64, kw as i64, dh as i64, dw as i64];
                settings.extend(padding.map(|p| p as i64));
                let mut dw_out = MemRef::<f32, 4>::allocate([0, 0, 0, 0]);
                unsafe {
                    _mlir_ciface_mrc_conv_windows_weight_grad(
                        &mut dw_out,
                        &input,
                        &g_ref,
                        &MemRef::owned(&settings, [8]),
                    )
                };
                let gradient = unsafe { dw_out.elements() }.into_owned();
                for (o, ch, i, j) in itertools(m, c, kh, kw) {
                    let mut sum = 0.0;
                    for (b, _, r, s) in itertools(n, 1, ho, wo) {
                        sum += g[((b * m + o) * ho + r) * wo + s]
                            * reference[((b * c + ch) * hp + r + i * dh) * wp + s + j * dw];
                    }
                    assert_eq!(
                        gradient[((o * c + ch) * kh + i) * kw + j],
                        sum,
                        "weight gradient {kh}x{kw} /{dh},{dw} padded by {padding:?}"
                    );
                }
            }
        }
    }
}
