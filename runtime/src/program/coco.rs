//! COCO results JSON, its `.meta.json` sidecar, image ids from an annotation file, and atomic
//! file writing.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::coco::dataset::{Category, Image as ImageInfo};
use crate::coco::mask::Rle;

/// One entry of a COCO results file, as pycocotools' `COCO.loadRes` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEntry {
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Absent for models without a mask head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Segmentation>,
}

impl ResultEntry {
    /// The entry of `detection` in image `image_id` (`height` × `width`), as category
    /// `category_id`, with its binarized `mask`.
    pub fn of(image_id: i64, category_id: i64, detection: &super::Detection, mask: Option<&[bool]>, height: u32, width: u32) -> ResultEntry {
        let [x1, y1, x2, y2] = detection.bbox;
        ResultEntry {
            image_id,
            category_id,
            bbox: [x1, y1, x2 - x1, y2 - y1],
            score: detection.score,
            segmentation: mask.map(|m| Segmentation::from(&Rle::encode(height, width, m))),
        }
    }
}

/// A mask in COCO's compressed RLE form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segmentation {
    /// `[height, width]`.
    pub size: [u32; 2],
    pub counts: String,
}

impl From<&Rle> for Segmentation {
    fn from(rle: &Rle) -> Segmentation {
        Segmentation { size: [rle.height, rle.width], counts: rle.to_coco_string() }
    }
}

/// The sidecar written beside the results: what the ids in the results refer to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub images: Vec<ImageInfo>,
    pub categories: Vec<Category>,
}

/// The sidecar's path: `R.json` gives `R.meta.json`, a name without extension gets
/// `.meta.json` appended.
pub fn meta_path(results: &Path) -> PathBuf {
    results.with_extension("meta.json")
}

/// The images of a COCO annotation file, by file name.
#[derive(Debug)]
pub struct Annotations {
    by_file_name: HashMap<String, AnnotatedImage>,
}

/// What an annotation file says about one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnotatedImage {
    pub id: i64,
    /// The size, when the annotation file gives it (COCO's do).
    pub size: Option<(u32, u32)>,
}

#[derive(Deserialize)]
struct AnnotationFile {
    images: Vec<AnnotationImage>,
}

#[derive(Deserialize)]
struct AnnotationImage {
    id: i64,
    file_name: String,
    height: Option<u32>,
    width: Option<u32>,
}

impl Annotations {
    /// Reads the `images` of an annotation file; the rest (annotations, categories) is skipped.
    pub fn read(path: &Path) -> Result<Annotations, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: AnnotationFile = serde_json::from_slice(&text)
            .map_err(|e| format!("{}: not a COCO annotation file: {e}", path.display()))?;
        let mut by_file_name = HashMap::new();
        for image in file.images {
            let size = image.height.zip(image.width);
            by_file_name.insert(base_name(&image.file_name).to_owned(), AnnotatedImage { id: image.id, size });
        }
        Ok(Annotations { by_file_name })
    }

    /// The image whose file name (without directories, on both sides) is that of `path`.
    pub fn find(&self, path: &Path) -> Option<AnnotatedImage> {
        let name = path.file_name()?.to_str()?;
        self.by_file_name.get(name).copied()
    }
}

fn base_name(file_name: &str) -> &str {
    file_name.rsplit(['/', '\\']).next().unwrap_or(file_name)
}

/// Writes `value` as JSON to `path` through a temporary file in the same directory and a
/// rename, so that readers see the old file or the whole new one, never a partial write.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| format!("{}: {e}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file and a rename (see [`write_json_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write_replacing(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so that
/// readers see the old file or the whole new one. A path that names a device or a pipe
/// (`--json /dev/null`, `/dev/stdout`) is written in place: renaming over it would replace the
/// device with a file, for every program on the machine when it is `/dev/null`.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|metadata| !metadata.is_file() && !metadata.is_dir()) {
        return std::fs::OpenOptions::new().write(true).open(path)?.write_all(bytes);
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let result = written.and_then(|()| std::fs::rename(&temp, path));
    if result.is_err() {
        // The temporary file may not exist if creating it failed; nothing else to clean up.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn writing_a_regular_file_replaces_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        std::fs::write(&path, b"an older and longer content").unwrap();
        write_atomic(&path, b"[]").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"[]");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(names, ["results.json"], "no temporary file is left beside it");
    }

    /// As `--json /dev/null` run as root: the rename would put a file where the device was.
    #[test]
    fn writing_to_a_pipe_keeps_the_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success(), "mkfifo failed");
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_atomic(&fifo, b"[1, 2]").unwrap();
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the pipe was replaced by a file");
        assert_eq!(reader.join().unwrap(), b"[1, 2]");
    }
}
