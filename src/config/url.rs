//! Configuration from one URL: the scheme picks the backend, query parameters set settings.

use super::{BusConfig, BusKind, parse_scalar, set_path};
use crate::bus::BusError;

/// The URL schemes this build understands, for error messages.
fn schemes() -> String {
    [
        ("memory://, noop://", true),
        (
            ", redis://, rediss://, redis+sentinel://, redis+cluster://",
            cfg!(feature = "redis"),
        ),
        (", nats://, tls://", cfg!(feature = "nats")),
    ]
    .into_iter()
    .filter(|(_, built)| *built)
    .map(|(schemes, _)| schemes)
    .collect()
}

#[cfg(feature = "redis")]
/// The settings of the `[redis]` section a URL query may set.
const REDIS_URL_KEYS: &[&str] = &[
    "publish_timeout",
    "connect_timeout",
    "reconnect_backoff",
    "reconnect_backoff_max",
    "liveness_interval",
    "liveness_timeout",
    "tls_ca_file",
];

#[cfg(any(feature = "redis", feature = "nats"))]
/// The top-level settings a URL query may set.
const TOP_LEVEL_URL_KEYS: &[&str] = &["node_id", "namespace", "max_payload", "subscriber_queue"];

#[cfg(feature = "nats")]
/// The settings of the `[nats]` section a URL query may set (`jetstream=true`, ...).
const NATS_URL_KEYS: &[&str] = &[
    "publish_timeout",
    "max_reconnects",
    "reconnect_wait",
    "connect_timeout",
    "jetstream",
    "subject_prefix",
    "stream",
    "stream_subject_prefix",
    "stream_max_age",
    "stream_max_bytes",
    "ack_timeout",
    "ack_wait",
    "max_deliver",
    "pull_batch",
    "pull_expires",
];

impl BusConfig {
    /// Builds a configuration from one URL: `memory://` or `noop://`, with top-level settings as
    /// query parameters (`memory://?node_id=hub-a&subscriber_queue=64`).
    ///
    /// ```
    /// let cfg = hubbus::BusConfig::from_url("noop://?node_id=solo").unwrap();
    /// assert_eq!(cfg.kind, hubbus::BusKind::Noop);
    /// assert_eq!(cfg.node_id.as_deref(), Some("solo"));
    /// ```
    pub fn from_url(url: &str) -> Result<Self, BusError> {
        #[cfg(feature = "redis")]
        if url.split_once("://").is_some_and(|(scheme, _)| {
            matches!(
                scheme,
                "redis"
                    | "rediss"
                    | "redis+sentinel"
                    | "rediss+sentinel"
                    | "redis+cluster"
                    | "rediss+cluster"
            )
        }) {
            return Self::from_broker_url(url, BusKind::Redis, "redis", REDIS_URL_KEYS, true);
        }
        #[cfg(feature = "nats")]
        if url
            .split_once("://")
            .is_some_and(|(scheme, _)| matches!(scheme, "nats" | "tls"))
        {
            return Self::from_broker_url(url, BusKind::Nats, "nats", NATS_URL_KEYS, false);
        }
        let parsed = url::Url::parse(url)
            .map_err(|e| BusError::config("url", format!("{url:?} is not a URL: {e}")))?;
        let kind = match parsed.scheme() {
            "memory" => BusKind::Memory,
            "noop" => BusKind::Noop,
            other => {
                return Err(BusError::config(
                    "url",
                    format!("unsupported scheme `{other}://`; use one of {}", schemes()),
                ));
            }
        };
        if parsed.has_host() || !matches!(parsed.path(), "" | "/") {
            return Err(BusError::config(
                "url",
                format!(
                    "{}:// takes no host or path, only query parameters",
                    parsed.scheme()
                ),
            ));
        }
        let mut cfg = BusConfig {
            kind,
            ..BusConfig::default()
        }
        .to_table()?;
        for (key, value) in parsed.query_pairs() {
            if key.contains('.') || matches!(key.as_ref(), "kind" | "redis" | "nats") {
                return Err(BusError::config(
                    key.as_ref(),
                    "not a URL parameter; URL parameters set top-level settings only",
                ));
            }
            set_path(&mut cfg, &key, parse_scalar(&value))?;
        }
        Self::from_table(cfg)
    }

    /// A broker URL (`redis…://`, `nats://`): this crate's settings are taken out of the query,
    /// top-level ones (`node_id=hub-a`) and those of the broker's `section` listed in
    /// `section_keys` (`publish_timeout=80ms`, `jetstream=true`); the rest stays in the URL that
    /// goes to `<section>.url`. Other query parameters belong to the broker's own URL when
    /// `keep_unknown` (Redis: `sentinel_password`), and are an error otherwise (NATS).
    #[cfg(any(feature = "redis", feature = "nats"))]
    fn from_broker_url(
        url: &str,
        kind: BusKind,
        section: &str,
        section_keys: &[&str],
        keep_unknown: bool,
    ) -> Result<Self, BusError> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut table = BusConfig {
            kind,
            ..BusConfig::default()
        }
        .to_table()?;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            if TOP_LEVEL_URL_KEYS.contains(&key) {
                set_path(&mut table, key, parse_scalar(&value))?;
            } else if section_keys.contains(&key) {
                set_path(
                    &mut table,
                    &format!("{section}.{key}"),
                    parse_scalar(&value),
                )?;
            } else if keep_unknown {
                kept.push(pair);
            } else {
                return Err(BusError::config(
                    "url",
                    format!("unknown {} URL parameter `{key}`", section.to_uppercase()),
                ));
            }
        }
        let broker_url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        set_path(
            &mut table,
            &format!("{section}.url"),
            toml::Value::String(broker_url),
        )?;
        Self::from_table(table)
    }
}
