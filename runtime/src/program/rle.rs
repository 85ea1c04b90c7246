//! COCO run-length encoding of binary masks, bit-for-bit as pycocotools' `mask.encode`.
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
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        let expected = u64::from(height) * u64::from(width);
        if total != expected {
            return Err(RleError::WrongTotal { total, expected });
        }
        Ok(Rle { height, width, counts })
    }
}
