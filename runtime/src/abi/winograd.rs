//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(4×4, 3×3) (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each 4×4 tile of the output comes
//! from the 6×6 tile of the input under it through 36 products per channel pair instead of 144.
//! The filters become U = G·g·Gᵀ (once, when the weights load, or on each call for weights
//! that change); each input tile V = Bᵀ·d·B; then for each of the 36 points ξ one product over
//! the channels, M[ξ] = U[ξ]·V[ξ]; each output tile is Aᵀ·m·A. Tiles are taken in blocks, one
//! block per task, so that a block's transformed tiles stay in cache through its 36 products.
//! The input is read channels-last, so that the transforms run with the vector lanes along the
//! channels (a tile's point is one vector load) and the products have the channels as their
//! long side (the GEMM's widest kernel).

use super::kernels::{product, Matrix};
use super::window_products::{on_device, padding_of, Padding};
use super::MemRef;

/// Points of the transformed tile (6×6).
const POINTS: usize = 36;

/// Most tiles in a block: a block's transformed input and products (36 × (C + M) × tiles)
/// stay within a core's L2 for 256 channels.
const MAX_BLOCK: usize = 48;

/// The filters `w` [M, C, 3, 3] (row-major) transformed, U[ξ] = (G·g·Gᵀ)[ξ] for every (o, ch),
/// laid out [36, C, M]: each point's M×C matrix column-major, as the GEMM reads it in place.
/// Lanes run along the output channels; channels are split among the threads. A training step
/// transforms its filters on every call, so this is as fast as the input's transform.
pub fn transform_filters(w: &[f32], m: usize, c: usize) -> Vec<f32> {
    assert_eq!(w.len(), m * c * 9, "[M, C, 3, 3] filters");
    // Every element is written below: no zeroing (a training step's 512-channel filters are
    // 38 MB).
    let mut u = Vec::with_capacity(POINTS * c * m);
    let (w_base, u_base) = (w.as_ptr() as usize, u.as_mut_ptr() as usize);
    use rayon::prelude::*;
    // SAFETY: each channel's task writes its own elements of `u`; both buffers outlive the tasks.
    (0..c).into_par_iter().for_each(|ch| unsafe { filters(w_base as *const f32, u_base as *mut f32, m, c, ch) });
    // SAFETY: the tasks wrote every one of the 36·C·M elements.
    unsafe { u.set_len(POINTS * c * m) };
    u
}

/// G (the filters' transform) applied to three values:
/// `[1/4 0 0; −1/6 −1/6 −1/6; −1/6 1/6 −1/6; 1/24 1/12 1/6; 1/24 −1/12 1/6; 0 0 1]`.
#[inline(always)]
fn filter_1d([g0, g1, g2]: [f32; 3]) -> [f32; 6] {
    let (outer, outer_quarter) = (g0 + g2, g0 / 24.0 + g2 / 6.0);
    [g0 / 4.0, -(outer + g1) / 6.0, -(outer - g1) / 6.0, outer_quarter + g1 / 12.0, outer_quarter - g1 / 12.0, g2]
}

/// [`transform_filters`] for the input channel `ch`, every output channel.
///
/// # Safety
/// `w` holds M·C·9 elements, `u` 36·C·M; no other task writes channel `ch`'s elements.
#[inline(always)]
unsafe fn transform_channel_filters(w: *const f32, u: *mut f32, m: usize, c: usize, ch: usize) {
    // Lanes past `lanes` keep an earlier group's values, which are never stored.
    let mut g = [[[0.0_f32; LANES]; 3]; 3];
    let mut columns = [[[0.0_f32; LANES]; 3]; 6];
    for group in (0..m).step_by(LANES) {
        let lanes = LANES.min(m - group);
        for lane in 0..lanes {
            let filter = w.add(((group + lane) * c + ch) * 9);
            for k in 0..9 {
                g[k / 3][k % 3][lane] = *filter.add(k);
            }
        }
        // G·g along the columns, then ·Gᵀ along the rows.
        for j in 0..3 {
            across_lanes(LANES, filter_1d, |r, l| g[r][j][l], |r, l, value| columns[r][j][l] = value);
        }
        for (r, row) in columns.iter().enumerate() {
            let at: [*mut f32; 6] = std::array::from_fn(|s| u.add(((r * 6 + s) * c + ch) * m + group));
            let store = |s: usize, l: usize, value| *at[s].add(l) = value;
            if lanes == LANES {
                across_lanes(LANES, filter_1d, |j, l| row[j][l], store);
            } else {
                across_lanes(lanes, filter_1d, |j, l| row[j][l], store);
            }
        }
    }
}

/// Channels transformed together, one per lane of the vector registers.
const LANES: usize = 16;

/// `transform` applied in each of the first `lanes` lanes: its inputs `read(i, lane)`, its
/// outputs given to `write(k, lane, value)`. Called with `lanes` = [`LANES`] (a constant trip
/// count) wherever it can be, so that the loop over the lanes vectorizes.
#[inline(always)]
fn across_lanes<const I: usize, const O: usize>(
    lanes: usize,
    transform: fn([f32; I]) -> [f32; O],
    read: impl Fn(usize, usize) -> f32,
    mut write: impl FnMut(usize, usize, f32),
) {
    for lane in 0..lanes {
        for (k, value) in transform(std::array::from_fn(|i| read(i, lane))).into_iter().enumerate() {
            write(k, lane, value);
        }
    }
}

