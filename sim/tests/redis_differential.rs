//! The fake Redis and the fake Sentinel, compared with real ones: one generated sequence of raw
//! RESP operations is sent to real `redis-server` processes over `TokioTcp` and to the fakes
//! inside turmoil over `TurmoilTcp`, by one driver generic over `Connector`, and whatever the
//! two answered must be the same, op by op.
//!
//! The operations cover what the Redis bus and redis-rs send (the connection-setup pipeline of
//! `AUTH`, `SELECT` and `CLIENT SETINFO`, `PING` in and out of subscribed mode, `PUBLISH`,
//! `SUBSCRIBE` and `UNSUBSCRIBE` of one or many channels, `ROLE`, `SENTINEL
//! get-master-addr-by-name`) and what a client could get wrong around them: `HELLO 2/3` with
//! and without credentials, `AUTH` with right and wrong passwords and an ACL user, `CLIENT
//! SETNAME`/`GETNAME`/`ID`, `ECHO`, `QUIT`, wrong arity, unknown commands and subcommands,
//! inline commands, pipelines and malformed input. Four servers take part: one without a
//! password, one with `requirepass`, one with an ACL user (the `default` user disabled) and a
//! Sentinel monitoring the first.
//!
//! Each op's replies are read until the count the command implies (one per channel for
//! `SUBSCRIBE a b`, until the count reaches 0 for a bare `UNSUBSCRIBE`, then the end of the
//! connection after `QUIT` or a protocol error), each within a deadline; after a `PUBLISH` that
//! reached `n` subscribers, `n` messages are collected from the other connections. So what each
//! server answered is known exactly, without waiting for silence.
//!
//! Replies are compared after replacing what legitimately differs (the server version and the
//! connection ids in `HELLO` and `CLIENT ID`). Every other difference must be one of the
//! [`Known`] differences, each listed with its reason in `docs/testing.md`; anything else fails
//! the test, which then shrinks the sequence to the ops that still show it and prints both
//! transcripts.
//!
//! `HUBBUS_TEST_DIFF_SEED=<n>` replays one sequence; `HUBBUS_TEST_DIFF_CASES=<count>` runs more
//! (or fewer) than the default.

mod real_redis;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::future::select_all;
use hubbus::transport::{BoxedStream, Connector, TokioTcp, TurmoilTcp};
use hubbus_sim::redis::{FakeRedisOptions, serve_redis};
use hubbus_sim::sentinel::{FakeSentinel, serve_sentinel};
use real_redis::RedisProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

/// Sequences run by default: enough to hit every command in every connection state, within a
/// few seconds.
const DEFAULT_CASES: u64 = 256;

/// The first sequence's seed; sequence `i` uses `FIRST_SEED + i`.
const FIRST_SEED: u64 = 0xd1ff_0000;

/// How long one reply may take. Real servers answer on loopback in well under a millisecond and
/// the simulation's links take 1 ms, so this only runs out when a server does not answer; it is
/// generous so that a loaded machine starving the real server for a moment is not taken for
/// one.
const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// The password of the `requirepass` server.
const PASSWORD: &str = "secret";
/// The ACL user of the ACL server, and its password.
const ACL_USER: &str = "app";
const ACL_PASSWORD: &str = "pw";
/// The master the Sentinel monitors.
const MASTER_NAME: &str = "mymaster";

// ---------------------------------------------------------------------------------------------
// The sequences.

/// Which server a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// No password: the `default` user has `nopass`.
    Open,
    /// `requirepass secret`.
    Password,
    /// The `default` user is disabled; the user `app` has the password `pw`.
    Acl,
    /// A Sentinel monitoring `mymaster`, which is the `Open` server.
    Sentinel,
}

impl Target {
    const ALL: [Target; 4] = [
        Target::Open,
        Target::Password,
        Target::Acl,
        Target::Sentinel,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One word of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Lit(Vec<u8>),
    /// A channel of the sequence: `0..=2` are test channels (prefixed per run, so that runs on
    /// the long-lived real servers never see each other's subscribers), 3 is Sentinel's
    /// `+switch-master`.
    Channel(u8),
}

impl Word {
    fn resolve(&self, prefix: &str) -> Vec<u8> {
        match self {
            Word::Lit(bytes) => bytes.clone(),
            Word::Channel(3) => b"+switch-master".to_vec(),
            Word::Channel(n) => format!("{prefix}ch{n}").into_bytes(),
        }
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Word::Lit(bytes) if bytes.is_empty() => write!(f, "\"\""),
            Word::Lit(bytes) if bytes.len() > 40 => {
                write!(f, "<{} bytes>", bytes.len())
            }
            Word::Lit(bytes) if bytes.iter().all(u8::is_ascii_graphic) => {
                write!(f, "{}", bytes.escape_ascii())
            }
            Word::Lit(bytes) => write!(f, "\"{}\"", show(bytes)),
            Word::Channel(3) => write!(f, "+switch-master"),
            Word::Channel(n) => write!(f, "<ch{n}>"),
        }
    }
}

type Cmd = Vec<Word>;

fn cmd(words: &[&str]) -> Cmd {
    words
        .iter()
        .map(|word| Word::Lit(word.as_bytes().to_vec()))
        .collect()
}

