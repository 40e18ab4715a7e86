//! Where the Redis backend connects: one server, a Sentinel-managed master, or a Cluster, with
//! credentials and TLS, parsed from one URL.
//!
//! ```text
//! redis://[user[:password]@]host[:port][/db]
//! rediss://…                                             (TLS)
//! redis+sentinel://[user[:password]@]s1[:port],s2[:port]/<master-name>[/db]
//! redis+cluster://[user[:password]@]n1[:port],n2[:port][?sharded=true]
//! ```
//!
//! `sharded=true` on a cluster URL selects sharded Pub/Sub (`SPUBLISH` / `SSUBSCRIBE`, Redis
//! 7.0+): each channel lives on the master that owns its hash slot, so the cluster's Pub/Sub
//! capacity grows with its masters. The default is classic Pub/Sub, which every Redis version
//! has and which reaches every node; the two modes do not hear each other, so every node of a
//! bus must use the same one.
//!
//! Sentinel URLs may carry `?sentinel_username=…&sentinel_password=…` when the sentinels
//! require their own credentials. Ports default to 6379 (26379 for sentinels). A URL with
//! several hosts cannot go through `url::Url` (its authority holds one host), so the authority
//! is split here and each piece checked.

use percent_encoding::percent_decode_str;
use secrecy::SecretString;

use crate::bus::BusError;
use crate::config::redact_url;

/// How the Redis deployment is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server at `host:port`.
    Standalone(String),
    /// A master found through sentinels.
    Sentinel {
        /// The sentinels, `host:port`, asked in order.
        sentinels: Vec<String>,
        /// The master's name in the sentinel configuration.
        master: String,
    },
    /// A Redis Cluster, from these seeds; classic Pub/Sub reaches every node, so any healthy
    /// node will do; sharded Pub/Sub ([`RedisTarget::sharded`]) talks to every master.
    Cluster(Vec<String>),
}

/// Everything a Redis URL says. Passwords are [`SecretString`]s: `Debug` never shows them.
#[derive(Clone)]
pub struct RedisTarget {
    /// Standalone, Sentinel or Cluster, with addresses.
    pub topology: Topology,
    /// ACL user name, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<SecretString>,
    /// Credentials for the sentinels themselves (user name, password), if they need any.
    pub sentinel_auth: Option<(Option<String>, SecretString)>,
    /// Database number (Pub/Sub ignores it, but AUTH/SELECT happen on connect).
    pub db: i64,
    /// Connect with TLS (`rediss`).
    pub tls: bool,
    /// Cluster only: sharded Pub/Sub (`?sharded=true`) instead of classic Pub/Sub.
    pub sharded: bool,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print passwords: health reasons and logs include this.
        f.debug_struct("RedisTarget")
            .field("topology", &self.topology)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("sharded", &self.sharded)
            .finish()
    }
}

const KEY: &str = "redis.url";

