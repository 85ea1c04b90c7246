//! Finding the images to process and decoding them.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, RgbImage};

/// File extensions taken from directories (compared without case). Files named on the command
/// line are decoded whatever their name, by content.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"];

/// The images named by the command line, in processing order, and the inputs that could not be
/// listed, each with the reason.
#[derive(Debug, Default)]
pub struct Collected {
    pub images: Vec<PathBuf>,
    pub failures: Vec<(PathBuf, String)>,
}

/// Expands the inputs: a file is taken as it is, a directory gives its image files (not
/// recursive) sorted by file name, so that the order and thus the image ids do not depend on
/// the file system.
pub fn collect(inputs: &[PathBuf]) -> Collected {
    let mut collected = Collected::default();
    for input in inputs {
        match std::fs::metadata(input) {
            Ok(meta) if meta.is_dir() => match list_directory(input) {
                Ok(images) => collected.images.extend(images),
                Err(e) => collected.failures.push((input.clone(), format!("cannot list directory: {e}"))),
            },
            Ok(_) => collected.images.push(input.clone()),
            Err(e) => collected.failures.push((input.clone(), e.to_string())),
        }
    }
    collected
}

fn list_directory(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.is_file() && has_image_extension(&path) {
            images.push(path);
        }
    }
    images.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(images)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|known| known.eq_ignore_ascii_case(e)))
}

/// A decoded image and, when `--allow-truncated` let a truncated file through, why it is
/// truncated.
pub struct Decoded {
    pub image: RgbImage,
    pub truncated: Option<String>,
}

