//! Identity and time: message ids, node ids, and the one clock seam.
//!
//! Message ids are 128-bit and time-ordered (UUIDv7 layout: 48 bits of Unix milliseconds, then
//! random bits), so ids sort by publish time and JetStream can de-duplicate retries by id. The
//! random bits come from a seeded generator and the time from a [`Clock`], so that a simulation
//! run with the same seed produces the same ids.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A 128-bit, time-ordered message id.
///
/// Displays (and parses) as a UUID string, for example `01890a5d-ac96-774b-bcce-b302099a8057`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u128);

impl MessageId {
    /// The id with the given 128 bits.
    pub const fn from_u128(value: u128) -> Self {
        MessageId(value)
    }

    /// The 128 bits of this id.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The id as 16 big-endian bytes (its wire form).
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The id from 16 big-endian bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        MessageId(u128::from_be_bytes(bytes))
    }

    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    /// The id as its text (what `Display` writes), without the formatting machinery: once or
    /// twice per NATS publish, where `to_string` cost several times as much.
    pub(crate) fn to_text(self) -> String {
        let mut buffer = uuid::Uuid::encode_buffer();
        uuid::Uuid::from_u128(self.0)
            .hyphenated()
            .encode_lower(&mut buffer)
            .to_owned()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_u128(self.0).hyphenated(), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(MessageId(uuid::Uuid::parse_str(s)?.as_u128()))
    }
}

/// The name of one bus node (one hub process): the `origin` of what it publishes.
///
/// 1 to 255 bytes of `[A-Za-z0-9_.:-]`, so it fits the envelope and reads well in logs.
///
/// A node id also names a process's durable state on at-least-once backends (JetStream keeps one
/// durable consumer per node id), so there it must stay the same across restarts of the process
/// and differ between processes that run at the same time. An id made by
/// [`NodeId::generate`] is new on every start; [`NodeId::is_generated`] tells, and the JetStream
/// bus refuses one.
#[derive(Clone)]
pub struct NodeId {
    id: Arc<str>,
    generated: bool,
}

/// Why a text is not a [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{id:?} is not a node id: {reason}")]
pub struct InvalidNodeId {
    /// The refused text (cut to 300 bytes).
    pub id: String,
    /// What it breaks.
    pub reason: &'static str,
}

impl NodeId {
    /// The origin of a message that a publisher outside the bus put on the broker (a plain
    /// `PUBLISH` or `nats pub`, see `docs/bus_spec.md`, "Messages from other services"). No
    /// node can take this id: [`NodeId::new`] refuses it.
    pub const EXTERNAL: &'static str = "external";

    /// Checks and wraps a node id.
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidNodeId> {
        let id = id.as_ref();
        let valid = !id.is_empty()
            && id.len() <= 255
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        let reason = if !valid {
            "1 to 255 bytes of A-Z a-z 0-9 _ . : -"
        } else if id == Self::EXTERNAL {
            "reserved for messages from publishers outside the bus"
        } else {
            return Ok(NodeId {
                id: id.into(),
                generated: false,
            });
        };
        let mut shown: String = id.chars().take(300).collect();
        shown.shrink_to_fit();
        Err(InvalidNodeId { id: shown, reason })
    }

    /// The origin of every message from outside the bus ([`NodeId::EXTERNAL`]).
    pub fn external() -> Self {
        static EXTERNAL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        NodeId {
            id: EXTERNAL.get_or_init(|| NodeId::EXTERNAL.into()).clone(),
            generated: false,
        }
    }

    /// True for [`NodeId::external`]: the message came from a publisher outside the bus.
    pub fn is_external(&self) -> bool {
        &*self.id == Self::EXTERNAL
    }

    /// A fresh id of the form `node-<16 hex digits>`, from `ids`' random source. It is new on
    /// every call, so it suits only buses that keep no state under their node id.
    pub fn generate(ids: &IdGenerator) -> Self {
        NodeId {
            id: format!("node-{:016x}", ids.random_u64()).into(),
            generated: true,
        }
    }

    /// True for an id made by [`NodeId::generate`] rather than configured.
    pub fn is_generated(&self) -> bool {
        self.generated
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

// Identity is the text alone: a configured id equal to a generated one names the same node.
impl PartialEq for NodeId {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for NodeId {}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.id)
    }
}