/// What one op does on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Commands in the array form, written at once: a pipeline when there are several.
    Commands(Vec<Cmd>),
    /// One command in the inline form, its words separated by spaces.
    Inline(Cmd),
    /// Bytes that are not a well-formed command (or empty commands before one), answered by
    /// exactly one reply.
    Raw(&'static [u8]),
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
            let words = |cmd: &Cmd| {
                cmd.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            match &op.action {
                Action::Commands(cmds) => {
                    let cmds: Vec<String> = cmds.iter().map(words).collect();
                    writeln!(f, "{}", cmds.join(" | "))?;
                }
                Action::Inline(cmd) => writeln!(f, "inline {}", words(cmd))?,
                Action::Raw(bytes) => writeln!(f, "raw {}", show(bytes))?,
                Action::Reconnect => writeln!(f, "reconnect")?,
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

/// Payloads for `PUBLISH` and `ECHO`: text, empty, binary with CR LF and NUL, not UTF-8, and
/// long.
fn payload(rng: &mut Rng) -> Word {
    let payloads: [&[u8]; 6] = [
        b"hello",
        b"",
        b"two words",
        b"bin\0\r\n\xff",
        b"\xffraw",
        &[b'x'; 300],
    ];
    Word::Lit(rng.pick(&payloads).to_vec())
}

fn channels(rng: &mut Rng, target: Target, min: usize) -> Vec<Word> {
    let count = min + rng.below(4 - min);
    (0..count)
        .map(|_| {
            if target == Target::Sentinel && rng.chance(40) {
                Word::Channel(3)
            } else {
                channel(rng)
            }
        })
        .collect()
}

/// One of the three test channels, the first more often, so that subscribers and publishers
/// meet.
fn channel(rng: &mut Rng) -> Word {
    Word::Channel(rng.pick(&[0, 0, 0, 1, 2]))
}

/// Credentials as a client might send them: right for one server, wrong for the others.
fn credentials(rng: &mut Rng) -> (Option<&'static str>, &'static str) {
    let user = rng.pick(&[None, Some("default"), Some(ACL_USER), Some("nobody")]);
    let password = rng.pick(&[PASSWORD, ACL_PASSWORD, "wrong"]);
    (user, password)
}

fn auth(rng: &mut Rng) -> Cmd {
    match rng.below(10) {
        0 => cmd(&["AUTH"]),
        1 => cmd(&["AUTH", "a", "b", "c"]),
        _ => match credentials(rng) {
            (None, password) => cmd(&["AUTH", password]),
            (Some(user), password) => cmd(&["auth", user, password]),
        },
    }
}

fn hello(rng: &mut Rng) -> Cmd {
    let (user, password) = credentials(rng);
    let user = user.unwrap_or("default");
    let name = rng.pick(&["hub-1", "node:2"]);
    match rng.below(14) {
        0 => cmd(&["HELLO"]),
        1 => cmd(&["HELLO", "2"]),
        2 => cmd(&["HELLO", "3"]),
        3 => cmd(&["HELLO", rng.pick(&["1", "4", "-1", "x", "02"])]),
        4 | 5 => cmd(&["HELLO", "2", "AUTH", user, password]),
        6 => cmd(&["HELLO", "3", "AUTH", user, password]),
        7 => cmd(&["HELLO", "2", "SETNAME", name]),
        8 => cmd(&["hello", "2", "auth", user, password, "setname", name]),
        9 => cmd(&["HELLO", "2", "SETNAME", "two words"]),
        10 => cmd(&["HELLO", "2", "BOGUS"]),
        11 => cmd(&["HELLO", "2", "AUTH", user]),
        12 => cmd(&["HELLO", "2", "SETNAME"]),
        _ => cmd(&["HELLO", "3", "SETNAME", name]),
    }
}

fn client(rng: &mut Rng) -> Cmd {
    match rng.below(16) {
        0 | 1 => cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-rs"]),
        2 => cmd(&["CLIENT", "SETINFO", "LIB-VER", "1.8.1"]),
        3 => cmd(&["client", "setinfo", "lib-name", "has space"]),
        4 => cmd(&["CLIENT", "SETINFO", "COLOR", "red"]),
        5 => cmd(&["CLIENT", "SETINFO", "LIB-NAME"]),
        6 | 7 => cmd(&["CLIENT", "SETNAME", rng.pick(&["hub-1", "node:2"])]),
        8 => cmd(&["CLIENT", "SETNAME", rng.pick(&["", "two words", "tab\t"])]),
        9 => cmd(&["CLIENT", "SETNAME"]),
        10 | 11 => cmd(&["CLIENT", "GETNAME"]),
        12 => cmd(&["client", "getname", "x"]),
        13 => cmd(&["CLIENT", "ID"]),
        14 => cmd(&["CLIENT"]),
        _ => cmd(&["CLIENT", "NOPE"]),
    }
}

/// One command, any of them.
fn command(rng: &mut Rng, target: Target) -> Cmd {
    match rng.below(100) {
        0..=11 => {
            let mut words = cmd(&["SUBSCRIBE"]);
            let min = usize::from(!rng.chance(5));
            words.extend(channels(rng, target, min));
            words
        }
        12..=19 => {
            let mut words = cmd(&["UNSUBSCRIBE"]);
            if rng.chance(60) {
                words.extend(channels(rng, target, 1));
            }
            words
        }
        20..=33 => match rng.below(10) {
            0 => vec![Word::Lit(b"PUBLISH".to_vec()), Word::Channel(0)],
            _ => vec![Word::Lit(b"PUBLISH".to_vec()), channel(rng), payload(rng)],
        },
        34..=41 => match rng.below(5) {
            0 => cmd(&["PING", "a", "b"]),
            1 => vec![Word::Lit(b"ping".to_vec()), payload(rng)],
            _ => cmd(&["PING"]),
        },
        42..=49 => auth(rng),
        50..=58 => hello(rng),
        59..=69 => client(rng),
        70..=73 => match rng.below(4) {
            0 => cmd(&["ECHO"]),
            1 => cmd(&["ECHO", "a", "b"]),
            _ => vec![Word::Lit(b"ECHO".to_vec()), payload(rng)],
        },
        74..=78 => match rng.below(3) {
            0 => cmd(&["SELECT"]),
            _ => cmd(&[
                "SELECT",
                rng.pick(&["0", "3", "15", "16", "-1", "x", "01", "99999999999"]),
            ]),
        },
        79..=81 => match rng.below(4) {
            0 => cmd(&["ROLE", "x"]),
            _ => cmd(&["ROLE"]),
        },
        82..=87 => match rng.below(6) {
            0 => cmd(&["SENTINEL"]),
            1 => cmd(&["SENTINEL", "NOPE"]),
            2 => cmd(&["SENTINEL", "get-master-addr-by-name"]),
            3 => cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "unknown"]),
            _ => cmd(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]),
        },
        88..=92 => {
            let long = "y".repeat(150);
            match rng.below(3) {
                0 => cmd(&["FLY"]),
                1 => cmd(&["fly", "me", "away"]),
                _ => cmd(&["FLY", &long, &long]),
            }
        }
        _ => cmd(&["QUIT"]),
    }
}

