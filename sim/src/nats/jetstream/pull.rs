//! Pull requests: reading `$JS.API.CONSUMER.MSG.NEXT` bodies and the list of requests waiting
//! for messages.
//!
//! A body is empty (one message), a bare number (that many), or JSON
//! `{"batch": n, "expires": ns, "no_wait": bool, "max_bytes": n, "idle_heartbeat": ns}`; anything
//! else that is not JSON asks for one message without expiry, and broken JSON is answered
//! `400 Bad Request - <reason>`. Requests wait in arrival order; one that still wants more after
//! a message moves to the back, so several pullers share a consumer fairly. A request ends when
//! its batch is complete (silently), when it expires (`408 Request Timeout` with
//! `Nats-Pending-Messages` and `Nats-Pending-Bytes`), when a `no_wait` request has had messages
//! and the stream has nothing more (`408` too), and, silently, once nobody subscribes to its
//! reply subject any more: a real server checks interest the same way, so a puller that went
//! away takes no messages with it.
//!
//! These requests live in memory only: a restarted engine has none, as a restarted server.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use super::Outbound;
use super::json::Request;

/// A parsed pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PullRequest {
    pub(crate) batch: i64,
    /// How long it may wait, in nanoseconds; `None` for no expiry.
    pub(crate) expires: Option<i64>,
    pub(crate) max_bytes: i64,
    pub(crate) no_wait: bool,
    /// Idle heartbeat interval, in nanoseconds; 0 for none.
    pub(crate) heartbeat: i64,
}

/// `nextReqFromMsg`: reads a pull request body; `Err` is the text of a `400 Bad Request`.
pub(crate) fn parse_pull(body: &[u8]) -> Result<PullRequest, String> {
    let one = PullRequest {
        batch: 1,
        expires: None,
        max_bytes: 0,
        no_wait: false,
        heartbeat: 0,
    };
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Ok(one);
    }
    if trimmed[0] == b'{' {
        let request = Request::parse(trimmed).map_err(|e| e.0)?;
        let read = |e: super::json::Invalid| e.0;
        let expires = request.int("expires").map_err(read)?;
        let heartbeat = request.int("idle_heartbeat").map_err(read)?;
        if heartbeat > 0 && heartbeat.saturating_mul(2) > expires {
            return Err("heartbeat value too large".to_owned());
        }
        return Ok(PullRequest {
            batch: request.int("batch").map_err(read)?,
            expires: (expires != 0).then_some(expires),
            max_bytes: request.int("max_bytes").map_err(read)?,
            no_wait: request.boolean("no_wait").map_err(read)?,
            heartbeat,
        });
    }
    match std::str::from_utf8(trimmed)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
    {
        Some(batch) => Ok(PullRequest { batch, ..one }),
        None => Ok(one),
    }
}

/// A pull request waiting for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiting {
    /// Where its messages go.
    pub(crate) reply: String,
    /// Messages it still wants (may be 0 or less for a batch of 0: it then takes one).
    pub(crate) remaining: i64,
    /// Messages it got.
    pub(crate) delivered: u64,
    /// Bytes it may still take, when it set `max_bytes`.
    pub(crate) bytes_left: i64,
    pub(crate) expires_at: Option<Duration>,
    pub(crate) no_wait: bool,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) next_heartbeat: Option<Duration>,
}

impl Waiting {
    /// A request received at `now`.
    pub(crate) fn new(reply: String, request: &PullRequest, now: Duration) -> Self {
        let heartbeat =
            (request.heartbeat > 0).then(|| Duration::from_nanos(request.heartbeat as u64));
        Waiting {
            reply,
            remaining: request.batch,
            delivered: 0,
            bytes_left: request.max_bytes,
            expires_at: request
                .expires
                .map(|ns| now + Duration::from_nanos(ns.max(0) as u64)),
            no_wait: request.no_wait,
            heartbeat,
            next_heartbeat: heartbeat.map(|every| now + every),
        }
    }

    fn expired(&self, now: Duration) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The `408`/`409` headers telling what was left of the request.
    fn leftover(&self) -> Vec<(String, String)> {
        vec![
            (
                "Nats-Pending-Messages".to_owned(),
                self.remaining.to_string(),
            ),
            ("Nats-Pending-Bytes".to_owned(), self.bytes_left.to_string()),
        ]
    }
}

/// A status-only message to `reply`.
pub(crate) fn status(
    reply: &str,
    code: u16,
    description: &str,
    headers: Vec<(String, String)>,
) -> Outbound {
    Outbound {
        subject: reply.to_owned(),
        message_subject: None,
        reply: None,
        status: Some((code, description.to_owned())),
        headers,
        payload: Bytes::new(),
    }
}

/// The requests waiting on one consumer, in the order they are served.
#[derive(Debug, Clone, Default)]
pub(crate) struct WaitQueue {
    requests: VecDeque<Waiting>,
}

/// What [`WaitQueue::sweep`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Messages still wanted by requests someone listens to.
    pub(crate) wanted: i64,
    /// The next expiry or heartbeat.
    pub(crate) next: Option<Duration>,
}

impl WaitQueue {
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// The earliest expiry or heartbeat among the waiting requests.
    pub(crate) fn next_event(&self) -> Option<Duration> {
        self.requests
            .iter()
            .flat_map(|request| [request.expires_at, request.next_heartbeat])
            .flatten()
            .min()
    }

    pub(crate) fn push(&mut self, request: Waiting) {
        self.requests.push_back(request);
    }

    /// Every waiting request, ended: their reply subjects.
    pub(crate) fn drain(&mut self) -> Vec<String> {
        self.requests.drain(..).map(|r| r.reply).collect()
    }

