//! One source of settings (the environment, a URL's query, a TOML document) as figment merges
//! it, and the translation of figment's errors into [`BusError::Config`].
//!
//! Values from the environment and from URLs enter as strings and are read as the type of the
//! setting they land on (figment's lossy extraction), never guessed from their text: `42` is a
//! node id where a node id is expected and a number where a number is. Each value remembers who
//! set it (`HUBBUS_NATS__ACK_WAIT`, the URL parameter `ack_wait`), so an error about it can say
//! where to fix it.

use std::collections::BTreeMap;

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use crate::bus::BusError;

/// Settings from one source, keyed by their dotted path.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    /// What figment calls this source.
    name: &'static str,
    /// The settings, nested as the TOML sections are.
    values: Dict,
    /// Who set each dotted key, for error messages (empty for a TOML document, whose keys are
    /// the dotted paths themselves).
    sources: BTreeMap<String, String>,
}

impl Layer {
    /// An empty layer.
    pub(super) fn new(name: &'static str) -> Self {
        Layer {
            name,
            values: Dict::new(),
            sources: BTreeMap::new(),
        }
    }

    /// A parsed TOML document.
    pub(super) fn toml(table: toml::Table) -> Result<Self, BusError> {
        let values = Value::serialize(table)
            .ok()
            .and_then(Value::into_dict)
            .ok_or_else(|| BusError::config("<toml>", "not a table of settings"))?;
        Ok(Layer {
            values,
            ..Layer::new("TOML")
        })
    }

    /// Sets the string `value` at `path`, remembering that `source` set it. `schema` (the
    /// defaults) tells sections from settings, so that `kind.x` is refused as `kind` not being a
    /// section; keys it does not know are left for the extraction to report as unknown.
    pub(super) fn set(
        &mut self,
        schema: &Dict,
        path: &[&str],
        value: String,
        source: String,
    ) -> Result<(), BusError> {
        let key = path.join(".");
        let Some((last, sections)) = path.split_last() else {
            return Err(BusError::config(
                "<empty>",
                format!("{source} names no setting"),
            ));
        };
        if let Some(earlier) = self.sources.get(&key) {
            let reason = if *earlier == source {
                format!("{source} is given twice")
            } else {
                format!("set twice, by {earlier} and by {source}")
            };
            return Err(BusError::config(key.clone(), reason));
        }
        let mut schema = Some(schema);
        let mut dict = &mut self.values;
        for (depth, section) in sections.iter().enumerate() {
            match schema.and_then(|s| s.get(*section)) {
                Some(Value::Dict(_, inner)) => schema = Some(inner),
                Some(_) => {
                    return Err(BusError::config(
                        key,
                        format!("`{}` is not a section", path[..=depth].join(".")),
                    ));
                }
                None => schema = None,
            }
            let entry = dict
                .entry((*section).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            dict = match entry {
                Value::Dict(_, inner) => inner,
                _ => {
                    return Err(BusError::config(
                        key,
                        format!(
                            "{source} conflicts with a value set for `{}`",
                            path[..=depth].join(".")
                        ),
                    ));
                }
            };
        }
        if dict.contains_key(*last) {
            return Err(BusError::config(
                key,
                format!("{source} conflicts with the settings under `{last}`"),
            ));
        }
        dict.insert((*last).to_owned(), Value::from(value));
        self.sources.insert(key, source);
        Ok(())
    }

    /// Who set `key` in this layer, if it did.
    fn source(&self, key: &str) -> Option<&str> {
        self.sources.get(key).map(String::as_str)
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// Adds who set the offending value to `error`: the topmost layer that set the key wins the
/// merge, so it is the one whose value is wrong.
pub(super) fn attribute(error: BusError, layers: &[Layer]) -> BusError {
    match error {
        BusError::Config { key, reason } => {
            let source = layers.iter().rev().find_map(|layer| layer.source(&key));
            let reason = match source {
                Some(source) => format!("{reason} (set by {source})"),
                None => reason,
            };
            BusError::Config { key, reason }
        }
        other => other,
    }
}

/// Settings whose values are secrets: an error about them never repeats the value.
pub(super) fn is_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    ["token", "password", "secret"]
        .iter()
        .any(|word| last.contains(word))
}

/// The first of figment's errors as a [`BusError::Config`] naming the dotted key.
pub(super) fn from_figment(error: figment::Error) -> BusError {
    use figment::error::Kind;

    let error = error.into_iter().next().unwrap_or_else(|| {
        // figment never yields an empty error chain; the fallback only keeps this total.
        figment::Error::from(String::from("invalid configuration"))
    });
    // For an unknown field, figment's path already ends with the field's name.
    let key = match error.path.join(".") {
        key if key.is_empty() => "<config>".to_owned(),
        key => key,
    };
    let one_of = |names: &[&str]| {
        let names: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
        names.join(", ")
    };
    let reason = match &error.kind {
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if is_secret(&key) => {
            format!("invalid value (not shown: it is a secret), expected {expected}")
        }
        // Whatever else went wrong with a secret, its text may quote the value.
        kind if is_secret(&key) && !matches!(kind, Kind::UnknownField(..)) => {
            "invalid value (not shown: it is a secret)".to_owned()
        }
        Kind::InvalidType(actual, expected) => {
            format!("invalid type: {actual}, expected {expected}")
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value: {actual}, expected {expected}")
        }
        Kind::UnknownField(name, expected) => {
            format!(
                "unknown setting `{name}`, expected one of {}",
                one_of(expected)
            )
        }
        Kind::UnknownVariant(name, expected) => {
            format!(
                "unknown value `{name}`, expected one of {}",
                one_of(expected)
            )
        }
        kind => kind.to_string(),
    };
    BusError::Config { key, reason }
}
