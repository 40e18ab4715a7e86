//! A fake Redis that runs as a turmoil host, faithful enough for the real redis-rs client.
//!
//! The Redis backend builds `redis::aio::MultiplexedConnection` and `redis::aio::PubSub` on
//! streams from a `Connector`; in the simulation those streams end here. The fake speaks RESP2
//! and implements what those connections use: the connection setup redis-rs pipelines
//! (`AUTH`, `SELECT`, `CLIENT SETINFO`), `HELLO 2`, `PING`, `ECHO`, `PUBLISH`, `SUBSCRIBE`,
//! `UNSUBSCRIBE`, sharded Pub/Sub (`SPUBLISH`, `SSUBSCRIBE`, `SUNSUBSCRIBE`), `ROLE` and
//! `QUIT`, with the replies and error texts of Redis 7.2, including the subscribed-mode rules
//! and the order in which Redis checks a command. Several fakes form a [`FakeCluster`], whose
//! nodes also answer `CLUSTER SLOTS`, redirect by hash slot and speak RESP3 as far as sharded
//! Pub/Sub needs. Pattern subscriptions and keys are not implemented, nor RESP3 outside a
//! cluster (`HELLO 3` gets `-NOPROTO`, so a RESP3 client fails at connect instead of
//! misbehaving later). `sim/tests/redis_differential.rs`
//! compares the fake with a real server; `docs/testing.md` lists what still differs.
//!
//! A test configures the server with [`FakeRedisOptions`] and steers it through the
//! [`FakeRedisControl`] the options carry. The control outlives the host's software, so it
//! keeps working across `Sim::bounce` and `Sim::crash`; the subscriptions do not, because they
//! live in the running software, exactly as in a restarted Redis.
//!
//! ```no_run
//! use hubbus_sim::redis::{FakeRedisOptions, serve_redis};
//!
//! let options = FakeRedisOptions::new().with_password("secret");
//! let control = options.control();
//! let mut sim = turmoil::Builder::new().build();
//! sim.host("redis", move || serve_redis(6379, options.clone()));
//! sim.client("app", async move {
//!     // ... connect to "redis:6379" through hubbus::transport::TurmoilTcp ...
//!     control.wedge(true); // Redis stops answering; connections stay open.
//!     Ok(())
//! });
//! sim.run().unwrap();
//! ```

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::resp::{Frame, parse_integer};
use crate::server::commands::{self, CommandSpec};
use crate::server::{
    self, Auth, ChannelAcl, Controls, Dialect, PubSub, ServerConfig, Space, lock, wrong_arity,
};

/// The outgoing queue of each connection, in frames, unless configured otherwise.
///
/// Redis disconnects a Pub/Sub client whose output buffer passes 32 MiB, which takes hundreds
/// of thousands of small messages; the fake counts frames instead of bytes, and the default
/// is large enough that a burst of publishes never disconnects a subscriber that keeps
/// reading. Tests of slow subscribers configure a small queue.
pub const DEFAULT_OUTGOING_QUEUE: usize = 65_536;

/// How a fake Redis host behaves. Cloning shares the [`FakeRedisControl`], so the clone that
/// the host closure captures and the one the test keeps steer the same server.
#[derive(Debug, Clone)]
pub struct FakeRedisOptions {
    auth: Auth,
    outgoing_queue: usize,
    channels: ChannelAcl,
    control: FakeRedisControl,
    /// The cluster this node belongs to, and its index there.
    cluster: Option<(FakeCluster, usize)>,
}

impl Default for FakeRedisOptions {
    fn default() -> Self {
        FakeRedisOptions {
            auth: Auth::Open,
            outgoing_queue: DEFAULT_OUTGOING_QUEUE,
            channels: ChannelAcl::default(),
            control: FakeRedisControl::default(),
            cluster: None,
        }
    }
}

