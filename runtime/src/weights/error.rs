//! What can go wrong with a weights file; the Display text is what the user reads.

use std::fmt;
use std::path::PathBuf;

use super::Dtype;

/// Why weights could not be read, written or matched to a model. Every message starts with the
/// file (or `embedded weights`) it is about.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The file is truncated, corrupt or of an unsupported kind.
    #[error("{origin}: {reason}")]
    Format { origin: String, reason: String },
    /// The tensors do not fit the model; lists every problem at once.
    #[error("{origin}: the weights do not match the model ({} problems):\n{}", problems.len(), ProblemList(problems))]
    Mismatch { origin: String, problems: Vec<Problem> },
    /// A tensor derived from the weights when they are loaded (a folded batch norm) could not be
    /// computed from them.
    #[error("{origin}: cannot derive `{name}`: {message}")]
    Derived { name: String, origin: String, message: String },
}

pub type Result<T> = std::result::Result<T, WeightsError>;

/// One disagreement between a weights file and the tensors a model expects.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    Missing { name: String, shape: Vec<usize>, dtype: Dtype },
    Unexpected { name: String, shape: Vec<usize>, dtype: Dtype },
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    Dtype { name: String, expected: Dtype, found: Dtype },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { name, shape, dtype } => write!(f, "missing {name} {shape:?} {dtype}"),
            Problem::Unexpected { name, shape, dtype } => write!(f, "unexpected {name} {shape:?} {dtype}"),
            Problem::Shape { name, expected, found } => {
                write!(f, "shape of {name}: the model expects {expected:?}, the file has {found:?}")
            }
            Problem::Dtype { name, expected, found } => {
                write!(f, "dtype of {name}: the model expects {expected}, the file has {found}")
            }
        }
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

pub(crate) fn corrupt(origin: &str, reason: impl Into<String>) -> WeightsError {
    WeightsError::Format { origin: origin.to_string(), reason: reason.into() }
}

pub(crate) fn format_error<T>(origin: &str, reason: impl Into<String>) -> Result<T> {
    Err(corrupt(origin, reason))
}
