//! The front end: model text → syntax tree, and back to text.

pub mod ast;
mod parse;
pub mod print;

pub use parse::parse;
