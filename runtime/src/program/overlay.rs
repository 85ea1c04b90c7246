//! Overlay pictures: masks blended translucently in a per-class colour, box outlines, and a
//! "name 0.93" label above each box, in the built-in 8×8 bitmap font (no font file to ship).

use image::{Rgb, RgbImage};

/// How much of the class colour a masked pixel takes.
const MASK_OPACITY: f32 = 0.45;

/// What the overlay shows of one detection.
pub struct Mark<'a> {
    /// `[x1, y1, x2, y2]` in pixels.
    pub bbox: [f32; 4],
    pub label: i64,
    pub score: f32,
    /// Row-major binary mask of the image's size.
    pub mask: Option<&'a [bool]>,
}

/// Draws the marks on a copy of the image: all masks first, then boxes, then labels, so that no
/// mask hides a box or a label; each in increasing score, so that where labels overlap the
/// best detection's is read.
pub fn render(image: &RgbImage, marks: &[Mark<'_>], class_name: impl Fn(i64) -> String) -> RgbImage {
    let mut marks: Vec<&Mark<'_>> = marks.iter().collect();
    marks.sort_by(|a, b| a.score.total_cmp(&b.score));
    let mut out = image.clone();
    let scale = 1 + out.width().max(out.height()) / 1000;
    for mark in &marks {
        if let Some(mask) = mark.mask {
            blend_mask(&mut out, mask, class_colour(mark.label));
        }
    }
    for mark in &marks {
        draw_box(&mut out, mark.bbox, class_colour(mark.label), scale);
    }
    for mark in &marks {
        let text = format!("{} {:.2}", class_name(mark.label), mark.score);
        draw_label(&mut out, mark.bbox, &text, class_colour(mark.label), scale);
    }
    out
}

/// A colour per class, far apart for neighbouring labels: hues stepped by the golden ratio.
pub fn class_colour(label: i64) -> Rgb<u8> {
    let hue = (label as f64 * 0.618_033_988_749_895).rem_euclid(1.0) * 6.0;
    let (saturation, value) = (0.8, 0.95);
    let sector = hue.floor();
    let f = hue - sector;
    let p = value * (1.0 - saturation);
    let q = value * (1.0 - saturation * f);
    let t = value * (1.0 - saturation * (1.0 - f));
    let (r, g, b) = match sector as u8 {
        0 => (value, t, p),
        1 => (q, value, p),
        2 => (p, value, t),
        3 => (p, q, value),
        4 => (t, p, value),
        _ => (value, p, q),
    };
    Rgb([(r * 255.0).round() as u8, (g * 255.0).round() as u8, (b * 255.0).round() as u8])
}

fn blend_mask(image: &mut RgbImage, mask: &[bool], colour: Rgb<u8>) {
    for (pixel, &set) in image.pixels_mut().zip(mask) {
        if set {
            for (channel, &c) in pixel.0.iter_mut().zip(&colour.0) {
                *channel = (f32::from(*channel) * (1.0 - MASK_OPACITY) + f32::from(c) * MASK_OPACITY).round() as u8;
            }
        }
    }
}

/// The box's pixel rectangle `(x1, y1, x2, y2)`, inclusive and clipped to the image; `None`
/// when it lies wholly outside.
fn pixel_rect(image: &RgbImage, bbox: [f32; 4]) -> Option<(u32, u32, u32, u32)> {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let x1 = bbox[0].round().max(0.0);
    let y1 = bbox[1].round().max(0.0);
    let x2 = (bbox[2].round() - 1.0).min(w - 1.0);
    let y2 = (bbox[3].round() - 1.0).min(h - 1.0);
    (x1 <= x2 && y1 <= y2).then_some((x1 as u32, y1 as u32, x2 as u32, y2 as u32))
}

fn draw_box(image: &mut RgbImage, bbox: [f32; 4], colour: Rgb<u8>, thickness: u32) {
    let Some((x1, y1, x2, y2)) = pixel_rect(image, bbox) else { return };
    for t in 0..thickness {
        let (left, top) = ((x1 + t).min(x2), (y1 + t).min(y2));
        let (right, bottom) = (x2.saturating_sub(t).max(left), y2.saturating_sub(t).max(top));
        for x in left..=right {
            image.put_pixel(x, top, colour);
            image.put_pixel(x, bottom, colour);
        }
        for y in top..=bottom {
            image.put_pixel(left, y, colour);
            image.put_pixel(right, y, colour);
        }
    }
}

/// Writes the text on a filled background in the class colour, just above the box, or inside
/// its top edge when there is no room above.
fn draw_label(image: &mut RgbImage, bbox: [f32; 4], text: &str, colour: Rgb<u8>, scale: u32) {
    let Some((x1, y1, _, _)) = pixel_rect(image, bbox) else { return };
    let glyph = 8 * scale;
    let pad = scale;
    let label_w = glyph * text.chars().count() as u32 + 2 * pad;
    let label_h = glyph + 2 * pad;
    let top = if y1 >= label_h { y1 - label_h } else { y1 };
    let left = x1.min(image.width().saturating_sub(label_w));
    fill_rect(image, left, top, label_w, label_h, colour);
    let luminance = 0.299 * f32::from(colour[0]) + 0.587 * f32::from(colour[1]) + 0.114 * f32::from(colour[2]);
    let ink = if luminance > 140.0 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) };
    for (i, c) in text.chars().enumerate() {
        draw_glyph(image, left + pad + i as u32 * glyph, top + pad, c, ink, scale);
    }
}

fn fill_rect(image: &mut RgbImage, left: u32, top: u32, width: u32, height: u32, colour: Rgb<u8>) {
    for y in top..(top + height).min(image.height()) {
        for x in left..(left + width).min(image.width()) {
            image.put_pixel(x, y, colour);
        }
    }
}

/// Draws one character of the public-domain 8×8 font of `font8x8` (bit 0 of each row byte is
/// the leftmost pixel); characters outside ASCII are drawn as '?'.
fn draw_glyph(image: &mut RgbImage, left: u32, top: u32, c: char, ink: Rgb<u8>, scale: u32) {
    let code = if c.is_ascii() { c as usize } else { '?' as usize };
    let rows = font8x8::legacy::BASIC_LEGACY[code];
    for (row, bits) in rows.iter().enumerate() {
        for column in 0..8u32 {
            if bits & (1 << column) == 0 {
                continue;
            }
            let (x0, y0) = (left + column * scale, top + row as u32 * scale);
            fill_rect(image, x0, y0, scale, scale, ink);
        }
    }
}