/// Decodes an image of any supported format, guessing the format from the content, and
/// converts it to 8-bit RGB (grayscale is replicated, alpha dropped, 16-bit scaled).
///
/// A truncated JPEG or PNG fails, as in PIL ("image file is truncated"), unless
/// `allow_truncated`: then it is decoded as far as its data goes, the rest of the image left as
/// the decoder fills it (grey for JPEG, black for PNG), like PIL's `LOAD_TRUNCATED_IMAGES`.
pub fn decode(path: &Path, allow_truncated: bool) -> Result<Decoded, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let reader = image::ImageReader::new(Cursor::new(&bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let truncated = reader.format().and_then(|format| truncation(&bytes, format));
    let image = match (&truncated, allow_truncated) {
        (Some(reason), false) => {
            return Err(format!(
                "image file is truncated: {reason} (--allow-truncated decodes it as far as the data goes)"
            ))
        }
        // The PNG decoder stops at the missing data; zune-jpeg decodes what there is by itself.
        (Some(_), true) if reader.format() == Some(ImageFormat::Png) => decode_png_rows(&bytes)?,
        _ => reader.decode().map_err(|e| e.to_string())?.into_rgb8(),
    };
    Ok(Decoded { image, truncated })
}

/// Why the data of an image in `format` is truncated, or `None` when it is complete. Only JPEG
/// and PNG are checked: their decoders may not notice (zune-jpeg makes the missing part up), while
/// the BMP and TIFF decoders fail on missing data themselves. Data that is not well-formed enough
/// to tell is left to the decoder, which reports it.
pub fn truncation(bytes: &[u8], format: ImageFormat) -> Option<String> {
    let missing = match format {
        ImageFormat::Jpeg if jpeg_ends_early(bytes) => "the JPEG end-of-image marker",
        ImageFormat::Png if png_ends_early(bytes) => "the PNG IEND chunk",
        _ => return None,
    };
    Some(format!("the file ends after {} bytes, before {missing}", bytes.len()))
}

/// Whether a JPEG stream runs out before its end-of-image marker (0xFFD9). The segments are
/// walked by their lengths, and the entropy-coded data after each start of scan up to the next
/// marker, so that neither the marker of an embedded thumbnail nor data after the image (padding,
/// a motion photo's video) decide.
fn jpeg_ends_early(bytes: &[u8]) -> bool {
    const START_OF_SCAN: u8 = 0xDA;
    const END_OF_IMAGE: u8 = 0xD9;
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut at = 2;
    loop {
        match bytes.get(at) {
            None => return true,
            Some(0xFF) => {}
            // Not a marker where one must be: malformed rather than cut.
            Some(_) => return false,
        }
        // A marker is 0xFF, possibly more 0xFF fill bytes, and its code.
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&code) = bytes.get(at) else { return true };
        at += 1;
        match code {
            END_OF_IMAGE => return false,
            // Markers without a segment: TEM, the restarts, start of image.
            0x01 | 0xD0..=0xD8 => continue,
            // A stuffed zero belongs in entropy-coded data only.
            0x00 => return false,
            _ => {}
        }
        let Some(&[high, low]) = bytes.get(at..at + 2) else { return true };
        let length = usize::from(u16::from_be_bytes([high, low]));
        if length < 2 {
            return false;
        }
        at += length;
        if at > bytes.len() {
            return true;
        }
        if code == START_OF_SCAN {
            // Entropy-coded data: in it 0xFF is followed by a stuffed 0x00 or a restart marker.
            loop {
                let Some(offset) = bytes[at..].iter().position(|&b| b == 0xFF) else { return true };
                at += offset;
                match bytes.get(at + 1) {
                    None => return true,
                    Some(0x00 | 0xD0..=0xD7) => at += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Whether a PNG's chunks run out before its IEND chunk.
fn png_ends_early(bytes: &[u8]) -> bool {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let Some(mut rest) = bytes.strip_prefix(&SIGNATURE) else { return false };
    loop {
        // A chunk: its data's length (4 bytes), type (4), data, CRC (4).
        let Some(&[l0, l1, l2, l3, t0, t1, t2, t3]) = rest.get(..8) else { return true };
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        let Some(chunk) = length.checked_add(12).and_then(|n| rest.get(..n)) else { return true };
        if [t0, t1, t2, t3] == *b"IEND" {
            return false;
        }
        rest = &rest[chunk.len()..];
    }
}

/// Decodes the rows that a truncated PNG holds; the rest of the image stays black.
fn decode_png_rows(bytes: &[u8]) -> Result<RgbImage, String> {
    // The allocation limit of the `image` crate's own decoders, for the image as for the decoder.
    let max_bytes = image::Limits::default().max_alloc.map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: max_bytes });
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let (width, height) = reader.info().size();
    let size = reader.output_buffer_size().filter(|&size| size <= max_bytes);
    let size = size.ok_or_else(|| format!("a {width}x{height} image is too large to decode"))?;
    let mut samples = vec![0; size];
    match reader.next_frame(&mut samples) {
        Ok(_) => {}
        // The rows before the missing data are in `samples`.
        Err(png::DecodingError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    let image = match reader.output_color_type().0 {
        png::ColorType::Grayscale => ImageBuffer::from_raw(width, height, samples).map(DynamicImage::ImageLuma8),
        png::ColorType::GrayscaleAlpha => ImageBuffer::from_raw(width, height, samples).map(DynamicImage::ImageLumaA8),
        png::ColorType::Rgb => ImageBuffer::from_raw(width, height, samples).map(DynamicImage::ImageRgb8),
        png::ColorType::Rgba => ImageBuffer::from_raw(width, height, samples).map(DynamicImage::ImageRgba8),
        // Expanded to RGB by `normalize_to_color8`.
        png::ColorType::Indexed => None,
    };
    image.map(DynamicImage::into_rgb8).ok_or_else(|| "the PNG decoder gave samples of an unexpected layout".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: ImageFormat) -> Vec<u8> {
        let image = RgbImage::from_fn(48, 32, |x, y| image::Rgb([(x * 5) as u8, (y * 7) as u8, ((x * y) % 251) as u8]));
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn complete_files_are_not_truncated() {
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Bmp, ImageFormat::Tiff] {
            assert_eq!(truncation(&encoded(format), format), None, "{format:?}");
        }
    }

    #[test]
    fn every_cut_of_a_jpeg_or_png_is_truncated() {
        for (format, header) in [(ImageFormat::Jpeg, 2), (ImageFormat::Png, 8)] {
            let bytes = encoded(format);
            for end in header..bytes.len() {
                let reason = truncation(&bytes[..end], format);
                assert!(reason.is_some_and(|r| r.contains(&format!("after {end} bytes"))), "{format:?} cut at {end}");
            }
        }
    }

    #[test]
    fn data_after_the_jpeg_end_marker_is_not_truncation() {
        let mut bytes = encoded(ImageFormat::Jpeg);
        bytes.extend([0; 16]);
        assert_eq!(truncation(&bytes, ImageFormat::Jpeg), None, "padding zeros");
        bytes.extend(b"\xff\xd8 a motion photo's video, say");
        assert_eq!(truncation(&bytes, ImageFormat::Jpeg), None, "appended data");
    }

    #[test]
    fn jpeg_cut_and_padded_with_zeros_is_truncated() {
        let mut bytes = encoded(ImageFormat::Jpeg);
        let length = bytes.len();
        bytes.truncate(length * 3 / 4);
        bytes.resize(length, 0);
        assert!(truncation(&bytes, ImageFormat::Jpeg).is_some());
    }

    #[test]
    fn end_marker_inside_a_segment_does_not_end_the_jpeg() {
        let jpeg = encoded(ImageFormat::Jpeg);
        // An APP1 segment (where EXIF thumbnails live) holding an end-of-image marker.
        let payload = b"thumbnail \xff\xd9 end";
        let length = (payload.len() + 2) as u16;
        let mut bytes = jpeg[..2].to_vec();
        bytes.extend([0xFF, 0xE1]);
        bytes.extend(length.to_be_bytes());
        bytes.extend(payload);
        let thumbnail_end = bytes.len() - 4;
        bytes.extend(&jpeg[2..]);
        assert_eq!(truncation(&bytes, ImageFormat::Jpeg), None);
        assert!(truncation(&bytes[..thumbnail_end], ImageFormat::Jpeg).is_some());
        assert!(truncation(&bytes[..bytes.len() - 2], ImageFormat::Jpeg).is_some());
    }

    #[test]
    fn data_of_another_format_is_left_to_the_decoder() {
        assert_eq!(truncation(b"not an image", ImageFormat::Jpeg), None);
        assert_eq!(truncation(b"not an image", ImageFormat::Png), None);
        let bmp = encoded(ImageFormat::Bmp);
        assert_eq!(truncation(&bmp[..bmp.len() / 2], ImageFormat::Bmp), None);
    }

    #[test]
    fn truncated_png_keeps_the_rows_its_data_holds() {
        let bytes = encoded(ImageFormat::Png);
        let whole = image::load_from_memory(&bytes).unwrap().into_rgb8();
        let cut = &bytes[..bytes.len() / 2];
        assert!(image::load_from_memory(cut).is_err(), "the decoder alone fails");
        let partial = decode_png_rows(cut).unwrap();
        assert_eq!(partial.dimensions(), whole.dimensions());
        assert_eq!(partial.get_pixel(3, 0), whole.get_pixel(3, 0), "the first row is decoded");
        assert_eq!(partial.get_pixel(3, 31).0, [0, 0, 0], "the last row is black");
    }
}