impl FakeRedisOptions {
    /// No password, a master, queues of [`DEFAULT_OUTGOING_QUEUE`] frames.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `AUTH <password>` (or `AUTH default <password>`), like `requirepass`.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.auth = Auth::Password(password.into());
        self
    }

    /// Requires `AUTH <username> <password>` for an ACL user; the `default` user is disabled.
    pub fn with_user(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::User {
            name: username.into(),
            password: password.into(),
        };
        self
    }

    /// Lets clients `SUBSCRIBE` and `PUBLISH` only to channels matching one of `patterns`
    /// (globs with `*` and `?`), like an ACL user with `&<pattern>` rules instead of
    /// `allchannels`. A command naming another channel is refused whole with Redis 7.0's
    /// `-NOPERM this user has no permissions to access one of the channels used as arguments`,
    /// in subscribed mode too, and the connection stays open; `UNSUBSCRIBE` is not checked.
    pub fn with_channels<P: AsRef<[u8]>>(mut self, patterns: impl IntoIterator<Item = P>) -> Self {
        self.channels = ChannelAcl(Some(
            patterns
                .into_iter()
                .map(|pattern| Bytes::copy_from_slice(pattern.as_ref()))
                .collect(),
        ));
        self
    }

    /// How many frames (replies and messages) may wait for a connection's socket. A subscriber
    /// that falls further behind is disconnected and counted in
    /// [`FakeRedisStats::slow_subscribers_disconnected`]. At least 1.
    ///
    /// The server executes a whole pipeline of commands before the writers run, so the queue
    /// must also hold the largest burst a single client publishes at once.
    pub fn with_outgoing_queue(mut self, frames: usize) -> Self {
        self.outgoing_queue = frames.max(1);
        self
    }

    /// The handle that steers and observes the server these options start.
    pub fn control(&self) -> FakeRedisControl {
        self.control.clone()
    }
}

/// What `ROLE` answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Role {
    /// `*3 master :0 *0`: a master with no replicas.
    #[default]
    Master,
    /// `*5 slave <host> :<port> connected :0`: a replica of that master.
    Replica {
        /// The master's host as the replica reports it.
        master_host: String,
        /// The master's port.
        master_port: u16,
    },
}

/// Counters of one fake Redis host, summed over all restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FakeRedisStats {
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// `PUBLISH` commands executed.
    pub published: u64,
    /// Messages written to subscribers' sockets (one per subscriber per publish).
    pub delivered: u64,
    /// Subscribers disconnected because their outgoing queue was full.
    pub slow_subscribers_disconnected: u64,
}

/// Steers and observes a fake Redis host from outside it: from the test, a client future, or
/// between `Sim::step` calls. Cheap to clone; all clones control the same host.
#[derive(Debug, Clone, Default)]
pub struct FakeRedisControl {
    controls: Arc<Controls>,
    role: Arc<Mutex<Role>>,
}

impl FakeRedisControl {
    /// Wedges (`true`) or releases (`false`) the server. A wedged server keeps every connection
    /// open and accepts new ones, but executes no command and writes nothing, not even messages
    /// already queued: the silent failure of a stalled Redis, which only a liveness probe with
    /// a timeout detects (centrifugo issue #1189). On release it carries on where it stopped,
    /// answering everything that arrived meanwhile.
    pub fn wedge(&self, wedged: bool) {
        self.controls.set_wedged(wedged);
    }

    /// Whether the server is wedged.
    pub fn is_wedged(&self) -> bool {
        self.controls.is_wedged()
    }

    /// Changes what `ROLE` reports, e.g. to promote a replica during a simulated failover.
    pub fn set_role(&self, role: Role) {
        *lock(&self.role) = role;
    }

    /// What `ROLE` reports now.
    pub fn role(&self) -> Role {
        lock(&self.role).clone()
    }

