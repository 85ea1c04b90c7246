//! COCO run-length encoding of binary masks and the operations of pycocotools' `mask` module
//! (`encode`, `decode`, `area`, `toBbox`, `merge`, `iou`, `frPyObjects` for polygons), bit-for-bit
//! as its C code (`maskApi.c`) computes them.
//!
//! COCO reads a mask in column-major (Fortran) order and stores the lengths of alternating runs
//! of zeros and ones, starting with zeros (so the first count is 0 when the first pixel is set).
//! The JSON form compresses the counts into a string, pycocotools' `rleToString`: each count,
//! from the fourth on taken as the difference to the count two places before it, is written as
//! a little-endian sequence of 5-bit groups with a continuation bit (0x20) and the sign in bit
//! 0x10 of the last group, each group offset by 48 into printable ASCII.

/// A binary mask of `height × width` pixels in COCO's uncompressed run-length form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    pub height: u32,
    pub width: u32,
    /// Alternating run lengths, zeros first, over the pixels in column-major order; they add up
    /// to `height * width`.
    pub counts: Vec<u32>,
}

/// Why a compressed COCO RLE string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RleError {
    #[error("RLE counts: character {0:?} at byte {1} is outside '0'..='o'")]
    BadCharacter(char, usize),
    #[error("RLE counts: the string ends inside a count")]
    Truncated,
    #[error("RLE counts: count {index} is {value}, outside 0..=2^32-1")]
    CountOutOfRange { index: usize, value: i64 },
    #[error("RLE counts add up to {total} pixels, the mask has {expected}")]
    WrongTotal { total: u64, expected: u64 },
    #[error("merging masks of sizes {0}x{1} and {2}x{3}")]
    SizeMismatch(u32, u32, u32, u32),
    #[error("merging no masks")]
    NoMasks,
}

impl Rle {
    /// Encodes a row-major `height × width` mask (`mask[y * width + x]`, as images are laid out),
    /// reading it column-major as COCO does.
    ///
    /// # Panics
    /// When `mask.len() != height * width`: the caller builds the mask for these sizes.
    pub fn encode(height: u32, width: u32, mask: &[bool]) -> Rle {
        let (h, w) = (height as usize, width as usize);
        assert_eq!(mask.len(), h * w, "mask length for {height}x{width}");
        let mut counts = Vec::new();
        let mut current = false;
        let mut run = 0u32;
        for x in 0..w {
            for y in 0..h {
                if mask[y * w + x] != current {
                    counts.push(run);
                    current = !current;
                    run = 0;
                }
                run += 1;
            }
        }
        counts.push(run);
        Rle { height, width, counts }
    }

    /// An RLE from its uncompressed counts (pycocotools' `frPyObjects` of a `counts` list, kept
    /// as given, runs of length zero included), which must cover the mask exactly.
    pub fn from_counts(height: u32, width: u32, counts: Vec<u32>) -> Result<Rle, RleError> {
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        let expected = u64::from(height) * u64::from(width);
        if total != expected {
            return Err(RleError::WrongTotal { total, expected });
        }
        Ok(Rle { height, width, counts })
    }

    /// The mask back in row-major order.
    pub fn decode(&self) -> Vec<bool> {
        let (h, w) = (self.height as usize, self.width as usize);
        let mut mask = vec![false; h * w];
        let mut position = 0usize;
        let mut value = false;
        for &count in &self.counts {
            for p in position..position + count as usize {
                if value {
                    mask[(p % h) * w + p / h] = true;
                }
            }
            position += count as usize;
            value = !value;
        }
        mask
    }

