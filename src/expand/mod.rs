//! Resolution and expansion: syntax trees → dataflow graph.
//!
//! The network body is evaluated like a small program: blocks are instantiated with their
//! arguments, loops unrolled, conditionals decided, and every operator call becomes a graph
//! node whose shape rule runs at once. Errors are collected (a failed expression yields
//! [`Value::Poison`], which silences follow-on errors) so that one run reports them all.

pub mod config;
mod eval;
pub mod value;

use crate::diagnostic::{Diagnostic, Diagnostics, SourceMap, Span};
use crate::graph::Graph;
use crate::syntax::{self, ast};
use config::Settings;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A model file, expanded.
pub struct Model {
    pub path: PathBuf,
    pub doc: Vec<String>,
    pub network: String,
    pub config: Settings,
    pub train: Settings,
    pub graph: Graph,
    /// The `training network`'s name and graph, when the model has one.
    pub training: Option<(String, Graph)>,
}

/// Source files parsed for one model: the root and its imports.
pub struct Program {
    pub root: ast::File,
    /// Blocks of the root and of every import, by name.
    pub blocks: HashMap<String, ast::BlockDef>,
}

/// Reads, parses and expands `path`, applying the YAML overrides in `overrides` if given.
pub fn load(sources: &mut SourceMap, path: &Path, overrides: Option<&Path>) -> Result<Model, Diagnostics> {
    let program = parse_program(sources, path)?;
    let mut diags = vec![];
    let mut config = eval::settings(&program, section(&program.root, true), None, &mut diags);
    let mut train = eval::settings(&program, section(&program.root, false), Some(&config), &mut diags);
    if let Some(yaml) = overrides {
        if let Err(mut errors) = config::apply_yaml(sources, yaml, &mut config, &mut train) {
            diags.append(&mut errors);
        }
    }
    config::check_train(&train, &mut diags);
    let network = find_network(&program, path, sources, &mut diags);
    let training = find_training_network(&program, &mut diags);
    let mut model = Model {
        path: path.to_path_buf(),
        doc: program.root.doc.clone(),
        network: network.map(|n| n.name.name.clone()).unwrap_or_default(),
        config,
        train,
        graph: Graph::default(),
        training: None,
    };
    if let Some(network) = network {
        if diags.is_empty() {
            model.graph = eval::expand_network(&program, network, &model.config, &mut diags);
        }
    }
    if let Some(network) = training {
        if diags.is_empty() {
            let graph = eval::expand_network(&program, network, &model.config, &mut diags);
            model.training = Some((network.name.name.clone(), graph));
        }
    }
    if diags.is_empty() {
        Ok(model)
    } else {
        Err(Diagnostics(diags))
    }
}

fn section(file: &ast::File, config: bool) -> Vec<&ast::Section> {
    file.items
        .iter()
        .filter_map(|item| match (item, config) {
            (ast::Item::Config(s), true) | (ast::Item::Train(s), false) => Some(s),
            _ => None,
        })
        .collect()
}

fn read(sources: &mut SourceMap, path: &Path, at: Option<Span>) -> Result<(crate::diagnostic::FileId, String), Diagnostic> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((sources.add(path, text.clone()), text)),
        Err(e) => {
            let message = format!("cannot read {}: {e}", path.display());
            Err(match at {
                Some(span) => Diagnostic::error(span, message).with_label("imported here"),
                None => Diagnostic::unlocated(message),
            })
        }
    }
}

/// Parses the root file and, transitively, its imports; collects every block by name.
pub fn parse_program(sources: &mut SourceMap, path: &Path) -> Result<Program, Diagnostics> {
    let (file_id, text) = read(sources, path, None).map_err(|d| {
        // Nothing was read, so there is no source line to point at: say it plainly.
        Diagnostics(vec![d])
    })?;
    let root = syntax::parse(file_id, &text).map_err(Diagnostics::from)?;
    let mut blocks: HashMap<String, ast::BlockDef> = HashMap::new();
    let mut diags = vec![];
    let mut pending: Vec<(PathBuf, ast::File)> = vec![(path.to_path_buf(), root.clone())];
    let mut seen = vec![path.canonicalize().unwrap_or_else(|_| path.to_path_buf())];
    while let Some((file_path, file)) = pending.pop() {
        for item in &file.items {
            match item {
                ast::Item::Block(b) => {
                    if let Some(first) = blocks.get(&b.name.name) {
                        diags.push(
                            Diagnostic::error(b.name.span, format!("name defined twice: `{}`", b.name.name))
                                .with_label("redefined here")
                                .with_note(first.name.span, "first defined here"),
                        );
                    } else {
                        blocks.insert(b.name.name.clone(), b.clone());
                    }
                }
                ast::Item::Import { path: import, span } => {
                    let target = file_path.parent().unwrap_or(Path::new(".")).join(import);
                    let canonical = target.canonicalize().unwrap_or_else(|_| target.clone());
                    if seen.contains(&canonical) {
                        continue;
                    }
                    seen.push(canonical);
                    match read(sources, &target, Some(*span)) {
                        Ok((id, text)) => match syntax::parse(id, &text) {
                            // An import contributes its blocks; its network and sections stay its own.
                            Ok(mut imported) => {
                                imported.items.retain(|i| matches!(i, ast::Item::Block(b) if !b.is_network)
                                    || matches!(i, ast::Item::Import { .. }));
                                pending.push((target, imported));
                            }
                            Err(d) => diags.push(d),
                        },
                        Err(d) => diags.push(d),
                    }
                }
                _ => {}
            }
        }
    }
    if diags.is_empty() {
        Ok(Program { root, blocks })
    } else {
        Err(Diagnostics(diags))
    }
}

fn find_network<'p>(
    program: &'p Program,
    path: &Path,
    sources: &SourceMap,
    diags: &mut Vec<Diagnostic>,
) -> Option<&'p ast::BlockDef> {
    let networks: Vec<&ast::BlockDef> = program
        .root
        .items
        .iter()
        .filter_map(|i| match i {
            ast::Item::Block(b) if b.is_network && !b.training => Some(b),
            _ => None,
        })
        .collect();
    match networks.as_slice() {
        [one] => Some(one),
        [] => {
            let file = sources.find(path).unwrap_or_default();
            diags.push(
                Diagnostic::error(Span::new(file, 0, 0), "the model has no `network`")
                    .with_hint("add `network name(image: u8[H, W, 3]) { ... }`, the entry point"),
            );
            None
        }
        [first, rest @ ..] => {
            for other in rest {
                diags.push(
                    Diagnostic::error(other.name.span, "a model has one `network`")
                        .with_label("second network")
                        .with_note(first.name.span, "first network"),
                );
            }
            None
        }
    }
}

/// The `training network`, of which a model has at most one.
fn find_training_network<'p>(program: &'p Program, diags: &mut Vec<Diagnostic>) -> Option<&'p ast::BlockDef> {
    let mut networks = program.root.items.iter().filter_map(|i| match i {
        ast::Item::Block(b) if b.is_network && b.training => Some(b),
        _ => None,
    });
    let first = networks.next()?;
    let rest: Vec<_> = networks.collect();
    for other in &rest {
        diags.push(
            Diagnostic::error(other.name.span, "a model has one `training network`")
                .with_label("second training network")
                .with_note(first.name.span, "first training network"),
        );
    }
    rest.is_empty().then_some(first)
}