    /// Closes every client connection (the server keeps running). Step the simulation once
    /// after this and before `Sim::crash` or `Sim::bounce` to model a process crash: the
    /// kernel resets a dead process's connections, and closing them from inside the software
    /// keeps the run deterministic (turmoil reads the real clock for packets sent while it tears
    /// a host down).
    pub fn disconnect_all(&self) {
        if let Some(pubsub) = self.controls.live() {
            pubsub.disconnect_all();
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> FakeRedisStats {
        let counts = self.controls.counts();
        FakeRedisStats {
            connections_accepted: counts.connections,
            published: counts.published,
            delivered: counts.delivered,
            slow_subscribers_disconnected: counts.slow_disconnects,
        }
    }

    /// How many connections are subscribed to `channel` right now; 0 while the host is down.
    /// This is how a test sees that a client resubscribed after a restart.
    pub fn subscribers(&self, channel: impl AsRef<[u8]>) -> usize {
        self.controls
            .live()
            .map_or(0, |pubsub| pubsub.subscribers(channel.as_ref()))
    }

    /// How many connections are subscribed to the shard channel `channel` (`SSUBSCRIBE`)
    /// right now; 0 while the host is down.
    pub fn shard_subscribers(&self, channel: impl AsRef<[u8]>) -> usize {
        self.controls.live().map_or(0, |pubsub| {
            pubsub.subscribers_in(Space::Shard, channel.as_ref())
        })
    }
}

/// Runs a fake Redis on `port` until the host's software is stopped; the body of a turmoil
/// host: `sim.host("redis", move || serve_redis(6379, options.clone()))`.
///
/// Each call starts with no subscriptions, so a bounced host has forgotten them all.
pub async fn serve_redis(port: u16, options: FakeRedisOptions) -> turmoil::Result {
    let FakeRedisOptions {
        auth,
        outgoing_queue,
        channels,
        control,
        cluster,
    } = options;
    let dialect = RedisDialect {
        role: control.role,
        cluster,
    };
    let config = ServerConfig {
        auth,
        outgoing_queue,
        channels,
    };
    server::serve(port, dialect, config, control.controls).await
}

/// The commands only a Redis server has.
struct RedisDialect {
    role: Arc<Mutex<Role>>,
    cluster: Option<(FakeCluster, usize)>,
}

/// What a Redis server knows: the shared commands, `PUBLISH`, sharded Pub/Sub, `SELECT`, `ROLE`
/// and `CLUSTER` (which a server outside a cluster answers with "cluster support disabled", as
/// Redis does).
static COMMANDS: [CommandSpec; 15] = [
    commands::PING,
    commands::ECHO,
    commands::QUIT,
    commands::AUTH,
    commands::HELLO,
    commands::CLIENT,
    commands::SUBSCRIBE,
    commands::UNSUBSCRIBE,
    commands::PUBLISH,
    commands::SPUBLISH,
    commands::SSUBSCRIBE,
    commands::SUNSUBSCRIBE,
    commands::SELECT,
    commands::ROLE,
    commands::CLUSTER,
];

impl Dialect for RedisDialect {
    fn hello_identity(&self) -> (&'static str, Option<&'static str>) {
        let role = match *lock(&self.role) {
            Role::Master => "master",
            Role::Replica { .. } => "replica",
        };
        let mode = if self.cluster.is_some() {
            "cluster"
        } else {
            "standalone"
        };
        (mode, Some(role))
    }

    fn commands(&self) -> &'static [CommandSpec] {
        &COMMANDS
    }

    fn execute(&self, name: &str, pubsub: &PubSub, args: &[Bytes]) -> Frame {
        match (name, args) {
            ("publish", [channel, payload]) => {
                let mut receivers = pubsub.publish(channel, payload);
                // A cluster broadcasts classic messages to every node.
                if let Some((cluster, me)) = &self.cluster {
                    receivers += cluster.broadcast(*me, channel, payload);
                }
                Frame::Integer(receivers as i64)
            }
            ("spublish", [channel, payload]) => {
                if let Some(redirect) = self.shard_redirect(std::slice::from_ref(channel)) {
                    return redirect;
                }
                Frame::Integer(pubsub.publish_in(Space::Shard, channel, payload) as i64)
            }
            ("select", [index]) => select(index),
            ("role", []) => self.role(),
            ("cluster|slots", [_]) => self.cluster_view(ClusterState::slots_reply),
            ("cluster|myid", [_]) => self.cluster_view(|state, me| Frame::bulk(state.id(me))),
            ("cluster|keyslot", [_, key]) => Frame::Integer(i64::from(key_slot(key))),
            // The table checked the arity; this answers only if it and this match disagree.
            _ => wrong_arity(name),
        }
    }

    fn resp3(&self) -> bool {
        self.cluster.is_some()
    }

    fn shard_redirect(&self, channels: &[Bytes]) -> Option<Frame> {
        let (cluster, me) = self.cluster.as_ref()?;
        let slot = key_slot(channels.first()?);
        if channels.iter().any(|channel| key_slot(channel) != slot) {
            return Some(Frame::error(
                "CROSSSLOT Keys in request don't hash to the same slot",
            ));
        }
        let state = lock(&cluster.state);
        match state.owners[usize::from(slot)] {
            Some(owner) if owner == *me => None,
            Some(owner) => Some(Frame::error(format!(
                "MOVED {slot} {}:{}",
                state.members[owner].host, state.members[owner].port
            ))),
            None => Some(Frame::error("CLUSTERDOWN Hash slot not served")),
        }
    }
}

impl RedisDialect {
    /// Answers from the cluster's state; only cluster nodes know `CLUSTER`.
    fn cluster_view(&self, answer: impl Fn(&ClusterState, usize) -> Frame) -> Frame {
        match &self.cluster {
            Some((cluster, me)) => answer(&lock(&cluster.state), *me),
            None => Frame::error("ERR This instance has cluster support disabled"),
        }
    }

