//! A fake Redis Sentinel that runs as a turmoil host: it tells clients where a master is and
//! announces failovers, which is all a Sentinel-aware client asks of it.
//!
//! It answers `SENTINEL get-master-addr-by-name <name>` with `*2 <host> <port>` (or the nil
//! array `*-1` for a name it does not monitor), `ROLE`, `PING`, `HELLO 2`, `CLIENT SETINFO`
//! (which redis-rs sends on connect) and `SUBSCRIBE`. [`FakeSentinel::failover`] moves a master
//! and publishes `+switch-master` with the payload real Sentinel sends:
//! `<name> <old-ip> <old-port> <new-ip> <new-port>`.
//!
//! Addresses are whatever the test registered. Real Sentinel reports IP addresses; in turmoil a
//! host name such as `redis-b` works just as well, because turmoil's connect resolves it. When a
//! test wants real-looking IPs, it can register `turmoil::lookup("redis-b")` (inside the
//! simulation) or `sim.lookup("redis-b")` (outside it); connecting to `"192.168.0.3:6379"`
//! works too.
//!
//! The monitored masters belong to [`FakeSentinel`], so they survive a restart of the host,
//! as Sentinel's rewritten config file does; subscriptions do not.
//!
//! ```no_run
//! use hubbus_sim::sentinel::{FakeSentinel, serve_sentinel};
//!
//! let sentinel = FakeSentinel::new();
//! sentinel.monitor("mymaster", "redis-a", 6379);
//! let mut sim = turmoil::Builder::new().build();
//! let host = sentinel.clone();
//! sim.host("sentinel", move || serve_sentinel(26379, host.clone()));
//! sim.client("app", async move {
//!     // ... resolve "mymaster" through "sentinel:26379", subscribe to +switch-master ...
//!     sentinel.failover("mymaster", "redis-b", 6379);
//!     Ok(())
//! });
//! sim.run().unwrap();
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::redis::DEFAULT_OUTGOING_QUEUE;
use crate::resp::Frame;
use crate::server::{self, Auth, Controls, Dialect, PubSub, ServerConfig, lock, wrong_arity};

/// The channel on which Sentinel announces that a master moved.
pub const SWITCH_MASTER_CHANNEL: &str = "+switch-master";

/// Where a monitored master is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterAddr {
    /// Host name or IP address, as registered.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// A fake Sentinel's configuration and control handle: which masters it monitors, and the
/// failover switch. Cheap to clone; all clones control the same host.
#[derive(Debug, Clone, Default)]
pub struct FakeSentinel {
    controls: Arc<Controls>,
    masters: Arc<Mutex<BTreeMap<String, MasterAddr>>>,
}

impl FakeSentinel {
    /// A Sentinel that monitors nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Monitors the master `name` at `host:port` (replacing an earlier address).
    pub fn monitor(&self, name: impl Into<String>, host: impl Into<String>, port: u16) {
        lock(&self.masters).insert(
            name.into(),
            MasterAddr {
                host: host.into(),
                port,
            },
        );
    }

    /// Where the master `name` is now, if it is monitored.
    pub fn master(&self, name: &str) -> Option<MasterAddr> {
        lock(&self.masters).get(name).cloned()
    }

    /// Fails the master `name` over to `host:port`: from now on `get-master-addr-by-name`
    /// answers the new address, and `+switch-master` is published to the current subscribers.
    /// Returns how many subscribers were notified (0 while the host is down), or `None` if
    /// `name` is not monitored.
    ///
    /// Only the Sentinel changes: promote the new master's [`crate::redis::FakeRedisControl`]
    /// with `set_role` if the test checks `ROLE`.
    pub fn failover(&self, name: &str, host: impl Into<String>, port: u16) -> Option<usize> {
        let new = MasterAddr {
            host: host.into(),
            port,
        };
        let old = {
            let mut masters = lock(&self.masters);
            let slot = masters.get_mut(name)?;
            std::mem::replace(slot, new.clone())
        };
        let payload = format!("{name} {} {} {} {}", old.host, old.port, new.host, new.port);
        Some(self.controls.live().map_or(0, |pubsub| {
            pubsub.publish(SWITCH_MASTER_CHANNEL.as_bytes(), payload.as_bytes())
        }))
    }
}

