//! The fake NATS server and its JetStream engine, compared with a real `nats-server -js`: one
//! generated sequence of raw NATS protocol operations is sent to real nats-server processes
//! over `TokioTcp` and to the fakes inside turmoil over `TurmoilTcp`, by one driver generic
//! over `Connector`, and whatever the two answered must be the same, op by op.
//!
//! The operations cover what the NATS links and the JetStream bus send (`CONNECT` with
//! headers and no-responders, with and without credentials, `PING`, `SUB` with wildcards and
//! queue groups, `UNSUB` with and without a maximum, `PUB` and `HPUB` to subjects with any
//! number of subscribers on one to three connections, requests nobody serves, the JetStream
//! API calls of `src/backend/nats/jetstream`: stream create, info, update and delete, durable,
//! named and ephemeral consumer create, info and delete, pulls with a batch, `expires` and
//! `no_wait`, publishes into a stream with and without `Nats-Msg-Id`, and `+ACK`, `-NAK`,
//! `+TERM` and `+WPI` on what was delivered) and what a client could get wrong around them:
//! wrong credentials, invalid subjects, malformed lines, oversized payloads and control lines,
//! bad JSON. Two servers take part, one open and one with a user and password, both with
//! JetStream.
//!
//! Every op is followed by a `PING`; what arrives before the `PONG` is the op's answer. After
//! that, the other connections to the same server are pinged in turn, and what reaches them
//! before their `PONG` is what the op delivered to them: nats-server hands a message to every
//! subscriber's connection before it reads the publisher's next line, so this needs no waiting
//! for silence. JetStream answers from its own goroutines, so an op that expects an answer on
//! its reply inbox (an API call: one reply; a publish into a stream: one PubAck; a pull: up to
//! the batch or a status; an ack with a reply: one confirmation) waits for that count within a
//! deadline. Which streams and consumers exist, and so how many replies an op implies, each
//! side learns from its own server's answers. Acks ask for a confirmation, so that the next op
//! sees them settled, and a connection that the test closes, or that an op may get closed,
//! unsubscribes first: nats-server drops a closed connection's subscriptions on its own time.
//!
//! Replies are compared after replacing what legitimately differs (ids, versions, times and
//! the names a server makes up; see `wire.rs`). Every other difference must be one of the
//! [`Known`] differences, each listed with its reason in `docs/testing.md`; anything else fails
//! the test, which then shrinks the sequence to the ops that still show it and prints both
//! transcripts.
//!
//! `HUBBUS_TEST_DIFF_SEED=<n>` replays one sequence; `HUBBUS_TEST_DIFF_CASES=<count>` runs more
//! (or fewer) than the default.

#[path = "nats_differential/real_nats.rs"]
mod real_nats;
#[path = "nats_differential/wire.rs"]
mod wire;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hubbus::transport::{BoxedStream, Connector, TokioTcp, TurmoilTcp};
use hubbus_sim::nats::jetstream::JetStreamStore;
use hubbus_sim::nats::{DEFAULT_PORT, FakeNatsOptions, serve_nats};
use real_nats::NatsProcess;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use wire::{Parsed, RawMsg, Seen, ServerOp};

/// Sequences run by default: enough to reach every op in every state, within the time budget
/// of a default `cargo test` run.
const DEFAULT_CASES: u64 = 300;

/// The first sequence's seed; sequence `i` uses `FIRST_SEED + i`.
const FIRST_SEED: u64 = 0x4a75_0000;

/// How long one answer may take. A real server answers on loopback in well under a
/// millisecond and the simulation's links take 1 ms, so this only runs out when a server does
/// not answer; it is generous so that a loaded machine starving the real server for a moment
/// is not taken for one.
const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// The user and password of the server that requires them.
const USER: &str = "hub";
const PASSWORD: &str = "secret";

// ---------------------------------------------------------------------------------------------
// The sequences.

/// Which server a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// No authentication.
    Open,
    /// `--user hub --pass secret`.
    Auth,
}

impl Target {
    fn index(self) -> usize {
        self as usize
    }
}

/// Credentials a `CONNECT` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Creds {
    None,
    Right,
    Wrong,
}

/// What one op does on its connection. Text may hold `{c}` (the run's core subject prefix),
/// `{j}` (the run's JetStream subject prefix) and `{S0}`, `{S1}` (the run's stream names),
/// which [`Run::resolve`] fills in, so that runs on the long-lived real servers never see each
/// other's subjects or streams.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Connect {
        creds: Creds,
        verbose: bool,
        headers: bool,
        no_responders: bool,
        echo: bool,
    },
    /// Only the `PING` that follows every op.
    Ping,
    Sub {
        subject: &'static str,
        queue: Option<&'static str>,
        sid: u32,
    },
    Unsub {
        sid: u32,
        max: Option<u32>,
    },
    /// `PUB`, or `HPUB` when `headers` is set.
    Pub {
        subject: &'static str,
        headers: Option<&'static str>,
        payload: &'static [u8],
    },
    /// Subscribes the op's inbox and publishes to `subject` with it as the reply subject.
    Request {
        subject: &'static str,
        headers: Option<&'static str>,
    },
    /// A JetStream API call (`$JS.API.<api>`) with its JSON body, replied to the op's inbox.
    Api {
        api: &'static str,
        body: &'static str,
    },
    /// A publish into a stream's subjects with the op's inbox as reply, as the bus publishes.
    JsPublish {
        subject: &'static str,
        msg_id: Option<&'static str>,
        payload: &'static [u8],
    },
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with this body, to the op's inbox.
    Pull {
        stream: &'static str,
        consumer: &'static str,
        body: &'static str,
    },
    /// Settles the `delivery`-th message this side's pulls got (modulo their number) with
    /// `body`, asking for a confirmation on the op's inbox.
    Ack {
        delivery: usize,
        body: &'static str,
    },
    /// Bytes that are not a well-formed operation.
    Raw(&'static str),
    /// Closes the connection; the next op on the slot opens a new one.
    Reconnect,
}

/// One operation on one of the sequence's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Op {
    slot: usize,
    action: Action,
}

/// A generated sequence: which server each connection slot talks to, and the ops.
#[derive(Debug, Clone)]
struct Sequence {
    slots: Vec<Target>,
    ops: Vec<Op>,
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, op) in self.ops.iter().enumerate() {
            write!(
                f,
                "  #{index:<3} slot {} ({:?}): ",
                op.slot, self.slots[op.slot]
            )?;
            match &op.action {
                Action::Raw(text) => writeln!(f, "raw {}", wire::show(text.as_bytes()))?,
                Action::Pub {
                    subject,
                    headers,
                    payload,
                } => writeln!(
                    f,
                    "pub {subject} headers {:?} payload \"{}\"",
                    headers.map(|h| wire::show(h.as_bytes())),
                    wire::show(payload)
                )?,
                Action::JsPublish {
                    subject,
                    msg_id,
                    payload,
                } => writeln!(
                    f,
                    "JetStream publish {subject} msg id {msg_id:?} payload \"{}\"",
                    wire::show(payload)
                )?,
                other => writeln!(f, "{other:?}")?,
            }
        }
        Ok(())
    }
}

/// SplitMix64: a tiny seeded generator, so that a seed names a sequence forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

const PAYLOADS: [&[u8]; 5] = [b"hello", b"", b"two words", b"bin\0\r\n\xff", &[b'x'; 300]];

/// Header blocks for `HPUB`, whole (the size is counted from them).
const HEADERS: [&str; 3] = [
    "NATS/1.0\r\nA: 1\r\n\r\n",
    "NATS/1.0\r\n\r\n",
    "NATS/1.0\r\nA: 1\r\nB: two words\r\n\r\n",
];

/// Subjects subscriptions take: literal, `*`, `>`, and (rarely) invalid ones.
const SUB_SUBJECTS: [&str; 10] = [
    "{c}.a", "{c}.a", "{c}.b", "{c}.a.b", "{c}.*", "{c}.>", "{c}.*.b", "{c}.a.>", "{j}.>", "{j}.a",
];
const BAD_SUBJECTS: [&str; 5] = ["{c}..a", "{c}.>.a", "{c}.", "{c}.a b c", "{c}.a\tb"];