    fn role(&self) -> Frame {
        match &*lock(&self.role) {
            Role::Master => Frame::Array(vec![
                Frame::bulk("master"),
                Frame::Integer(0),
                Frame::Array(Vec::new()),
            ]),
            Role::Replica {
                master_host,
                master_port,
            } => Frame::Array(vec![
                Frame::bulk("slave"),
                Frame::bulk(master_host),
                Frame::Integer(i64::from(*master_port)),
                Frame::bulk("connected"),
                Frame::Integer(0),
            ]),
        }
    }
}

/// `SELECT <index>` with the 16 databases of a default Redis. Pub/Sub ignores the database,
/// so the choice is only validated, not remembered. As in Redis, the index must be an integer
/// that fits an `int`, each failure with its own text.
fn select(index: &[u8]) -> Frame {
    match parse_integer(index).map(i32::try_from) {
        None => Frame::error("ERR value is not an integer or out of range"),
        Some(Err(_)) => Frame::error(format!(
            "ERR value is out of range, value must between {} and {}",
            i32::MIN,
            i32::MAX
        )),
        Some(Ok(0..=15)) => Frame::ok(),
        Some(Ok(_)) => Frame::error("ERR DB index is out of range"),
    }
}

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The hash slot of a key or shard channel, as Redis Cluster computes it: CRC16 of the name,
/// or of the part between the first `{` and the next `}` when that part is not empty.
pub fn key_slot(name: &[u8]) -> u16 {
    let hashed = name
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &name[open + 1..];
            let len = rest.iter().position(|b| *b == b'}')?;
            (len > 0).then(|| &rest[..len])
        })
        .unwrap_or(name);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// A fake Redis Cluster: the fake Redis hosts that serve it, and which of them owns which of
/// the [`SLOTS`] hash slots. The nodes and the test share it (clones share one state), so the
/// test moves slots and fails shards over while the nodes serve.
///
/// What a node of it does beyond a standalone fake: `CLUSTER SLOTS`, `CLUSTER MYID` and
/// `CLUSTER KEYSLOT`; `SSUBSCRIBE` and `SPUBLISH` only for the slots it owns (`-MOVED <slot>
/// <host>:<port>` otherwise, `-CROSSSLOT` for channels of several slots); classic `PUBLISH`
/// reaches the subscribers of every live node; `HELLO 3` switches a connection to RESP3, where
/// confirmations and messages are pushes. When a slot moves, its old owner ends every
/// subscription to a shard channel of that slot with a `sunsubscribe`, as Redis 7 does.
/// Replicas are not modelled: [`FakeCluster::fail_over`] hands a failed node's slots to
/// another node, which is what a promotion looks like to clients.
#[derive(Debug, Clone, Default)]
pub struct FakeCluster {
    state: Arc<Mutex<ClusterState>>,
}

