//! The environment layer: `HUBBUS_<KEY>` and `HUBBUS_<SECTION>__<KEY>` override settings.

use super::{BusConfig, parse_scalar, set_path};
use crate::bus::BusError;

/// The prefix of environment overrides: `HUBBUS_KIND`, `HUBBUS_REDIS__PUBLISH_TIMEOUT`, ...
pub const ENV_PREFIX: &str = "HUBBUS_";

impl BusConfig {
    /// The defaults with the process's `HUBBUS_*` environment overrides applied.
    pub fn from_env() -> Result<Self, BusError> {
        Self::default().with_env(std::env::vars())
    }

    /// Applies overrides from `vars`: `HUBBUS_<KEY>` sets a top-level key and
    /// `HUBBUS_<SECTION>__<KEY>` a key of a section (case-insensitive). A value is read as a TOML
    /// value when it parses as one (`1024`, `true`) and as a string otherwise (`80ms`, `noop`).
    /// Variables without the prefix are ignored.
    ///
    /// ```
    /// let vars = [("HUBBUS_KIND", "noop"), ("HUBBUS_NATS__JETSTREAM", "true"), ("HOME", "/root")];
    /// let cfg = hubbus::BusConfig::default()
    ///     .with_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    ///     .unwrap();
    /// assert_eq!(cfg.kind, hubbus::BusKind::Noop);
    /// assert!(cfg.nats.jetstream);
    /// ```
    pub fn with_env(
        self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, BusError> {
        let mut table = self.to_table()?;
        let mut overrides: Vec<(String, String)> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let upper = name.to_ascii_uppercase();
                let key = upper.strip_prefix(ENV_PREFIX)?;
                Some((key.to_ascii_lowercase().replace("__", "."), value))
            })
            .collect();
        // Sorted, so the result does not depend on the environment's iteration order.
        overrides.sort();
        for (key, value) in overrides {
            set_path(&mut table, &key, parse_scalar(&value))?;
        }
        Self::from_table(table)
    }
}