    /// `nextWaiting`: the reply subject the next message of `size` bytes goes to, skipping
    /// (and dropping) requests that expired or lost their listener.
    pub(crate) fn take(
        &mut self,
        size: i64,
        now: Duration,
        listening: &dyn Fn(&str) -> bool,
        out: &mut Vec<Outbound>,
    ) -> Option<String> {
        while let Some(front) = self.requests.front_mut() {
            if front.bytes_left > 0 {
                if size <= front.bytes_left {
                    front.bytes_left -= size;
                    if front.bytes_left == 0 {
                        front.remaining = 1;
                    }
                } else {
                    let leftover = front.leftover();
                    out.push(status(
                        &front.reply,
                        409,
                        "Message Size Exceeds MaxBytes",
                        leftover,
                    ));
                    self.requests.pop_front();
                    continue;
                }
            }
            if !front.expired(now) && listening(&front.reply) {
                front.delivered += 1;
                front.remaining -= 1;
                let reply = front.reply.clone();
                if front.remaining > 0 {
                    if let Some(every) = front.heartbeat {
                        front.next_heartbeat = Some(now + every);
                    }
                    if self.requests.len() > 1
                        && let Some(moved) = self.requests.pop_front()
                    {
                        self.requests.push_back(moved);
                    }
                } else {
                    self.requests.pop_front();
                }
                return Some(reply);
            }
            self.requests.pop_front();
        }
        None
    }

    /// `processWaiting`: ends expired requests with `408 Request Timeout` (and, when
    /// `end_of_stream`, `no_wait` requests that got something), drops those nobody listens to,
    /// and sends due heartbeats (`last` is the consumer's last delivery and stream sequence).
    pub(crate) fn sweep(
        &mut self,
        end_of_stream: bool,
        now: Duration,
        last: (u64, u64),
        listening: &dyn Fn(&str) -> bool,
        out: &mut Vec<Outbound>,
    ) -> Swept {
        let mut swept = Swept::default();
        let earliest = |at: Duration, swept: &mut Swept| {
            swept.next = Some(swept.next.map_or(at, |next: Duration| next.min(at)));
        };
        self.requests.retain_mut(|request| {
            if (end_of_stream && request.no_wait && request.delivered > 0) || request.expired(now) {
                out.push(status(
                    &request.reply,
                    408,
                    "Request Timeout",
                    request.leftover(),
                ));
                return false;
            }
            if !listening(&request.reply) {
                return false;
            }
            swept.wanted += request.remaining;
            if let (Some(every), Some(at)) = (request.heartbeat, request.next_heartbeat) {
                if now >= at {
                    out.push(status(
                        &request.reply,
                        100,
                        "Idle Heartbeat",
                        vec![
                            ("Nats-Last-Consumer".to_owned(), last.0.to_string()),
                            ("Nats-Last-Stream".to_owned(), last.1.to_string()),
                        ],
                    ));
                    request.next_heartbeat = Some(now + every);
                }
                if let Some(at) = request.next_heartbeat {
                    earliest(at, &mut swept);
                }
            }
            if let Some(at) = request.expires_at {
                earliest(at, &mut swept);
            }
            true
        });
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_bodies_are_read_like_the_server() {
        assert_eq!(parse_pull(b"").unwrap().batch, 1);
        assert_eq!(parse_pull(b" 7 ").unwrap().batch, 7);
        let request = parse_pull(br#"{"batch":3,"expires":1000,"no_wait":true}"#).unwrap();
        assert_eq!(
            (request.batch, request.expires, request.no_wait),
            (3, Some(1000), true)
        );
        // Not JSON and not a number: one message, no expiry.
        assert_eq!(parse_pull(b"garbage{").unwrap(), parse_pull(b"").unwrap());
        assert!(parse_pull(b"{garbage").is_err());
        assert_eq!(
            parse_pull(br#"{"expires":10,"idle_heartbeat":6}"#).unwrap_err(),
            "heartbeat value too large"
        );
    }

    fn waiting(reply: &str, batch: i64, expires: Option<i64>) -> Waiting {
        let request = PullRequest {
            batch,
            expires,
            max_bytes: 0,
            no_wait: false,
            heartbeat: 0,
        };
        Waiting::new(reply.to_owned(), &request, Duration::ZERO)
    }

    #[test]
    fn requests_take_turns_and_lost_listeners_are_skipped() {
        let mut queue = WaitQueue::default();
        queue.push(waiting("a", 2, None));
        queue.push(waiting("gone", 5, None));
        queue.push(waiting("b", 1, None));
        let listening = |reply: &str| reply != "gone";
        let mut out = Vec::new();
        let now = Duration::ZERO;
        let order: Vec<_> = (0..4)
            .map(|_| queue.take(1, now, &listening, &mut out))
            .collect();
        assert_eq!(
            order,
            [Some("a".into()), Some("b".into()), Some("a".into()), None]
        );
        assert!(out.is_empty());
    }

    #[test]
    fn expiry_answers_408_with_what_was_left() {
        let mut queue = WaitQueue::default();
        queue.push(waiting("a", 5, Some(1_000)));
        let mut out = Vec::new();
        let swept = queue.sweep(true, Duration::from_nanos(999), (0, 0), &|_| true, &mut out);
        assert_eq!(swept.next, Some(Duration::from_nanos(1_000)));
        assert!(out.is_empty());
        queue.sweep(
            true,
            Duration::from_nanos(1_000),
            (0, 0),
            &|_| true,
            &mut out,
        );
        assert_eq!(out[0].status, Some((408, "Request Timeout".into())));
        assert_eq!(
            out[0].headers[0],
            ("Nats-Pending-Messages".into(), "5".into())
        );
        assert!(queue.is_empty());
    }
}
