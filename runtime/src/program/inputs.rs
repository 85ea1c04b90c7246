//! Finding the images to process and decoding them.

use std::path::{Path, PathBuf};

use image::RgbImage;

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

/// Decodes an image of any supported format, guessing the format from the content, and
/// converts it to 8-bit RGB (grayscale is replicated, alpha dropped, 16-bit scaled).
pub fn decode(path: &Path) -> Result<RgbImage, String> {
    let reader =
        image::ImageReader::open(path).map_err(|e| e.to_string())?.with_guessed_format().map_err(|e| e.to_string())?;
    let image = reader.decode().map_err(|e| e.to_string())?;
    Ok(image.into_rgb8())
}
