//! A fake Redis Sentinel that runs as a turmoil host: it tells clients where a master is and
//! announces failovers, which is all a Sentinel-aware client asks of it.
//!
//! It answers `SENTINEL get-master-addr-by-name <name>` with `*2 <host> <port>` (or the nil
//! array `*-1` for a name it does not monitor), `ROLE`, `PING`, `AUTH`, `HELLO 2`, `CLIENT
//! SETINFO` (which redis-rs sends on connect), `SUBSCRIBE`, `UNSUBSCRIBE` and `PUBLISH` (which
//! Sentinel refuses except on the sentinels' hello channel), and nothing else, as Sentinel
//! does. [`FakeSentinel::failover`] moves a master and publishes `+switch-master` with the
//! payload real Sentinel sends: `<name> <old-ip> <old-port> <new-ip> <new-port>`.
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
use crate::server::commands::{self, CommandSpec};
use crate::server::{
    self, Auth, ChannelAcl, Controls, Dialect, PubSub, ServerConfig, lock, wrong_arity,
};

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
        channels: ChannelAcl::default(),
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

/// What a Sentinel knows. Not `ECHO`, `QUIT` or `SELECT`: Sentinel answers those as unknown
/// commands.
static COMMANDS: [CommandSpec; 9] = [
    commands::PING,
    commands::AUTH,
    commands::HELLO,
    commands::CLIENT,
    commands::SUBSCRIBE,
    commands::UNSUBSCRIBE,
    commands::PUBLISH,
    commands::ROLE,
    commands::SENTINEL,
];

/// The only channel a client may publish to on a Sentinel: where sentinels announce
/// themselves to each other.
const HELLO_CHANNEL: &[u8] = b"__sentinel__:hello";

impl Dialect for SentinelDialect {
    fn hello_identity(&self) -> (&'static str, Option<&'static str>) {
        ("sentinel", None)
    }

    fn commands(&self) -> &'static [CommandSpec] {
        &COMMANDS
    }

    fn execute(&self, name: &str, _pubsub: &PubSub, args: &[Bytes]) -> Frame {
        match (name, args) {
            ("role", []) => Frame::Array(vec![
                Frame::bulk("sentinel"),
                Frame::Array(lock(&self.masters).keys().map(Frame::bulk).collect()),
            ]),
            // Sentinel takes another sentinel's hello and answers 1; the fake is the only
            // sentinel and ignores it.
            ("publish", [channel, _]) if channel.as_ref() == HELLO_CHANNEL => Frame::Integer(1),
            ("publish", [_, _]) => {
                Frame::error("ERR Only HELLO messages are accepted by Sentinel instances.")
            }
            ("sentinel|get-master-addr-by-name", [_, master]) => self.master_addr(master),
            // The table checked the arity; this answers only if it and this match disagree.
            _ => wrong_arity(name),
        }
    }
}

impl SentinelDialect {
    /// `*2 <host> <port>` for a monitored master, the nil array `*-1` otherwise. Sentinel
    /// sends the port as a bulk string, not an integer.
    fn master_addr(&self, name: &[u8]) -> Frame {
        let masters = lock(&self.masters);
        let found = std::str::from_utf8(name)
            .ok()
            .and_then(|name| masters.get(name));
        match found {
            Some(addr) => Frame::Array(vec![
                Frame::bulk(&addr.host),
                Frame::bulk(addr.port.to_string()),
            ]),
            None => Frame::NullArray,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks `line` up in the Sentinel's table and runs it, as a session would once the
    /// client is authenticated and not subscribed.
    fn run(sentinel: &FakeSentinel, line: &str) -> Bytes {
        let dialect = SentinelDialect {
            masters: Arc::clone(&sentinel.masters),
        };
        let command: Vec<Bytes> = line
            .split(' ')
            .map(|word| Bytes::copy_from_slice(word.as_bytes()))
            .collect();
        let reply = match commands::lookup(dialect.commands(), &command) {
            Ok(spec) => dialect.execute(spec.name, &PubSub::detached(), &command[1..]),
            Err(error) => error,
        };
        reply.to_bytes()
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
    fn publish_is_refused_except_on_the_sentinels_hello_channel() {
        let sentinel = FakeSentinel::new();
        assert_eq!(
            run(&sentinel, "PUBLISH news hi"),
            &b"-ERR Only HELLO messages are accepted by Sentinel instances.\r\n"[..]
        );
        assert_eq!(
            run(&sentinel, "PUBLISH __sentinel__:hello x"),
            &b":1\r\n"[..]
        );
    }

    #[test]
    fn commands_a_sentinel_lacks_are_unknown() {
        let sentinel = FakeSentinel::new();
        for line in ["ECHO x", "QUIT", "SELECT 1"] {
            let name = line.split(' ').next().unwrap_or_default();
            let reply = run(&sentinel, line);
            assert!(
                reply.starts_with(format!("-ERR unknown command '{name}'").as_bytes()),
                "{line}: {}",
                reply.escape_ascii()
            );
        }
        assert_eq!(
            SentinelDialect {
                masters: Arc::default()
            }
            .hello_identity(),
            ("sentinel", None),
            "Sentinel's HELLO reports no role"
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