impl RedisTarget {
    /// Parses a Redis URL (see the module docs for the forms).
    ///
    /// ```
    /// use hubbus::backend::redis::{RedisTarget, Topology};
    ///
    /// let target = RedisTarget::parse("redis+sentinel://s1,s2:26380/mymaster").unwrap();
    /// assert_eq!(
    ///     target.topology,
    ///     Topology::Sentinel {
    ///         sentinels: vec!["s1:26379".into(), "s2:26380".into()],
    ///         master: "mymaster".into(),
    ///     }
    /// );
    /// ```
    pub fn parse(url: &str) -> Result<Self, BusError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| BusError::config(KEY, format!("{:?} is not a URL", redact_url(url))))?;
        let (kind, tls) = match scheme {
            "redis" => (Kind::Standalone, false),
            "rediss" => (Kind::Standalone, true),
            "redis+sentinel" => (Kind::Sentinel, false),
            "rediss+sentinel" => (Kind::Sentinel, true),
            "redis+cluster" => (Kind::Cluster, false),
            "rediss+cluster" => (Kind::Cluster, true),
            other => {
                return Err(BusError::config(
                    KEY,
                    format!(
                        "unsupported scheme `{other}://`; use redis://, rediss://, \
                         redis+sentinel:// or redis+cluster://"
                    ),
                ));
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (username, password) = parse_userinfo(userinfo)?;
        let default_port = if kind == Kind::Sentinel { 26379 } else { 6379 };
        let addresses = hosts
            .split(',')
            .map(|host| parse_host(host, default_port))
            .collect::<Result<Vec<_>, _>>()?;

        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (topology, db_segment) = match kind {
            Kind::Standalone => {
                if addresses.len() != 1 {
                    return Err(BusError::config(
                        KEY,
                        "redis:// takes one host; use redis+sentinel:// or redis+cluster:// for several",
                    ));
                }
                let addr = addresses.into_iter().next().unwrap_or_default();
                (Topology::Standalone(addr), segments.first().copied())
            }
            Kind::Sentinel => {
                let Some(master) = segments.first() else {
                    return Err(BusError::config(
                        KEY,
                        "redis+sentinel:// needs the master name as its path: redis+sentinel://host:26379/mymaster",
                    ));
                };
                let master = decode(master)?;
                (
                    Topology::Sentinel {
                        sentinels: addresses,
                        master,
                    },
                    segments.get(1).copied(),
                )
            }
            Kind::Cluster => {
                if !segments.is_empty() {
                    return Err(BusError::config(
                        KEY,
                        "redis+cluster:// takes no path: a cluster has only database 0",
                    ));
                }
                (Topology::Cluster(addresses), None)
            }
        };
        if segments.len() > 1 + usize::from(kind == Kind::Sentinel) {
            return Err(BusError::config(
                KEY,
                format!("unexpected path in {:?}", redact_url(url)),
            ));
        }
        let db = match db_segment {
            Some(db) => db
                .parse::<i64>()
                .ok()
                .filter(|db| *db >= 0)
                .ok_or_else(|| {
                    BusError::config(KEY, format!("database `{db}` is not a number >= 0"))
                })?,
            None => 0,
        };

        let mut sentinel_user = None;
        let mut sentinel_password = None;
        let mut sharded = false;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sentinel_username" if kind == Kind::Sentinel => {
                    sentinel_user = Some(decode(value)?)
                }
                "sentinel_password" if kind == Kind::Sentinel => {
                    sentinel_password = Some(decode(value)?)
                }
                "sharded" if kind == Kind::Cluster => {
                    sharded = match value {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(BusError::config(
                                KEY,
                                format!("sharded must be `true` or `false`, not `{other}`"),
                            ));
                        }
                    }
                }
                "sharded" => {
                    return Err(BusError::config(
                        KEY,
                        "sharded=… needs a cluster: redis+cluster://host:port?sharded=true",
                    ));
                }
                other => {
                    return Err(BusError::config(
                        KEY,
                        format!("unknown URL parameter `{other}`"),
                    ));
                }
            }
        }
        let sentinel_auth = match (sentinel_user, sentinel_password) {
            (user, Some(password)) => Some((user, SecretString::from(password))),
            (Some(_), None) => {
                return Err(BusError::config(
                    KEY,
                    "sentinel_username needs sentinel_password",
                ));
            }
            (None, None) => None,
        };
        Ok(RedisTarget {
            topology,
            username,
            password: password.map(SecretString::from),
            sentinel_auth,
            db,
            tls,
            sharded,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Standalone,
    Sentinel,
    Cluster,
}

fn decode(text: &str) -> Result<String, BusError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| BusError::config(KEY, "percent-encoded text is not UTF-8"))
}

