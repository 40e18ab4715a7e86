//! Configuration from one URL: the scheme picks the backend, the rest of a broker URL becomes
//! `redis.url` or `nats.url`, and query parameters set settings by their plain names
//! (`redis://cache:6379?node_id=hub-a&publish_timeout=80ms`).
//!
//! Query values are read as the type of the setting they land on, as environment values are.
//! A parameter that is a top-level setting (`node_id`, `namespace`, `max_payload`,
//! `subscriber_queue`, `lag_timeout`, `wait_for_connection`, `foreign_messages`) sets that; any other sets the key of the broker's section, so every
//! setting of `[redis]` or `[nats]`, including ones added later, can ride in the URL. Redis's own
//! parameters (`sentinel_username`, `sentinel_password`, `sharded`) stay in the Redis URL.
//!
//! This module also owns [`redact_url`], the one way a URL is shown in messages.

use percent_encoding::percent_decode_str;

use super::layer::{self, Layer};
use super::{BusConfig, BusKind};
use crate::bus::BusError;

/// The top-level settings a URL query may set; every other parameter belongs to the section.
const TOP_LEVEL_KEYS: &[&str] = &[
    "node_id",
    "namespace",
    "max_payload",
    "subscriber_queue",
    "lag_timeout",
    "wait_for_connection",
    "foreign_messages",
];

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

/// What a scheme selects.
struct Scheme {
    kind: BusKind,
    /// The section whose `url` the URL becomes; `None` for `memory://` and `noop://`, which
    /// take no host.
    section: Option<&'static str>,
    /// Query parameters that belong to the broker's URL, not to this crate.
    broker_params: &'static [&'static str],
}

fn scheme(name: &str) -> Option<Scheme> {
    let (kind, section, broker_params): (_, _, &'static [&'static str]) = match name {
        "memory" => (BusKind::Memory, None, &[]),
        "noop" => (BusKind::Noop, None, &[]),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+sentinel" | "rediss+sentinel" | "redis+cluster"
        | "rediss+cluster" => (
            BusKind::Redis,
            Some("redis"),
            &["sentinel_username", "sentinel_password", "sharded"],
        ),
        #[cfg(feature = "nats")]
        "nats" | "tls" => (BusKind::Nats, Some("nats"), &[]),
        _ => return None,
    };
    Some(Scheme {
        kind,
        section,
        broker_params,
    })
}

impl BusConfig {
    /// Builds a configuration from one URL over the defaults. The scheme picks the backend:
    /// `memory://` and `noop://` take only query parameters; a broker URL (`redis…://`,
    /// `nats://`, `tls://`) also becomes `redis.url` or `nats.url`. Query parameters set
    /// settings by their plain names (see the module docs); the environment is not read.
    ///
    /// ```
    /// let cfg = hubbus::BusConfig::from_url("noop://?node_id=solo").unwrap();
    /// assert_eq!(cfg.kind, hubbus::BusKind::Noop);
    /// assert_eq!(cfg.node_id.as_deref(), Some("solo"));
    /// ```
    pub fn from_url(url: &str) -> Result<Self, BusError> {
        Self::from_url_unscrubbed(url).map_err(|error| scrub_credentials(error, url))
    }