    /// Number of set pixels (pycocotools' `area`).
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).map(|&c| u64::from(c)).sum()
    }

    /// The compressed `counts` string of COCO's JSON (pycocotools' `rleToString`).
    pub fn to_coco_string(&self) -> String {
        let mut s = String::new();
        for (i, &count) in self.counts.iter().enumerate() {
            let mut x = i64::from(count);
            if i > 2 {
                x -= i64::from(self.counts[i - 2]);
            }
            loop {
                let mut group = (x & 0x1f) as u8;
                x >>= 5;
                let more = if group & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    group |= 0x20;
                }
                s.push(char::from(group + 48));
                if !more {
                    break;
                }
            }
        }
        s
    }

    /// Parses a compressed `counts` string (pycocotools' `rleFrString`) for a `height × width`
    /// mask, checking what pycocotools does not: the characters, the range of every count and
    /// that the counts cover the mask exactly.
    pub fn from_coco_string(height: u32, width: u32, s: &str) -> Result<Rle, RleError> {
        let mut counts: Vec<u32> = Vec::new();
        let bytes = s.as_bytes();
        let mut p = 0;
        while p < bytes.len() {
            let mut x: i64 = 0;
            let mut shift = 0u32;
            loop {
                let byte = *bytes.get(p).ok_or(RleError::Truncated)?;
                if !(48..=111).contains(&byte) {
                    let c = s[p..].chars().next().unwrap_or(char::REPLACEMENT_CHARACTER);
                    return Err(RleError::BadCharacter(c, p));
                }
                let group = i64::from(byte - 48);
                // Eleven groups already carry 55 bits; a longer count cannot be valid.
                if shift > 50 {
                    return Err(RleError::CountOutOfRange { index: counts.len(), value: x });
                }
                x |= (group & 0x1f) << shift;
                shift += 5;
                p += 1;
                if group & 0x20 == 0 {
                    if group & 0x10 != 0 {
                        x |= -1i64 << shift;
                    }
                    break;
                }
            }
            let index = counts.len();
            if index > 2 {
                x += i64::from(counts[index - 2]);
            }
            let count = u32::try_from(x).map_err(|_| RleError::CountOutOfRange { index, value: x })?;
            counts.push(count);
        }
        Rle::from_counts(height, width, counts)
    }

    /// Rasterizes one polygon `[x1, y1, x2, y2, ...]` (pycocotools' `rleFrPoly`): the boundary
    /// is traced at 5× resolution and a pixel is inside where its centre lies below a crossing
    /// of the boundary at its column. A trailing odd coordinate is ignored, as pycocotools does.
    pub fn from_polygon(xy: &[f64], height: u32, width: u32) -> Rle {
        const SCALE: f64 = 5.0;
        // Vertices on the 5× grid (C's `(int)` truncation), the first repeated at the end.
        let mut vertices: Vec<(i32, i32)> =
            xy.chunks_exact(2).map(|p| ((SCALE * p[0] + 0.5) as i32, (SCALE * p[1] + 0.5) as i32)).collect();
        if let Some(&first) = vertices.first() {
            vertices.push(first);
        }
        // Every grid point along the boundary, each edge walked along its longer axis.
        let mut boundary: Vec<(i32, i32)> = Vec::new();
        for edge in vertices.windows(2) {
            let ((mut xs, mut ys), (mut xe, mut ye)) = (edge[0], edge[1]);
            let (dx, dy) = ((xe - xs).abs(), (ys - ye).abs());
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if flip {
                std::mem::swap(&mut xs, &mut xe);
                std::mem::swap(&mut ys, &mut ye);
            }
            // A zero-length edge gives NaN here, as in C; its one point never reaches the mask.
            let slope = if dx >= dy { f64::from(ye - ys) / f64::from(dx) } else { f64::from(xe - xs) / f64::from(dy) };
            let steps = dx.max(dy);
            for d in 0..=steps {
                let t = if flip { steps - d } else { d };
                let along = (f64::from(if dx >= dy { ys } else { xs }) + slope * f64::from(t) + 0.5) as i32;
                boundary.push(if dx >= dy { (t + xs, along) } else { (along, t + ys) });
            }
        }
        // Where the boundary crosses a pixel column's centre: the first row below the crossing.
        let (h, w) = (i64::from(height), i64::from(width));
        let mut starts: Vec<u32> = Vec::new();
        for pair in boundary.windows(2) {
            let ((u0, v0), (u1, v1)) = (pair[0], pair[1]);
            if u1 == u0 {
                continue;
            }
            let column = (f64::from(if u1 < u0 { u1 } else { u1 - 1 }) + 0.5) / SCALE - 0.5;
            if column.floor() != column || column < 0.0 || column > (w - 1) as f64 {
                continue;
            }
            let row = (f64::from(v0.min(v1)) + 0.5) / SCALE - 0.5;
            let row = row.clamp(0.0, h as f64).ceil();
            starts.push((column as i64 * h + row as i64) as u32);
        }
        starts.push((h * w) as u32);
        starts.sort_unstable();
        // Crossings as run lengths; an empty run joins its neighbours (two crossings cancel).
        let mut previous = 0;
        for start in &mut starts {
            (*start, previous) = (*start - previous, *start);
        }
        let mut counts = vec![starts[0]];
        let mut rest = starts[1..].iter();
        while let Some(&run) = rest.next() {
            if run > 0 {
                counts.push(run);
            } else if let Some(&next) = rest.next() {
                *counts.last_mut().expect("counts starts non-empty") += next;
            }
        }
        Rle { height, width, counts }
    }

    /// The union (or with `intersect` the intersection) of masks of one size (pycocotools'
    /// `merge`); one mask is returned as it is.
    pub fn merge(rles: &[Rle], intersect: bool) -> Result<Rle, RleError> {
        let (first, rest) = rles.split_first().ok_or(RleError::NoMasks)?;
        let mut merged = first.clone();
        for other in rest {
            if (other.height, other.width) != (first.height, first.width) {
                return Err(RleError::SizeMismatch(first.height, first.width, other.height, other.width));
            }
            let mut counts = Vec::new();
            let (mut run, mut value) = (0u32, false);
            for (length, a, b) in Runs::new(&merged, other) {
                let next = if intersect { a && b } else { a || b };
                if next != value {
                    counts.push(run);
                    (run, value) = (0, next);
                }
                run += length;
            }
            counts.push(run);
            merged.counts = counts;
        }
        Ok(merged)
    }

    /// The bounding box `[x, y, width, height]` of the set pixels (pycocotools' `toBbox`),
    /// all zeros for an empty mask. A mask set in two columns that are not contiguous in
    /// column-major order spans all rows, as in pycocotools.
    pub fn to_bbox(&self) -> [f64; 4] {
        let h = self.height;
        let m = self.counts.len() / 2 * 2;
        if m == 0 || h == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye) = (self.width, h, 0u32, 0u32);
        let (mut cc, mut xp) = (0u32, 0u32);
        // u32 wrapping arithmetic, as the C code's `uint`s.
        for (j, &count) in self.counts[..m].iter().enumerate() {
            cc = cc.wrapping_add(count);
            let t = cc.wrapping_sub((j % 2) as u32);
            let (y, x) = (t % h, t / h);
            if j % 2 == 0 {
                xp = x;
            } else if xp < x {
                ys = 0;
                ye = h - 1;
            }
            (xs, xe, ys, ye) = (xs.min(x), xe.max(x), ys.min(y), ye.max(y));
        }
        [
            f64::from(xs),
            f64::from(ys),
            f64::from(xe.wrapping_sub(xs).wrapping_add(1)),
            f64::from(ye.wrapping_sub(ys).wrapping_add(1)),
        ]
    }
}

