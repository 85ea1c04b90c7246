//! Training batches as torchvision makes them: the references' `RandomHorizontalFlip` on the
//! original image and its targets, then `GeneralizedRCNNTransform` in training mode (normalize,
//! resize by its scale rule, zero-pad to a common size; boxes by `resize_boxes`, masks by
//! `interpolate(mode="nearest")`).

use rand::RngExt;
use rayon::prelude::*;

use super::Result;
use crate::ops::preprocess::{self, ImageU8, Transform};

/// One image of a data set and its targets in the image's own frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// The data set's id of the image.
    pub image_id: i64,
    pub image: image::RgbImage,
    /// `[x1, y1, x2, y2]` in pixels.
    pub boxes: Vec<[f32; 4]>,
    /// Contiguous labels, 1..=K.
    pub labels: Vec<i64>,
    /// `[G, height, width]`, one 0/1 mask per box.
    pub masks: Vec<u8>,
}

/// How a batch is made from examples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchOptions {
    pub transform: Transform,
    /// Probability that an image is flipped horizontally (`train.hflip`; 0 for none).
    pub hflip: f64,
    /// Decides the flips (with the iteration and the image's position in its batch).
    pub seed: u64,
}

/// `N` images and their targets, ready for the training step.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[N, 3, H, W]`, normalized, resized, zero-padded.
    pub images: Vec<f32>,
    pub image_shape: [usize; 4],
    /// Each image's resized `[h, w]` before padding.
    pub image_sizes: Vec<[i64; 2]>,
    /// All images' targets concatenated, image by image, in the resized frame.
    pub gt_boxes: Vec<[f32; 4]>,
    pub gt_labels: Vec<i64>,
    /// The batch index of each target.
    pub gt_image: Vec<i64>,
    /// `[G, H, W]`: each mask in its image's resized frame, zero-padded to the batch's size.
    pub gt_masks: Vec<u8>,
    pub mask_shape: [usize; 3],
    /// The data set's ids of the images.
    pub image_ids: Vec<i64>,
}

impl Example {
    /// The references' `RandomHorizontalFlip` once it has decided to flip: the image and masks
    /// mirrored, boxes `x1' = w − x2`, `x2' = w − x1`.
    pub fn flip_horizontal(&mut self) {
        image::imageops::flip_horizontal_in_place(&mut self.image);
        let w = self.image.width() as usize;
        for b in &mut self.boxes {
            *b = [w as f32 - b[2], b[1], w as f32 - b[0], b[3]];
        }
        if w > 0 {
            self.masks.chunks_exact_mut(w).for_each(<[u8]>::reverse);
        }
    }
}

/// Whether the image at `position` in the batch of `iteration` is flipped: a draw of its own
/// stream, so that the decision does not depend on what else was computed.
pub fn flips(options: &BatchOptions, iteration: u64, position: usize) -> bool {
    const FLIP: u64 = 0x666c_6970;
    options.hflip > 0.0
        && super::stream(options.seed, &[FLIP, iteration, position as u64]).random::<f64>() < options.hflip
}

/// The source index of output index `dst` in torch's legacy nearest resize
/// (`interpolate(mode="nearest")`, scale computed by the kernel as `in/out` in float32).
fn nearest_source(dst: usize, input: usize, output: usize) -> usize {
    if output == input {
        dst
    } else if output == 2 * input {
        dst >> 1
    } else {
        let scale = input as f32 / output as f32;
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    }
}