/// Bᵀ (on the points 0, ±1, ±2 and ∞) applied to six values:
/// `[4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0; 0 2 −1 −2 1 0; 0 4 0 −5 0 1]`.
#[inline(always)]
fn input_1d([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d0 - 5.0 * d2 + d4,
        -4.0 * (d1 + d2) + d3 + d4,
        4.0 * (d1 - d2) - d3 + d4,
        2.0 * (d3 - d1) - d2 + d4,
        2.0 * (d1 - d3) - d2 + d4,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// Aᵀ applied to six values: `[1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1]`.
#[inline(always)]
fn output_1d([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
    let (sum12, difference12, sum34, difference34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [m0 + sum12 + sum34, difference12 + 2.0 * difference34, sum12 + 4.0 * sum34, difference12 + 8.0 * difference34 + m5]
}

/// Where a block's tiles are: the padded input channels-last `[N, Hp, Wp, C]` (contiguous), the
/// output `[N, M, Ho, Wo]` (contiguous), and the tiles per column and row of an image; what
/// the output transform adds to each output.
#[derive(Clone, Copy)]
struct Tiling {
    x: usize,
    input: [usize; 4],
    y: usize,
    output: [usize; 4],
    tiles: [usize; 2],
    epilogue: Epilogue,
}

/// What a convolution adds to its output before anyone reads it, written by the output
/// transform instead of by a pass of generated code over the output: a bias per output channel
/// (`bias`, 0 for none), a residual laid out as the output (`residual`, contiguous
/// [N, M, Ho, Wo], 0 for none), then a ReLU.
#[derive(Clone, Copy, Default)]
struct Epilogue {
    bias: usize,
    residual: usize,
    relu: bool,
}

impl Epilogue {
    /// The output `value` of channel `channel` at `offset` in the output, completed.
    ///
    /// # Safety
    /// The bias holds the channel and the residual the offset, where given.
    #[inline(always)]
    unsafe fn complete(&self, value: f32, channel: usize, offset: usize) -> f32 {
        let mut sum = value;
        if self.bias != 0 {
            sum += *(self.bias as *const f32).add(channel);
        }
        if self.residual != 0 {
            sum += *(self.residual as *const f32).add(offset);
        }
        // As the generated epilogue's `arith.maximumf` (and torch's ReLU): NaN stays NaN.
        if self.relu && sum < 0.0 {
            sum = 0.0;
        }
        sum
    }
}

impl Tiling {
    /// Where tile `tile`'s 6×6 input tile starts in the channels-last input, with the rows and
    /// columns of it that lie in the input, and where its 4×4 output tile starts in output
    /// channel 0, with its rows and columns in the output.
    fn place(&self, tile: usize) -> Place {
        let ([_, hp, wp, c], [_, m, ho, wo], [th, tw]) = (self.input, self.output, self.tiles);
        let (image, top, left) = (tile / (th * tw), tile / tw % th * 4, tile % tw * 4);
        Place {
            input: ((image * hp + top) * wp + left) * c,
            input_extent: [(hp - top).min(6), (wp - left).min(6)],
            output: image * m * ho * wo + top * wo + left,
            output_extent: [(ho - top).min(4), (wo - left).min(4)],
        }
    }
}

/// Where a tile lies: see [`Tiling::place`].
#[derive(Clone, Copy)]
struct Place {
    input: usize,
    input_extent: [usize; 2],
    output: usize,
    output_extent: [usize; 2],
}

/// The input `x` [N, C, H, W] (any strides) with `padding`'s zeros around it, channels-last:
/// [N, Hp, Wp, C]. A tile's 36 points then hold each channel group in one vector, and the
/// convolution needs no padded copy of its input in NCHW. Rows are split among the threads.
///
/// # Safety
/// `x` describes a live buffer.
unsafe fn channels_last(x: &MemRef<f32, 4>, padding: Padding) -> Vec<f32> {
    let [n, c, hp, wp] = padded_shape(x, padding);
    let mut transposed = Vec::with_capacity(n * hp * wp * c);
    channels_last_into(x, padding, transposed.as_mut_ptr());
    // SAFETY: every element was written.
    transposed.set_len(n * hp * wp * c);
    transposed
}

/// [`channels_last`] written at `target`, which holds N·Hp·Wp·C elements.
///
/// # Safety
/// `x` describes a live buffer; `target` holds that many elements, which no one else uses.
unsafe fn channels_last_into(x: &MemRef<f32, 4>, [top, left, bottom, right]: Padding, target: *mut f32) {
    let [n, c, h, w] = x.shape();
    let (hp, wp) = (h + top + bottom, w + left + right);
    let strides = x.strides.map(|s| s as isize);
    let source = x.aligned.wrapping_offset(x.offset as isize) as usize;
    let target = target as usize;
    use rayon::prelude::*;
    // SAFETY: each row's task writes its own [Wp, C] elements; both buffers outlive the tasks.
    (0..n * hp).into_par_iter().for_each(|row| unsafe {
        let (image, y, out) = (row / hp, row % hp, (target as *mut f32).add(row * wp * c));
        if y < top || y >= top + h {
            std::ptr::write_bytes(out, 0, wp * c);
            return;
        }
        std::ptr::write_bytes(out, 0, left * c);
        std::ptr::write_bytes(out.add((left + w) * c), 0, right * c);
        let line = (source as *const f32).offset(image as isize * strides[0] + (y - top) as isize * strides[2]);
        transposed_row(line, [strides[1], strides[3]], [c, w], out.add(left * c))
    });
}

/// The input `x` [N, C, H, W] (any strides) laid out channels-last with zeros around it
/// ([`channels_last`]) as Winograd's convolutions and weight gradients read it, `settings`
/// `[top, left, bottom, right]`: [N, H + top + bottom, W + left + right, C]. A layer's input
/// laid out once serves its convolution and its weight gradient, and an output gradient its
/// input gradient and weight gradient (the `lay-out-for-winograd` pass shares them).
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_channels_last(
    out: *mut MemRef<f32, 4>,
    x: *const MemRef<f32, 4>,
    settings: *const MemRef<i64, 1>,
) {
    let x = &*x;
    let Some(padding) = padding_of(&(*settings).elements(), "mrc_channels_last") else {
        *out = MemRef::allocate([0; 4]);
        return;
    };
    let [n, c, hp, wp] = padded_shape(x, padding);
    let laid_out = MemRef::<f32, 4>::allocate([n, hp, wp, c]);
    if !on_device("mrc_channels_last") {
        channels_last_into(x, padding, laid_out.aligned);
    }
    *out = laid_out;
}

/// The row `line` of `c` channels and `wp` columns (`steps` apart) written channels-last at
/// `out`; with `AVX512` and contiguous columns, in 16×16 blocks by [`transpose_block_avx512`]
/// (edge blocks masked).
#[inline(always)]
unsafe fn transpose_row<const AVX512: bool>(line: *const f32, steps: [isize; 2], [c, wp]: [usize; 2], out: *mut f32) {
    // Blocks of 16 channels by 16 columns, so that the lines being read stay in cache.
    for left in (0..wp).step_by(LANES) {
        let columns = LANES.min(wp - left);
        for first in (0..c).step_by(LANES) {
            let channels = LANES.min(c - first);
            let (source, target) =
                (line.offset(first as isize * steps[0] + left as isize * steps[1]), out.add(left * c + first));
            #[cfg(target_arch = "x86_64")]
            if AVX512 && steps[1] == 1 {
                transpose_block_avx512(source, steps[0], [channels, columns], target, c);
                continue;
            }
            for ch in 0..channels {
                for column in 0..columns {
                    *target.add(column * c + ch) = *source.offset(ch as isize * steps[0] + column as isize * steps[1]);
                }
            }
        }
    }
}

/// The block of `rows` ≤ 16 rows at `source` (`source_step` apart) by `columns` ≤ 16 columns
/// transposed to `target` (rows `target_step` apart), in registers: 32-bit, then 64-bit
/// interleaves within 128-bit lanes, then a 4×4 transpose of the 128-bit lanes. An edge
/// block's loads and stores are masked to it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose_block_avx512(
    source: *const f32,
    source_step: isize,
    [rows, columns]: [usize; 2],
    target: *mut f32,
    target_step: usize,
) {
    use std::arch::x86_64::*;
    let mask = |count: usize| ((1u32 << count) - 1) as u16;
    let (column_mask, row_mask) = (mask(columns), mask(rows));
    let loaded: [__m512; 16] = std::array::from_fn(|r| {
        if r < rows {
            _mm512_maskz_loadu_ps(column_mask, source.offset(r as isize * source_step))
        } else {
            _mm512_setzero_ps()
        }
    });
    // a[2i], a[2i + 1]: rows 2i and 2i + 1 interleaved, columns 4k, 4k + 1 and 4k + 2, 4k + 3 of lane k.
    let a: [__m512; 16] = std::array::from_fn(|i| {
        let (even, odd) = (loaded[i / 2 * 2], loaded[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(even, odd)
        } else {
            _mm512_unpackhi_ps(even, odd)
        }
    });
    // b[4j + q], lane k: rows 4j..4j + 4 of column 4k + q.
    let b: [__m512; 16] = std::array::from_fn(|i| {
        let (j, q) = (i / 4, i % 4);
        let (low, high) = (_mm512_castps_pd(a[4 * j + q / 2]), _mm512_castps_pd(a[4 * j + 2 + q / 2]));
        _mm512_castpd_ps(if q % 2 == 0 { _mm512_unpacklo_pd(low, high) } else { _mm512_unpackhi_pd(low, high) })
    });
    for q in 0..4 {
        let (x0, x1, x2, x3) = (b[q], b[4 + q], b[8 + q], b[12 + q]);
        let (y0, y1) = (_mm512_shuffle_f32x4::<0x44>(x0, x1), _mm512_shuffle_f32x4::<0xEE>(x0, x1));
        let (y2, y3) = (_mm512_shuffle_f32x4::<0x44>(x2, x3), _mm512_shuffle_f32x4::<0xEE>(x2, x3));
        let transposed = [
            _mm512_shuffle_f32x4::<0x88>(y0, y2),
            _mm512_shuffle_f32x4::<0xDD>(y0, y2),
            _mm512_shuffle_f32x4::<0x88>(y1, y3),
            _mm512_shuffle_f32x4::<0xDD>(y1, y3),
        ];
        for (k, column) in transposed.into_iter().enumerate() {
            if 4 * k + q < columns {
                _mm512_mask_storeu_ps(target.add((4 * k + q) * target_step), row_mask, column);
            }
        }
    }
}

/// Transforms the input tiles `first..first + count`, every channel, into `v` [36, block, C]
/// (tile `first` first), with the lanes along the channels.
///
/// # Safety
/// `tiling` describes live buffers; the tiles exist; `v` holds 36·block·C elements, count ≤
/// block, and no other task writes them.
#[inline(always)]
unsafe fn transform_inputs(tiling: &Tiling, first: usize, count: usize, v: *mut f32, block: usize) {
    let [_, _, wp, c] = tiling.input;
    let x = tiling.x as *const f32;
    let mut d = [[[0.0_f32; LANES]; 6]; 6];
    let mut columns = [[[0.0_f32; LANES]; 6]; 6];
    let (steps, stride) = ([wp * c, c], block * c);
    for tile in 0..count {
        let place = tiling.place(first + tile);
        let corner = x.add(place.input);
        for channels in (0..c).step_by(LANES) {
            let (corner, at) = (corner.add(channels), v.add(tile * c + channels));
            // A constant lane count for whole channel groups, so that their loops vectorize.
            if c - channels >= LANES {
                transform_input_tile(LANES, corner, place.input_extent, steps, at, stride, &mut d, &mut columns);
            } else {
                transform_input_tile(c - channels, corner, place.input_extent, steps, at, stride, &mut d, &mut columns);
            }
        }
    }
}

/// One tile's points `corner` (rows and columns `steps` apart; `extent` of them in the input)
/// of `lanes` channels transformed into `v` (the points `stride` apart).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_input_tile(
    lanes: usize,
    corner: *const f32,
    [rows, width]: [usize; 2],
    steps: [usize; 2],
    v: *mut f32,
    stride: usize,
    d: &mut [[[f32; LANES]; 6]; 6],
    columns: &mut [[[f32; LANES]; 6]; 6],
) {
    // Bᵀ·d along the columns, then ·B along the rows; whole tiles are read in place.
    if lanes == LANES && rows == 6 && width == 6 {
        for s in 0..6 {
            let point = |r: usize, l: usize| *corner.add(r * steps[0] + s * steps[1] + l);
            across_lanes(LANES, input_1d, point, |r, l, value| columns[r][s][l] = value);
        }
    } else {
        // Points outside the input, and lanes past `lanes`, are zero.
        *d = [[[0.0; LANES]; 6]; 6];
        for (r, row) in d.iter_mut().enumerate().take(rows) {
            for (s, values) in row.iter_mut().enumerate().take(width) {
                let point = corner.add(r * steps[0] + s * steps[1]);
                for (l, value) in values.iter_mut().enumerate().take(lanes) {
                    *value = *point.add(l);
                }
            }
        }
        for s in 0..6 {
            across_lanes(lanes, input_1d, |r, l| d[r][s][l], |r, l, value| columns[r][s][l] = value);
        }
    }
    for (r, row) in columns.iter().enumerate() {
        let at: [*mut f32; 6] = std::array::from_fn(|s| v.add((r * 6 + s) * stride));
        across_lanes(lanes, input_1d, |s, l| row[s][l], |s, l, value| *at[s].add(l) = value);
    }
}

/// Transforms the products `products` [36, block, M] of the tiles `first..first + count` into
/// their output tiles, with the lanes along the output channels.
///
/// # Safety
/// As [`transform_inputs`]; the output tiles are this task's alone.
#[inline(always)]
unsafe fn transform_outputs(tiling: &Tiling, first: usize, count: usize, products: &[f32], block: usize) {
    let [_, m, ho, wo] = tiling.output;
    let (y, products) = (tiling.y as *mut f32, products.as_ptr());
    let mut rows = [[[0.0_f32; LANES]; 4]; 6];
    let mut out = [[[0.0_f32; LANES]; 4]; 4];
    let steps = [block * m, ho * wo, wo];
    for tile in 0..count {
        let place = tiling.place(first + tile);
        for channels in (0..m).step_by(LANES) {
            let (at, offset) = (products.add(tile * m + channels), place.output + channels * ho * wo);
            let completion = (&tiling.epilogue, channels, offset);
            if m - channels >= LANES {
                transform_output_tile(
                    LANES,
                    at,
                    y.add(offset),
                    place.output_extent,
                    steps,
                    completion,
                    &mut rows,
                    &mut out,
                );
            } else {
                transform_output_tile(
                    m - channels,
                    at,
                    y.add(offset),
                    place.output_extent,
                    steps,
                    completion,
                    &mut rows,
                    &mut out,
                );
            }
        }
    }
}

/// One tile's products `at` (the points `steps[0]` apart) of `lanes` output channels
/// transformed into the output tile at `corner` (channels `steps[1]` apart, rows `steps[2]`),
/// `extent` rows and columns of it, each completed by the epilogue (the tile's first channel
/// and its corner's offset in the output given with it).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output_tile(
    lanes: usize,
    at: *const f32,
    corner: *mut f32,
    [height, width]: [usize; 2],
    steps: [usize; 3],
    (epilogue, channel, offset): (&Epilogue, usize, usize),
    rows: &mut [[[f32; LANES]; 4]; 6],
    out: &mut [[[f32; LANES]; 4]; 4],
) {
    // Aᵀ·m along the rows, then ·A along the columns.
    for (r, row) in rows.iter_mut().enumerate() {
        let points: [*const f32; 6] = std::array::from_fn(|s| at.add((r * 6 + s) * steps[0]));
        across_lanes(lanes, output_1d, |s, l| *points[s].add(l), |s, l, value| row[s][l] = value);
    }
    for s in 0..4 {
        across_lanes(lanes, output_1d, |r, l| rows[r][s][l], |r, l, value| out[r][s][l] = value);
    }
    for l in 0..lanes {
        for (r, row) in out.iter().enumerate().take(height) {
            for (s, values) in row.iter().enumerate().take(width) {
                let at = l * steps[1] + r * steps[2] + s;
                *corner.add(at) = epilogue.complete(values[l], channel + l, offset + at);
            }
        }
    }
}

/// `unsafe fn $name(args)` calling `$body(args)` compiled for the widest vectors this CPU has:
/// AVX-512, else AVX2 with FMA, else the runtime's baseline (SSE2), chosen at run time.
macro_rules! for_this_cpu {
    ($(#[$doc:meta])* unsafe fn $name:ident($($arg:ident: $type:ty),*) = $body:path) => {
        $(#[$doc])*
        unsafe fn $name($($arg: $type),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $type),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $type),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return avx512($($arg),*);
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    return avx2($($arg),*);
                }
            }
            $body($($arg),*)
        }
    };
}