/// What redis-rs pipelines when it opens a connection: `AUTH` (if it has a password), `SELECT`
/// (if the database is not 0), then `CLIENT SETINFO` twice.
fn setup_pipeline(rng: &mut Rng, target: Target, always_right: bool) -> Action {
    let mut cmds = Vec::new();
    let right = always_right || rng.chance(85);
    match target {
        Target::Password if right => cmds.push(cmd(&["AUTH", PASSWORD])),
        Target::Acl if right => cmds.push(cmd(&["AUTH", ACL_USER, ACL_PASSWORD])),
        Target::Open | Target::Sentinel if right => {}
        _ => cmds.push(auth(rng)),
    }
    if target != Target::Sentinel && rng.chance(20) {
        cmds.push(cmd(&["SELECT", "3"]));
    }
    cmds.push(cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-rs"]));
    cmds.push(cmd(&["CLIENT", "SETINFO", "LIB-VER", "1.8.1"]));
    Action::Commands(cmds)
}

/// Malformed or unusual input that every Redis answers with exactly one reply.
const RAW: [&[u8]; 8] = [
    b"*x\r\n",
    b"*1\r\n:1\r\n",
    b"*1\r\n$x\r\n",
    b"*1\r\n$-5\r\n",
    b"*01\r\n$4\r\nPING\r\n",
    b"*1\r\n$04\r\nPING\r\n",
    b"*0\r\n*-1\r\n\r\n\n*1\r\n$4\r\nPING\r\n",
    b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
];

/// A Pub/Sub command, for sequences about delivery: mostly `PUBLISH` on the first connection,
/// which publishes, and mostly the others on the rest, which subscribe.
fn pubsub_command(rng: &mut Rng, target: Target, publisher: bool) -> Cmd {
    if publisher && rng.chance(80) {
        return vec![Word::Lit(b"PUBLISH".to_vec()), channel(rng), payload(rng)];
    }
    match rng.below(20) {
        0..=6 => {
            let mut words = cmd(&["SUBSCRIBE"]);
            words.extend(channels(rng, target, 1));
            words
        }
        7..=15 => vec![Word::Lit(b"PUBLISH".to_vec()), channel(rng), payload(rng)],
        16..=17 => {
            let mut words = cmd(&["UNSUBSCRIBE"]);
            if rng.chance(50) {
                words.extend(channels(rng, target, 1));
            }
            words
        }
        _ => cmd(&["PING"]),
    }
}

fn action(rng: &mut Rng, target: Target, slot: usize, about_delivery: bool) -> Action {
    if about_delivery && rng.chance(80) {
        return Action::Commands(vec![pubsub_command(rng, target, slot == 0)]);
    }
    match rng.below(100) {
        0..=79 => Action::Commands(vec![command(rng, target)]),
        80..=87 => {
            let count = 2 + rng.below(3);
            Action::Commands((0..count).map(|_| command(rng, target)).collect())
        }
        88..=92 => {
            // Inline commands are split on spaces, so their words must not contain any.
            let mut cmd = command(rng, target);
            for word in &mut cmd {
                if let Word::Lit(bytes) = word
                    && (bytes.is_empty() || !bytes.iter().all(u8::is_ascii_graphic))
                {
                    *word = Word::Lit(b"word".to_vec());
                }
            }
            Action::Inline(cmd)
        }
        93..=95 => Action::Raw(rng.pick(&RAW)),
        _ => Action::Reconnect,
    }
}

/// The sequence a seed names.
fn generate(seed: u64) -> Sequence {
    let mut rng = Rng(seed);
    // Half of the sequences are about delivery: mostly Pub/Sub commands on connections that
    // authenticated, to a server that delivers (Sentinel refuses PUBLISH). The other half
    // mixes everything.
    let about_delivery = rng.chance(50);
    let main = if about_delivery {
        rng.pick(&[Target::Open, Target::Password, Target::Acl])
    } else {
        rng.pick(&Target::ALL)
    };
    // Most connections of a sequence talk to one server, so that subscribers and publishers
    // meet.
    let count = if rng.chance(15) { 1 } else { 2 + rng.below(3) };
    let slots: Vec<Target> = (0..count)
        .map(|_| {
            if rng.chance(70) {
                main
            } else {
                rng.pick(&Target::ALL)
            }
        })
        .collect();
    let mut ops = Vec::new();
    for (slot, &target) in slots.iter().enumerate() {
        if about_delivery || rng.chance(85) {
            ops.push(Op {
                slot,
                action: setup_pipeline(&mut rng, target, about_delivery),
            });
        }
    }
    for _ in 0..8 + rng.below(33) {
        let slot = rng.below(slots.len());
        ops.push(Op {
            slot,
            action: action(&mut rng, slots[slot], slot, about_delivery),
        });
    }
    Sequence { slots, ops }
}

// ---------------------------------------------------------------------------------------------
// The client side of RESP, as far as the driver needs it.

/// A reply frame, RESP2 and the RESP3 types a `HELLO 3` answer can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// Status and error lines keep their bytes: Redis writes client input into some errors as
    /// it came.
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    NilArray,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    /// A placeholder for what legitimately differs (`<version>`, `<id>`), or a RESP3 scalar.
    Other(String),
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Simple(text) => write!(f, "+{}", show(text)),
            Reply::Error(text) => write!(f, "-{}", show(text)),
            Reply::Integer(n) => write!(f, ":{n}"),
            Reply::Bulk(bytes) => write!(f, "\"{}\"", show(bytes)),
            Reply::Nil => write!(f, "nil"),
            Reply::NilArray => write!(f, "*nil"),
            Reply::Array(items) => {
                write!(f, "[")?;
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
            Reply::Map(pairs) => {
                write!(f, "%{{")?;
                for (index, (key, value)) in pairs.iter().enumerate() {
                    if index > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{key}: {value}")?;
                }
                write!(f, "}}")
            }
            Reply::Other(text) => write!(f, "{text}"),
        }
    }
}

