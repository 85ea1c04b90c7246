//! Training data: COCO-format data sets read as torchvision's detection references read them
//! ([`loader`]), batches made as torchvision's `GeneralizedRCNNTransform` makes them in training
//! mode with the references' horizontal flip ([`batch`]), a loader that prepares them on worker
//! threads ahead of the step ([`prefetch`]), the synthetic shapes set ([`shapes`]), importers of
//! the VIA and labelme formats ([`convert`]) and the `mrc data` command ([`cli`]).

pub mod batch;
pub mod cli;
pub mod convert;
pub mod loader;
pub mod prefetch;
pub mod shapes;

use std::path::PathBuf;

pub use batch::{Batch, BatchOptions, Example};
pub use cli::{data_main, DataCommand};
pub use convert::{convert, ConvertOptions, Format};
pub use loader::{Loader, LoaderOptions, TrainingSet, TrainingSetOptions};
pub use prefetch::Prefetch;
pub use shapes::generate_shapes;

/// Why data could not be read, converted or written. Every variant names the file, and where
/// the problem lies in it, the entry.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file that is not what it should be as a whole (not JSON, the wrong layout).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// One entry of a file is wrong (an image, an annotation, a region, a shape).
    #[error("{}: {entry}: {msg}", path.display())]
    Entry { path: PathBuf, entry: String, msg: String },
    /// An image an annotation file refers to could not be read or does not match its entry.
    #[error("{}: {msg} (image {entry} of {})", image.display(), annotations.display())]
    Image { image: PathBuf, annotations: PathBuf, entry: String, msg: String },
    /// A worker thread failed without an error of its own (a panic).
    #[error("data loader: {0}")]
    Worker(String),
    /// The annotation file was refused as a whole or in one of its entries.
    #[error(transparent)]
    Dataset(#[from] crate::coco::dataset::DatasetError),
    /// The transform refused its arguments.
    #[error(transparent)]
    Transform(#[from] crate::Error),
}

pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    pub(crate) fn entry(path: impl Into<PathBuf>, entry: impl Into<String>, msg: impl Into<String>) -> DataError {
        DataError::Entry { path: path.into(), entry: entry.into(), msg: msg.into() }
    }
}

/// A random stream determined by `seed` and `key` alone (the loader's flips and shuffles, the
/// generator's images), so that any batch or image can be recomputed by itself. The key is
/// folded into the seed by SplitMix64's finalizer, which spreads neighbouring keys apart.
pub(crate) fn stream(seed: u64, key: &[u64]) -> rand_xoshiro::Xoshiro256PlusPlus {
    use rand::SeedableRng;
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let folded = key.iter().fold(mix(seed), |acc, &k| mix(acc.wrapping_add(0x9e37_79b9_7f4a_7c15) ^ k));
    rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(folded)
}

/// A polygon coordinate to two decimals: short JSON, and a number that reads back as the same
/// `f64` (serde_json parses longer fractions to a neighbouring float), so that the polygon
/// written is the one whose mask, `area` and `bbox` were computed.
pub(crate) fn two_decimals(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