for_this_cpu!(
    /// [`transform_channel_filters`] for this CPU.
    unsafe fn filters(w: *const f32, u: *mut f32, m: usize, c: usize, ch: usize) = transform_channel_filters
);
/// [`transpose_row`] for this CPU.
unsafe fn transposed_row(line: *const f32, steps: [isize; 2], shape: [usize; 2], out: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(line: *const f32, steps: [isize; 2], shape: [usize; 2], out: *mut f32) {
            transpose_row::<true>(line, steps, shape, out)
        }
        return avx512(line, steps, shape, out);
    }
    transpose_row::<false>(line, steps, shape, out)
}
for_this_cpu!(
    /// [`transform_inputs`] for this CPU.
    unsafe fn inputs(tiling: &Tiling, first: usize, count: usize, v: *mut f32, block: usize) = transform_inputs
);
for_this_cpu!(
    /// [`transform_outputs`] for this CPU.
    unsafe fn outputs(tiling: &Tiling, first: usize, count: usize, products: &[f32], block: usize) = transform_outputs
);

/// The convolution of the input laid out channels-last with its zeros, `x` [N, Hp, Wp, C]
/// ([`channels_last`]), by the transformed filters `u` [36, C, M], completed by `epilogue`:
/// [N, M, Hp − 2, Wp − 2].
///
/// # Safety
/// `x` holds N·Hp·Wp·C elements; `u` holds 36·C·M elements; `epilogue` fits the output.
unsafe fn convolve(u: &[f32], m: usize, x: &[f32], [n, hp, wp, c]: [usize; 4], epilogue: Epilogue) -> MemRef<f32, 4> {
    let (ho, wo) = (hp - 2, wp - 2);
    let y = MemRef::<f32, 4>::allocate([n, m, ho, wo]);
    let tiling = Tiling {
        x: x.as_ptr() as usize,
        input: [n, hp, wp, c],
        y: y.aligned as usize,
        output: [n, m, ho, wo],
        tiles: [ho.div_ceil(4), wo.div_ceil(4)],
        epilogue,
    };
    let tiles = n * tiling.tiles[0] * tiling.tiles[1];
    if tiles == 0 || m == 0 {
        return y;
    }
    // Blocks enough for every thread to have several, of at most MAX_BLOCK tiles; where there
    // are too few for every thread, the 36 products of a block are the tasks.
    let threads = rayon::current_num_threads();
    let block = tiles.div_ceil(4 * threads).clamp(LANES, MAX_BLOCK).next_multiple_of(LANES);
    let blocks = tiles.div_ceil(block);
    let products_in_parallel = blocks < 2 * threads;
    let u = u.as_ptr() as usize;
    let task = |(v, products): &mut (Vec<f32>, Vec<f32>), first: usize| {
        let count = block.min(tiles - first);
        inputs(&tiling, first, count, v.as_mut_ptr(), block);
        let (v, products_base) = (v.as_ptr() as usize, products.as_mut_ptr() as usize);
        // Per point: products [block, M] (M contiguous) = U [C, M]ᵀ·V [block, C]ᵀ, as M×count.
        let point_product = |point: usize| {
            product(
                [m, count, c],
                Matrix::new((products_base as *const f32).add(point * m * block), 1, m as isize),
                Matrix::new((u as *const f32).add(point * c * m), 1, m as isize),
                Matrix::new((v as *const f32).add(point * c * block), 1, c as isize),
                false,
                gemm::Parallelism::None,
            )
        };
        use rayon::prelude::*;
        if products_in_parallel {
            (0..POINTS).into_par_iter().for_each(point_product);
        } else {
            (0..POINTS).for_each(point_product);
        }
        outputs(&tiling, first, count, products, block);
    };
    use rayon::prelude::*;
    let scratch = || (vec![0.0_f32; POINTS * c * block], vec![0.0_f32; POINTS * m * block]);
    (0..blocks).into_par_iter().for_each_init(scratch, |scratch, index| task(scratch, index * block));
    y
}

