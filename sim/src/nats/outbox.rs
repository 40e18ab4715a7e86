//! A connection's outgoing queue, bounded in bytes like nats-server's `max_pending`.
//!
//! Everything the server sends a client passes through here: its own replies (`+OK`, `PONG`,
//! `-ERR`, `INFO`) and the messages other connections publish to it. Whoever queues never
//! waits: when the bytes queued and not yet written would pass the limit, the push fails and
//! the caller disconnects the client as a slow consumer, which is what nats-server does to a
//! client whose pending bytes pass `max_pending` (it closes without a word and drops what was
//! pending). The connection's writer task drains the queue in order.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::server::lock;

/// The most the writer takes for one socket write; larger items go alone.
const BATCH: usize = 64 * 1024;

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// Queued for the writer.
    Yes,
    /// Refused: the client is not reading fast enough.
    Full,
    /// Refused: the connection is closing.
    Closed,
}

/// Whether a queued item is a message delivery (counted as delivered once written) or one of
/// the server's own lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Message,
    Control,
}

/// Bytes the writer took for one socket write.
#[derive(Debug)]
pub(super) struct Batch {
    /// What to write.
    pub(super) bytes: BytesMut,
    /// How many message deliveries it holds.
    pub(super) messages: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Outbox {
    limit: usize,
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<(Bytes, Kind)>,
    /// Bytes queued or taken by the writer and not yet written.
    pending: usize,
    closed: bool,
}

impl Outbox {
    /// An empty queue that holds at most `limit` bytes.
    pub(super) fn new(limit: usize) -> Self {
        Outbox {
            limit,
            state: Mutex::new(State::default()),
            ready: Notify::new(),
        }
    }

    /// Queues `bytes` unless the connection is closing or the limit would be passed.
    pub(super) fn push(&self, bytes: Bytes, kind: Kind) -> Queued {
        let mut state = lock(&self.state);
        if state.closed {
            return Queued::Closed;
        }
        if state.pending + bytes.len() > self.limit {
            return Queued::Full;
        }
        state.pending += bytes.len();
        state.items.push_back((bytes, kind));
        drop(state);
        self.ready.notify_one();
        Queued::Yes
    }

    /// Accepts nothing more; the writer stops once it has written what is queued.
    pub(super) fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }

    /// The next bytes to write, in order; `None` once closed and drained.
    pub(super) async fn next_batch(&self) -> Option<Batch> {
        loop {
            {
                let mut state = lock(&self.state);
                if !state.items.is_empty() {
                    let mut batch = Batch {
                        bytes: BytesMut::new(),
                        messages: 0,
                    };
                    while let Some((bytes, _)) = state.items.front() {
                        if !batch.bytes.is_empty() && batch.bytes.len() + bytes.len() > BATCH {
                            break;
                        }
                        let Some((bytes, kind)) = state.items.pop_front() else {
                            break;
                        };
                        batch.bytes.extend_from_slice(&bytes);
                        if kind == Kind::Message {
                            batch.messages += 1;
                        }
                    }
                    return Some(batch);
                }
                if state.closed {
                    return None;
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a push between the check above
            // and this await is not missed.
            self.ready.notified().await;
        }
    }

    /// Records that `bytes` of a batch reached the socket.
    pub(super) fn written(&self, bytes: usize) {
        let mut state = lock(&self.state);
        state.pending = state.pending.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => panic!("not ready"),
        }
    }

    #[test]
    fn pushes_past_the_byte_limit_are_refused_until_written() {
        let outbox = Outbox::new(10);
        assert_eq!(
            outbox.push(Bytes::from_static(b"123456"), Kind::Message),
            Queued::Yes
        );
        assert_eq!(
            outbox.push(Bytes::from_static(b"12345"), Kind::Control),
            Queued::Full
        );
        assert_eq!(
            outbox.push(Bytes::from_static(b"1234"), Kind::Control),
            Queued::Yes
        );
        let batch = now(outbox.next_batch()).expect("a batch");
        assert_eq!(&batch.bytes[..], b"1234561234");
        assert_eq!(batch.messages, 1);
        assert_eq!(
            outbox.push(Bytes::from_static(b"1"), Kind::Control),
            Queued::Full,
            "taken by the writer is still pending"
        );
        outbox.written(batch.bytes.len());
        assert_eq!(
            outbox.push(Bytes::from_static(b"1"), Kind::Control),
            Queued::Yes
        );
    }

    #[test]
    fn a_closed_outbox_drains_then_ends() {
        let outbox = Outbox::new(100);
        outbox.push(Bytes::from_static(b"last"), Kind::Control);
        outbox.close();
        assert_eq!(
            outbox.push(Bytes::from_static(b"x"), Kind::Control),
            Queued::Closed
        );
        assert_eq!(
            &now(outbox.next_batch()).expect("what was queued").bytes[..],
            b"last"
        );
        assert!(now(outbox.next_batch()).is_none());
    }

    #[test]
    fn batches_are_bounded_but_never_empty() {
        let outbox = Outbox::new(usize::MAX);
        outbox.push(Bytes::from(vec![b'a'; BATCH + 1]), Kind::Message);
        outbox.push(Bytes::from(vec![b'b'; 10]), Kind::Message);
        assert_eq!(now(outbox.next_batch()).unwrap().bytes.len(), BATCH + 1);
        assert_eq!(now(outbox.next_batch()).unwrap().bytes.len(), 10);
    }
}
