//! Resampling as `torch.nn.functional.interpolate(..., align_corners=False)` does it when given
//! an output size, in float32: bilinear (source position `(i + 0.5)·in/out − 0.5`, clamped at 0)
//! and bicubic (the same position, unclamped; four taps clamped to the border).

/// For one output index: the two source indices and their weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

/// The taps of a 1-D resize from `input` to `output` samples (both > 0).
pub fn taps(input: usize, output: usize) -> Vec<Tap> {
    (0..output).map(|i| tap(input, output, i)).collect()
}

/// The tap of output index `i`: computed alone so that callers pasting a crop of a large
/// resized image need not build the whole table.
#[inline]
pub fn tap(input: usize, output: usize, i: usize) -> Tap {
    if input == output {
        return Tap { i0: i, i1: i, w0: 1.0, w1: 0.0 };
    }
    let ratio = input as f32 / output as f32;
    let src = (ratio * (i as f32 + 0.5) - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(input - 1);
    let w1 = (src - i0 as f32).clamp(0.0, 1.0);
    let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
    Tap { i0, i1, w0: 1.0 - w1, w1 }
}

/// Bilinear value at taps `ty` (rows) and `tx` (columns) of a row-major plane of width `w`,
/// interpolating along the width first, as torch's kernel does.
#[inline(always)]
pub fn sample(plane: &[f32], w: usize, ty: &Tap, tx: &Tap) -> f32 {
    let r0 = &plane[ty.i0 * w..];
    let r1 = &plane[ty.i1 * w..];
    let t0 = r0[tx.i0] * tx.w0 + r0[tx.i1] * tx.w1;
    let t1 = r1[tx.i0] * tx.w0 + r1[tx.i1] * tx.w1;
    t0 * ty.w0 + t1 * ty.w1
}

/// Resizes each `h×w` plane of `planes` (contiguous, `c` of them) to `oh×ow`.
pub fn resize_planes(planes: &[f32], c: usize, [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Vec<f32> {
    use rayon::prelude::*;
    let ty = taps(h, oh);
    let tx = taps(w, ow);
    let mut out = vec![0.0f32; c * oh * ow];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(ow).enumerate().for_each(|(row, o)| {
        let (ch, y) = (row / oh, row % oh);
        let plane = &planes[ch * h * w..(ch + 1) * h * w];
        for (v, t) in o.iter_mut().zip(&tx) {
            *v = sample(plane, w, &ty[y], t);
        }
    });
    out
}

/// For one output index of a bicubic resize: four source indices (clamped to the input) and
/// their weights.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CubicTap {
    i: [usize; 4],
    w: [f32; 4],
}

/// The taps of a 1-D bicubic resize from `input` to `output` samples (both > 0), as torch's CPU
/// kernel computes them (`HelperInterpCubic`): cubic convolution with A = −0.75 around
/// `floor(src)`, in float32.
fn cubic_taps(input: usize, output: usize) -> Vec<CubicTap> {
    let scale = input as f32 / output as f32;
    let last = input as i64 - 1;
    (0..output)
        .map(|i| {
            let src = scale * (i as f32 + 0.5) - 0.5;
            let index = (src.floor() as i64).min(last);
            let t = (src - index as f32).clamp(0.0, 1.0);
            let i = [-1, 0, 1, 2].map(|j| (index + j).clamp(0, last) as usize);
            CubicTap { i, w: cubic_weights(t) }
        })
        .collect()
}

/// torch's `get_cubic_upsample_coefficients` for the fraction `t`.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    // |x| ≤ 1 and 1 < |x| < 2, in torch's evaluation order.
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let u = 1.0 - t;
    [far(t + 1.0), near(t), near(u), far(u + 1.0)]
}

/// Resizes a row-major `h×w` plane to `oh×ow` bicubically (all sizes > 0), handing each output
/// row in order to `visit`. Each source row is interpolated along the width, then the rows
/// are combined, accumulating in tap order as torch's kernel does.
pub fn cubic_rows(plane: &[f32], [h, w]: [usize; 2], [oh, ow]: [usize; 2], mut visit: impl FnMut(usize, &[f32])) {
    let tx = cubic_taps(w, ow);
    let across: Vec<f32> = plane
        .chunks_exact(w)
        .take(h)
        .flat_map(|row| tx.iter().map(|t| weighted(t, |x| row[x])).collect::<Vec<_>>())
        .collect();
    let mut out = vec![0.0f32; ow];
    for (y, ty) in cubic_taps(h, oh).iter().enumerate() {
        for (x, o) in out.iter_mut().enumerate() {
            *o = weighted(ty, |row| across[row * ow + x]);
        }
        visit(y, &out);
    }
}

/// `Σ value(i)·w` over the four taps, in tap order.
#[inline(always)]
fn weighted(taps: &CubicTap, value: impl Fn(usize) -> f32) -> f32 {
    let mut acc = value(taps.i[0]) * taps.w[0];
    for k in 1..4 {
        acc += value(taps.i[k]) * taps.w[k];
    }
    acc
}