/// A (the transpose of the outputs' Aᵀ) applied to four values, an output gradient's column
/// or row: `[1 0 0 0; 1 1 1 1; 1 −1 1 −1; 1 2 4 8; 1 −2 4 −8; 0 0 0 1]`.
#[inline(always)]
fn gradient_1d([e0, e1, e2, e3]: [f32; 4]) -> [f32; 6] {
    let (even, odd, even_wide, odd_wide) = (e0 + e2, e1 + e3, e0 + 4.0 * e2, 2.0 * e1 + 8.0 * e3);
    [e0, even + odd, even - odd, even_wide + odd_wide, even_wide - odd_wide, e3]
}

/// Gᵀ (the transpose of the filters' G) applied to six values:
/// `[1/4 −1/6 −1/6 1/24 1/24 0; 0 −1/6 1/6 1/12 −1/12 0; 0 −1/6 −1/6 1/6 1/6 1]`.
#[inline(always)]
fn filter_gradient_1d([p0, p1, p2, p3, p4, p5]: [f32; 6]) -> [f32; 3] {
    let (sum12, difference21, sum34, difference34) = (p1 + p2, p2 - p1, p3 + p4, p3 - p4);
    [p0 / 4.0 - sum12 / 6.0 + sum34 / 24.0, difference21 / 6.0 + difference34 / 12.0, (sum34 - sum12) / 6.0 + p5]
}

/// Transforms the output gradient's tiles `first..first + count`, every channel, into `e`
/// [36, block, M] (tile `first` first): E = A·e·Aᵀ of each 4×4 tile, zero outside the
/// output. `gradient` is channels-last, images of `[Hg, Wg]` rows and columns (at least the
/// output's), the output gradient at its first.
///
/// # Safety
/// As [`transform_inputs`], for `e`.
#[inline(always)]
unsafe fn transform_gradients(
    tiling: &Tiling,
    gradient: *const f32,
    [hg, wg]: [usize; 2],
    first: usize,
    count: usize,
    e: *mut f32,
    block: usize,
) {
    let ([_, m, ho, wo], [th, tw]) = (tiling.output, tiling.tiles);
    let (steps, stride) = ([wg * m, m], block * m);
    for tile in 0..count {
        let flat = first + tile;
        let (image, top, left) = (flat / (th * tw), flat / tw % th * 4, flat % tw * 4);
        let corner = gradient.add(((image * hg + top) * wg + left) * m);
        let extent = [(ho - top).min(4), (wo - left).min(4)];
        for channels in (0..m).step_by(LANES) {
            let (corner, at) = (corner.add(channels), e.add(tile * m + channels));
            if m - channels >= LANES {
                transform_gradient_tile(LANES, corner, extent, steps, at, stride);
            } else {
                transform_gradient_tile(m - channels, corner, extent, steps, at, stride);
            }
        }
    }
}