#[derive(Debug)]
struct ClusterState {
    members: Vec<Member>,
    /// The owner of each slot, an index into `members`.
    owners: Vec<Option<usize>>,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            members: Vec::new(),
            owners: vec![None; usize::from(SLOTS)],
        }
    }
}

#[derive(Debug)]
struct Member {
    host: String,
    port: u16,
    control: FakeRedisControl,
}

impl ClusterState {
    /// A node's 40-character id.
    fn id(&self, member: usize) -> String {
        format!("{:040x}", member + 1)
    }

    fn index(&self, host: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.host == host)
            .unwrap_or_else(|| panic!("`{host}` is not a node of this cluster"))
    }

    /// `CLUSTER SLOTS`: `[start, end, [host, port, id]]` for every run of slots one node owns.
    fn slots_reply(&self, _me: usize) -> Frame {
        let mut ranges = Vec::new();
        let mut start = 0;
        while start < usize::from(SLOTS) {
            let owner = self.owners[start];
            let mut end = start;
            while end + 1 < usize::from(SLOTS) && self.owners[end + 1] == owner {
                end += 1;
            }
            if let Some(owner) = owner {
                let member = &self.members[owner];
                ranges.push(Frame::Array(vec![
                    Frame::Integer(start as i64),
                    Frame::Integer(end as i64),
                    Frame::Array(vec![
                        Frame::bulk(&member.host),
                        Frame::Integer(i64::from(member.port)),
                        Frame::bulk(self.id(owner)),
                    ]),
                ]));
            }
            start = end + 1;
        }
        Frame::Array(ranges)
    }
}

impl FakeCluster {
    /// A cluster with no nodes and no slot served.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the server `options` start a node of this cluster, reachable at `host:port`,
    /// owning no slot until given some.
    pub fn join(&self, host: &str, port: u16, mut options: FakeRedisOptions) -> FakeRedisOptions {
        let mut state = lock(&self.state);
        state.members.push(Member {
            host: host.to_owned(),
            port,
            control: options.control(),
        });
        options.cluster = Some((self.clone(), state.members.len() - 1));
        options
    }

    /// Splits every slot evenly over the nodes `hosts`, in ranges in their order, as
    /// `redis-cli --cluster create` does.
    pub fn assign_evenly(&self, hosts: &[&str]) {
        let mut state = lock(&self.state);
        let owners: Vec<usize> = hosts.iter().map(|host| state.index(host)).collect();
        let per = usize::from(SLOTS).div_ceil(owners.len().max(1));
        for slot in 0..usize::from(SLOTS) {
            state.owners[slot] = Some(owners[slot / per]);
        }
    }

    /// The node (`host`) that owns `channel`'s slot, if one does.
    pub fn owner(&self, channel: &[u8]) -> Option<String> {
        let state = lock(&self.state);
        let owner = state.owners[usize::from(key_slot(channel))]?;
        Some(state.members[owner].host.clone())
    }

    /// The slots `host` owns.
    pub fn slots_of(&self, host: &str) -> Vec<u16> {
        let state = lock(&self.state);
        let index = state.index(host);
        (0..SLOTS)
            .filter(|slot| state.owners[usize::from(*slot)] == Some(index))
            .collect()
    }

    /// Moves `slots` to the node `to` (a finished `CLUSTER SETSLOT … NODE`): from now on
    /// their old owners redirect, and end their subscriptions to shard channels of those slots
    /// with a `sunsubscribe`. Returns how many subscriptions ended.
    pub fn move_slots(&self, slots: &[u16], to: &str) -> usize {
        let (previous, members) = {
            let mut state = lock(&self.state);
            let to = state.index(to);
            let mut previous = std::collections::BTreeSet::new();
            for slot in slots {
                if let Some(old) = state.owners[usize::from(*slot)].replace(to)
                    && old != to
                {
                    previous.insert(old);
                }
            }
            let members: Vec<FakeRedisControl> =
                state.members.iter().map(|m| m.control.clone()).collect();
            (previous, members)
        };
        let moved: std::collections::BTreeSet<u16> = slots.iter().copied().collect();
        previous
            .into_iter()
            .filter_map(|old| members[old].controls.live())
            .map(|pubsub| pubsub.end_shard_channels(|channel| moved.contains(&key_slot(channel))))
            .sum()
    }