/// Intersection over union of every detection mask with every ground-truth mask (pycocotools'
/// `iou`), `[detection][ground truth]`. Against a crowd region the union is the detection's
/// area alone (the part of the detection inside the crowd). Masks whose boxes do not overlap
/// get 0 without being compared; masks of different sizes get -1.
pub fn mask_iou(detections: &[&Rle], ground_truth: &[&Rle], iscrowd: &[bool]) -> Vec<Vec<f64>> {
    let detection_boxes: Vec<[f64; 4]> = detections.iter().map(|m| m.to_bbox()).collect();
    let truth_boxes: Vec<[f64; 4]> = ground_truth.iter().map(|m| m.to_bbox()).collect();
    let mut ious = box_iou(&detection_boxes, &truth_boxes, iscrowd);
    for (row, dt) in ious.iter_mut().zip(detections) {
        for ((iou, gt), &crowd) in row.iter_mut().zip(ground_truth).zip(iscrowd) {
            if *iou <= 0.0 {
                continue;
            }
            if (dt.height, dt.width) != (gt.height, gt.width) {
                *iou = -1.0;
                continue;
            }
            let (mut intersection, mut union) = (0u64, 0u64);
            for (length, a, b) in Runs::new(dt, gt) {
                if a || b {
                    union += u64::from(length);
                }
                if a && b {
                    intersection += u64::from(length);
                }
            }
            if intersection == 0 {
                union = 1;
            } else if crowd {
                union = dt.area();
            }
            *iou = intersection as f64 / union as f64;
        }
    }
    ious
}

/// Intersection over union of `[x, y, width, height]` boxes (pycocotools' `bbIou`),
/// `[detection][ground truth]`, with the crowd rule of [`mask_iou`].
pub fn box_iou(detections: &[[f64; 4]], ground_truth: &[[f64; 4]], iscrowd: &[bool]) -> Vec<Vec<f64>> {
    detections
        .iter()
        .map(|d| {
            let detection_area = d[2] * d[3];
            ground_truth
                .iter()
                .zip(iscrowd)
                .map(|(g, &crowd)| {
                    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
                    if w <= 0.0 {
                        return 0.0;
                    }
                    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
                    if h <= 0.0 {
                        return 0.0;
                    }
                    let intersection = w * h;
                    let union = if crowd { detection_area } else { detection_area + g[2] * g[3] - intersection };
                    intersection / union
                })
                .collect()
        })
        .collect()
}

/// Two masks' runs walked together: `(length, set in a, set in b)` over stretches where neither
/// changes (some of length zero, where a mask has an empty run).
struct Runs<'a> {
    a: &'a [u32],
    b: &'a [u32],
    /// Pixels left in the current run of each, and whether that run is of set pixels.
    left: (u32, u32),
    set: (bool, bool),
    done: bool,
}

impl<'a> Runs<'a> {
    fn new(a: &'a Rle, b: &'a Rle) -> Runs<'a> {
        let (a, b) = (&a.counts[..], &b.counts[..]);
        let left = (a.first().copied().unwrap_or(0), b.first().copied().unwrap_or(0));
        Runs { a: a.get(1..).unwrap_or(&[]), b: b.get(1..).unwrap_or(&[]), left, set: (false, false), done: false }
    }
}

impl Iterator for Runs<'_> {
    type Item = (u32, bool, bool);

    fn next(&mut self) -> Option<(u32, bool, bool)> {
        if self.done {
            return None;
        }
        let length = self.left.0.min(self.left.1);
        let item = (length, self.set.0, self.set.1);
        self.left.0 -= length;
        self.left.1 -= length;
        if self.left.0 == 0 {
            if let Some((&next, rest)) = self.a.split_first() {
                (self.left.0, self.a) = (next, rest);
                self.set.0 = !self.set.0;
            }
        }
        if self.left.1 == 0 {
            if let Some((&next, rest)) = self.b.split_first() {
                (self.left.1, self.b) = (next, rest);
                self.set.1 = !self.set.1;
            }
        }
        self.done = self.left.0 + self.left.1 == 0;
        Some(item)
    }
}