/// One 4×4 tile of `lanes` channels of the output gradient at `corner` (rows and columns
/// `steps` apart, `extent` of them in the output) transformed into `e` (the points `stride`
/// apart).
#[inline(always)]
unsafe fn transform_gradient_tile(
    lanes: usize,
    corner: *const f32,
    [rows, width]: [usize; 2],
    steps: [usize; 2],
    e: *mut f32,
    stride: usize,
) {
    let mut tile = [[[0.0_f32; LANES]; 4]; 4];
    for (r, row) in tile.iter_mut().enumerate().take(rows) {
        for (s, values) in row.iter_mut().enumerate().take(width) {
            let point = corner.add(r * steps[0] + s * steps[1]);
            for (l, value) in values.iter_mut().enumerate().take(lanes) {
                *value = *point.add(l);
            }
        }
    }
    // A·e along the columns, then ·Aᵀ along the rows.
    let mut columns = [[[0.0_f32; LANES]; 4]; 6];
    for s in 0..4 {
        across_lanes(lanes, gradient_1d, |r, l| tile[r][s][l], |r, l, value| columns[r][s][l] = value);
    }
    for (r, row) in columns.iter().enumerate() {
        let at: [*mut f32; 6] = std::array::from_fn(|s| e.add((r * 6 + s) * stride));
        across_lanes(lanes, gradient_1d, |s, l| row[s][l], |s, l, value| *at[s].add(l) = value);
    }
}

/// The filters' gradient of output channel `o` from the products `p` [36, M, C]: Gᵀ·P·G into
/// `dw` [M, C, 3, 3], with the lanes along the input channels.
///
/// # Safety
/// `p` holds 36·M·C elements, `dw` M·C·9; no other task writes output channel `o`'s.
#[inline(always)]
unsafe fn transform_filter_gradients(p: *const f32, [m, c]: [usize; 2], o: usize, dw: *mut f32) {
    let mut rows = [[[0.0_f32; LANES]; 3]; 6];
    let mut out = [[[0.0_f32; LANES]; 3]; 3];
    for channels in (0..c).step_by(LANES) {
        let lanes = LANES.min(c - channels);
        let at = p.add(o * c + channels);
        // Gᵀ·p along the rows, then ·G along the columns.
        for (r, row) in rows.iter_mut().enumerate() {
            let points: [*const f32; 6] = std::array::from_fn(|s| at.add((r * 6 + s) * m * c));
            across_lanes(lanes, filter_gradient_1d, |s, l| *points[s].add(l), |s, l, value| row[s][l] = value);
        }
        for s in 0..3 {
            across_lanes(lanes, filter_gradient_1d, |r, l| rows[r][s][l], |r, l, value| out[r][s][l] = value);
        }
        for l in 0..lanes {
            let filter = dw.add((o * c + channels + l) * 9);
            for (r, row) in out.iter().enumerate() {
                for (s, values) in row.iter().enumerate() {
                    *filter.add(r * 3 + s) = values[l];
                }
            }
        }
    }
}

for_this_cpu!(
    /// [`transform_gradients`] for this CPU.
    unsafe fn gradients(tiling: &Tiling, gradient: *const f32, rows: [usize; 2], first: usize, count: usize, e: *mut f32, block: usize) = transform_gradients
);
for_this_cpu!(
    /// [`transform_filter_gradients`] for this CPU.
    unsafe fn filter_gradients(p: *const f32, shape: [usize; 2], o: usize, dw: *mut f32) = transform_filter_gradients
);

/// Whether the weight gradient of `n` images' `[ho, wo]` outputs by Winograd pays: at least
/// 16 tiles (its transforms of the products, M·C·36 values, against the 6.75·M·C
/// multiply-adds it saves per tile), and at most a tenth of the tiles' points outside the
/// output (the mask head's 14×14 outputs, 44% of them in partial tiles, measured slower).
pub fn pays_for_weight_gradient(n: usize, [ho, wo]: [usize; 2]) -> bool {
    let tiles = ho.div_ceil(4) * wo.div_ceil(4);
    n * tiles >= 16 && 10 * ho * wo >= 9 * 16 * tiles
}

/// The weight gradient [M, C, 3, 3] of a 3×3 stride-1 convolution of the input `x` with
/// `padding`'s zeros around it, [N, C, Ho + 2, Wo + 2] so padded, from its output gradient
/// `grad` [N, M, Ho, Wg ≥ Wo] (both any strides): dW = Gᵀ·P·G with, for each point ξ, P[ξ] = Σ over the tiles of
/// (A·e·Aᵀ)[ξ]·(Bᵀ·d·B)[ξ], the forward identity transposed (Lavin and Gray): 36 products of
/// M×C over the tiles where the window products take 9 over every position.
///
/// # Safety
/// The descriptors describe live buffers of those shapes.
pub(super) unsafe fn weight_gradient(
    x: &MemRef<f32, 4>,
    padding: Padding,
    grad: &MemRef<f32, 4>,
    [ho, wo]: [usize; 2],
) -> MemRef<f32, 4> {
    let ([n, c, hp, wp], [_, m, hg, wg]) = (padded_shape(x, padding), grad.shape());
    let (x, gradient) = (channels_last(x, padding), channels_last(grad, [0; 4]));
    weight_gradient_laid_out(&x, [n, hp, wp, c], &gradient, [hg, wg, m], [0, 0], [ho, wo])
}

/// [`weight_gradient`] of the input and the output gradient laid out channels-last
/// ([`channels_last`]): `x` [N, Hp, Wp, C] with its zeros, `gradient` [N, Hg, Wg, M] holding
/// the [Ho, Wo] output gradient at `corner` (its top and left padding).
///
/// # Safety
/// The slices hold those shapes; `corner` and [Ho, Wo] lie within [Hg, Wg].
unsafe fn weight_gradient_laid_out(
    x: &[f32],
    [n, hp, wp, c]: [usize; 4],
    gradient: &[f32],
    [hg, wg, m]: [usize; 3],
    [top, left]: [usize; 2],
    [ho, wo]: [usize; 2],
) -> MemRef<f32, 4> {
    let tiling = Tiling {
        x: x.as_ptr() as usize,
        input: [n, hp, wp, c],
        y: 0,
        output: [n, m, ho, wo],
        tiles: [ho.div_ceil(4), wo.div_ceil(4)],
        epilogue: Epilogue::default(),
    };
    let tiles = n * tiling.tiles[0] * tiling.tiles[1];
    // Every element of `v`, `e`, `p` and `dw` is written below.
    let (mut v, mut e, mut p) = (
        Vec::<f32>::with_capacity(POINTS * tiles * c),
        Vec::<f32>::with_capacity(POINTS * tiles * m),
        Vec::<f32>::with_capacity(POINTS * m * c),
    );
    let (v_base, e_base, p_base) = (v.as_mut_ptr() as usize, e.as_mut_ptr() as usize, p.as_mut_ptr() as usize);
    let gradient_base = gradient.as_ptr().add((top * wg + left) * m) as usize;
    use rayon::prelude::*;
    const CHUNK: usize = 16;
    // SAFETY (all three loops): each task writes its own tiles, points or output channels.
    (0..tiles.div_ceil(CHUNK)).into_par_iter().for_each(|chunk| {
        let (first, count) = (chunk * CHUNK, CHUNK.min(tiles - chunk * CHUNK));
        inputs(&tiling, first, count, (v_base as *mut f32).add(first * c), tiles);
        gradients(
            &tiling,
            gradient_base as *const f32,
            [hg, wg],
            first,
            count,
            (e_base as *mut f32).add(first * m),
            tiles,
        );
    });
    v.set_len(POINTS * tiles * c);
    e.set_len(POINTS * tiles * m);
    // Per point: P [M, C] = E [tiles, M]ᵀ·V [tiles, C].
    (0..POINTS).into_par_iter().for_each(|point| {
        product(
            [m, c, tiles],
            Matrix::new((p_base as *const f32).add(point * m * c), c as isize, 1),
            Matrix::new((e_base as *const f32).add(point * tiles * m), 1, m as isize),
            Matrix::new((v_base as *const f32).add(point * tiles * c), c as isize, 1),
            false,
            gemm::Parallelism::None,
        )
    });
    p.set_len(POINTS * m * c);
    let dw = MemRef::<f32, 4>::allocate([m, c, 3, 3]);
    let dw_base = dw.aligned as usize;
    (0..m).into_par_iter().for_each(|o| filter_gradients(p_base as *const f32, [m, c], o, dw_base as *mut f32));
    dw
}

