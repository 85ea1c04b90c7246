//! The `config` and `train` sections, and their YAML overrides (`--config f.yaml`).

use super::value::Value;
use crate::diagnostic::{closest, Diagnostic, FileId, SourceMap, Span};

#[derive(Clone, Debug)]
pub struct Setting {
    pub name: String,
    pub value: Value,
    /// The declaration in the model file.
    pub span: Span,
}

/// Named settings in declaration order.
#[derive(Clone, Debug, Default)]
pub struct Settings(pub Vec<Setting>);

impl Settings {
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.0.iter().find(|s| s.name == name)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Setting> {
        self.0.iter_mut().find(|s| s.name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.name.as_str())
    }
}

/// The `train` section's keys: their types and meaning are fixed by the training program.
pub static TRAIN_KEYS: &[(&str, &str)] = &[
    ("data", "str"),
    ("images", "str"),
    ("val_data", "str"),
    ("val_images", "str"),
    ("batch_size", "int"),
    ("iterations", "int"),
    ("optimizer", "str"),
    ("lr", "float"),
    ("momentum", "float"),
    ("weight_decay", "float"),
    ("warmup_iters", "int"),
    ("warmup_factor", "float"),
    ("milestones", "list"),
    ("gamma", "float"),
    ("hflip", "float"),
    ("losses", "list"),
    ("frozen", "list"),
    ("checkpoint_every", "int"),
    ("eval_every", "int"),
    ("log_every", "int"),
    ("seed", "int"),
];

/// Whether `new` may replace `old`: the same kind, ints where floats are expected, and lists
/// whose elements fit the old list's elements.
pub fn compatible(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::Int(_), Value::Int(_))
        | (Value::Float(_), Value::Float(_) | Value::Int(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Str(_), Value::Str(_)) => true,
        (Value::List(a), Value::List(b)) => match a.first() {
            Some(first) => b.iter().all(|v| compatible(first, v)),
            None => true,
        },
        _ => false,
    }
}

/// Ints given where the declaration has floats become floats, so that the model sees one type.
fn coerce(old: &Value, new: Value) -> Value {
    match (old, new) {
        (Value::Float(_), Value::Int(v)) => Value::Float(v as f64),
        (Value::List(a), Value::List(b)) => match a.first() {
            Some(first) => Value::List(b.into_iter().map(|v| coerce(first, v)).collect()),
            None => Value::List(b),
        },
        (_, new) => new,
    }
}

fn train_kind_matches(kind: &str, v: &Value) -> bool {
    matches!(
        (kind, v),
        ("str", Value::Str(_)) | ("int", Value::Int(_)) | ("float", Value::Float(_) | Value::Int(_)) | ("list", Value::List(_))
    )
}

/// Checks the `train` section against [`TRAIN_KEYS`].
pub fn check_train(train: &Settings, diags: &mut Vec<Diagnostic>) {
    for s in &train.0 {
        match TRAIN_KEYS.iter().find(|(k, _)| *k == s.name) {
            None => {
                let mut d = Diagnostic::error(s.span, format!("unknown training setting `{}`", s.name))
                    .with_label("not a training setting");
                d = d.with_hint(match closest(&s.name, TRAIN_KEYS.iter().map(|(k, _)| *k)) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => {
                        let keys: Vec<&str> = TRAIN_KEYS.iter().map(|(k, _)| *k).collect();
                        format!("training settings are: {}", keys.join(", "))
                    }
                });
                diags.push(d);
            }
            Some((_, kind)) if !train_kind_matches(kind, &s.value) && !s.value.is_poison() => diags.push(
                Diagnostic::error(s.span, format!("wrong type for training setting `{}`", s.name))
                    .with_label(format!("expected {kind}, found {}", s.value.kind())),
            ),
            Some(_) => {}
        }
    }
}

/// Applies a YAML file of overrides: top-level keys replace `config` settings; a `train`
/// mapping replaces `train` settings. Unknown keys and wrong types are errors in the YAML file.
pub fn apply_yaml(
    sources: &mut SourceMap,
    path: &std::path::Path,
    config: &mut Settings,
    train: &mut Settings,
) -> Result<(), Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic::unlocated(format!("cannot read config override {}: {e}", path.display()))]
    })?;
    let file = sources.add(path, text.clone());
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
        let offset = e.location().map_or(0, |l| l.index());
        vec![Diagnostic::error(Span::new(file, offset, offset), format!("invalid YAML: {e}"))]
    })?;
    let mut diags = vec![];
    let whole = Span::new(file, 0, text.len());
    let mapping = match doc {
        serde_yaml::Value::Null => return Ok(()),
        serde_yaml::Value::Mapping(m) => m,
        _ => {
            return Err(vec![Diagnostic::error(whole, "a config override is a mapping of setting names to values")
                .with_hint("write one `name: value` per line")])
        }
    };
    for (key, value) in mapping {
        let Some(key) = key.as_str().map(str::to_string) else {
            diags.push(Diagnostic::error(whole, format!("setting names are strings, found {key:?}")));
            continue;
        };
        if key == "train" {
            if let serde_yaml::Value::Mapping(inner) = value {
                let after = key_span(&text, file, "train", 0).start;
                for (k, v) in inner {
                    let k = k.as_str().unwrap_or_default().to_string();
                    override_one(train, &text, file, after, &k, v, "training setting", &mut diags);
                }
            } else {
                diags.push(Diagnostic::error(key_span(&text, file, "train", 0), "`train` overrides are a mapping"));
            }
            continue;
        }
        override_one(config, &text, file, 0, &key, value, "config setting", &mut diags);
    }
    if diags.is_empty() {
        Ok(())
    } else {
        Err(diags)
    }
}

#[allow(clippy::too_many_arguments)]
fn override_one(
    settings: &mut Settings,
    text: &str,
    file: FileId,
    search_from: usize,
    key: &str,
    value: serde_yaml::Value,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) {
    let span = key_span(text, file, key, search_from);
    let names: Vec<String> = settings.names().map(str::to_string).collect();
    let Some(setting) = settings.get_mut(key) else {
        let mut d = Diagnostic::error(span, format!("bad config override: unknown {what} `{key}`"))
            .with_label("not declared in the model");
        if let Some(c) = closest(key, names.iter().map(String::as_str)) {
            d = d.with_hint(format!("did you mean `{c}`?"));
        }
        diags.push(d);
        return;
    };
    let new = match from_yaml(&value) {
        Some(v) if compatible(&setting.value, &v) => v,
        _ => {
            diags.push(
                Diagnostic::error(span, format!("bad config override: `{key}` has the wrong type"))
                    .with_label(format!("expected a value like {}", setting.value))
                    .with_note(setting.span, "declared here"),
            );
            return;
        }
    };
    setting.value = coerce(&setting.value, new);
}

fn from_yaml(v: &serde_yaml::Value) -> Option<Value> {
    Some(match v {
        serde_yaml::Value::Bool(b) => Value::Bool(*b),
        serde_yaml::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64()?),
        },
        serde_yaml::Value::String(s) => Value::Str(s.clone()),
        serde_yaml::Value::Sequence(items) => Value::List(items.iter().map(from_yaml).collect::<Option<_>>()?),
        _ => return None,
    })
}

/// Where `key:` is written in the YAML text (serde_yaml's values carry no positions).
fn key_span(text: &str, file: FileId, key: &str, from: usize) -> Span {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if offset >= from && trimmed.starts_with(key) && trimmed[key.len()..].trim_start().starts_with(':') {
            return Span::new(file, offset + indent, offset + indent + key.len());
        }
        offset += line.len();
    }
    Span::new(file, 0, 0)
}
