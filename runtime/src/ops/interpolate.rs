//! Bilinear resampling as `torch.nn.functional.interpolate(mode="bilinear",
//! align_corners=False)` does it when given an output size: source position
//! `(i + 0.5)·in/out − 0.5`, clamped at 0, in float32.

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
