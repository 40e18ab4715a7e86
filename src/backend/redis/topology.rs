//! Finding the Redis server to connect to, on every (re)connect.
//!
//! - Standalone: the one address.
//! - Sentinel: ask the sentinels in turn for the master (`SENTINEL get-master-addr-by-name`),
//!   and keep a subscription to that sentinel's `+switch-master` channel so a failover is
//!   noticed at once rather than at the next failed command. The supervisor checks `ROLE` on
//!   the master before trusting it: a sentinel's view can be stale.
//! - Cluster: classic `PUBLISH` is broadcast to every node of a Redis Cluster, so any healthy
//!   node serves both connections. Start from the seeds, learn the other nodes from
//!   `CLUSTER SLOTS`, and move to the next known node when the current one fails. Sharded
//!   Pub/Sub asks the same node for the slot map and connects to every master.

use redis::aio::{MultiplexedConnection, PubSub, PubSubStream};
use redis::{AsyncConnectionConfig, RedisConnectionInfo, Value};
use tokio_util::task::AbortOnDropHandle;

use super::target::Topology;
use crate::transport::Connector;

/// Where to connect, and for Sentinel the stream of `+switch-master` notices.
pub(super) struct Resolved {
    pub(super) addr: String,
    pub(super) switch: Option<SwitchWatch>,
}

/// The `+switch-master` subscription on the sentinel that named the current master.
pub(super) struct SwitchWatch {
    pub(super) master: String,
    pub(super) messages: PubSubStream,
}

/// Chooses the server for each connection attempt.
#[derive(Debug)]
pub(super) struct Resolver {
    topology: Topology,
    /// Cluster: seeds plus nodes learned since, in the order first seen.
    nodes: Vec<String>,
    /// The sentinel or cluster node to try first.
    cursor: usize,
}

impl Resolver {
    pub(super) fn new(topology: Topology) -> Self {
        let nodes = match &topology {
            Topology::Cluster(seeds) => seeds.clone(),
            _ => Vec::new(),
        };
        Resolver {
            topology,
            nodes,
            cursor: 0,
        }
    }

    /// True when a `ROLE` check must confirm the server is a master.
    pub(super) fn needs_master_check(&self) -> bool {
        matches!(self.topology, Topology::Sentinel { .. })
    }

    /// The address to try now.
    pub(super) async fn resolve(
        &mut self,
        connector: &dyn Connector,
        sentinel_info: &RedisConnectionInfo,
    ) -> Result<Resolved, String> {
        match &self.topology {
            Topology::Standalone(addr) => Ok(Resolved {
                addr: addr.clone(),
                switch: None,
            }),
            Topology::Cluster(_) => Ok(Resolved {
                addr: self.nodes[self.cursor % self.nodes.len()].clone(),
                switch: None,
            }),
            Topology::Sentinel { sentinels, master } => {
                let mut last_error = String::from("no sentinel configured");
                for step in 0..sentinels.len() {
                    let index = (self.cursor + step) % sentinels.len();
                    match ask_sentinel(connector, sentinel_info, &sentinels[index], master).await {
                        Ok(resolved) => {
                            self.cursor = index;
                            return Ok(resolved);
                        }
                        Err(error) => {
                            last_error = format!("sentinel {}: {error}", sentinels[index])
                        }
                    }
                }
                Err(last_error)
            }
        }
    }

    /// The last attempt failed: next time start from the next sentinel or node.
    pub(super) fn failed(&mut self) {
        let len = match &self.topology {
            Topology::Standalone(_) => 1,
            Topology::Sentinel { sentinels, .. } => sentinels.len(),
            Topology::Cluster(_) => self.nodes.len(),
        };
        self.cursor = (self.cursor + 1) % len.max(1);
    }

    /// Cluster only: adds the nodes `CLUSTER SLOTS` reports that are not known yet, and
    /// returns the reply (sharded Pub/Sub routes by it). `None` when not a cluster or the node
    /// did not answer: for classic Pub/Sub such a node is still usable, learning is best effort.
    pub(super) async fn learn(
        &mut self,
        connection: &mut MultiplexedConnection,
        current: &str,
    ) -> Option<Value> {
        if !matches!(self.topology, Topology::Cluster(_)) {
            return None;
        }
        let slots = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(connection)
            .await
            .ok()?;
        let current_host = current.rsplit_once(':').map_or(current, |(host, _)| host);
        for addr in cluster_slot_addresses(&slots, current_host) {
            if !self.nodes.contains(&addr) {
                self.nodes.push(addr);
            }
        }
        Some(slots)
    }
}

