//! The environment layer: `HUBBUS_<KEY>` sets a top-level setting and
//! `HUBBUS_<SECTION>__<KEY>` a setting of a section (`HUBBUS_REDIS__PUBLISH_TIMEOUT=80ms`).
//!
//! Variable names are case-insensitive. Values are taken as text and read as the setting's type,
//! so `HUBBUS_NODE_ID=42` is a node id and `HUBBUS_NATS__TOKEN=12345` a token. The environment
//! belongs to the whole process, so two rules keep it from breaking the configuration:
//! a variable that is not valid Unicode is skipped unless it carries the prefix (then it is an
//! error naming it), and `HUBBUS_TEST_*` is reserved for the project's tooling (test servers,
//! simulation seeds) and never read as a setting.

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::BusConfig;
use super::layer::Layer;
use crate::bus::BusError;

/// The prefix of environment overrides: `HUBBUS_KIND`, `HUBBUS_REDIS__PUBLISH_TIMEOUT`, ...
pub const ENV_PREFIX: &str = "HUBBUS_";

/// The prefix reserved for tooling variables (`HUBBUS_TEST_REDIS_SERVER`,
/// `HUBBUS_TEST_SIM_SEED`, ...): the configuration never reads them, and no setting will ever be
/// named `test_*`.
pub const RESERVED_ENV_PREFIX: &str = "HUBBUS_TEST_";

/// Separates a section from its key in a variable name.
const SECTION_SEPARATOR: &str = "__";

impl BusConfig {
    /// The defaults with the process's `HUBBUS_*` environment applied (see
    /// [`BusConfig::from_env_vars`] for the rules).
    pub fn from_env() -> Result<Self, BusError> {
        Self::from_env_vars(std::env::vars_os())
    }

    /// The defaults with the `HUBBUS_*` variables among `vars` applied: `HUBBUS_<KEY>` sets a
    /// top-level key and `HUBBUS_<SECTION>__<KEY>` a key of a section, case-insensitively.
    /// Values are read as the type of the setting. Variables without the prefix, and the
    /// tooling variables under [`RESERVED_ENV_PREFIX`], are ignored; so is a variable that is
    /// not valid Unicode, unless it has the prefix, which is an error.
    ///
    /// ```
    /// let cfg = hubbus::BusConfig::from_env_vars([
    ///     ("HUBBUS_KIND", "noop"),
    ///     ("HUBBUS_NODE_ID", "42"),
    ///     ("HUBBUS_NATS__JETSTREAM", "true"),
    ///     ("HUBBUS_TEST_SIM_SEED", "7"),
    ///     ("HOME", "/root"),
    /// ])
    /// .unwrap();
    /// assert_eq!(cfg.kind, hubbus::BusKind::Noop);
    /// assert_eq!(cfg.node_id.as_deref(), Some("42"));
    /// assert!(cfg.nats.jetstream);
    /// ```
    pub fn from_env_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, BusError>
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        Self::from_layers(vec![layer(
            vars.into_iter().map(|(k, v)| (k.into(), v.into())),
        )?])
    }
}

/// The `HUBBUS_*` variables among `vars` as a layer.
pub(super) fn layer(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Layer, BusError> {
    // Sorted by name, so that what happens does not depend on the environment's order.
    let mut ours = BTreeMap::new();
    for (name, value) in vars {
        if !has_prefix(&name, ENV_PREFIX) || has_prefix(&name, RESERVED_ENV_PREFIX) {
            continue;
        }
        let Some(name) = name.to_str().map(str::to_owned) else {
            return Err(BusError::config(
                "<env>",
                format!(
                    "the name of the variable {:?} is not valid Unicode",
                    name.to_string_lossy()
                ),
            ));
        };
        ours.insert(name, value);
    }
    let schema = BusConfig::schema();
    let mut layer = Layer::new("environment");
    for (name, value) in ours {
        let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let path: Vec<&str> = key.split(SECTION_SEPARATOR).collect();
        if path.iter().any(|part| part.is_empty()) {
            return Err(BusError::config(
                "<env>",
                format!(
                    "{name} names no setting: use {ENV_PREFIX}<KEY> or \
                     {ENV_PREFIX}<SECTION>{SECTION_SEPARATOR}<KEY>"
                ),
            ));
        }
        let Ok(value) = value.into_string() else {
            return Err(BusError::config(
                path.join("."),
                format!("the value of {name} is not valid Unicode"),
            ));
        };
        layer.set(&schema, &path, value, name.clone())?;
    }
    Ok(layer)
}

/// Whether `name` starts with `prefix`, ignoring ASCII case; works on names that are not
/// Unicode too.
fn has_prefix(name: &OsString, prefix: &str) -> bool {
    name.as_encoded_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}