/// Subjects publishes go to: those subscriptions take, those nobody takes, and wildcards
/// (nats-server delivers those literally).
const PUB_SUBJECTS: [&str; 8] = [
    "{c}.a", "{c}.a", "{c}.b", "{c}.a.b", "{c}.c", "{c}.c.b", "{c}.*", "{c}.>",
];

const QUEUES: [&str; 2] = ["q1", "q2"];

fn sub(rng: &mut Rng, queue_sids: &mut BTreeSet<u32>) -> Action {
    let subject = if rng.chance(6) {
        rng.pick(&BAD_SUBJECTS)
    } else {
        rng.pick(&SUB_SUBJECTS)
    };
    let queue = rng.chance(30).then(|| rng.pick(&QUEUES));
    let sid = 1 + rng.below(4) as u32;
    if queue.is_some() {
        queue_sids.insert(sid);
    }
    Action::Sub {
        subject,
        queue,
        sid,
    }
}

fn unsub(rng: &mut Rng, queue_sids: &BTreeSet<u32>) -> Action {
    let sid = 1 + rng.below(4) as u32;
    // Which member of a queue group gets a message is random on nats-server, so a maximum on
    // a member would make later deliveries random too.
    let max = (rng.chance(40) && !queue_sids.contains(&sid)).then(|| rng.below(3) as u32);
    Action::Unsub { sid, max }
}

fn publish(rng: &mut Rng) -> Action {
    Action::Pub {
        subject: rng.pick(&PUB_SUBJECTS),
        headers: rng.chance(35).then(|| rng.pick(&HEADERS)),
        payload: rng.pick(&PAYLOADS),
    }
}

fn connect(rng: &mut Rng, target: Target, first: bool) -> Action {
    let creds = match (target, rng.below(10)) {
        (Target::Auth, 0) => Creds::Wrong,
        (Target::Auth, 1) if !first => Creds::None,
        (Target::Auth, _) => Creds::Right,
        (Target::Open, 0) => Creds::Right,
        (Target::Open, _) => Creds::None,
    };
    let headers = !rng.chance(10);
    Action::Connect {
        creds,
        verbose: rng.chance(15),
        headers,
        no_responders: if headers {
            !rng.chance(10)
        } else {
            rng.chance(30)
        },
        echo: !rng.chance(15),
    }
}

/// Malformed input, answered with an error (and for most, a closed connection). `{long}`
/// makes a control line longer than nats-server's 4 KiB limit.
const RAW: [&str; 15] = [
    "SUB {c}.{long} 1\r\n",
    "FOO\r\n",
    "SUB\r\n",
    "SUB {c}.a\r\n",
    "PUB {c}.a\r\n",
    "PUB {c}.a x\r\n",
    "PUB {c}.a 2000000\r\n",
    "HPUB {c}.a 10 5\r\n",
    "HPUB {c}.a 2 2\r\nxx\r\n",
    "PUB {c}.a 5\r\nhelloX\r\n",
    "UNSUB\r\n",
    "UNSUB x\r\n",
    "pub {c}.a 2\r\nhi\r\n",
    "PUB  {c}.a   2\r\nhi\r\n",
    "CONNECT {\"verbose\":\r\n",
];

/// Stream configurations for `STREAM.CREATE` and `STREAM.UPDATE`: the bus's own first, then
/// what an operator or a broken client could send. `{S}` is the stream, `{sub}` its subject
/// under the run's JetStream prefix. Durations (age, duplicate window) are longer than any
/// run, so that nothing depends on how fast a run goes.
const STREAM_CONFIGS: [&str; 12] = [
    r#"{"name":"{S}","subjects":["{j}.{sub}"],"retention":"limits","storage":"file","discard":"old","max_age":0,"max_bytes":-1,"max_msgs":-1,"max_consumers":-1,"max_msg_size":-1,"num_replicas":1,"duplicate_window":120000000000}"#,
    r#"{"name":"{S}","subjects":["{j}.{sub}"],"storage":"memory","max_msgs":2}"#,
    r#"{"name":"{S}","subjects":["{j}.{sub}"],"max_msgs":2,"discard":"new"}"#,
    r#"{"name":"{S}","subjects":["{j}.{sub}"],"max_age":3600000000000,"duplicate_window":60000000000}"#,
    r#"{"name":"{S}","subjects":["{j}.{sub}"],"max_msgs_per_subject":1}"#,
    r#"{"name":"{S}","subjects":["{j}.{sub}"],"max_msgs_per_subject":2}"#,
    r#"{"name":"other","subjects":["{j}.{sub}"]}"#,
    r#"{"name":"{S}","subjects":["{j}.{sub}"],"num_replicas":3}"#,
    r#"{"name":"{S}","subjects":["{j}.{sub}"],"storage":"disk"}"#,
    r#"{"name":"{S}","#,
    "",
    r#"{"name":"{S}"}"#,
];

/// Consumer configurations for the create calls: the bus's own first. `{C}` is the consumer.
const CONSUMER_CONFIGS: [&str; 10] = [
    r#"{"stream_name":"{S}","config":{"durable_name":"{C}","description":"hubbus node n1","deliver_policy":"new","ack_policy":"explicit","ack_wait":30000000000,"max_deliver":-1,"filter_subject":"{j}.>","replay_policy":"instant","max_ack_pending":1000,"inactive_threshold":3600000000000}}"#,
    r#"{"stream_name":"{S}","config":{"durable_name":"{C}","deliver_policy":"all","ack_policy":"explicit","ack_wait":30000000000,"max_deliver":2,"max_ack_pending":2}}"#,
    r#"{"stream_name":"{S}","config":{"durable_name":"{C}","deliver_policy":"by_start_sequence","opt_start_seq":2,"ack_policy":"explicit","ack_wait":30000000000,"filter_subject":"{j}.a"}}"#,
    r#"{"stream_name":"{S}","config":{"durable_name":"{C}","deliver_policy":"all","ack_policy":"none"}}"#,
    r#"{"stream_name":"{S}","config":{"durable_name":"{C}","deliver_policy":"last","ack_policy":"all","ack_wait":30000000000}}"#,
    r#"{"stream_name":"{S}","config":{"durable_name":"other","ack_policy":"explicit"}}"#,
    r#"{"stream_name":"{S}","config":{"durable_name":"{C}","ack_policy":"explicit","filter_subject":"{c}.zzz"}}"#,
    r#"{"stream_name":"other","config":{"durable_name":"{C}","ack_policy":"explicit"}}"#,
    r#"{"stream_name":"{S}","config":{"durable_name":"{C}","#,
    r#"{"stream_name":"{S}","config":{"durable_name":"{C}","deliver_policy":"by_start_sequence","ack_policy":"explicit"}}"#,
];

/// An ephemeral pull consumer: it stays for an hour without activity, longer than any run, so
/// that when it goes never depends on timing.
const EPHEMERAL: &str = r#"{"stream_name":"{S}","config":{"deliver_policy":"all","ack_policy":"explicit","ack_wait":30000000000,"inactive_threshold":3600000000000}}"#;

/// Pull request bodies. Those that wait, wait 50 ms: a pull that finds too few messages waits
/// for all of it.
const PULLS: [&str; 14] = [
    r#"{"batch":1,"no_wait":true}"#,
    r#"{"batch":3,"no_wait":true}"#,
    r#"{"batch":1,"expires":50000000}"#,
    r#"{"batch":2,"expires":50000000}"#,
    r#"{"batch":5,"expires":50000000,"no_wait":true}"#,
    r#"{"no_wait":true}"#,
    r#"{"batch":1,"no_wait":true}"#,
    r#"{"batch":3,"no_wait":true}"#,
    r#"{"batch":"#,
    r#"{"batch":"x","no_wait":true}"#,
    r#"{"batch":1.5,"no_wait":true}"#,
    r#"{"batch":1,"no_wait":true,}"#,
    r#"{"no_wait":1}"#,
    r#"{batch:1}"#,
];

/// What an ack publishes; the `-NAK` delay is longer than any run.
const ACKS: [&str; 6] = [
    "+ACK",
    "",
    "-NAK",
    r#"-NAK {"delay":60000000000}"#,
    "+TERM",
    "+WPI",
];