/// Runs a fake Sentinel on `port` until the host's software is stopped; the body of a turmoil
/// host: `sim.host("sentinel", move || serve_sentinel(26379, sentinel.clone()))`.
pub async fn serve_sentinel(port: u16, sentinel: FakeSentinel) -> turmoil::Result {
    let config = ServerConfig {
        auth: Auth::Open,
        outgoing_queue: DEFAULT_OUTGOING_QUEUE,
    };
    let dialect = SentinelDialect {
        masters: sentinel.masters,
    };
    server::serve(port, dialect, config, sentinel.controls).await
}

/// The commands only a Sentinel has.
struct SentinelDialect {
    masters: Arc<Mutex<BTreeMap<String, MasterAddr>>>,
}

impl Dialect for SentinelDialect {
    fn hello_identity(&self) -> (&'static str, &'static str) {
        ("sentinel", "master")
    }

    fn execute(&self, _hub: &PubSub, command: &[Bytes]) -> Option<Frame> {
        let (name, args) = command.split_first()?;
        let reply = match name.to_ascii_uppercase().as_slice() {
            b"SENTINEL" => self.sentinel(args),
            b"ROLE" => match args {
                [] => Frame::Array(vec![
                    Frame::bulk("sentinel"),
                    Frame::Array(lock(&self.masters).keys().map(Frame::bulk).collect()),
                ]),
                _ => wrong_arity("role"),
            },
            _ => return None,
        };
        Some(reply)
    }
}

impl SentinelDialect {
    fn sentinel(&self, args: &[Bytes]) -> Frame {
        let Some((sub, rest)) = args.split_first() else {
            return wrong_arity("sentinel");
        };
        match sub.to_ascii_uppercase().as_slice() {
            b"GET-MASTER-ADDR-BY-NAME" => match rest {
                [name] => {
                    let masters = lock(&self.masters);
                    let found = std::str::from_utf8(name)
                        .ok()
                        .and_then(|name| masters.get(name));
                    match found {
                        // Sentinel sends the port as a bulk string, not an integer.
                        Some(addr) => Frame::Array(vec![
                            Frame::bulk(&addr.host),
                            Frame::bulk(addr.port.to_string()),
                        ]),
                        None => Frame::NullArray,
                    }
                }
                _ => wrong_arity("sentinel|get-master-addr-by-name"),
            },
            _ => Frame::error(format!(
                "ERR unknown subcommand '{}'. Try SENTINEL HELP.",
                String::from_utf8_lossy(sub)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sentinel: &FakeSentinel, line: &str) -> Bytes {
        let dialect = SentinelDialect {
            masters: Arc::clone(&sentinel.masters),
        };
        let command: Vec<Bytes> = line
            .split(' ')
            .map(|word| Bytes::copy_from_slice(word.as_bytes()))
            .collect();
        dialect
            .execute(&PubSub::detached(), &command)
            .expect("a sentinel command")
            .to_bytes()
    }

    #[test]
    fn get_master_addr_answers_host_and_port_as_bulk_strings() {
        let sentinel = FakeSentinel::new();
        sentinel.monitor("mymaster", "redis-a", 6379);
        assert_eq!(
            run(&sentinel, "SENTINEL get-master-addr-by-name mymaster"),
            &b"*2\r\n$7\r\nredis-a\r\n$4\r\n6379\r\n"[..]
        );
        assert_eq!(
            run(&sentinel, "sentinel GET-MASTER-ADDR-BY-NAME other"),
            &b"*-1\r\n"[..],
            "an unknown master is the nil array"
        );
    }

    #[test]
    fn failover_moves_the_master_even_while_the_host_is_down() {
        let sentinel = FakeSentinel::new();
        sentinel.monitor("mymaster", "redis-a", 6379);
        assert_eq!(sentinel.failover("mymaster", "redis-b", 6380), Some(0));
        assert_eq!(
            sentinel.master("mymaster"),
            Some(MasterAddr {
                host: "redis-b".into(),
                port: 6380
            })
        );
        assert_eq!(sentinel.failover("unknown", "redis-b", 6380), None);
    }

    #[test]
    fn role_lists_the_monitored_masters() {
        let sentinel = FakeSentinel::new();
        sentinel.monitor("b", "redis-b", 6379);
        sentinel.monitor("a", "redis-a", 6379);
        assert_eq!(
            run(&sentinel, "ROLE"),
            &b"*2\r\n$8\r\nsentinel\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n"[..]
        );
    }

    #[test]
    fn unknown_sentinel_subcommands_are_errors() {
        let sentinel = FakeSentinel::new();
        assert_eq!(
            run(&sentinel, "SENTINEL reset *"),
            &b"-ERR unknown subcommand 'reset'. Try SENTINEL HELP.\r\n"[..]
        );
    }
}