/// `host:port` for every node in a `CLUSTER SLOTS` reply: each entry is
/// `[start, end, [ip, port, ...], [replica ip, port, ...]...]`. An empty ip means "the node you
/// asked".
fn cluster_slot_addresses(reply: &Value, current_host: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Value::Array(ranges) = reply else {
        return found;
    };
    for range in ranges {
        let Value::Array(parts) = range else {
            continue;
        };
        for node in parts.iter().skip(2) {
            let Value::Array(fields) = node else {
                continue;
            };
            let (Some(Value::BulkString(ip)), Some(Value::Int(port))) =
                (fields.first(), fields.get(1))
            else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            let ip = String::from_utf8_lossy(ip);
            let host = if ip.is_empty() { current_host } else { &ip };
            let addr = host_port(host, port);
            if !found.contains(&addr) {
                found.push(addr);
            }
        }
    }
    found
}

/// `host:port`, bracketing IPv6 literals.
pub(super) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn ask_sentinel(
    connector: &dyn Connector,
    info: &RedisConnectionInfo,
    sentinel: &str,
    master: &str,
) -> Result<Resolved, String> {
    let stream = connector
        .connect(sentinel)
        .await
        .map_err(|e| e.to_string())?;
    let (mut connection, driver) = MultiplexedConnection::new_with_config(
        info,
        stream,
        AsyncConnectionConfig::new().set_response_timeout(None),
    )
    .await
    .map_err(|e| e.to_string())?;
    // Aborted when this returns, and also when the connect timeout cancels the attempt.
    let driver = AbortOnDropHandle::new(tokio::spawn(driver));
    let reply = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async::<Option<(String, u16)>>(&mut connection)
        .await;
    drop(driver);
    let (host, port) = reply
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("does not know a master named `{master}`"))?;

    let stream = connector
        .connect(sentinel)
        .await
        .map_err(|e| e.to_string())?;
    let mut pubsub = PubSub::new(info, stream).await.map_err(|e| e.to_string())?;
    pubsub
        .subscribe("+switch-master")
        .await
        .map_err(|e| e.to_string())?;
    Ok(Resolved {
        addr: host_port(&host, port),
        switch: Some(SwitchWatch {
            master: master.to_owned(),
            messages: pubsub.into_on_message(),
        }),
    })
}

/// True when a `+switch-master` payload (`<name> <old-ip> <old-port> <new-ip> <new-port>`)
/// is about `master`.
pub(super) fn switch_concerns(payload: &[u8], master: &str) -> bool {
    payload
        .split(|b| *b == b' ')
        .next()
        .is_some_and(|name| name == master.as_bytes())
}

/// True when a `ROLE` reply says master.
pub(super) fn is_master(role: &Value) -> bool {
    match role {
        Value::Array(parts) => matches!(
            parts.first(),
            Some(Value::BulkString(role)) if role.as_slice() == b"master"
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_reply_yields_every_node_once() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id1")]),
                Value::Array(vec![bulk(""), Value::Int(7003)]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                Value::Array(vec![bulk("::1"), Value::Int(7001)]),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000)]),
                Value::Array(vec![bulk("bad"), Value::Int(-1)]),
                Value::Int(3),
            ]),
            Value::Int(1),
        ]);
        assert_eq!(
            cluster_slot_addresses(&reply, "seed"),
            ["10.0.0.1:7000", "seed:7003", "[::1]:7001"]
        );
        assert!(cluster_slot_addresses(&Value::Nil, "seed").is_empty());
    }

    #[test]
    fn role_and_switch_parsing() {
        assert!(is_master(&Value::Array(vec![
            bulk("master"),
            Value::Int(0)
        ])));
        assert!(!is_master(&Value::Array(vec![bulk("slave")])));
        assert!(!is_master(&Value::Nil));
        assert!(switch_concerns(
            b"mymaster 1.1.1.1 6379 2.2.2.2 6380",
            "mymaster"
        ));
        assert!(!switch_concerns(
            b"other 1.1.1.1 6379 2.2.2.2 6380",
            "mymaster"
        ));
        assert!(!switch_concerns(b"", "mymaster"));
    }

    #[test]
    fn resolver_rotates_after_failures() {
        let mut resolver = Resolver::new(Topology::Cluster(vec!["a:1".into(), "b:2".into()]));
        assert!(!resolver.needs_master_check());
        assert_eq!(resolver.cursor, 0);
        resolver.failed();
        assert_eq!(resolver.cursor, 1);
        resolver.failed();
        assert_eq!(resolver.cursor, 0);
        let mut standalone = Resolver::new(Topology::Standalone("a:1".into()));
        standalone.failed();
        assert_eq!(standalone.cursor, 0);
    }
}