/// Subjects publishes into streams go to: `a` is what most streams take, `b` what the second
/// stream takes, `c` what only a `>` stream takes.
const JS_SUBJECTS: [&str; 5] = ["{j}.a", "{j}.a", "{j}.b", "{j}.b.c", "{j}.c"];

fn stream_name(rng: &mut Rng) -> &'static str {
    if rng.chance(80) { "{S0}" } else { "{S1}" }
}

fn consumer_name(rng: &mut Rng) -> &'static str {
    if rng.chance(75) { "C0" } else { "C1" }
}

fn stream_config(rng: &mut Rng, stream: &str, bus: bool) -> String {
    let template = if bus || rng.chance(40) {
        STREAM_CONFIGS[0]
    } else {
        rng.pick(&STREAM_CONFIGS)
    };
    let sub = if stream == "{S0}" {
        rng.pick(&[">", ">", "a", "*"])
    } else {
        rng.pick(&["b.>", "b", ">"])
    };
    template.replace("{S}", stream).replace("{sub}", sub)
}

fn consumer_create(rng: &mut Rng, bus: bool) -> Action {
    let stream = stream_name(rng);
    let consumer = consumer_name(rng);
    let template = if bus || rng.chance(40) {
        CONSUMER_CONFIGS[0]
    } else {
        rng.pick(&CONSUMER_CONFIGS)
    };
    let body = template.replace("{S}", stream).replace("{C}", consumer);
    let (api, body) = match rng.below(10) {
        _ if bus => (format!("CONSUMER.DURABLE.CREATE.{stream}.{consumer}"), body),
        0 => (format!("CONSUMER.CREATE.{stream}.{consumer}"), body),
        1 => (
            format!("CONSUMER.CREATE.{stream}"),
            EPHEMERAL.replace("{S}", stream),
        ),
        2 => (format!("CONSUMER.CREATE.{stream}"), body),
        _ => (format!("CONSUMER.DURABLE.CREATE.{stream}.{consumer}"), body),
    };
    api_call(api, body)
}

fn api_call(api: String, body: String) -> Action {
    Action::Api {
        api: Box::leak(api.into_boxed_str()),
        body: Box::leak(body.into_boxed_str()),
    }
}

/// One JetStream op.
fn jetstream(rng: &mut Rng, queue_sids: &mut BTreeSet<u32>) -> Action {
    match rng.below(100) {
        0..=9 => {
            let stream = stream_name(rng);
            let body = stream_config(rng, stream, false);
            api_call(format!("STREAM.CREATE.{stream}"), body)
        }
        10..=13 => {
            let stream = stream_name(rng);
            let body = rng.pick(&["", "{}"]).to_owned();
            api_call(format!("STREAM.INFO.{stream}"), body)
        }
        14..=16 => {
            let stream = stream_name(rng);
            let body = stream_config(rng, stream, false);
            api_call(format!("STREAM.UPDATE.{stream}"), body)
        }
        17..=18 => api_call(format!("STREAM.DELETE.{}", stream_name(rng)), String::new()),
        19..=30 => consumer_create(rng, false),
        31..=35 => api_call(
            format!("CONSUMER.INFO.{}.{}", stream_name(rng), consumer_name(rng)),
            String::new(),
        ),
        36..=37 => api_call(
            format!(
                "CONSUMER.DELETE.{}.{}",
                stream_name(rng),
                consumer_name(rng)
            ),
            String::new(),
        ),
        38..=57 => Action::JsPublish {
            subject: rng.pick(&JS_SUBJECTS),
            msg_id: rng.chance(50).then(|| rng.pick(&["m1", "m2", "m3"])),
            payload: rng.pick(&PAYLOADS),
        },
        58..=75 => Action::Pull {
            stream: stream_name(rng),
            consumer: consumer_name(rng),
            body: rng.pick(&PULLS),
        },
        76..=89 => Action::Ack {
            delivery: rng.below(8),
            body: rng.pick(&ACKS),
        },
        90..=93 => sub(rng, queue_sids),
        _ => publish(rng),
    }
}

/// One Core op.
fn core(rng: &mut Rng, target: Target, queue_sids: &mut BTreeSet<u32>) -> Action {
    match rng.below(100) {
        0..=24 => sub(rng, queue_sids),
        25..=32 => unsub(rng, queue_sids),
        33..=64 => publish(rng),
        65..=72 => Action::Request {
            subject: rng.pick(&PUB_SUBJECTS),
            headers: rng.chance(20).then(|| rng.pick(&HEADERS)),
        },
        73..=77 => Action::Ping,
        78..=82 => connect(rng, target, false),
        83..=93 => Action::Raw(rng.pick(&RAW)),
        _ => Action::Reconnect,
    }
}

/// The sequence a seed names.
fn generate(seed: u64) -> Sequence {
    let mut rng = Rng(seed);
    // About half of the sequences are about JetStream: the bus's stream and consumer first,
    // mostly JetStream ops after. The rest are about Core and the protocol.
    let about_jetstream = rng.chance(50);
    let main = if rng.chance(70) {
        Target::Open
    } else {
        Target::Auth
    };
    let count = if rng.chance(15) { 1 } else { 2 + rng.below(2) };
    let slots: Vec<Target> = (0..count)
        .map(|_| {
            if rng.chance(85) {
                main
            } else {
                rng.pick(&[Target::Open, Target::Auth])
            }
        })
        .collect();
    let mut queue_sids: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); count];
    let mut ops = Vec::new();
    for (slot, &target) in slots.iter().enumerate() {
        if rng.chance(85) {
            ops.push(Op {
                slot,
                action: connect(&mut rng, target, true),
            });
        }
    }
    if about_jetstream {
        if rng.chance(80) {
            let body = stream_config(&mut rng, "{S0}", true);
            ops.push(Op {
                slot: 0,
                action: api_call("STREAM.CREATE.{S0}".into(), body),
            });
        }
        if rng.chance(70) {
            let action = consumer_create(&mut rng, true);
            ops.push(Op { slot: 0, action });
        }
    }
    for _ in 0..8 + rng.below(25) {
        let slot = rng.below(slots.len());
        let action = if about_jetstream && rng.chance(85) {
            jetstream(&mut rng, &mut queue_sids[slot])
        } else {
            core(&mut rng, slots[slot], &mut queue_sids[slot])
        };
        ops.push(Op { slot, action });
    }
    Sequence { slots, ops }
}

// ---------------------------------------------------------------------------------------------
// The driver.

/// The names of one run on the servers.
#[derive(Debug, Clone)]
struct Run {
    /// `d<n>`: every core subject of the run starts with it.
    core: String,
    /// `d<n>js`: every subject of the run's streams starts with it.
    js: String,
    streams: [String; 2],
}

impl Run {
    fn new(number: u64) -> Self {
        Run {
            core: format!("d{number}"),
            js: format!("d{number}js"),
            streams: [format!("D{number}_S0"), format!("D{number}_S1")],
        }
    }

    fn resolve(&self, text: &str) -> String {
        text.replace("{c}", &self.core)
            .replace("{j}", &self.js)
            .replace("{S0}", &self.streams[0])
            .replace("{S1}", &self.streams[1])
            .replace("{long}", &"a".repeat(5000))
    }

    /// Whether `name` is one the sequences give (a stream of this run, a consumer `C<n>`):
    /// any other consumer name was made up by the server.
    fn ours(&self, name: &str) -> bool {
        self.streams.iter().any(|stream| stream == name)
            || name == "other"
            || (name.starts_with('C') && name[1..].bytes().all(|b| b.is_ascii_digit()))
    }
}

/// Where each part of the transcript came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    op: usize,
    part: Part,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    /// The greeting of a connection the op opened.
    Greeting,
    /// What the op's connection got before the `PONG` that follows the op.
    Answer,
    /// What arrived on the op's reply inbox, whenever it came.
    Inbox,
    /// What another connection got, before the `PONG` to the `PING` sent after the op.
    Other(usize),
}

type Transcript = BTreeMap<Key, Vec<Seen>>;

