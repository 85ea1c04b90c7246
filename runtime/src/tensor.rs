//! A borrowed NCHW float32 feature map: the layout every built-in reads.

use crate::error::{shape_err, Result};

/// A view of a contiguous `[n, c, h, w]` float32 buffer.
#[derive(Clone, Copy, Debug)]
pub struct FeatureMap<'a> {
    pub data: &'a [f32],
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl<'a> FeatureMap<'a> {
    /// Checks that `data` holds exactly `n·c·h·w` values.
    pub fn new(data: &'a [f32], shape: [usize; 4]) -> Result<Self> {
        let [n, c, h, w] = shape;
        let len = n.checked_mul(c).and_then(|x| x.checked_mul(h)).and_then(|x| x.checked_mul(w));
        if len != Some(data.len()) {
            return shape_err(
                "feature_map",
                format!("{} values for shape [{n}, {c}, {h}, {w}]", data.len()),
            );
        }
        Ok(FeatureMap { data, n, c, h, w })
    }

    /// The `h·w` plane of image `b`, channel `ch`.
    pub fn plane(&self, b: usize, ch: usize) -> &'a [f32] {
        let hw = self.h * self.w;
        let start = (b * self.c + ch) * hw;
        &self.data[start..start + hw]
    }
}

/// Reinterprets a flat buffer as rows of `K` values (boxes `[.., 4]`, RoIs `[.., 5]`).
pub fn rows<'a, const K: usize>(op: &'static str, flat: &'a [f32]) -> Result<&'a [[f32; K]]> {
    let (rows, rest) = flat.as_chunks::<K>();
    if !rest.is_empty() {
        return shape_err(op, format!("{} values is not a multiple of {K}", flat.len()));
    }
    Ok(rows)
}