/// `x`'s shape [N, C, H, W] with `padding`'s zeros around each image.
fn padded_shape(x: &MemRef<f32, 4>, [top, left, bottom, right]: Padding) -> [usize; 4] {
    let [n, c, h, w] = x.shape();
    [n, c, h + top + bottom, w + left + right]
}

/// A convolution entry point's settings, `[relu]`: 1 for a ReLU after the sums; `None` (the
/// error recorded) when they are not.
unsafe fn relu_of(name: &str, settings: &MemRef<i64, 1>) -> Option<bool> {
    match settings.elements()[..] {
        [relu @ (0 | 1)] => Some(relu == 1),
        ref other => {
            super::set_error(format!("{name}: settings {other:?} are not [relu]"));
            None
        }
    }
}

/// A Winograd entry point's arguments, checked: the input laid out, the epilogue, and the
/// residual's elements, contiguous, which the epilogue reads.
struct Checked<'a> {
    x: std::borrow::Cow<'a, [f32]>,
    epilogue: Epilogue,
    _residual: std::borrow::Cow<'a, [f32]>,
}

/// Checks the arguments of an entry point convolving `x` (laid out channels-last with its
/// zeros, [N, Hp, Wp, C]) with filters for `c` channels into `m` (`filters_fit`: whether they
/// are 3×3): `settings` ([`relu_of`]), `bias` [M] or empty, `residual` of the output's shape
/// or empty. The output's shape is the error (the message recorded) when they do not fit.
unsafe fn checked<'a>(
    name: &str,
    x: &'a MemRef<f32, 4>,
    [c, m]: [usize; 2],
    filters_fit: bool,
    settings: &MemRef<i64, 1>,
    bias: &MemRef<f32, 1>,
    residual: &'a MemRef<f32, 4>,
) -> Result<Checked<'a>, [usize; 4]> {
    let relu = relu_of(name, settings);
    let [n, hp, wp, x_c] = x.shape();
    let output = [n, m, hp.saturating_sub(2), wp.saturating_sub(2)];
    let Some(relu) = relu.filter(|_| filters_fit && fits(name, [n, x_c, hp, wp], c)) else { return Err(output) };
    let [bias_size] = bias.shape();
    let residual_values = residual.elements();
    let residual_given = residual.shape() == output;
    if (bias_size != 0 && bias_size != m) || (!residual_given && !residual_values.is_empty()) {
        super::set_error(format!(
            "{name}: bias [{bias_size}] or residual {:?} do not fit the output {output:?}",
            residual.shape()
        ));
        return Err(output);
    }
    let epilogue = Epilogue {
        bias: if bias_size == 0 { 0 } else { bias.aligned.wrapping_offset(bias.offset as isize) as usize },
        residual: if residual_given { residual_values.as_ptr() as usize } else { 0 },
        relu,
    };
    Ok(Checked { x: x.elements(), epilogue, _residual: residual_values })
}

/// Checks the shapes of a Winograd convolution of the padded input `[n, c, hp, wp]`; false
/// (the error recorded) when they do not fit or the products must run on a device.
fn fits(name: &str, [n, c, hp, wp]: [usize; 4], filters_c: usize) -> bool {
    if on_device(name) {
        return false;
    }
    if c != filters_c || hp < 3 || wp < 3 {
        super::set_error(format!(
            "{name}: filters for {filters_c} channels against the padded input [{n}, {c}, {hp}, {wp}]"
        ));
        return false;
    }
    true
}

/// A 3×3 stride-1 convolution of the input laid out channels-last with its zeros, `x`
/// [N, Hp, Wp, C] ([`_mlir_ciface_mrc_channels_last`]), by the filters transformed when the
/// weights loaded, `u` [36, C, M] ([`transform_filters`]), plus `bias` [M] and `residual`
/// [N, M, Ho, Wo] (each empty for none), then a ReLU where `settings` (`[relu]`) say so: the
/// result [N, M, Hp − 2, Wp − 2]. The sums are written while the output is transformed, so
/// generated code does not read the output again.
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_conv_winograd(
    out: *mut MemRef<f32, 4>,
    u: *const MemRef<f32, 3>,
    x: *const MemRef<f32, 4>,
    settings: *const MemRef<i64, 1>,
    bias: *const MemRef<f32, 1>,
    residual: *const MemRef<f32, 4>,
) {
    let (u, x) = (&*u, &*x);
    let [points, c, m] = u.shape();
    let filters = || u.elements();
    *out = checked_convolution("mrc_conv_winograd", x, [c, m], points == POINTS, (&*settings, &*bias, &*residual), filters);
}

/// [`_mlir_ciface_mrc_conv_winograd`] with the filters as they are, `w` [M, C, 3, 3],
/// transformed on each call (weights that change: a training step's).
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_conv_winograd_filters(
    out: *mut MemRef<f32, 4>,
    w: *const MemRef<f32, 4>,
    x: *const MemRef<f32, 4>,
    settings: *const MemRef<i64, 1>,
    bias: *const MemRef<f32, 1>,
    residual: *const MemRef<f32, 4>,
) {
    let (w, x) = (&*w, &*x);
    let [m, c, kh, kw] = w.shape();
    let filters = || std::borrow::Cow::Owned(transform_filters(&w.elements(), m, c));
    *out = checked_convolution("mrc_conv_winograd_filters", x, [c, m], [kh, kw] == [3, 3], (&*settings, &*bias, &*residual), filters);
}

/// A Winograd entry point's convolution of `x` by the transformed `filters`, once its
/// arguments are [`checked`]; an uninitialized output (the error recorded) when they do not fit.
///
/// # Safety
/// The descriptors must describe live buffers.
unsafe fn checked_convolution<'f>(
    name: &str,
    x: &MemRef<f32, 4>,
    [c, m]: [usize; 2],
    filters_fit: bool,
    (settings, bias, residual): (&MemRef<i64, 1>, &MemRef<f32, 1>, &MemRef<f32, 4>),
    filters: impl FnOnce() -> std::borrow::Cow<'f, [f32]>,
) -> MemRef<f32, 4> {
    match checked(name, x, [c, m], filters_fit, settings, bias, residual) {
        Ok(call) => convolve(&filters(), m, &call.x, x.shape(), call.epilogue),
        Err(output) => MemRef::allocate(output),
    }
}