/// One connection of the driver.
struct Conn {
    stream: BoxedStream,
    buf: BytesMut,
    /// Each subscription the driver made on it, by sid, with its queue group.
    queues: BTreeMap<String, Option<String>>,
}

/// What a connection produced next.
enum Event {
    Op(ServerOp),
    Closed,
}

impl Conn {
    /// The next server operation, answering the server's own pings on the way (they are not
    /// recorded: when a server pings is timing). Cancel-safe as far as reading goes.
    async fn next(&mut self) -> Event {
        loop {
            match wire::parse(&self.buf) {
                Parsed::Done(ServerOp::Ping, len) => {
                    self.buf.advance(len);
                    if self.stream.write_all(b"PONG\r\n").await.is_err() {
                        return Event::Closed;
                    }
                    continue;
                }
                Parsed::Done(op, len) => {
                    self.buf.advance(len);
                    return Event::Op(op);
                }
                Parsed::Incomplete => {}
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Event::Closed,
                Ok(_) => {}
            }
        }
    }
}

/// What each side learns from its own server's answers: which streams (with their subjects)
/// and consumers exist, and the ack subjects of what its pulls got.
#[derive(Debug, Default)]
struct Model {
    streams: BTreeMap<String, Vec<String>>,
    consumers: BTreeSet<(String, String)>,
    deliveries: Vec<String>,
}

impl Model {
    fn captures(&self, subject: &str) -> bool {
        self.streams
            .values()
            .flatten()
            .any(|pattern| subject_matches(pattern, subject))
    }

    fn drop_stream(&mut self, stream: &str) {
        self.streams.remove(stream);
        self.consumers.retain(|(s, _)| s != stream);
    }

    /// Learns from the reply to the API call `api` (the part after `$JS.API.`).
    fn learn(&mut self, api: &str, reply: &RawMsg) {
        let Ok(json) = serde_json::from_slice::<Value>(&reply.payload) else {
            return;
        };
        let error = json.get("error").and_then(|e| e.get("err_code"));
        let tokens: Vec<&str> = api.split('.').collect();
        match (tokens.as_slice(), error.and_then(Value::as_u64)) {
            (["STREAM", "CREATE" | "UPDATE" | "INFO", name], None) => {
                let subjects = json["config"]["subjects"]
                    .as_array()
                    .map(|subjects| {
                        subjects
                            .iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                self.streams.insert((*name).to_owned(), subjects);
            }
            (["STREAM", _, name], Some(10059)) => self.drop_stream(name),
            (["STREAM", "DELETE", name], None) => self.drop_stream(name),
            (["CONSUMER", "CREATE" | "DURABLE" | "INFO", ..], None) => {
                if let (Some(stream), Some(name)) =
                    (json["stream_name"].as_str(), json["name"].as_str())
                {
                    self.consumers.insert((stream.to_owned(), name.to_owned()));
                }
            }
            (["CONSUMER", _, stream, name], Some(10014 | 10059)) => {
                self.consumers
                    .remove(&((*stream).to_owned(), (*name).to_owned()));
            }
            (["CONSUMER", "DELETE", stream, name], None) => {
                self.consumers
                    .remove(&((*stream).to_owned(), (*name).to_owned()));
            }
            _ => {}
        }
    }
}

/// NATS subject matching: `pattern` may hold `*` and `>`, `subject` is literal.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let subject: Vec<&str> = subject.split('.').collect();
    let pattern: Vec<&str> = pattern.split('.').collect();
    for (index, token) in pattern.iter().enumerate() {
        if *token == ">" {
            return subject.len() > index;
        }
        match subject.get(index) {
            Some(word) if *token == "*" || token == word => {}
            _ => return false,
        }
    }
    pattern.len() == subject.len()
}

/// How many replies an op implies on its inbox.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Nothing,
    Replies(usize),
    /// Up to `batch` messages, or fewer and a status, within `within`.
    Pull {
        batch: usize,
        within: Duration,
    },
}

/// The driver's state on one side.
struct Driver<'a> {
    run: &'a Run,
    sequence: &'a Sequence,
    conns: Vec<Option<Conn>>,
    transcript: Transcript,
    /// The sid of each op's reply inbox to the op. A message that arrives through it belongs
    /// to that op, whatever its subject (a JetStream delivery shows the stored subject).
    inboxes: BTreeMap<String, usize>,
    /// How many messages and statuses arrived on each op's inbox.
    counts: BTreeMap<usize, (usize, usize)>,
    /// The first message on each op's inbox, as it came.
    replies: BTreeMap<usize, RawMsg>,
    /// What each server (by [`Target::index`]) said exists.
    models: [Model; 2],
}

/// The `CONNECT` a driver sends on a connection whose first op is not a `CONNECT`.
const DEFAULT_CONNECT: Action = Action::Connect {
    creds: Creds::Right,
    verbose: false,
    headers: true,
    no_responders: true,
    echo: true,
};

/// The servers' addresses, by [`Target::index`].
#[derive(Debug, Clone)]
struct Addrs([String; 2]);

/// Runs `sequence` through `connector` and records what the servers answered. After the last
/// op every connection still open is pinged once more, so that a late answer shows up.
async fn drive<C: Connector>(
    connector: &C,
    addrs: &Addrs,
    sequence: &Sequence,
    run: &Run,
) -> Transcript {
    let mut driver = Driver {
        run,
        sequence,
        conns: sequence.slots.iter().map(|_| None).collect(),
        transcript: Transcript::new(),
        inboxes: BTreeMap::new(),
        counts: BTreeMap::new(),
        replies: BTreeMap::new(),
        models: [Model::default(), Model::default()],
    };
    let epilogue = (0..sequence.slots.len()).map(|slot| Op {
        slot,
        action: Action::Ping,
    });
    let ops: Vec<Op> = sequence.ops.iter().cloned().chain(epilogue).collect();
    for (index, op) in ops.iter().enumerate() {
        let is_epilogue = index >= sequence.ops.len();
        if is_epilogue && driver.conns[op.slot].is_none() {
            continue;
        }
        if op.action == Action::Reconnect && driver.conns[op.slot].is_none() {
            continue;
        }
        driver.step(connector, addrs, index, op).await;
    }
    driver.transcript
}

impl Driver<'_> {
    fn record(&mut self, op: usize, part: Part, seen: Seen) {
        self.transcript
            .entry(Key { op, part })
            .or_default()
            .push(seen);
    }

    async fn step<C: Connector>(&mut self, connector: &C, addrs: &Addrs, index: usize, op: &Op) {
        let target = self.sequence.slots[op.slot];
        let mut prologue = Vec::new();
        if self.conns[op.slot].is_none() {
            let Ok(stream) = connector.connect(&addrs.0[target.index()]).await else {
                self.record(index, Part::Greeting, Seen::ConnectFailed);
                return;
            };
            let mut conn = Conn {
                stream,
                buf: BytesMut::new(),
                queues: BTreeMap::new(),
            };
            let deadline = Instant::now() + REPLY_DEADLINE;
            let greeting = match timeout_at(deadline, conn.next()).await {
                Ok(Event::Op(ServerOp::Info(json))) => Seen::Info(wire::normalise_info(&json)),
                Ok(Event::Op(other)) => self.seen(&conn, other),
                Ok(Event::Closed) => Seen::Closed,
                Err(_) => Seen::Timeout,
            };
            let greeted = matches!(greeting, Seen::Info(_));
            self.record(index, Part::Greeting, greeting);
            if !greeted {
                return;
            }
            self.conns[op.slot] = Some(conn);
            if !matches!(op.action, Action::Connect { .. }) {
                prologue = self.encode(&DEFAULT_CONNECT, index, op.slot).0;
            }
        }
        let (wire, expect) = self.encode(&op.action, index, op.slot);
        if expect.is_none() {
            self.record(index, Part::Answer, Seen::NothingToAck);
        }
        let expect = expect.unwrap_or(Expect::Nothing);
        let mut bytes = prologue;
        bytes.extend_from_slice(&wire);
        bytes.extend_from_slice(b"PING\r\n");
        let conn = self.conns[op.slot].as_mut().expect("connected above");
        // A server may close the connection before it read everything (an oversized
        // payload): what it answered is still there to read.
        let _ = conn.stream.write_all(&bytes).await;
        self.barrier(op.slot, index, Part::Answer).await;
        if op.action == Action::Reconnect {
            self.conns[op.slot] = None;
            return;
        }
        self.await_inbox(op.slot, index, expect).await;
        if let Action::Api { api, .. } = &op.action {
            let api = self.run.resolve(api);
            if let Some(msg) = self.replies.get(&index) {
                self.models[target.index()].learn(&api, msg);
            }
        }
        for other in 0..self.sequence.slots.len() {
            if other != op.slot
                && self.sequence.slots[other] == target
                && let Some(conn) = self.conns[other].as_mut()
            {
                if conn.stream.write_all(b"PING\r\n").await.is_err() {
                    self.conns[other] = None;
                    self.record(index, Part::Other(other), Seen::Closed);
                    continue;
                }
                self.barrier(other, index, Part::Other(other)).await;
            }
        }
    }
}