/// Bytes as text, with what is not printable ASCII escaped (`\r`, `\x00`).
fn show(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| match byte {
            b' '..=b'~' => char::from(byte).to_string(),
            _ => byte.escape_ascii().to_string(),
        })
        .collect()
}

enum Parsed {
    Done(Reply, usize),
    Incomplete,
    Invalid,
}

/// The line at the start of `data` (without CRLF) and the bytes it takes with CRLF.
fn line(data: &[u8]) -> Option<(&[u8], usize)> {
    let end = data.windows(2).position(|pair| pair == b"\r\n")?;
    Some((&data[..end], end + 2))
}

fn parse(data: &[u8]) -> Parsed {
    let Some(&kind) = data.first() else {
        return Parsed::Incomplete;
    };
    let Some((text, header)) = line(&data[1..]).map(|(text, len)| (text, len + 1)) else {
        return Parsed::Incomplete;
    };
    let text_string = String::from_utf8_lossy(text).into_owned();
    let number = || text_string.parse::<i64>().ok();
    match kind {
        b'+' => Parsed::Done(Reply::Simple(text.to_vec()), header),
        b'-' => Parsed::Done(Reply::Error(text.to_vec()), header),
        b':' => match number() {
            Some(n) => Parsed::Done(Reply::Integer(n), header),
            None => Parsed::Invalid,
        },
        b'_' => Parsed::Done(Reply::Nil, header),
        b'#' | b',' | b'(' => Parsed::Done(
            Reply::Other(format!("{}{text_string}", kind as char)),
            header,
        ),
        b'$' => match number() {
            Some(-1) => Parsed::Done(Reply::Nil, header),
            Some(len) if len >= 0 => {
                let Some(end) = usize::try_from(len)
                    .ok()
                    .and_then(|len| len.checked_add(header + 2))
                else {
                    return Parsed::Invalid;
                };
                if data.len() < end {
                    return Parsed::Incomplete;
                }
                if &data[end - 2..end] != b"\r\n" {
                    return Parsed::Invalid;
                }
                Parsed::Done(Reply::Bulk(data[header..end - 2].to_vec()), end)
            }
            _ => Parsed::Invalid,
        },
        b'*' | b'~' | b'>' | b'%' => {
            let count = match number() {
                Some(-1) if kind == b'*' => return Parsed::Done(Reply::NilArray, header),
                Some(n) if n >= 0 => n as usize,
                _ => return Parsed::Invalid,
            };
            let elements = if kind == b'%' { count * 2 } else { count };
            let mut items = Vec::with_capacity(elements.min(64));
            let mut used = header;
            for _ in 0..elements {
                match parse(&data[used..]) {
                    Parsed::Done(item, len) => {
                        items.push(item);
                        used += len;
                    }
                    other => return other,
                }
            }
            let reply = if kind == b'%' {
                let mut pairs = Vec::new();
                let mut items = items.into_iter();
                while let (Some(key), Some(value)) = (items.next(), items.next()) {
                    pairs.push((key, value));
                }
                Reply::Map(pairs)
            } else {
                Reply::Array(items)
            };
            Parsed::Done(reply, used)
        }
        _ => Parsed::Invalid,
    }
}

/// What the driver saw in one place of the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Reply(Reply),
    /// The server closed the connection.
    Eof,
    /// The connection stayed open where the server should have closed it.
    StillOpen,
    /// Nothing arrived within the deadline.
    Timeout,
    /// Bytes that are not RESP.
    Garbled,
    ConnectFailed,
    /// A `PUBLISH` counted more subscribers than messages arrived.
    Undelivered(usize),
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Reply(reply) => write!(f, "{reply}"),
            Seen::Eof => write!(f, "<closed>"),
            Seen::StillOpen => write!(f, "<still open>"),
            Seen::Timeout => write!(f, "<no reply>"),
            Seen::Garbled => write!(f, "<not RESP>"),
            Seen::ConnectFailed => write!(f, "<connect failed>"),
            Seen::Undelivered(n) => write!(f, "<{n} messages never arrived>"),
        }
    }
}

/// One connection of the driver.
struct Conn {
    stream: BoxedStream,
    buf: BytesMut,
}

impl Conn {
    /// The next frame, or how the connection ended. Cancel-safe: bytes read stay in `buf`.
    async fn next(&mut self) -> Seen {
        loop {
            match parse(&self.buf) {
                Parsed::Done(reply, len) => {
                    self.buf.advance(len);
                    return Seen::Reply(reply);
                }
                Parsed::Invalid => return Seen::Garbled,
                Parsed::Incomplete => {}
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Seen::Eof,
                Ok(_) => {}
            }
        }
    }

    /// The next frame within [`REPLY_DEADLINE`].
    async fn next_in_time(&mut self) -> Seen {
        timeout(REPLY_DEADLINE, self.next())
            .await
            .unwrap_or(Seen::Timeout)
    }
}

// ---------------------------------------------------------------------------------------------
// The driver.

/// Where each part of the transcript came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    op: usize,
    part: Part,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Connect,
    /// The replies to the op's command with this index (the only one, unless a pipeline).
    Reply(usize),
    /// Messages that arrived on this slot after the op's `PUBLISH`.
    Delivered(usize),
    Undelivered,
}

type Transcript = BTreeMap<Key, Vec<Seen>>;

/// The servers' addresses, by [`Target::index`].
#[derive(Debug, Clone)]
struct Addrs([String; 4]);