/// Resizes `count` masks of `[h, w]` to `[oh, ow]` as torch's nearest `interpolate`.
pub fn resize_masks_nearest(masks: &[u8], count: usize, [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Vec<u8> {
    let mut out = vec![0u8; count * oh * ow];
    if out.is_empty() || h * w == 0 {
        return out;
    }
    let columns: Vec<usize> = (0..ow).map(|x| nearest_source(x, w, ow)).collect();
    for (dst, src) in out.chunks_exact_mut(oh * ow).zip(masks.chunks_exact(h * w)) {
        for (y, row) in dst.chunks_exact_mut(ow).enumerate() {
            let source_row = &src[nearest_source(y, h, oh) * w..][..w];
            for (o, &x) in row.iter_mut().zip(&columns) {
                *o = source_row[x];
            }
        }
    }
    out
}

/// The transform's part for one example: its image normalized and resized, its targets resized.
struct Resized {
    planes: Vec<f32>,
    size: [usize; 2],
    boxes: Vec<[f32; 4]>,
    masks: Vec<u8>,
}

fn resize_example(example: &Example, transform: &Transform) -> Result<Resized> {
    let (w, h) = example.image.dimensions();
    let hw = [h as usize, w as usize];
    let image = ImageU8 { data: example.image.as_raw(), height: hw[0], width: hw[1] };
    let (planes, size) = preprocess::normalize_and_resize(&image, transform)?;
    let boxes = preprocess::resize_boxes(&example.boxes, hw, size)?;
    let masks = resize_masks_nearest(&example.masks, example.boxes.len(), hw, size);
    Ok(Resized { planes, size, boxes, masks })
}

/// Makes one batch of `examples` (already flipped where they are to be): the transform's images
/// and their targets, concatenated.
pub fn collate(examples: &[Example], transform: &Transform) -> Result<Batch> {
    for e in examples {
        let (w, h) = e.image.dimensions();
        let expected = e.boxes.len() * h as usize * w as usize;
        if e.labels.len() != e.boxes.len() || e.masks.len() != expected {
            let msg = format!(
                "image {}: {} boxes, {} labels, {} mask bytes for {h}x{w} masks",
                e.image_id,
                e.boxes.len(),
                e.labels.len(),
                e.masks.len()
            );
            return Err(crate::Error::Shape { op: "collate", msg }.into());
        }
    }
    let resized = examples.par_iter().map(|e| resize_example(e, transform)).collect::<Result<Vec<_>>>()?;
    let views: Vec<(&[f32], [usize; 2])> = resized.iter().map(|r| (r.planes.as_slice(), r.size)).collect();
    let images = preprocess::batch_images(&views, 3, transform.size_divisible)?;
    let [_, _, bh, bw] = images.shape;
    let count: usize = resized.iter().map(|r| r.boxes.len()).sum();
    let mut gt_masks = vec![0u8; count * bh * bw];
    let mut planes = gt_masks.chunks_exact_mut((bh * bw).max(1));
    for r in &resized {
        let [h, w] = r.size;
        // The source first: zip must not take a plane it has no mask for.
        for (src, dst) in r.masks.chunks_exact(h * w).zip(planes.by_ref()) {
            for (drow, srow) in dst.chunks_exact_mut(bw).zip(src.chunks_exact(w)) {
                drow[..w].copy_from_slice(srow);
            }
        }
    }
    Ok(Batch {
        images: images.data,
        image_shape: images.shape,
        image_sizes: resized.iter().map(|r| r.size.map(|s| s as i64)).collect(),
        gt_boxes: resized.iter().flat_map(|r| r.boxes.iter().copied()).collect(),
        gt_labels: examples.iter().flat_map(|e| e.labels.iter().copied()).collect(),
        gt_image: examples.iter().enumerate().flat_map(|(i, e)| std::iter::repeat_n(i as i64, e.boxes.len())).collect(),
        gt_masks,
        mask_shape: [count, bh, bw],
        image_ids: examples.iter().map(|e| e.image_id).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Source indices of torch's `nearest_idx`, worked by hand, for sizes that go through each
    /// branch of its rule: equal sizes, doubling, and `floor(dst · (in/out))` in float32 up and
    /// down.
    #[test]
    fn nearest_sources_follow_torch_s_rule() {
        let cases: [(usize, usize, &[usize]); 4] =
            [(4, 4, &[0, 1, 2, 3]), (3, 6, &[0, 0, 1, 1, 2, 2]), (5, 3, &[0, 1, 3]), (4, 5, &[0, 0, 1, 2, 3])];
        for (input, output, expected) in cases {
            let got: Vec<usize> = (0..output).map(|i| nearest_source(i, input, output)).collect();
            assert_eq!(got, expected, "{input} -> {output}");
        }
    }
}
