//! Capture of MLIR diagnostics, so that errors carry MLIR's explanation instead of printing it
//! to stderr.

use std::sync::{Arc, Mutex};

use melior::{diagnostic::Diagnostic, Context};

/// Runs `action` with a diagnostic handler that records every diagnostic emitted on `context`
/// (and stops it from reaching earlier handlers), then returns the action's result and the
/// diagnostics, one rendered string each.
pub(crate) fn capture_diagnostics<T>(context: &Context, action: impl FnOnce() -> T) -> (T, Vec<String>) {
    // Passes may run on MLIR's thread pool, so the sink must be shareable across threads.
    let captured = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&captured);
    let handler = context.attach_diagnostic_handler(move |diagnostic| {
        sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(render(&diagnostic));
        true
    });
    let result = action();
    context.detach_diagnostic_handler(handler);
    let diagnostics = std::mem::take(&mut *captured.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    (result, diagnostics)
}

/// Renders a diagnostic as `location: severity: message`, followed by its notes.
fn render(diagnostic: &Diagnostic) -> String {
    let severity = format!("{:?}", diagnostic.severity()).to_lowercase();
    let mut text = format!("{}: {severity}: {diagnostic}", diagnostic.location());
    for index in 0..diagnostic.note_count() {
        if let Ok(note) = diagnostic.note(index) {
            text.push_str(&format!("\n  {}: note: {}", note.location(), note));
        }
    }
    text
}