/// The weight gradient [M, C, 3, 3] of a 3×3 stride-1 convolution from its input laid out
/// channels-last with its zeros, `x` [N, Ho + 2, Wo + 2, C], and its output gradient laid out
/// channels-last, `grad` [N, Ho + top + bottom, Wo + left + right, M] with `settings`
/// `[top, left, bottom, right]` zeros around it (as the input gradient's convolution reads it:
/// one layout serves both). By Winograd's transforms ([`weight_gradient`]).
///
/// # Safety
/// The descriptors must describe live buffers; `out` receives a new one.
#[no_mangle]
pub unsafe extern "C" fn _mlir_ciface_mrc_conv_winograd_weight_grad(
    out: *mut MemRef<f32, 4>,
    x: *const MemRef<f32, 4>,
    grad: *const MemRef<f32, 4>,
    settings: *const MemRef<i64, 1>,
) {
    const NAME: &str = "mrc_conv_winograd_weight_grad";
    let (x, grad) = (&*x, &*grad);
    let ([n, hp, wp, c], [n2, hg, wg, m]) = (x.shape(), grad.shape());
    let Some([top, left, bottom, right]) = padding_of(&(*settings).elements(), NAME) else {
        *out = MemRef::allocate([m, c, 3, 3]);
        return;
    };
    let ([ho, wo], [hg_inner, wg_inner]) = (
        [hp.saturating_sub(2), wp.saturating_sub(2)],
        [hg.saturating_sub(top + bottom), wg.saturating_sub(left + right)],
    );
    if n != n2 || hp < 3 || wp < 3 || [ho, wo] != [hg_inner, wg_inner] || top + bottom > hg || left + right > wg {
        super::set_error(format!(
            "{NAME}: input [{n}, {hp}, {wp}, {c}] and gradient [{n2}, {hg}, {wg}, {m}] padded by {:?}",
            [top, left, bottom, right]
        ));
        *out = MemRef::allocate([m, c, 3, 3]);
        return;
    }
    if on_device(NAME) {
        *out = MemRef::allocate([m, c, 3, 3]);
        return;
    }
    *out =
        weight_gradient_laid_out(&x.elements(), [n, hp, wp, c], &grad.elements(), [hg, wg, m], [top, left], [ho, wo]);
}

#[cfg(test)]
mod tests {
    use super::super::window_products::tests::direct;
    use super::*;

    pub(super) fn values(count: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    pub(super) fn relative_error(a: &[f32], b: &[f32]) -> f64 {
        let difference: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (difference / norm).sqrt()
    }

    /// The weight gradient by Winograd equals Σ g[b, o, r, s]·x[b, ch, r + i, s + j] (in f64)
    /// within ‖dW − dW_ref‖₂ ≤ 1e-4·‖dW_ref‖₂: partial tiles at both edges, channels that are
    /// not a multiple of the lanes, an output gradient wider than the output (as the window
    /// products take it), inputs padded by the call or not, the mask head's and layer1's
    /// shapes.
    #[test]
    fn weight_gradient_equals_the_direct_sum() {
        let cases = [
            ((2, 3, 9, 11, 5), [0; 4]),
            ((3, 17, 23, 30, 7), [2, 0, 0, 1]),
            ((8, 64, 16, 16, 64), [1; 4]),
            ((1, 64, 34, 27, 128), [1; 4]),
        ];
        for ((n, c, hp, wp, m), padding) in cases {
            let (ho, wo, wg) = (hp - 2, wp - 2, wp);
            let (h, w) = (hp - padding[0] - padding[2], wp - padding[1] - padding[3]);
            let inner = values(n * c * h * w, 5);
            // The input as the convolution reads it, zeros around.
            let mut x = vec![0.0; n * c * hp * wp];
            for (row, values) in inner.chunks(w).enumerate() {
                let start = ((row / h) * hp + padding[0] + row % h) * wp + padding[1];
                x[start..start + w].copy_from_slice(values);
            }
            let g = values(n * m * ho * wo, 6);
            let mut g_wide = vec![0.0; n * m * ho * wg];
            for (row, values) in g.chunks(wo).enumerate() {
                g_wide[row * wg..row * wg + wo].copy_from_slice(values);
            }
            let dw = unsafe {
                weight_gradient(
                    &MemRef::owned(&inner, [n, c, h, w]),
                    padding,
                    &MemRef::owned(&g_wide, [n, m, ho, wg]),
                    [ho, wo],
                )
            };
            assert_eq!(dw.shape(), [m, c, 3, 3]);
            let mut expected = vec![0.0_f32; m * c * 9];
            for (at, value) in expected.iter_mut().enumerate() {
                let (o, ch, i, j) = (at / (c * 9), at / 9 % c, at / 3 % 3, at % 3);
                let mut sum = 0.0_f64;
                for b in 0..n {
                    for r in 0..ho {
                        for s in 0..wo {
                            sum += f64::from(g[((b * m + o) * ho + r) * wo + s])
                                * f64::from(x[((b * c + ch) * hp + r + i) * wp + s + j]);
                        }
                    }
                }
                *value = sum as f32;
            }
            let error = relative_error(&unsafe { dw.elements() }, &expected);
            assert!(error <= 1e-4, "[{n}, {c}, {hp}, {wp}] → {m}: relative error {error:e}");

            // From the layouts: the input's with its padding, the gradient's with zeros around
            // it, as the input gradient's convolution reads it (uneven, to place its corner).
            let (x_laid_out, grad_padding) = (laid_out(&MemRef::owned(&inner, [n, c, h, w]), padding), [1, 2, 0, 1]);
            let grad_laid_out = laid_out(&MemRef::owned(&g, [n, m, ho, wo]), grad_padding);
            let (settings, mut dw) = (
                MemRef::<i64, 1>::owned(&grad_padding.map(|size| size as i64), [4]),
                MemRef::<f32, 4>::allocate([0; 4]),
            );
            unsafe { _mlir_ciface_mrc_conv_winograd_weight_grad(&mut dw, &x_laid_out, &grad_laid_out, &settings) };
            let error = relative_error(&unsafe { dw.elements() }, &expected);
            assert!(error <= 1e-4, "laid out, [{n}, {c}, {hp}, {wp}] → {m}: relative error {error:e}");
        }
    }

    /// `x` [N, C, H, W] with `padding` [top, left, bottom, right] zeros around each image.
    pub(super) fn pad(x: &[f32], [n, c, h, w]: [usize; 4], [top, left, bottom, right]: [usize; 4]) -> Vec<f32> {
        let (hp, wp) = (h + top + bottom, w + left + right);
        let mut out = vec![0.0; n * c * hp * wp];
        for (row, values) in x.chunks(w).enumerate() {
            let (plane, y) = (row / h, row % h);
            let start = (plane * hp + top + y) * wp + left;
            out[start..start + w].copy_from_slice(values);
        }
        out
    }

    /// No bias, no residual: empty descriptors.
    pub(super) fn nothing_added() -> (MemRef<f32, 1>, MemRef<f32, 4>) {
        (MemRef::allocate([0]), MemRef::allocate([0, 0, 0, 0]))
    }

    /// Both entry points equal the direct convolution of the padded input, plus the bias and
    /// the residual where given, then ReLU where asked, within ‖y − y_ref‖₂ ≤ 1e-4·‖y_ref‖₂:
    /// on sizes with partial tiles at both edges and several blocks, no padding, even and
    /// uneven padding, a view with strided rows, and one of R50-FPN's shapes (256 channels in
    /// and out).
    #[test]
    fn winograd_equals_the_direct_convolution() {
        let cases = [
            ([2, 3, 9, 11], 5, [0, 0, 0, 0], false),
            ([1, 8, 4, 4], 2, [1, 1, 1, 1], true),
            ([3, 16, 21, 29], 7, [2, 0, 0, 1], true),
            ([1, 256, 32, 25], 256, [1, 1, 1, 1], false),
        ];
        for ([n, c, h, w], m, padding, epilogue) in cases {
            let x = values(n * c * h * w, 1);
            let w_values = values(m * c * 9, 2);
            let [hp, wp] = [h + padding[0] + padding[2], w + padding[1] + padding[3]];
            let (mut expected, [ho, wo]) =
                direct(&pad(&x, [n, c, h, w], padding), [n, c, hp, wp], &w_values, [m, 3, 3], [1, 1]);
            let (bias, residual) = if epilogue {
                let (bias, residual) = (values(m, 5), values(n * m * ho * wo, 6));
                for (i, value) in expected.iter_mut().enumerate() {
                    *value = (*value + bias[i / (ho * wo) % m] + residual[i]).max(0.0);
                }
                (MemRef::owned(&bias, [m]), MemRef::owned(&residual, [n, m, ho, wo]))
            } else {
                nothing_added()
            };
            let x_ref = laid_out(&MemRef::<f32, 4>::owned(&x, [n, c, h, w]), padding);
            let settings = MemRef::<i64, 1>::owned(&[epilogue as i64], [1]);
            let u = transform_filters(&w_values, m, c);
            let u_ref = MemRef::<f32, 3>::owned(&u, [POINTS, c, m]);
            let mut y = MemRef::<f32, 4>::allocate([0, 0, 0, 0]);
            unsafe { _mlir_ciface_mrc_conv_winograd(&mut y, &u_ref, &x_ref, &settings, &bias, &residual) };
            assert_eq!(y.shape(), [n, m, ho, wo]);
            let error = relative_error(&unsafe { y.elements() }, &expected);
            let case = format!("[{n}, {c}, {h}, {w}] padded by {padding:?} → {m}, epilogue {epilogue}");
            assert!(error <= 1e-4, "{case}: relative error {error:e}");

            // The filters as they are, and the input as a view whose rows are 2 elements longer.
            let wide: Vec<f32> = x.chunks(w).flat_map(|row| row.iter().copied().chain([f32::NAN; 2])).collect();
            let mut view = MemRef::<f32, 4>::borrowed(&wide, [n, c, h, w + 2]);
            view.sizes[3] = w as i64;
            let w_ref = MemRef::<f32, 4>::owned(&w_values, [m, c, 3, 3]);
            let mut y_filters = MemRef::<f32, 4>::allocate([0, 0, 0, 0]);
            unsafe {
                _mlir_ciface_mrc_conv_winograd_filters(
                    &mut y_filters,
                    &w_ref,
                    &laid_out(&view, padding),
                    &settings,
                    &bias,
                    &residual,
                )
            };
            assert_eq!(y_filters.shape(), [n, m, ho, wo]);
            let error = relative_error(&unsafe { y_filters.elements() }, &expected);
            assert!(error <= 1e-4, "filters as they are, {case}: relative error {error:e}");
        }
    }

    /// `x` [N, C, H, W] laid out channels-last with `padding` around it, by the entry point.
    pub(super) fn laid_out(x: &MemRef<f32, 4>, padding: [usize; 4]) -> MemRef<f32, 4> {
        let settings = MemRef::<i64, 1>::owned(&padding.map(|size| size as i64), [4]);
        let mut out = MemRef::<f32, 4>::allocate([0; 4]);
        unsafe { _mlir_ciface_mrc_channels_last(&mut out, x, &settings) };
        out
    }

    /// Settings that are not `[relu]`, and a bias that does not fit, are errors, not reads past
    /// their end.
    #[test]
    fn settings_and_biases_that_do_not_fit_are_refused() {
        let x = values(2 * 8 * 8, 1);
        let u = transform_filters(&values(2 * 2 * 9, 2), 2, 2);
        let (u, x) = (MemRef::owned(&u, [POINTS, 2, 2]), MemRef::owned(&x, [1, 8, 8, 2]));
        let (nothing, residual) = nothing_added();
        let mut y = MemRef::<f32, 4>::allocate([0, 0, 0, 0]);
        unsafe { _mlir_ciface_mrc_conv_winograd(&mut y, &u, &x, &MemRef::owned(&[1, 1, 1], [3]), &nothing, &residual) };
        let error = super::super::take_error().expect("an error recorded");
        assert!(error.contains("mrc_conv_winograd: settings [1, 1, 1] are not"), "{error}");
        let (settings, bias) = (MemRef::owned(&[0], [1]), MemRef::owned(&[0.5; 3], [3]));
        unsafe { _mlir_ciface_mrc_conv_winograd(&mut y, &u, &x, &settings, &bias, &residual) };
        let error = super::super::take_error().expect("an error recorded");
        assert!(error.contains("bias [3] or residual [0, 0, 0, 0] do not fit the output [1, 2, 6, 6]"), "{error}");
    }
}

/// The bar on R50-FPN's own shapes (an 800×1066 image): every 3×3 stride-1 layer's
/// channels and feature-map size, against the window products (checked equal to the direct
/// convolution in `window_products`).
#[cfg(test)]
mod r50_layers {
    use super::super::window_products::_mlir_ciface_mrc_conv_windows;
    use super::tests::{laid_out, nothing_added, pad, relative_error, values};
    use super::*;

