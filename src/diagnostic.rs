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
    pub span: Span,
    pub label: String,
    pub notes: Vec<Label>,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(span: Span, message: impl Into<String>) -> Self {
        Diagnostic { message: message.into(), span, label: String::new(), notes: vec![], hint: None }
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
        let origin = |s: Span| sources.file(s.file).path.display().to_string();
        let origins: Vec<String> =
            std::iter::once(self.span).chain(self.notes.iter().map(|n| n.span)).map(origin).collect();
        let primary = &sources.file(self.span.file).text;
        let mut snippet = Snippet::source(primary)
            .origin(&origins[0])
            .fold(true)
            .annotation(Level::Error.span(caret_range(primary, self.span)).label(&self.label));
        let mut other_files = vec![];
        for (note, origin) in self.notes.iter().zip(&origins[1..]) {
            let text = &sources.file(note.span.file).text;
            let annotation = Level::Info.span(caret_range(text, note.span)).label(&note.message);
            if note.span.file == self.span.file {
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

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(cur) };
            prev = cur;
        }
    }
    row[b.len()]
}
