//! Diagnostics in rustc's style: `path:line:col`, the source line, a caret, a hint.
//!
//! Every stage that reads user input (model files, YAML overrides) reports through
//! [`Diagnostic`]; [`SourceMap`] owns the texts so that a diagnostic can point into any of them.

use annotate_snippets::{Level, Renderer, Snippet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Index of a source text in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId(pub u32);

/// A byte range in one source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        Span { file, start, end }
    }

    /// The smallest span covering both (same file assumed).
    pub fn to(self, other: Span) -> Span {
        Span { file: self.file, start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// The texts diagnostics point into, by [`FileId`].
#[derive(Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn add(&mut self, path: impl Into<PathBuf>, text: String) -> FileId {
        self.files.push(SourceFile { path: path.into(), text });
        FileId(self.files.len() as u32 - 1)
    }

    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    pub fn find(&self, path: &Path) -> Option<FileId> {
        self.files.iter().position(|f| f.path == path).map(|i| FileId(i as u32))
    }

}

/// A secondary span with its own label, shown under the primary one.
#[derive(Clone, Debug)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub message: String,
    /// `None` where there is no text to point into (a file that cannot be read).
    pub span: Option<Span>,
    pub label: String,
    pub notes: Vec<Label>,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(span: Span, message: impl Into<String>) -> Self {
        Diagnostic { message: message.into(), span: Some(span), label: String::new(), notes: vec![], hint: None }
    }

    pub fn unlocated(message: impl Into<String>) -> Self {
        Diagnostic { message: message.into(), span: None, label: String::new(), notes: vec![], hint: None }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn with_note(mut self, span: Span, message: impl Into<String>) -> Self {
        self.notes.push(Label { span, message: message.into() });
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Renders as rustc does; the origin line reads `path:line:col`.
    pub fn render(&self, sources: &SourceMap) -> String {
        let Some(span) = self.span else {
            return Renderer::plain().render(Level::Error.title(&self.message)).to_string();
        };
        let origin = |s: Span| sources.file(s.file).path.display().to_string();
        let origins: Vec<String> =
            std::iter::once(span).chain(self.notes.iter().map(|n| n.span)).map(origin).collect();
        let primary = &sources.file(span.file).text;
        let mut snippet = Snippet::source(primary)
            .origin(&origins[0])
            .fold(true)
            .annotation(Level::Error.span(caret_range(primary, span)).label(&self.label));
        let mut other_files = vec![];
        for (note, origin) in self.notes.iter().zip(&origins[1..]) {
            let text = &sources.file(note.span.file).text;
            // `Warning` draws `-` without a level prefix: rustc's look for secondary labels.
            let annotation = Level::Warning.span(caret_range(text, note.span)).label(&note.message);
            if note.span.file == span.file {
                snippet = snippet.annotation(annotation);
            } else {
                other_files.push(Snippet::source(text).origin(origin).fold(true).annotation(annotation));
            }
        }
        let mut message = Level::Error.title(&self.message).snippet(snippet).snippets(other_files);
        if let Some(hint) = &self.hint {
            message = message.footer(Level::Help.title(hint));
        }
        let rendered = Renderer::plain().render(message).to_string();
        rendered
    }
}

/// A non-empty range inside the text, so that a caret is always drawn.
fn caret_range(text: &str, span: Span) -> std::ops::Range<usize> {
    let start = span.start.min(text.len());
    let end = span.end.min(text.len()).max(start);
    if end > start {
        start..end
    } else if start < text.len() {
        start..start + text[start..].chars().next().map_or(1, char::len_utf8)
    } else {
        start..start
    }
}

/// Diagnostics of one run, rendered together.
#[derive(Debug, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        for d in &self.0 {
            out.push_str(&d.render(sources));
            out.push_str("\n\n");
        }
        let n = self.0.len();
        out.push_str(&format!(
            "error: could not compile the model due to {n} previous error{}",
            if n == 1 { "" } else { "s" }
        ));
        out
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// The candidate closest to `name` by edit distance, for "did you mean" hints.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: a swap of neighbours (`cnov`/`conv`) costs one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_allow_typos_and_swaps() {
        assert_eq!(closest("cnov", ["conv", "config"]), Some("conv"));
        assert_eq!(closest("rleu", ["relu", "sigmoid"]), Some("relu"));
        assert_eq!(closest("kernal", ["kernel", "stride"]), Some("kernel"));
        assert_eq!(closest("xyz", ["kernel", "stride"]), None);
    }
}