    /// Every slot of `from` goes to `to`: the promotion of `from`'s replica after `from`
    /// failed (crash `from`'s host first to model the failure).
    pub fn fail_over(&self, from: &str, to: &str) -> usize {
        let slots = self.slots_of(from);
        self.move_slots(&slots, to)
    }

    /// A classic `PUBLISH` on node `from` reaching the subscribers of every other live node.
    fn broadcast(&self, from: usize, channel: &[u8], payload: &[u8]) -> usize {
        let others: Vec<FakeRedisControl> = lock(&self.state)
            .members
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != from)
            .map(|(_, m)| m.control.clone())
            .collect();
        others
            .iter()
            .filter_map(|control| control.controls.live())
            .map(|pubsub| pubsub.publish(channel, payload))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks `line` up in the dialect's table and runs it, as a session would once the
    /// client is authenticated and not subscribed.
    fn run(dialect: &RedisDialect, line: &str) -> Bytes {
        let pubsub = PubSub::detached();
        let command: Vec<Bytes> = line
            .split(' ')
            .map(|word| Bytes::copy_from_slice(word.as_bytes()))
            .collect();
        let reply = match commands::lookup(dialect.commands(), &command) {
            Ok(spec) => dialect.execute(spec.name, &pubsub, &command[1..]),
            Err(error) => error,
        };
        reply.to_bytes()
    }

    #[test]
    fn role_reports_master_or_replica_in_redis_format() {
        let control = FakeRedisControl::default();
        let dialect = RedisDialect {
            role: Arc::clone(&control.role),
            cluster: None,
        };
        assert_eq!(
            run(&dialect, "ROLE"),
            &b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"[..]
        );
        control.set_role(Role::Replica {
            master_host: "redis-a".into(),
            master_port: 6379,
        });
        assert_eq!(
            run(&dialect, "role"),
            &b"*5\r\n$5\r\nslave\r\n$7\r\nredis-a\r\n:6379\r\n$9\r\nconnected\r\n:0\r\n"[..]
        );
        assert_eq!(dialect.hello_identity(), ("standalone", Some("replica")));
    }

    #[test]
    fn select_accepts_the_sixteen_default_databases() {
        let dialect = RedisDialect {
            role: Arc::default(),
            cluster: None,
        };
        assert_eq!(run(&dialect, "SELECT 15"), &b"+OK\r\n"[..]);
        for index in ["16", "-1"] {
            assert_eq!(
                run(&dialect, &format!("SELECT {index}")),
                &b"-ERR DB index is out of range\r\n"[..]
            );
        }
        for index in ["x", "01", "+1", "99999999999999999999"] {
            assert_eq!(
                run(&dialect, &format!("SELECT {index}")),
                &b"-ERR value is not an integer or out of range\r\n"[..],
                "{index} is not an integer as Redis reads one"
            );
        }
        assert_eq!(
            run(&dialect, "SELECT 2147483648"),
            &b"-ERR value is out of range, value must between -2147483648 and 2147483647\r\n"[..]
        );
    }

    #[test]
    fn publish_checks_its_arity_and_other_commands_are_unknown() {
        let dialect = RedisDialect {
            role: Arc::default(),
            cluster: None,
        };
        assert_eq!(run(&dialect, "PUBLISH ch msg"), &b":0\r\n"[..]);
        assert_eq!(
            run(&dialect, "PUBLISH ch"),
            &b"-ERR wrong number of arguments for 'publish' command\r\n"[..]
        );
        assert_eq!(
            run(&dialect, "GET key"),
            &b"-ERR unknown command 'GET', with args beginning with: 'key' \r\n"[..]
        );
        assert_eq!(
            run(&dialect, "SENTINEL masters"),
            &b"-ERR unknown command 'SENTINEL', with args beginning with: 'masters' \r\n"[..],
            "a Redis server is no Sentinel"
        );
        assert_eq!(
            run(&dialect, "CLUSTER SLOTS"),
            &b"-ERR This instance has cluster support disabled\r\n"[..]
        );
    }
}