/// Where bus logic reads wall-clock time: publish timestamps and id prefixes.
///
/// Production uses [`SystemClock`]; a simulation passes a clock driven by simulated time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Nanoseconds since the Unix epoch.
    fn unix_nanos(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Makes message ids and other random values from one clock and one seeded random source.
///
/// Ids are strictly increasing per generator, even within one millisecond or when the clock
/// steps back, so one publisher's ids sort in publish order.
#[derive(Debug, Clone)]
pub struct IdGenerator {
    inner: Arc<Mutex<IdState>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
struct IdState {
    rng: StdRng,
    last: u128,
}

impl IdGenerator {
    /// A generator seeded from the operating system, on the system clock.
    pub fn from_entropy() -> Self {
        Self::with_parts(StdRng::from_os_rng(), Arc::new(SystemClock))
    }

    /// A deterministic generator: the same seed and clock give the same ids.
    pub fn seeded(seed: u64, clock: Arc<dyn Clock>) -> Self {
        Self::with_parts(StdRng::seed_from_u64(seed), clock)
    }

    fn with_parts(rng: StdRng, clock: Arc<dyn Clock>) -> Self {
        IdGenerator {
            inner: Arc::new(Mutex::new(IdState { rng, last: 0 })),
            clock,
        }
    }

    /// The clock this generator stamps ids with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Now, in nanoseconds since the Unix epoch, by this generator's clock.
    pub fn now_nanos(&self) -> u64 {
        self.clock.unix_nanos()
    }

    /// A new message id: UUIDv7 layout, greater than every id this generator made before.
    pub fn next_id(&self) -> MessageId {
        self.next_id_at(self.clock.unix_nanos())
    }

    /// A new message id stamped with `now_nanos` (a reading of this generator's clock the
    /// caller also uses, so one message costs one clock reading).
    ///
    /// The first id of a millisecond takes fresh random bits; the next ids of the same
    /// millisecond (or of an earlier one, if the clock went back) count up from the last id
    /// (RFC 9562's monotonic random method), so a busy publisher draws random bits about once
    /// per millisecond rather than once per message. Ids of different generators stay apart:
    /// each millisecond's run starts at its own random point of 74 bits.
    pub fn next_id_at(&self, now_nanos: u64) -> MessageId {
        let millis = now_nanos / 1_000_000;
        let mut state = self.lock();
        let last_millis = (state.last >> 80) as u64;
        let id = if state.last != 0 && millis <= last_millis {
            state.last.wrapping_add(1)
        } else {
            let random: [u8; 10] = state.rng.random();
            uuid::Builder::from_unix_timestamp_millis(millis, &random)
                .into_uuid()
                .as_u128()
        };
        state.last = id;
        MessageId(id)
    }

    /// A random 64-bit value (backoff jitter, generated names).
    pub fn random_u64(&self) -> u64 {
        self.lock().rng.random()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdState> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_of_an_id_is_what_display_writes() {
        for raw in [0, 1, u128::MAX, 0x0190_b0e6_7f3a_7c4e_9a1b_2c3d_4e5f_6a7b] {
            let id = MessageId::from_u128(raw);
            assert_eq!(id.to_text(), id.to_string());
        }
    }

    #[derive(Debug)]
    struct FixedClock(u64);

    impl Clock for FixedClock {
        fn unix_nanos(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn ids_increase_within_one_millisecond() {
        let ids = IdGenerator::seeded(7, Arc::new(FixedClock(1_700_000_000_000_000_000)));
        let mut last = ids.next_id();
        for _ in 0..1000 {
            let next = ids.next_id();
            assert!(next > last, "{next} should sort after {last}");
            last = next;
        }
    }

    #[test]
    fn each_millisecond_starts_at_a_fresh_random_point_and_counts_up_within_it() {
        #[derive(Debug)]
        struct SteppingClock(std::sync::atomic::AtomicU64);
        impl Clock for SteppingClock {
            fn unix_nanos(&self) -> u64 {
                self.0.load(std::sync::atomic::Ordering::Relaxed)
            }
        }
        let clock = Arc::new(SteppingClock(1_700_000_000_000_000_000.into()));
        let ids = IdGenerator::seeded(11, clock.clone());
        let first = ids.next_id().as_u128();
        assert_eq!(ids.next_id().as_u128(), first + 1);
        assert_eq!(ids.next_id().as_u128(), first + 2);
        clock
            .0
            .fetch_add(1_000_000, std::sync::atomic::Ordering::Relaxed);
        let next_ms = ids.next_id().as_u128();
        assert_eq!(next_ms >> 80, (first >> 80) + 1, "the next millisecond");
        assert_ne!(
            next_ms & ((1 << 62) - 1),
            (first + 3) & ((1 << 62) - 1),
            "a new millisecond draws new random bits"
        );
        let other = IdGenerator::seeded(12, clock).next_id().as_u128();
        assert_ne!(other, next_ms, "another generator starts elsewhere");
        assert_eq!(uuid::Uuid::from_u128(next_ms).get_version_num(), 7);
    }

    #[test]
    fn same_seed_gives_same_ids() {
        let clock = Arc::new(FixedClock(42_000_000));
        let a = IdGenerator::seeded(1, clock.clone());
        let b = IdGenerator::seeded(1, clock);
        let a: Vec<_> = (0..5).map(|_| a.next_id()).collect();
        let b: Vec<_> = (0..5).map(|_| b.next_id()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn id_carries_the_millisecond_timestamp_and_round_trips_as_text() {
        let ids = IdGenerator::seeded(3, Arc::new(FixedClock(1_234_567_000_000)));
        let id = ids.next_id();
        assert_eq!((id.as_u128() >> 80) as u64, 1_234_567);
        let text = id.to_string();
        assert_eq!(text.parse::<MessageId>().unwrap(), id);
        assert_eq!(MessageId::from_bytes(id.to_bytes()), id);
    }

    #[test]
    fn node_id_rule() {
        assert!(NodeId::new("hub-a.eu:1").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a b").is_err());
        assert!(NodeId::new("x".repeat(256)).is_err());
        let generated = NodeId::generate(&IdGenerator::seeded(9, Arc::new(SystemClock)));
        assert!(generated.is_generated());
        let configured = NodeId::new(generated.as_str()).unwrap();
        assert!(!configured.is_generated());
        assert_eq!(configured, generated, "identity is the text");
        assert!(generated.as_str().starts_with("node-"));
    }

    #[test]
    fn the_external_origin_is_no_node_s_id() {
        let refused = NodeId::new(NodeId::EXTERNAL).unwrap_err();
        assert!(refused.to_string().contains("reserved"), "{refused}");
        let external = NodeId::external();
        assert!(external.is_external());
        assert_eq!(external.as_str(), "external");
        assert!(!NodeId::new("external-1").unwrap().is_external());
    }
}