/// Runs `sequence` through `connector` and records what the servers answered. After the last
/// op every connection still open is sent a `PING`, so a reply or message that came too many
/// shows up.
async fn drive<C: Connector>(
    connector: &C,
    addrs: &Addrs,
    sequence: &Sequence,
    prefix: &str,
) -> Transcript {
    let mut transcript = Transcript::new();
    let mut conns: Vec<Option<Conn>> = sequence.slots.iter().map(|_| None).collect();
    let epilogue = (0..sequence.slots.len()).map(|slot| Op {
        slot,
        action: Action::Commands(vec![cmd(&["PING"])]),
    });
    let ops: Vec<Op> = sequence.ops.iter().cloned().chain(epilogue).collect();
    for (index, op) in ops.iter().enumerate() {
        let is_epilogue = index >= sequence.ops.len();
        if is_epilogue && conns[op.slot].is_none() {
            continue;
        }
        if let Action::Reconnect = op.action {
            conns[op.slot] = None;
            continue;
        }
        let target = sequence.slots[op.slot];
        if conns[op.slot].is_none() {
            match connector.connect(&addrs.0[target.index()]).await {
                Ok(stream) => {
                    conns[op.slot] = Some(Conn {
                        stream,
                        buf: BytesMut::new(),
                    });
                }
                Err(_) => {
                    transcript.insert(
                        Key {
                            op: index,
                            part: Part::Connect,
                        },
                        vec![Seen::ConnectFailed],
                    );
                    continue;
                }
            }
        }
        let conn = conns[op.slot].as_mut().expect("connected above");
        let (wire, cmds) = encode(&op.action, prefix);
        if conn.stream.write_all(&wire).await.is_err() {
            transcript.insert(
                Key {
                    op: index,
                    part: Part::Connect,
                },
                vec![Seen::Eof],
            );
            conns[op.slot] = None;
            continue;
        }
        let mut messages = 0;
        let mut open = true;
        for (position, words) in cmds.iter().enumerate() {
            let (seen, published, still_open) = read_replies(conn, words).await;
            messages += published;
            transcript.insert(
                Key {
                    op: index,
                    part: Part::Reply(position),
                },
                seen,
            );
            if !still_open {
                open = false;
                break;
            }
        }
        if !open {
            conns[op.slot] = None;
        }
        if messages > 0 {
            collect_messages(
                &mut conns,
                sequence,
                op.slot,
                index,
                messages,
                &mut transcript,
            )
            .await;
        }
    }
    transcript
}

/// The bytes an action writes, and the commands (resolved words) whose replies to expect.
fn encode(action: &Action, prefix: &str) -> (Vec<u8>, Vec<Vec<Vec<u8>>>) {
    let resolve = |cmd: &Cmd| -> Vec<Vec<u8>> { cmd.iter().map(|w| w.resolve(prefix)).collect() };
    match action {
        Action::Commands(cmds) => {
            let mut wire = Vec::new();
            let mut resolved = Vec::new();
            for cmd in cmds {
                let words = resolve(cmd);
                wire.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
                for word in &words {
                    wire.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
                    wire.extend_from_slice(word);
                    wire.extend_from_slice(b"\r\n");
                }
                resolved.push(words);
            }
            (wire, resolved)
        }
        Action::Inline(cmd) => {
            let words = resolve(cmd);
            let mut wire = words.join(&b' ');
            wire.extend_from_slice(b"\r\n");
            (wire, vec![words])
        }
        // No command to interpret: exactly one reply is expected.
        Action::Raw(bytes) => (bytes.to_vec(), vec![Vec::new()]),
        Action::Reconnect => (Vec::new(), Vec::new()),
    }
}

fn is(word: Option<&Vec<u8>>, name: &str) -> bool {
    word.is_some_and(|word| word.eq_ignore_ascii_case(name.as_bytes()))
}

/// Reads the replies to one command: how many, the command and its first reply tell. Returns
/// what was seen, how many subscribers a `PUBLISH` reached, and whether the connection is
/// still usable.
async fn read_replies(conn: &mut Conn, words: &[Vec<u8>]) -> (Vec<Seen>, usize, bool) {
    let mut seen = vec![conn.next_in_time().await];
    let first = match &seen[0] {
        Seen::Reply(reply) => reply.clone(),
        _ => return (seen, 0, false),
    };
    let name = words.first();
    if is(name, "HELLO") {
        for reply in &mut seen {
            if let Seen::Reply(reply) = reply {
                hide_hello_identity(reply);
            }
        }
        // A successful HELLO 3 switches a real server to RESP3, which the driver does not
        // follow (see `Known::Resp3Hello`): the connection ends after any HELLO 3, whatever
        // the answer, so that both sides go on alike.
        if is(words.get(1), "3") {
            return (seen, 0, false);
        }
    }
    if let Reply::Error(text) = &first {
        if text.starts_with(b"ERR Protocol error") {
            seen.push(expect_close(conn).await);
            return (seen, 0, false);
        }
        return (seen, 0, true);
    }
    let mut published = 0;
    if is(name, "SUBSCRIBE") {
        for _ in 1..words.len() - 1 {
            let next = conn.next_in_time().await;
            let ok = matches!(next, Seen::Reply(_));
            seen.push(next);
            if !ok {
                return (seen, 0, false);
            }
        }
    } else if is(name, "UNSUBSCRIBE") {
        if words.len() > 1 {
            for _ in 1..words.len() - 1 {
                let next = conn.next_in_time().await;
                let ok = matches!(next, Seen::Reply(_));
                seen.push(next);
                if !ok {
                    return (seen, 0, false);
                }
            }
        } else {
            // A bare UNSUBSCRIBE confirms each channel with the count left; the last says 0.
            let remaining = |seen: &Seen| match seen {
                Seen::Reply(Reply::Array(parts)) => match parts.get(2) {
                    Some(Reply::Integer(n)) => *n,
                    _ => 0,
                },
                _ => 0,
            };
            while remaining(seen.last().expect("one reply at least")) > 0 {
                let next = conn.next_in_time().await;
                let ok = matches!(next, Seen::Reply(_));
                seen.push(next);
                if !ok {
                    return (seen, 0, false);
                }
            }
        }
    } else if is(name, "PUBLISH") {
        if let Reply::Integer(n) = first {
            published = usize::try_from(n).unwrap_or(0);
        }
    } else if is(name, "QUIT") && first == Reply::Simple(b"OK".to_vec()) {
        seen.push(expect_close(conn).await);
        return (seen, 0, false);
    } else if is(name, "CLIENT")
        && is(words.get(1), "ID")
        && let Some(Seen::Reply(reply @ Reply::Integer(_))) = seen.first_mut()
    {
        *reply = Reply::Other("<id>".into());
    }
    (seen, published, true)
}