fn parse_userinfo(userinfo: Option<&str>) -> Result<(Option<String>, Option<String>), BusError> {
    let Some(userinfo) = userinfo else {
        return Ok((None, None));
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    let user = Some(decode(user)?).filter(|u| !u.is_empty());
    let password = password.map(decode).transpose()?;
    if user.is_some() && password.is_none() {
        return Err(BusError::config(
            KEY,
            "a user name needs a password: redis://user:password@host",
        ));
    }
    Ok((user, password))
}

fn parse_host(host: &str, default_port: u16) -> Result<String, BusError> {
    let bad = |reason: &str| BusError::config(KEY, format!("host `{host}`: {reason}"));
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    // `[v6]:port`, `[v6]`, `name:port`, `name`.
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (name, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad("junk after `]`"))?,
            ),
        };
        (format!("[{name}]"), port)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name.to_owned(), Some(port)),
            None => (host.to_owned(), None),
        }
    };
    if name.is_empty() || name == "[]" {
        return Err(bad("empty host"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("port must be 1 to 65535"))?,
        None => default_port,
    };
    Ok(format!("{name}:{port}"))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn parse(url: &str) -> RedisTarget {
        RedisTarget::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn password(target: &RedisTarget) -> Option<&str> {
        target.password.as_ref().map(|p| p.expose_secret())
    }

    fn reason(url: &str) -> String {
        match RedisTarget::parse(url) {
            Err(BusError::Config { key, reason }) => {
                assert_eq!(key, KEY);
                reason
            }
            other => panic!("{url}: expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn standalone_forms() {
        let target = parse("redis://127.0.0.1");
        assert_eq!(
            target.topology,
            Topology::Standalone("127.0.0.1:6379".into())
        );
        assert!(!target.tls);
        assert_eq!(target.db, 0);
        let target = parse("rediss://app:s%3Acret@cache.example:6380/2");
        assert_eq!(
            target.topology,
            Topology::Standalone("cache.example:6380".into())
        );
        assert!(target.tls);
        assert_eq!(target.username.as_deref(), Some("app"));
        assert_eq!(password(&target), Some("s:cret"));
        assert_eq!(target.db, 2);
        let target = parse("redis://:only-password@[::1]:7000");
        assert_eq!(target.topology, Topology::Standalone("[::1]:7000".into()));
        assert_eq!(target.username, None);
        assert_eq!(password(&target), Some("only-password"));
        assert!(!format!("{target:?}").contains("only-password"));
    }

    #[test]
    fn sentinel_and_cluster_forms() {
        let target = parse(
            "rediss+sentinel://u:p@s1,s2:26380/main/3?sentinel_username=su&sentinel_password=sp",
        );
        assert_eq!(
            target.topology,
            Topology::Sentinel {
                sentinels: vec!["s1:26379".into(), "s2:26380".into()],
                master: "main".into()
            }
        );
        assert_eq!(target.db, 3);
        let (user, password) = target.sentinel_auth.expect("sentinel credentials");
        assert_eq!(user.as_deref(), Some("su"));
        assert_eq!(password.expose_secret(), "sp");
        let target = parse("redis+cluster://n1:7000,n2:7001,[::1]");
        assert_eq!(
            target.topology,
            Topology::Cluster(vec![
                "n1:7000".into(),
                "n2:7001".into(),
                "[::1]:6379".into()
            ])
        );
        assert!(!target.sharded, "classic Pub/Sub is the default");
        assert!(parse("redis+cluster://n1?sharded=true").sharded);
        assert!(!parse("redis+cluster://n1?sharded=false").sharded);
    }

    #[test]
    fn mistakes_are_explained() {
        for (url, expected) in [
            ("localhost:6379", "is not a URL"),
            ("http://x", "unsupported scheme"),
            ("redis://a,b", "takes one host"),
            ("redis://", "empty host"),
            ("redis://h:0", "port must be"),
            ("redis://h:x", "port must be"),
            ("redis://[::1", "unclosed"),
            ("redis://[::1]x", "junk after"),
            ("redis://h/x", "not a number"),
            ("redis://h/-1", "not a number"),
            ("redis://h/1/2", "unexpected path"),
            ("redis://user@h", "needs a password"),
            ("redis+sentinel://s1", "master name"),
            (
                "redis+sentinel://s1/m?sentinel_username=u",
                "needs sentinel_password",
            ),
            ("redis+cluster://n1/0", "takes no path"),
            ("redis://h?timeout=1", "unknown URL parameter"),
            ("redis://h?sharded=true", "needs a cluster"),
            ("redis+cluster://n1?sharded=yes", "`true` or `false`"),
            ("redis://%ff:x@h", "not UTF-8"),
        ] {
            let reason = reason(url);
            assert!(reason.contains(expected), "{url}: {reason}");
        }
    }
}
