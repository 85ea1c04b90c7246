//! Errors for bad arguments to the built-in operators.

/// Why an operator refused its arguments. Each variant names the operator, so that a compiled
/// program can report which call of the model went wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Buffer lengths disagree with the shapes or with each other.
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A NaN or infinite value where a finite one is required (boxes, scores, scales).
    #[error("{op}: non-finite {what}")]
    NonFinite { op: &'static str, what: String },
    /// A parameter outside its domain (negative or zero size, out-of-range batch index, ...).
    #[error("{op}: invalid argument: {msg}")]
    Invalid { op: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, msg: msg.into() })
}

pub(crate) fn invalid<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid { op, msg: msg.into() })
}

/// Rejects NaN and infinities in boxes or other coordinates: torchvision would silently
/// produce garbage indices from them.
pub(crate) fn check_finite(op: &'static str, what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite { op, what: format!("{what} (element {i})") }),
    }
}