impl Driver<'_> {
    /// Subscribes op `index`'s reply inbox.
    fn open_inbox(&mut self, out: &mut Vec<u8>, inbox: &str, index: usize, slot: usize) {
        let sid = 1000 + index;
        out.extend_from_slice(format!("SUB {inbox} {sid}\r\n").as_bytes());
        self.inboxes.insert(sid.to_string(), index);
        if let Some(conn) = self.conns[slot].as_mut() {
            conn.queues.insert(sid.to_string(), None);
        }
    }

    /// Unsubscribes what the driver subscribed on `slot` before an op that may end the
    /// connection: nats-server removes a closed connection's subscriptions on its own time,
    /// so a publish on another connection right after would race with that.
    fn unsubscribe_all(&mut self, out: &mut Vec<u8>, slot: usize) {
        if let Some(conn) = self.conns[slot].as_mut() {
            for sid in std::mem::take(&mut conn.queues).into_keys() {
                out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
            }
        }
    }

    /// The bytes an action writes, and what it implies on its inbox; `None` for an ack when
    /// nothing was delivered to settle.
    fn encode(&mut self, action: &Action, index: usize, slot: usize) -> (Vec<u8>, Option<Expect>) {
        let run = self.run;
        let inbox = format!("_INBOX.{}.{index}", run.core);
        let mut out = Vec::new();
        let model = self.sequence.slots[slot].index();
        let expect = match action {
            Action::Connect {
                creds,
                verbose,
                headers,
                no_responders,
                echo,
            } => {
                self.unsubscribe_all(&mut out, slot);
                let mut json = serde_json::json!({
                    "verbose": verbose,
                    "pedantic": false,
                    "lang": "rust",
                    "version": "0.0.0",
                    "protocol": 1,
                    "echo": echo,
                    "headers": headers,
                    "no_responders": no_responders,
                });
                let password = match creds {
                    Creds::None => None,
                    Creds::Right => Some(PASSWORD),
                    Creds::Wrong => Some("wrong"),
                };
                if let Some(password) = password {
                    json["user"] = USER.into();
                    json["pass"] = password.into();
                }
                out.extend_from_slice(format!("CONNECT {json}\r\n").as_bytes());
                Expect::Nothing
            }
            Action::Ping => Expect::Nothing,
            Action::Sub {
                subject,
                queue,
                sid,
            } => {
                let subject = run.resolve(subject);
                let line = match queue {
                    Some(queue) => format!("SUB {subject} {queue} {sid}\r\n"),
                    None => format!("SUB {subject} {sid}\r\n"),
                };
                out.extend_from_slice(line.as_bytes());
                if let Some(conn) = self.conns[slot].as_mut() {
                    conn.queues
                        .entry(sid.to_string())
                        .or_insert(queue.map(str::to_owned));
                }
                Expect::Nothing
            }
            Action::Unsub { sid, max } => {
                let line = match max {
                    Some(max) => format!("UNSUB {sid} {max}\r\n"),
                    None => format!("UNSUB {sid}\r\n"),
                };
                out.extend_from_slice(line.as_bytes());
                if max.is_none()
                    && let Some(conn) = self.conns[slot].as_mut()
                {
                    conn.queues.remove(&sid.to_string());
                }
                Expect::Nothing
            }
            Action::Pub {
                subject,
                headers,
                payload,
            } => {
                let subject = run.resolve(subject);
                publish_bytes(&mut out, &subject, None, *headers, payload);
                Expect::Nothing
            }
            Action::Request { subject, headers } => {
                self.open_inbox(&mut out, &inbox, index, slot);
                let subject = run.resolve(subject);
                publish_bytes(&mut out, &subject, Some(&inbox), *headers, b"request");
                Expect::Nothing
            }
            Action::Api { api, body } => {
                self.open_inbox(&mut out, &inbox, index, slot);
                let subject = format!("$JS.API.{}", run.resolve(api));
                let body = run.resolve(body);
                publish_bytes(&mut out, &subject, Some(&inbox), None, body.as_bytes());
                Expect::Replies(1)
            }
            Action::JsPublish {
                subject,
                msg_id,
                payload,
            } => {
                self.open_inbox(&mut out, &inbox, index, slot);
                let subject = run.resolve(subject);
                let headers = msg_id.map(|id| format!("NATS/1.0\r\nNats-Msg-Id: {id}\r\n\r\n"));
                publish_bytes(
                    &mut out,
                    &subject,
                    Some(&inbox),
                    headers.as_deref(),
                    payload,
                );
                if self.models[model].captures(&subject) {
                    Expect::Replies(1)
                } else {
                    Expect::Nothing
                }
            }
            Action::Pull {
                stream,
                consumer,
                body,
            } => {
                self.open_inbox(&mut out, &inbox, index, slot);
                let stream = run.resolve(stream);
                let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}");
                publish_bytes(&mut out, &subject, Some(&inbox), None, body.as_bytes());
                let request = serde_json::from_str::<Value>(body).unwrap_or(Value::Null);
                let batch = request["batch"].as_u64().unwrap_or(1).max(1) as usize;
                let expires = Duration::from_nanos(request["expires"].as_u64().unwrap_or(0));
                if self.models[model]
                    .consumers
                    .contains(&(stream, (*consumer).to_owned()))
                {
                    Expect::Pull {
                        batch,
                        within: expires + REPLY_DEADLINE,
                    }
                } else {
                    Expect::Nothing
                }
            }
            Action::Ack { delivery, body } => {
                if self.models[model].deliveries.is_empty() {
                    return (Vec::new(), None);
                }
                let subject = self.models[model].deliveries
                    [delivery % self.models[model].deliveries.len()]
                .clone();
                self.open_inbox(&mut out, &inbox, index, slot);
                publish_bytes(&mut out, &subject, Some(&inbox), None, body.as_bytes());
                let tokens: Vec<&str> = subject.split('.').collect();
                let consumer = (tokens[2].to_owned(), tokens[3].to_owned());
                if self.models[model].consumers.contains(&consumer) {
                    Expect::Replies(1)
                } else {
                    Expect::Nothing
                }
            }
            Action::Raw(text) => {
                self.unsubscribe_all(&mut out, slot);
                out.extend_from_slice(run.resolve(text).as_bytes());
                Expect::Nothing
            }
            Action::Reconnect => {
                self.unsubscribe_all(&mut out, slot);
                Expect::Nothing
            }
        };
        (out, Some(expect))
    }

    /// What `op` from the connection on `slot` is in the transcript.
    fn seen(&self, conn: &Conn, op: ServerOp) -> Seen {
        match op {
            ServerOp::Info(json) => Seen::Info(wire::normalise_info(&json)),
            ServerOp::Ok => Seen::Ok,
            ServerOp::Err(text) => Seen::Err(text),
            ServerOp::Garbled(text) => Seen::Garbled(text),
            ServerOp::Ping | ServerOp::Pong => Seen::Garbled("unexpected PING/PONG".into()),
            ServerOp::Msg(msg) => {
                let queue = conn.queues.get(&msg.sid).cloned().flatten();
                let run = self.run;
                Seen::Msg(wire::record(&msg, queue, &|name| run.ours(name)))
            }
        }
    }

    /// Records what arrived on `slot` while op `index` ran: a message on an op's inbox goes
    /// to that op, anything else to `part`.
    fn route(&mut self, slot: usize, index: usize, part: Part, op: ServerOp) {
        let conn = self.conns[slot]
            .as_ref()
            .expect("only open connections are read");
        if let ServerOp::Msg(msg) = &op
            && let Some(&owner) = self.inboxes.get(&msg.sid)
        {
            let seen = self.seen(conn, op.clone());
            let counts = self.counts.entry(owner).or_default();
            if msg.status().is_some() {
                counts.1 += 1;
            } else {
                counts.0 += 1;
            }
            if let Some(reply) = &msg.reply
                && reply.starts_with("$JS.ACK.")
            {
                let target = self.sequence.slots[slot].index();
                self.models[target].deliveries.push(reply.clone());
            }
            self.replies.entry(owner).or_insert_with(|| msg.clone());
            self.record(owner, Part::Inbox, seen);
            return;
        }
        let seen = self.seen(conn, op);
        self.record(index, part, seen);
    }

    /// Reads `slot` until the `PONG` to the `PING` just sent, recording what came before it
    /// under `part` of op `index`.
    async fn barrier(&mut self, slot: usize, index: usize, part: Part) {
        let deadline = Instant::now() + REPLY_DEADLINE;
        loop {
            let Some(conn) = self.conns[slot].as_mut() else {
                return;
            };
            match timeout_at(deadline, conn.next()).await {
                Ok(Event::Op(ServerOp::Pong)) => return,
                Ok(Event::Op(op)) => self.route(slot, index, part, op),
                Ok(Event::Closed) => {
                    self.record(index, part, Seen::Closed);
                    self.conns[slot] = None;
                    return;
                }
                Err(_) => {
                    self.record(index, part, Seen::Timeout);
                    self.conns[slot] = None;
                    return;
                }
            }
        }
    }

    /// Reads `slot` until the inbox of op `index` got what `expect` says, within its deadline.
    async fn await_inbox(&mut self, slot: usize, index: usize, expect: Expect) {
        let within = match expect {
            Expect::Nothing => return,
            Expect::Replies(_) => REPLY_DEADLINE,
            Expect::Pull { within, .. } => within,
        };
        let deadline = Instant::now() + within;
        loop {
            let (messages, statuses) = self.counts.get(&index).copied().unwrap_or_default();
            let missing = match expect {
                Expect::Nothing => 0,
                Expect::Replies(count) => count.saturating_sub(messages + statuses),
                Expect::Pull { batch, .. } if statuses == 0 => batch.saturating_sub(messages),
                Expect::Pull { .. } => 0,
            };
            if missing == 0 {
                return;
            }
            let Some(conn) = self.conns[slot].as_mut() else {
                self.record(index, Part::Inbox, Seen::Missing(missing));
                return;
            };
            match timeout_at(deadline, conn.next()).await {
                Ok(Event::Op(op)) => self.route(slot, index, Part::Answer, op),
                Ok(Event::Closed) => {
                    self.record(index, Part::Answer, Seen::Closed);
                    self.conns[slot] = None;
                }
                Err(_) => {
                    self.record(index, Part::Inbox, Seen::Missing(missing));
                    return;
                }
            }
        }
    }
}

