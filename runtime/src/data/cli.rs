//! `mrc data`: the shapes generator and the importers, as subcommands the compiler's command line
//! includes.

use std::path::PathBuf;

use super::convert::{convert, ConvertOptions, Format};
use super::shapes::generate_shapes;

/// Making training data.
#[derive(Clone, Debug, PartialEq, clap::Subcommand)]
pub enum DataCommand {
    /// Generate a synthetic shapes set (256×256 images of 1 to 4 squares, circles and triangles)
    /// in COCO format: DIR/images/NNNNN.png and DIR/annotations.json.
    Shapes {
        /// Number of images.
        #[arg(long)]
        n: usize,
        /// The same seed gives the same files, byte for byte.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output folder (created; an existing one must be empty).
        #[arg(short)]
        o: PathBuf,
    },
    /// Convert VIA or labelme annotations into one COCO annotation file.
    Convert {
        #[arg(long, value_enum)]
        from: Format,
        /// VIA: the annotation or project JSON; labelme: one JSON per image.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The COCO annotation file to write.
        #[arg(short)]
        o: PathBuf,
        /// The image folder: file names are written relative to it (default: the first input's
        /// folder); VIA's file names are looked up in it.
        #[arg(long)]
        images: Option<PathBuf>,
        /// VIA: the region attribute holding each region's category.
        #[arg(long)]
        attribute: Option<String>,
        /// VIA without --attribute: the name of the single category.
        #[arg(long, conflicts_with = "attribute")]
        category: Option<String>,
        /// The categories in id order, comma-separated (default: in order of first use); any other
        /// label is an error.
        #[arg(long, value_delimiter = ',')]
        categories: Vec<String>,
    },
}

/// Runs a `mrc data` command; the message says what was written.
pub fn data_main(command: &DataCommand) -> Result<String, String> {
    match command {
        DataCommand::Shapes { n, seed, o } => {
            let dataset = generate_shapes(*n, *seed, o).map_err(|e| e.to_string())?;
            Ok(format!(
                "{}: {} images, {} objects (seed {seed})",
                o.display(),
                dataset.images.len(),
                dataset.annotations.len()
            ))
        }
        DataCommand::Convert { from, inputs, o, images, attribute, category, categories } => {
            let options = ConvertOptions {
                images: images.clone(),
                attribute: attribute.clone(),
                category: category.clone(),
                categories: categories.clone(),
            };
            let dataset = convert(*from, inputs, o, &options).map_err(|e| e.to_string())?;
            let names: Vec<&str> = dataset.categories.iter().map(|c| c.name.as_str()).collect();
            Ok(format!(
                "{}: {} images, {} objects, categories {}",
                o.display(),
                dataset.images.len(),
                dataset.annotations.len(),
                names.join(", ")
            ))
        }
    }
}