    fn from_url_unscrubbed(url: &str) -> Result<Self, BusError> {
        let (scheme_name, rest) = url.split_once("://").ok_or_else(|| {
            BusError::config(
                "url",
                format!(
                    "{:?} is not a URL: start it with one of {}",
                    redact_url(url),
                    schemes()
                ),
            )
        })?;
        let Some(scheme) = scheme(scheme_name) else {
            return Err(BusError::config(
                "url",
                format!(
                    "unsupported scheme `{scheme_name}://`; use one of {}",
                    schemes()
                ),
            ));
        };
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let schema = BusConfig::schema();
        let mut layer = Layer::new("URL");
        let kind = match scheme.kind {
            BusKind::Noop => "noop",
            BusKind::Memory => "memory",
            #[cfg(feature = "redis")]
            BusKind::Redis => "redis",
            #[cfg(feature = "nats")]
            BusKind::Nats => "nats",
        };
        layer.set(&schema, &["kind"], kind.to_owned(), "the URL".to_owned())?;
        if scheme.section.is_none() {
            let host_and_path = rest.split('?').next().unwrap_or("");
            if !matches!(host_and_path, "" | "/") {
                return Err(BusError::config(
                    "url",
                    format!("{scheme_name}:// takes no host or path, only query parameters"),
                ));
            }
        }
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode_str(raw_key).decode_utf8_lossy();
            if scheme.broker_params.contains(&key.as_ref()) {
                kept.push(pair);
                continue;
            }
            if !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            {
                // Most likely the tail of a password with an unencoded `?`: never repeat it.
                return Err(BusError::config(
                    "url",
                    format!(
                        "{:?} has a query parameter that is not a setting name; \
                         percent-encode `/`, `?`, `#` and `@` in user names and passwords",
                        redact_url(url)
                    ),
                ));
            }
            if key == "kind"
                || key.contains('.')
                || schema
                    .get(key.as_ref())
                    .is_some_and(|v| v.as_dict().is_some())
            {
                return Err(BusError::config(
                    key.as_ref(),
                    "not a URL parameter: the scheme sets `kind`, and parameters are plain \
                     setting names (`node_id=hub-a`, `publish_timeout=80ms`)",
                ));
            }
            if scheme.section.is_none() && !TOP_LEVEL_KEYS.contains(&key.as_ref()) {
                return Err(BusError::config(
                    key.as_ref(),
                    format!(
                        "not a setting {scheme_name}:// takes; it takes {}",
                        TOP_LEVEL_KEYS.join(", ")
                    ),
                ));
            }
            let source = format!("the URL parameter `{key}`");
            let Ok(value) = percent_decode_str(raw_value).decode_utf8() else {
                return Err(BusError::config(
                    key.as_ref(),
                    format!("the value of {source} is not valid UTF-8"),
                ));
            };
            let path: Vec<&str> = match scheme.section {
                Some(section) if !TOP_LEVEL_KEYS.contains(&key.as_ref()) => vec![section, &key],
                _ => vec![&key],
            };
            layer.set(&schema, &path, value.into_owned(), source)?;
        }
        if let Some(section) = scheme.section {
            let broker_url = if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            };
            layer.set(&schema, &[section, "url"], broker_url, "the URL".to_owned())?;
        }
        Self::from_layers(vec![layer])
    }
}

/// `url` fit for messages and logs: credentials replaced by `***` (everything between the scheme
/// and the last `@`, so a list of servers or a password with a stray `/`, `?` or `,` is covered
/// too) and the values of query parameters that hold secrets (`sentinel_password=***`).
///
/// ```
/// use hubbus::config::redact_url;
///
/// assert_eq!(redact_url("redis://app:s3cret@cache:6379/0"), "redis://***@cache:6379/0");
/// assert_eq!(redact_url("nats://t0ken@n1:4222"), "nats://***@n1:4222");
/// assert_eq!(
///     redact_url("redis+sentinel://s1/main?sentinel_password=s3cret"),
///     "redis+sentinel://s1/main?sentinel_password=***"
/// );
/// assert_eq!(redact_url("memory://?node_id=hub-a"), "memory://?node_id=hub-a");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut text = match url.split_once('?') {
        Some((head, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if layer::is_secret(&key.to_ascii_lowercase()) => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{head}?{}", query.join("&"))
        }
        None => url.to_owned(),
    };
    if let Some(at) = text.rfind('@') {
        let start = match text.find("://") {
            Some(scheme_end) if scheme_end + 3 <= at => scheme_end + 3,
            _ => 0,
        };
        text.replace_range(start..at, "***");
    }
    text
}

/// `error` without any piece of `url`'s credentials, for errors about a URL that a parser may
/// have split in the wrong place: a password with an unencoded `/`, `?` or `#` ends up in a host,
/// a path or a query parameter, and the error about that piece would repeat it. Every piece
/// between the scheme and the last `@` is replaced by `***` in the key and the reason.
pub(crate) fn scrub_credentials(error: BusError, url: &str) -> BusError {
    let BusError::Config {
        mut key,
        mut reason,
    } = error
    else {
        return error;
    };
    let start = url.find("://").map_or(0, |at| at + 3);
    if let Some(at) = url.rfind('@').filter(|at| *at >= start) {
        let mut pieces: Vec<&str> = url[start..at]
            .split(|c| ":/?#&=,;".contains(c))
            .filter(|piece| piece.len() > 1)
            .collect();
        // Longest first, so that a piece inside another does not leave the rest behind.
        pieces.sort_by_key(|piece| std::cmp::Reverse(piece.len()));
        for piece in pieces {
            key = key.replace(piece, "***");
            reason = reason.replace(piece, "***");
        }
    }
    BusError::Config { key, reason }
}