/// `PUB` or `HPUB` with the payload.
fn publish_bytes(
    out: &mut Vec<u8>,
    subject: &str,
    reply: Option<&str>,
    headers: Option<&str>,
    payload: &[u8],
) {
    let reply = reply.map(|reply| format!(" {reply}")).unwrap_or_default();
    match headers {
        Some(headers) => {
            let total = headers.len() + payload.len();
            out.extend_from_slice(
                format!(
                    "HPUB {subject}{reply} {} {total}\r\n{headers}",
                    headers.len()
                )
                .as_bytes(),
            );
        }
        None => {
            out.extend_from_slice(format!("PUB {subject}{reply} {}\r\n", payload.len()).as_bytes())
        }
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Deletes the run's streams on the real servers, so that they do not pile up over the runs.
async fn clean_up(addrs: &Addrs, run: &Run) {
    for addr in &addrs.0 {
        let Ok(stream) = TokioTcp.connect(addr).await else {
            continue;
        };
        let mut conn = Conn {
            stream,
            buf: BytesMut::new(),
            queues: BTreeMap::new(),
        };
        let mut bytes =
            format!("CONNECT {{\"verbose\":false,\"user\":\"{USER}\",\"pass\":\"{PASSWORD}\"}}\r\nSUB _INBOX.cleanup 1\r\n")
                .into_bytes();
        for stream in &run.streams {
            publish_bytes(
                &mut bytes,
                &format!("$JS.API.STREAM.DELETE.{stream}"),
                Some("_INBOX.cleanup"),
                None,
                b"",
            );
        }
        if conn.stream.write_all(&bytes).await.is_err() {
            continue;
        }
        let deadline = Instant::now() + REPLY_DEADLINE;
        let mut replies = 0;
        while replies < run.streams.len() {
            match timeout_at(deadline, conn.next()).await {
                Ok(Event::Op(ServerOp::Msg(_))) => replies += 1,
                Ok(Event::Op(_)) => {}
                Ok(Event::Closed) | Err(_) => break,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The servers.

/// The real servers, started once for all sequences.
struct RealServers {
    _processes: Vec<NatsProcess>,
    addrs: Addrs,
}

impl RealServers {
    fn start() -> Option<Self> {
        let open = NatsProcess::start("diff-open", &[])?;
        let auth = NatsProcess::start("diff-auth", &["--user", USER, "--pass", PASSWORD])?;
        let addrs = Addrs([open.addr(), auth.addr()]);
        Some(RealServers {
            _processes: vec![open, auth],
            addrs,
        })
    }
}

/// The fakes' addresses inside the simulation.
fn fake_addrs() -> Addrs {
    Addrs([
        format!("nats-open:{DEFAULT_PORT}"),
        format!("nats-auth:{DEFAULT_PORT}"),
    ])
}

/// Runs `sequence` against the fakes in a fresh simulation, each with a fresh JetStream store.
fn run_fake(sequence: &Sequence, run: &Run, seed: u64) -> Transcript {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1))
        .simulation_duration(Duration::from_secs(3600))
        .build();
    let open = FakeNatsOptions::new().with_jetstream(JetStreamStore::new());
    sim.host("nats-open", move || serve_nats(DEFAULT_PORT, open.clone()));
    let auth = FakeNatsOptions::new()
        .with_user(USER, PASSWORD)
        .with_jetstream(JetStreamStore::new());
    sim.host("nats-auth", move || serve_nats(DEFAULT_PORT, auth.clone()));
    let result = Rc::new(RefCell::new(None));
    let out = Rc::clone(&result);
    let sequence = sequence.clone();
    let run = run.clone();
    sim.client("driver", async move {
        let transcript = drive(&TurmoilTcp, &fake_addrs(), &sequence, &run).await;
        *out.borrow_mut() = Some(transcript);
        Ok(())
    });
    sim.run().expect("the simulation runs to the end");
    result.take().expect("the driver finished")
}

// ---------------------------------------------------------------------------------------------
// Comparing.

/// The differences between the fakes and real servers that are known and accepted, each with
/// its reason in `docs/testing.md` ("Fidelity of the fakes"). A difference that matches none
/// of them fails the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Known {
    /// nats-server hands a message for a queue group to a member picked at random; the fake
    /// picks in rotation. The same messages reach the same other subscriptions, and each
    /// group gets each message once.
    QueueGroupPick,
    /// Several subscriptions of one connection that a message matches get it in an order of
    /// nats-server's subscription list; the fake delivers in the order they were made.
    FanOutOrder,
    /// A pull request that is not JSON, or has a field of the wrong type, gets `400 Bad
    /// Request` with the decoder's reason, which the fake words after Go's decoder but not
    /// exactly (`Go struct field .batch` without the struct's name, serde's position texts).
    PullJsonReason,
}

/// One difference that no [`Known`] entry covers.
struct Unlisted {
    key: Key,
    slot: usize,
    real: Vec<Seen>,
    fake: Vec<Seen>,
}

/// What comparing one run found.
struct Comparison {
    unlisted: Vec<Unlisted>,
    known: BTreeMap<Known, usize>,
    /// Messages delivered by the real servers, and JetStream replies they sent, to show that
    /// the sequences get somewhere.
    delivered: usize,
    js_replies: usize,
    /// What the real servers answered, by kind: status codes, `-ERR` texts, duplicates.
    answers: BTreeMap<String, usize>,
}

fn sorted(seen: &[Seen]) -> Vec<Seen> {
    let mut seen = seen.to_vec();
    seen.sort();
    seen
}

/// `seen` with the subscription each message came through left out: what arrived, in order.
fn without_sids(seen: &[Seen]) -> Vec<Seen> {
    seen.iter()
        .map(|item| match item {
            Seen::Msg(msg) => Seen::Msg(wire::Msg {
                sid: String::new(),
                queue: None,
                ..msg.clone()
            }),
            other => other.clone(),
        })
        .collect()
}

/// Which known difference, if any, explains `real` and `fake` differing in one part.
fn explain(action: Option<&Action>, key: Key, real: &[Seen], fake: &[Seen]) -> Option<Known> {
    if matches!(key.part, Part::Answer | Part::Other(_))
        && sorted(real) == sorted(fake)
        && without_sids(real) == without_sids(fake)
    {
        return Some(Known::FanOutOrder);
    }
    if let Some(Action::Pull { .. }) = action
        && key.part == Part::Inbox
    {
        let bad_request = |seen: &[Seen]| match seen {
            [Seen::Msg(msg)] => msg
                .headers
                .as_deref()
                .is_some_and(|h| h.starts_with("NATS/1.0 400 Bad Request")),
            _ => false,
        };
        if bad_request(real) && bad_request(fake) {
            return Some(Known::PullJsonReason);
        }
    }
    None
}

/// Whether the deliveries of op `op` are the same once it does not matter which member of a
/// queue group got a message.
fn same_but_queue_members(op: usize, slot: usize, real: &Transcript, fake: &Transcript) -> bool {
    let deliveries = |transcript: &Transcript| -> (Vec<(Option<usize>, Seen)>, bool) {
        let mut out = Vec::new();
        let mut queued = false;
        for (key, seen) in transcript.range(
            Key {
                op,
                part: Part::Answer,
            }..Key {
                op: op + 1,
                part: Part::Greeting,
            },
        ) {
            let from = match key.part {
                Part::Answer => slot,
                Part::Other(other) => other,
                _ => continue,
            };
            for item in seen {
                match item {
                    Seen::Msg(msg) if msg.queue.is_some() => {
                        queued = true;
                        let mut msg = msg.clone();
                        msg.sid = "*".into();
                        out.push((None, Seen::Msg(msg)));
                    }
                    other => out.push((Some(from), other.clone())),
                }
            }
        }
        out.sort();
        (out, queued)
    };
    let (real, queued) = deliveries(real);
    let (fake, _) = deliveries(fake);
    queued && real == fake
}

/// Compares the two transcripts of one sequence.
fn compare(sequence: &Sequence, real: &Transcript, fake: &Transcript) -> Comparison {
    let mut comparison = Comparison {
        unlisted: Vec::new(),
        known: BTreeMap::new(),
        delivered: real
            .iter()
            .filter(|(key, _)| matches!(key.part, Part::Other(_)))
            .map(|(_, seen)| seen.len())
            .sum(),
        js_replies: real
            .iter()
            .filter(|(key, _)| key.part == Part::Inbox)
            .map(|(_, seen)| seen.len())
            .sum(),
        answers: BTreeMap::new(),
    };
    for seen in real.values().flatten() {
        let kind = match seen {
            Seen::Err(text) => text.clone(),
            Seen::Closed => "closed".into(),
            Seen::Msg(msg) => match &msg.headers {
                Some(headers) if headers.starts_with("NATS/1.0 ") => headers[9..12].to_owned(),
                _ if msg.payload.contains("\"duplicate\":true") => "duplicate".into(),
                _ if msg.payload.contains("\"err_code\"") => "API error".into(),
                _ if msg
                    .reply
                    .as_deref()
                    .is_some_and(|r| r.starts_with("$JS.ACK.")) =>
                {
                    "JetStream delivery".into()
                }
                _ => continue,
            },
            _ => continue,
        };
        *comparison.answers.entry(kind).or_default() += 1;
    }
    let keys: BTreeSet<Key> = real.keys().chain(fake.keys()).copied().collect();
    let ops: BTreeSet<usize> = keys.iter().map(|key| key.op).collect();
    for op in ops {
        let (slot, action) = match sequence.ops.get(op) {
            Some(step) => (step.slot, Some(&step.action)),
            None => (op - sequence.ops.len(), None),
        };
        let mut unexplained = Vec::new();
        for key in keys.iter().filter(|key| key.op == op) {
            let real_seen = real.get(key).map(Vec::as_slice).unwrap_or_default();
            let fake_seen = fake.get(key).map(Vec::as_slice).unwrap_or_default();
            if real_seen == fake_seen {
                continue;
            }
            match explain(action, *key, real_seen, fake_seen) {
                Some(known) => *comparison.known.entry(known).or_default() += 1,
                None => unexplained.push(Unlisted {
                    key: *key,
                    slot: match key.part {
                        Part::Other(other) => other,
                        _ => slot,
                    },
                    real: real_seen.to_vec(),
                    fake: fake_seen.to_vec(),
                }),
            }
        }
        if unexplained.is_empty() {
            continue;
        }
        let deliveries_only = unexplained
            .iter()
            .all(|difference| matches!(difference.key.part, Part::Answer | Part::Other(_)));
        if deliveries_only && same_but_queue_members(op, slot, real, fake) {
            *comparison.known.entry(Known::QueueGroupPick).or_default() += unexplained.len();
            continue;
        }
        comparison.unlisted.extend(unexplained);
    }
    comparison
}

/// The real servers and a runtime to drive them from: what every comparison needs.
struct Bench {
    real: RealServers,
    runtime: tokio::runtime::Runtime,
}

impl Bench {
    /// `None` when no nats-server is installed and skipping is allowed.
    fn start() -> Option<Self> {
        let real = RealServers::start()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Some(Bench { real, runtime })
    }

    /// Runs one sequence against both sides and compares.
    fn run(&self, sequence: &Sequence, seed: u64) -> Comparison {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = Run::new(RUNS.fetch_add(1, Ordering::Relaxed));
        let real = self.runtime.block_on(async {
            let transcript = drive(&TokioTcp, &self.real.addrs, sequence, &run).await;
            clean_up(&self.real.addrs, &run).await;
            transcript
        });
        let fake = run_fake(sequence, &run, seed);
        compare(sequence, &real, &fake)
    }

    /// Removes ops, one at a time, as long as an unlisted difference remains: what is left is
    /// (close to) the smallest sequence that shows it.
    fn shrink(&self, sequence: Sequence, seed: u64) -> Sequence {
        let ops = hubbus_sim::shrink::by_removal(sequence.ops.clone(), |ops| {
            let candidate = Sequence {
                slots: sequence.slots.clone(),
                ops: ops.to_vec(),
            };
            !self.run(&candidate, seed).unlisted.is_empty()
        });
        Sequence { ops, ..sequence }
    }

    /// Fails with a report when `comparison` holds an unlisted difference, after shrinking
    /// the sequence.
    fn check(&self, sequence: &Sequence, seed: u64, comparison: &Comparison) {
        if comparison.unlisted.is_empty() {
            return;
        }
        let shrunk = self.shrink(sequence.clone(), seed);
        let shrunk_comparison = self.run(&shrunk, seed);
        let (sequence, comparison) = if shrunk_comparison.unlisted.is_empty() {
            (sequence, comparison)
        } else {
            (&shrunk, &shrunk_comparison)
        };
        panic!(
            "the fake NATS server answered differently from nats-server (seed {seed}; replay \
             with HUBBUS_TEST_DIFF_SEED={seed}).\nOps ({{c}} and {{j}} are the run's core and \
             JetStream prefixes, {{S0}} and {{S1}} its streams):\n{sequence}Differences not \
             listed as known:\n{}",
            report(sequence, comparison),
        );
    }
}

fn report(sequence: &Sequence, comparison: &Comparison) -> String {
    let mut out = String::new();
    for difference in &comparison.unlisted {
        let render = |seen: &[Seen]| -> String {
            if seen.is_empty() {
                return "(nothing)".into();
            }
            seen.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n           ")
        };
        out.push_str(&format!(
            "  op #{} {:?} on slot {} ({:?}):\n    real:  {}\n    fake:  {}\n",
            difference.key.op,
            difference.key.part,
            difference.slot,
            sequence.slots[difference.slot],
            render(&difference.real),
            render(&difference.fake),
        ));
    }
    out
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

#[test]
fn the_fake_answers_every_generated_sequence_like_nats_server() {
    let Some(bench) = Bench::start() else {
        return;
    };
    let seeds: Vec<u64> = match env_number("HUBBUS_TEST_DIFF_SEED") {
        Some(seed) => vec![seed],
        None => {
            let cases = env_number("HUBBUS_TEST_DIFF_CASES").unwrap_or(DEFAULT_CASES);
            (0..cases).map(|i| FIRST_SEED + i).collect()
        }
    };
    let mut known: BTreeMap<Known, usize> = BTreeMap::new();
    let mut ops = 0;
    let mut delivered = 0;
    let mut js_replies = 0;
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for seed in seeds {
        let sequence = generate(seed);
        ops += sequence.ops.len();
        let comparison = bench.run(&sequence, seed);
        bench.check(&sequence, seed, &comparison);
        delivered += comparison.delivered;
        js_replies += comparison.js_replies;
        for (answer, count) in comparison.answers {
            *answers.entry(answer).or_default() += count;
        }
        for (entry, count) in comparison.known {
            *known.entry(entry).or_default() += count;
        }
    }
    eprintln!(
        "{ops} ops compared with nats-server, {delivered} messages delivered to other \
         connections, {js_replies} replies on inboxes; answers by kind: {answers:?}; known \
         differences seen: {known:?}"
    );
}

/// Each known difference is provoked once on purpose, so an entry that no longer matches
/// what nats-server does (after an upgrade, say) is noticed instead of lingering. A queue
/// group gets twenty messages: nats-server picks the same members as the fake's rotation with
/// a chance of one in a million.
#[test]
fn every_known_difference_still_shows_against_nats_server() {
    let Some(bench) = Bench::start() else {
        return;
    };
    let on = |slot: usize, action: Action| Op { slot, action };
    let subscribe = |subject: &'static str, queue: Option<&'static str>, sid: u32| Action::Sub {
        subject,
        queue,
        sid,
    };
    let publish = Action::Pub {
        subject: "{c}.a",
        headers: None,
        payload: b"hello",
    };
    let mut ops = vec![
        on(0, subscribe("{c}.a", None, 1)),
        on(0, subscribe("{c}.>", None, 2)),
        on(1, subscribe("{c}.b", Some("q1"), 1)),
        on(2, subscribe("{c}.b", Some("q1"), 1)),
        on(1, publish.clone()),
        on(
            0,
            api_call(
                "STREAM.CREATE.{S0}".into(),
                stream_config(&mut Rng(0), "{S0}", true).replace("{j}.a", "{j}.>"),
            ),
        ),
        on(
            0,
            api_call(
                "CONSUMER.DURABLE.CREATE.{S0}.C0".into(),
                CONSUMER_CONFIGS[0]
                    .replace("{S}", "{S0}")
                    .replace("{C}", "C0"),
            ),
        ),
        on(
            0,
            Action::Pull {
                stream: "{S0}",
                consumer: "C0",
                body: r#"{"batch":"x","no_wait":true}"#,
            },
        ),
    ];
    for _ in 0..20 {
        ops.push(on(
            0,
            Action::Pub {
                subject: "{c}.b",
                headers: None,
                payload: b"q",
            },
        ));
    }
    let sequence = Sequence {
        slots: vec![Target::Open; 3],
        ops,
    };
    let comparison = bench.run(&sequence, FIRST_SEED);
    bench.check(&sequence, FIRST_SEED, &comparison);
    let seen: BTreeSet<Known> = comparison.known.keys().copied().collect();
    let expected = BTreeSet::from([
        Known::QueueGroupPick,
        Known::FanOutOrder,
        Known::PullJsonReason,
    ]);
    assert_eq!(seen, expected, "the known differences nats-server shows");
}

/// What the bus's pull loop reads, in states generated sequences seldom reach: the bus's own
/// start (stream and consumer looked up, missing, created), a duplicate publish, a pull that
/// gets part of its batch and then `408`, a consumer at `max_ack_pending` (nats-server 2.9.10
/// holds a pull there until it expires, with `408`, rather than answering `409`), an ack that
/// makes room, a `-NAK` that comes back at once counting up, a `+TERM`, and a pull on a
/// consumer that was deleted (no answer). Each must be answered alike, or the test fails as a
/// generated sequence would.
#[test]
fn the_states_the_pull_loop_reads_are_answered_like_nats_server() {
    let Some(bench) = Bench::start() else {
        return;
    };
    let on = |action: Action| Op { slot: 0, action };
    let api = |api: &str, body: &str| on(api_call(api.into(), body.into()));
    let publish = |subject: &'static str, msg_id: Option<&'static str>| {
        on(Action::JsPublish {
            subject,
            msg_id,
            payload: b"hello",
        })
    };
    let pull = |body: &'static str| {
        on(Action::Pull {
            stream: "{S0}",
            consumer: "C0",
            body,
        })
    };
    let ack = |delivery: usize, body: &'static str| on(Action::Ack { delivery, body });
    let bus_stream = STREAM_CONFIGS[0]
        .replace("{S}", "{S0}")
        .replace("{sub}", ">");
    let limited_consumer = CONSUMER_CONFIGS[0]
        .replace("{S}", "{S0}")
        .replace("{C}", "C0")
        .replace("\"max_ack_pending\":1000", "\"max_ack_pending\":2");
    let ops = vec![
        api("STREAM.INFO.{S0}", ""),
        api("STREAM.CREATE.{S0}", &bus_stream),
        api("STREAM.INFO.{S0}", ""),
        api("CONSUMER.INFO.{S0}.C0", ""),
        api("CONSUMER.DURABLE.CREATE.{S0}.C0", &limited_consumer),
        pull(r#"{"batch":1,"no_wait":true}"#),
        publish("{j}.a", Some("m1")),
        publish("{j}.a", Some("m1")),
        publish("{j}.b", Some("m2")),
        publish("{j}.c", None),
        pull(r#"{"batch":3,"expires":50000000}"#),
        pull(r#"{"batch":1,"expires":50000000}"#),
        api("CONSUMER.INFO.{S0}.C0", ""),
        ack(0, "+ACK"),
        pull(r#"{"batch":2,"expires":50000000}"#),
        ack(2, "-NAK"),
        pull(r#"{"batch":1,"no_wait":true}"#),
        ack(3, "+TERM"),
        ack(1, "+WPI"),
        api("CONSUMER.INFO.{S0}.C0", ""),
        api("CONSUMER.DELETE.{S0}.C0", ""),
        pull(r#"{"batch":1,"no_wait":true}"#),
        api("CONSUMER.INFO.{S0}.C0", ""),
        api("STREAM.INFO.{S0}", ""),
        api("STREAM.DELETE.{S0}", ""),
        publish("{j}.a", Some("m3")),
    ];
    let sequence = Sequence {
        slots: vec![Target::Open],
        ops,
    };
    let comparison = bench.run(&sequence, FIRST_SEED);
    bench.check(&sequence, FIRST_SEED, &comparison);
    let answers = &comparison.answers;
    for (kind, at_least) in [
        ("JetStream delivery", 4),
        ("duplicate", 1),
        ("404", 1),
        ("408", 2),
        ("503", 1),
    ] {
        assert!(
            answers.get(kind).copied().unwrap_or(0) >= at_least,
            "at least {at_least} of {kind}: {answers:?}"
        );
    }
}