    #[test]
    fn winograd_is_within_1e_4_on_every_r50_layer_shape() {
        // (images, channels in = out, height, width): layer1..layer4's 3×3 convolutions, the
        // FPN's and the RPN's on P2 (the largest level), the mask head's on 100 RoIs.
        for (n, c, h, w) in [
            (1, 64, 200, 272),
            (1, 128, 100, 136),
            (1, 256, 50, 68),
            (1, 512, 25, 34),
            (1, 256, 200, 272),
            (100, 256, 14, 14),
        ] {
            let x = values(n * c * h * w, 3);
            // He-initialized filters, as trained ones are scaled.
            let scale = (2.0 / (c * 9) as f32).sqrt();
            let weights: Vec<f32> = values(c * c * 9, 4).iter().map(|v| v * scale).collect();
            let u = transform_filters(&weights, c, c);
            let mut y = MemRef::<f32, 4>::allocate([0, 0, 0, 0]);
            let (x_ref, settings) =
                (laid_out(&MemRef::<f32, 4>::owned(&x, [n, c, h, w]), [1; 4]), MemRef::<i64, 1>::owned(&[0], [1]));
            let (bias, residual) = nothing_added();
            unsafe {
                _mlir_ciface_mrc_conv_winograd(
                    &mut y,
                    &MemRef::owned(&u, [POINTS, c, c]),
                    &x_ref,
                    &settings,
                    &bias,
                    &residual,
                )
            };
            let mut reference = MemRef::<f32, 4>::allocate([0, 0, 0, 0]);
            let window = MemRef::<i64, 1>::owned(&[3, 3, 1, 1], [4]);
            let padded = MemRef::<f32, 4>::owned(&pad(&x, [n, c, h, w], [1; 4]), [n, c, h + 2, w + 2]);
            unsafe {
                _mlir_ciface_mrc_conv_windows(&mut reference, &MemRef::owned(&weights, [c, c * 9]), &padded, &window)
            };
            // The reference lies on the padded width: its first w columns of each row.
            let grid = unsafe { reference.elements() }.into_owned();
            let expected: Vec<f32> = grid.chunks(w + 2).flat_map(|row| row[..w].to_vec()).collect();
            let error = relative_error(&unsafe { y.elements() }, &expected);
            assert!(error <= 1e-4, "[{n}, {c}, {h}, {w}]: relative error {error:e}");
        }
    }
}