/// After `QUIT` or a protocol error the server closes the connection.
async fn expect_close(conn: &mut Conn) -> Seen {
    match conn.next_in_time().await {
        Seen::Timeout => Seen::StillOpen,
        other => other,
    }
}

/// Replaces the server version and the connection id in a `HELLO` reply, which differ between
/// any two servers.
fn hide_hello_identity(reply: &mut Reply) {
    let hide = |key: &Reply, value: &mut Reply| {
        if let Reply::Bulk(key) = key {
            match key.as_slice() {
                b"version" => *value = Reply::Other("<version>".into()),
                b"id" => *value = Reply::Other("<id>".into()),
                _ => {}
            }
        }
    };
    match reply {
        Reply::Array(items) if items.len() % 2 == 0 => {
            for pair in items.chunks_mut(2) {
                let (key, value) = pair.split_at_mut(1);
                hide(&key[0], &mut value[0]);
            }
        }
        Reply::Map(pairs) => {
            for (key, value) in pairs {
                hide(key, value);
            }
        }
        _ => {}
    }
}

/// Collects the `expected` messages a `PUBLISH` on `publisher` announced, from the other
/// connections to the same server, whichever of them they arrive on.
async fn collect_messages(
    conns: &mut [Option<Conn>],
    sequence: &Sequence,
    publisher: usize,
    op: usize,
    expected: usize,
    transcript: &mut Transcript,
) {
    let target = sequence.slots[publisher];
    let deadline = Instant::now() + REPLY_DEADLINE;
    let mut got = 0;
    while got < expected {
        let candidates: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .filter(|(slot, conn)| {
                *slot != publisher && sequence.slots[*slot] == target && conn.is_some()
            })
            .map(|(slot, conn)| {
                let conn = conn.as_mut().expect("filtered on is_some");
                Box::pin(async move { (slot, conn.next().await) })
            })
            .collect();
        if candidates.is_empty() {
            break;
        }
        let Ok(((slot, seen), _, _)) = timeout_at(deadline, select_all(candidates)).await else {
            break;
        };
        let ended = !matches!(seen, Seen::Reply(_));
        transcript
            .entry(Key {
                op,
                part: Part::Delivered(slot),
            })
            .or_default()
            .push(seen);
        if ended {
            conns[slot] = None;
        } else {
            got += 1;
        }
    }
    if got < expected {
        transcript.insert(
            Key {
                op,
                part: Part::Undelivered,
            },
            vec![Seen::Undelivered(expected - got)],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The servers.

/// The real servers, started once for all sequences.
struct RealServers {
    _processes: Vec<RedisProcess>,
    addrs: Addrs,
    master_port: u16,
}

impl RealServers {
    fn start() -> Option<Self> {
        let open = RedisProcess::start("diff-open", &[])?;
        let password = RedisProcess::start("diff-password", &["--requirepass", PASSWORD])?;
        let acl = RedisProcess::start(
            "diff-acl",
            &[
                "--user",
                "default",
                "off",
                "--user",
                ACL_USER,
                "on",
                &format!(">{ACL_PASSWORD}"),
                "~*",
                "&*",
                "+@all",
            ],
        )?;
        let sentinel = RedisProcess::sentinel(MASTER_NAME, open.port)?;
        let addrs = Addrs([open.addr(), password.addr(), acl.addr(), sentinel.addr()]);
        Some(RealServers {
            master_port: open.port,
            _processes: vec![open, password, acl, sentinel],
            addrs,
        })
    }
}

/// The fakes' addresses inside the simulation.
fn fake_addrs() -> Addrs {
    Addrs([
        "redis-open:6379".into(),
        "redis-password:6379".into(),
        "redis-acl:6379".into(),
        "sentinel:26379".into(),
    ])
}

/// Runs `sequence` against the fakes in a fresh simulation.
fn run_fake(sequence: &Sequence, prefix: &str, seed: u64, master_port: u16) -> Transcript {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1))
        .simulation_duration(Duration::from_secs(3600))
        .build();
    sim.host("redis-open", || serve_redis(6379, FakeRedisOptions::new()));
    sim.host("redis-password", || {
        serve_redis(6379, FakeRedisOptions::new().with_password(PASSWORD))
    });
    sim.host("redis-acl", || {
        serve_redis(
            6379,
            FakeRedisOptions::new().with_user(ACL_USER, ACL_PASSWORD),
        )
    });
    let sentinel = FakeSentinel::new();
    // The address the real Sentinel reports for the master it monitors.
    sentinel.monitor(MASTER_NAME, "127.0.0.1", master_port);
    sim.host("sentinel", move || serve_sentinel(26379, sentinel.clone()));
    let result = Rc::new(RefCell::new(None));
    let out = Rc::clone(&result);
    let sequence = sequence.clone();
    let prefix = prefix.to_owned();
    sim.client("driver", async move {
        let transcript = drive(&TurmoilTcp, &fake_addrs(), &sequence, &prefix).await;
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
    /// The fakes speak RESP2 only: an accepted `HELLO 3` gets `-NOPROTO unsupported protocol
    /// version` where Redis switches to RESP3 and answers a map. The bus never asks for RESP3.
    Resp3Hello,
    /// A bare `UNSUBSCRIBE` confirms the channels in Redis's hash-table order; the fakes use
    /// name order. The counts run down the same way, and the same channels are confirmed.
    UnsubscribeAllOrder,
    /// An error that quotes client input (an unknown command's arguments) carries the bytes
    /// Redis got; the fakes' error lines are text, with U+FFFD for bytes that are not UTF-8.
    NonUtf8InErrors,
    /// Redis before 7.2 has no `CLIENT SETINFO` ("unknown subcommand"); the fakes answer as
    /// 7.2 does. redis-rs sends it on connect and ignores the answer.
    SetinfoBefore72,
    /// Redis before 7.2 words `HELLO`'s NOAUTH error without `<proto>`; the fakes use 7.2's.
    HelloNoauthBefore72,
    /// Redis before 7.2 applies `HELLO`'s `SETNAME` even when the `HELLO` then fails; 7.2 and
    /// the fakes name the connection only when `HELLO` succeeds. Seen on a later `GETNAME`.
    HelloSetnameBefore72,
}

const NOAUTH_HELLO_70: &str = "NOAUTH HELLO must be called with the client already \
    authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate \
    the client and select the RESP protocol version at the same time";
const NOAUTH_HELLO_72: &str = "NOAUTH HELLO must be called with the client already \
    authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
    authenticate the client and select the RESP protocol version at the same time";

/// What is known about the real servers.
#[derive(Debug, Clone, Copy)]
struct RealVersion {
    major: u32,
    minor: u32,
}

impl RealVersion {
    fn before_7_2(self) -> bool {
        (self.major, self.minor) < (7, 2)
    }
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
    /// Messages the real servers delivered, to show that the sequences exercise Pub/Sub.
    delivered: usize,
}

/// The text of `seen` if it is exactly one error reply.
fn error(seen: &[Seen]) -> Option<&[u8]> {
    match seen {
        [Seen::Reply(Reply::Error(text))] => Some(text),
        _ => None,
    }
}

fn error_is(seen: &[Seen], text: &str) -> bool {
    error(seen) == Some(text.as_bytes())
}

/// The channel and count of each confirmation, if `seen` holds only `unsubscribe`
/// confirmations.
fn confirmations(seen: &[Seen]) -> Option<Vec<(Reply, Reply)>> {
    seen.iter()
        .map(|seen| match seen {
            Seen::Reply(Reply::Array(parts)) if parts.len() == 3 => (parts[0]
                == Reply::Bulk(b"unsubscribe".to_vec()))
            .then(|| (parts[1].clone(), parts[2].clone())),
            _ => None,
        })
        .collect()
}

/// Whether two lists of `(channel, count)` confirmations confirm the same channels with the
/// counts running down alike, in whatever order.
fn same_confirmations_in_any_order(real: &[(Reply, Reply)], fake: &[(Reply, Reply)]) -> bool {
    let counts = |pairs: &[(Reply, Reply)]| -> Vec<Reply> {
        pairs.iter().map(|(_, count)| count.clone()).collect()
    };
    let channels = |pairs: &[(Reply, Reply)]| -> Vec<String> {
        let mut channels: Vec<String> = pairs
            .iter()
            .map(|(channel, _)| channel.to_string())
            .collect();
        channels.sort();
        channels
    };
    counts(real) == counts(fake) && channels(real) == channels(fake)
}

/// Which known difference, if any, explains `real` and `fake` differing for this command.
/// `leaked_names` are the names a failed `HELLO ... SETNAME` left on this connection of a real
/// server before 7.2.
fn explain(
    words: &[Vec<u8>],
    real: &[Seen],
    fake: &[Seen],
    version: RealVersion,
    leaked_names: &BTreeSet<Vec<u8>>,
) -> Option<Known> {
    let name = words.first();
    if is(name, "HELLO") && is(words.get(1), "3") {
        let real_map = matches!(real, [Seen::Reply(Reply::Map(_))]);
        if real_map && error_is(fake, "NOPROTO unsupported protocol version") {
            return Some(Known::Resp3Hello);
        }
    }
    if is(name, "UNSUBSCRIBE")
        && words.len() == 1
        && let (Some(real), Some(fake)) = (confirmations(real), confirmations(fake))
        && same_confirmations_in_any_order(&real, &fake)
    {
        return Some(Known::UnsubscribeAllOrder);
    }
    if let (Some(real), Some(fake)) = (error(real), error(fake))
        && !real.is_ascii()
        && String::from_utf8_lossy(real) == String::from_utf8_lossy(fake)
    {
        return Some(Known::NonUtf8InErrors);
    }
    if version.before_7_2() {
        if is(name, "CLIENT") && is(words.get(1), "SETINFO") && fake.len() == 1 {
            let sub = String::from_utf8_lossy(&words[1]);
            let expected = format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP.");
            if error_is(real, &expected) {
                return Some(Known::SetinfoBefore72);
            }
        }
        if is(name, "HELLO") && error_is(real, NOAUTH_HELLO_70) && error_is(fake, NOAUTH_HELLO_72) {
            return Some(Known::HelloNoauthBefore72);
        }
        if is(name, "CLIENT")
            && is(words.get(1), "GETNAME")
            && words.len() == 2
            && let [Seen::Reply(Reply::Bulk(name))] = real
            && leaked_names.contains(name)
            && fake.len() == 1
        {
            return Some(Known::HelloSetnameBefore72);
        }
    }
    None
}

/// Compares the two transcripts of one sequence.
fn compare(
    sequence: &Sequence,
    prefix: &str,
    real: &Transcript,
    fake: &Transcript,
    version: RealVersion,
) -> Comparison {
    let mut comparison = Comparison {
        unlisted: Vec::new(),
        known: BTreeMap::new(),
        delivered: real
            .iter()
            .filter(|(key, _)| matches!(key.part, Part::Delivered(_)))
            .map(|(_, seen)| seen.len())
            .sum(),
    };
    let keys: BTreeSet<Key> = real.keys().chain(fake.keys()).copied().collect();
    let mut leaked: Vec<BTreeSet<Vec<u8>>> = vec![BTreeSet::new(); sequence.slots.len()];
    let epilogue_ping = Action::Commands(vec![cmd(&["PING"])]);
    for key in keys {
        let real_seen = real.get(&key).map(Vec::as_slice).unwrap_or_default();
        let fake_seen = fake.get(&key).map(Vec::as_slice).unwrap_or_default();
        let (slot, action) = match sequence.ops.get(key.op) {
            Some(op) => (op.slot, &op.action),
            None => (key.op - sequence.ops.len(), &epilogue_ping),
        };
        let (_, cmds) = encode(action, prefix);
        let words: &[Vec<u8>] = match key.part {
            Part::Reply(position) => cmds.get(position).map(Vec::as_slice).unwrap_or_default(),
            _ => &[],
        };
        // A HELLO carrying SETNAME that a real server before 7.2 refused may have named the
        // connection all the same.
        if is(words.first(), "HELLO") && error(real_seen).is_some() {
            let setname = words
                .iter()
                .position(|word| word.eq_ignore_ascii_case(b"SETNAME"));
            if let Some(name) = setname.and_then(|at| words.get(at + 1)) {
                leaked[slot].insert(name.clone());
            }
        }
        if real_seen == fake_seen {
            continue;
        }
        match explain(words, real_seen, fake_seen, version, &leaked[slot]) {
            Some(known) => *comparison.known.entry(known).or_default() += 1,
            None => comparison.unlisted.push(Unlisted {
                key,
                slot: match key.part {
                    Part::Delivered(subscriber) => subscriber,
                    _ => slot,
                },
                real: real_seen.to_vec(),
                fake: fake_seen.to_vec(),
            }),
        }
    }
    comparison
}

/// The real servers, a runtime to drive them from, and their version: what every comparison
/// needs.
struct Bench {
    real: RealServers,
    runtime: tokio::runtime::Runtime,
    version: RealVersion,
}

impl Bench {
    /// `None` when no redis-server is installed and skipping is allowed.
    fn start() -> Option<Self> {
        let real = RealServers::start()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let version = runtime.block_on(real_version(&real.addrs.0[Target::Open.index()]));
        Some(Bench {
            real,
            runtime,
            version,
        })
    }

    /// Runs one sequence against both sides and compares.
    fn run(&self, sequence: &Sequence, seed: u64) -> Comparison {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let prefix = format!("d{}:", RUNS.fetch_add(1, Ordering::Relaxed));
        let real = self
            .runtime
            .block_on(drive(&TokioTcp, &self.real.addrs, sequence, &prefix));
        let fake = run_fake(sequence, &prefix, seed, self.real.master_port);
        compare(sequence, &prefix, &real, &fake, self.version)
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
            "the fakes answered differently from real Redis {}.{} (seed {seed}; replay with \
             HUBBUS_TEST_DIFF_SEED={seed}).\nOps (channels <chN> are prefixed per run):\n\
             {sequence}Differences not listed as known:\n{}",
            self.version.major,
            self.version.minor,
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

/// Asks the real Redis its version.
async fn real_version(addr: &str) -> RealVersion {
    let stream = TokioTcp
        .connect(addr)
        .await
        .expect("connect to the real Redis");
    let mut conn = Conn {
        stream,
        buf: BytesMut::new(),
    };
    conn.stream
        .write_all(b"*1\r\n$5\r\nHELLO\r\n")
        .await
        .expect("send HELLO");
    let Seen::Reply(Reply::Array(items)) = conn.next_in_time().await else {
        panic!("the real Redis answers HELLO with an array");
    };
    let version = items
        .chunks(2)
        .find_map(|pair| match pair {
            [Reply::Bulk(key), Reply::Bulk(value)] if key == b"version" => {
                Some(String::from_utf8_lossy(value).into_owned())
            }
            _ => None,
        })
        .expect("HELLO reports the version");
    let mut numbers = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    RealVersion {
        major: numbers.next().unwrap_or(0),
        minor: numbers.next().unwrap_or(0),
    }
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
fn the_fakes_answer_every_generated_sequence_like_real_redis_and_sentinel() {
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
    for seed in seeds {
        let sequence = generate(seed);
        ops += sequence.ops.len();
        let comparison = bench.run(&sequence, seed);
        bench.check(&sequence, seed, &comparison);
        delivered += comparison.delivered;
        for (entry, count) in comparison.known {
            *known.entry(entry).or_default() += count;
        }
    }
    eprintln!(
        "{ops} ops compared with Redis {}.{}, {delivered} messages delivered; known differences \
         seen: {known:?}",
        bench.version.major, bench.version.minor
    );
}

/// Each known difference is provoked once on purpose, so an entry that no longer matches
/// what real servers do (after a Redis upgrade, say) is noticed instead of lingering. The order
/// of a bare `UNSUBSCRIBE` is not required: Redis seeds its hash function at random, so its
/// order matches the fakes' now and then.
#[test]
fn every_known_difference_still_shows_against_real_servers() {
    let Some(bench) = Bench::start() else {
        return;
    };
    let lit =
        |words: &[&[u8]]| -> Cmd { words.iter().map(|word| Word::Lit(word.to_vec())).collect() };
    let on = |slot: usize, cmds: Vec<Cmd>| Op {
        slot,
        action: Action::Commands(cmds),
    };
    let mut subscribe_many = cmd(&["SUBSCRIBE"]);
    subscribe_many.extend((0..3).map(Word::Channel));
    let sequence = Sequence {
        slots: vec![Target::Password, Target::Open, Target::Sentinel],
        ops: vec![
            on(0, vec![cmd(&["HELLO", "2", "SETNAME", "early"])]),
            on(0, vec![cmd(&["AUTH", PASSWORD])]),
            on(0, vec![cmd(&["CLIENT", "GETNAME"])]),
            on(0, vec![cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-rs"])]),
            on(1, vec![subscribe_many]),
            on(1, vec![cmd(&["UNSUBSCRIBE"])]),
            on(1, vec![cmd(&["HELLO", "3"])]),
            on(2, vec![lit(&[b"FLY", b"\xffraw"])]),
        ],
    };
    let comparison = bench.run(&sequence, FIRST_SEED);
    bench.check(&sequence, FIRST_SEED, &comparison);
    let mut expected = BTreeSet::from([Known::Resp3Hello, Known::NonUtf8InErrors]);
    if bench.version.before_7_2() {
        expected.extend([
            Known::SetinfoBefore72,
            Known::HelloNoauthBefore72,
            Known::HelloSetnameBefore72,
        ]);
    }
    let seen: BTreeSet<Known> = comparison
        .known
        .keys()
        .copied()
        .filter(|known| *known != Known::UnsubscribeAllOrder)
        .collect();
    assert_eq!(seen, expected, "the known differences a real server shows");
}
