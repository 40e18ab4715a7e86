//! Keeps what the Pub/Sub connection has received but the supervisor has not yet taken
//! bounded: the oldest messages are shed when the supervisor falls behind, and reading pauses
//! when it falls far behind.
//!
//! redis-rs reads the Pub/Sub socket on a task of its own and hands every message to an
//! unbounded channel, whatever the reader of that channel does. Draining it promptly bounds it
//! only while the supervisor dispatches at least as fast as redis-rs parses; when dispatching is
//! the slower side (a channel with many local subscribers, a busy machine), the channel grows
//! for as long as the flood lasts.
//!
//! So the Pub/Sub byte stream is [`Metered`]: it counts the bytes redis-rs reads, and
//! [`Intake`] counts the wire size of each message the supervisor takes. The difference is what
//! waits behind the supervisor.
//!
//! - Over [`SHED_LIMIT`], each message taken is marked `behind` and the supervisor drops it
//!   without decoding it (the oldest go first, as in every subscriber queue). Dropping is far
//!   cheaper than parsing was, so the backlog shrinks while the socket is still read: `SUBSCRIBE`
//!   and PING answers behind the flood keep arriving promptly.
//! - Over [`READ_LIMIT`], which only a supervisor that did not run for a while reaches, reading
//!   pauses until the supervisor has caught up, so memory has a hard bound. (Redis then buffers,
//!   and drops a client whose buffer passes its `client-output-buffer-limit`.)
//!
//! The count is reset whenever the channel is found empty, so bytes that are not messages
//! (confirmations, PONGs, a large message still being read) never add up; the reader wakes the
//! supervisor when it pauses, so that such a reset cannot be missed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::transport::BoxedStream;

/// Received bytes that may wait behind a message before it is shed: 1 MiB on the wire, about
/// 30 ms of a saturated connection.
const SHED_LIMIT: u64 = 1024 * 1024;

/// Received bytes that may wait before reading pauses. Parsed, they take at most a few times
/// their wire size (a parsed message costs a few hundred bytes more than its frame).
const READ_LIMIT: u64 = 4 * SHED_LIMIT;

/// What the reading and the taking side share.
#[derive(Debug, Default)]
pub(super) struct Meter {
    /// Bytes read from the socket.
    read: AtomicU64,
    /// Bytes accounted for: the wire size of every message taken, or everything read when the
    /// channel was last found empty. Written by the taking side only.
    taken: AtomicU64,
    /// The reading task, while reading pauses.
    reader: AtomicWaker,
    /// The taking task, woken when reading pauses.
    taker: AtomicWaker,
}

impl Meter {
    fn waiting(&self) -> u64 {
        self.read
            .load(Ordering::Acquire)
            .saturating_sub(self.taken.load(Ordering::Acquire))
    }
}

/// The Pub/Sub byte stream, counting what is read and pausing when too much waits.
pub(super) struct Metered {
    inner: BoxedStream,
    meter: Arc<Meter>,
}

impl Metered {
    /// Wraps the Pub/Sub connection's byte stream; the meter goes to [`Intake::new`] with the
    /// messages of the connection built on it.
    pub(super) fn new(inner: BoxedStream) -> (Self, Arc<Meter>) {
        let meter = Arc::<Meter>::default();
        let stream = Metered {
            inner,
            meter: meter.clone(),
        };
        (stream, meter)
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let meter = &self.meter;
        if meter.waiting() > READ_LIMIT {
            meter.reader.register(cx.waker());
            // The supervisor may be idle with nothing queued (the bytes are a message still
            // incomplete): wake it so that it finds the channel empty and resets the count.
            meter.taker.wake();
            if meter.waiting() > READ_LIMIT {
                return Poll::Pending;
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let count = (buf.filled().len() - before) as u64;
            self.meter.read.fetch_add(count, Ordering::AcqRel);
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What a Pub/Sub connection hands the supervisor.
pub(super) enum Event {
    /// A message on a subscribed channel (`message`, or `smessage` in sharded Pub/Sub).
    Message(redis::Msg),
    /// Sharded Pub/Sub: the server ended this connection's subscription to a channel
    /// (`sunsubscribe`), which it does on its own when the channel's slot moves to another
    /// master; also the confirmation of an `SUNSUBSCRIBE` this node sent.
    Unsubscribed(Vec<u8>),
}

/// One event taken from a Pub/Sub connection.
pub(super) struct Incoming {
    pub(super) event: Event,
    /// More than [`SHED_LIMIT`] bytes arrived after this event and wait: shed it.
    pub(super) behind: bool,
}

/// The events of one Pub/Sub connection, each with whether the supervisor has fallen too far
/// behind.
pub(super) struct Intake {
    events: BoxStream<'static, Event>,
    meter: Arc<Meter>,
}

impl Intake {
    /// The events of a Pub/Sub connection whose byte stream is [`Metered`] by `meter`.
    pub(super) fn new(events: BoxStream<'static, Event>, meter: Arc<Meter>) -> Self {
        Intake { events, meter }
    }
}

impl Stream for Intake {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        let this = &mut *self;
        let meter = &this.meter;
        match this.events.poll_next_unpin(cx) {
            Poll::Ready(Some(event)) => {
                if let Event::Message(message) = &event {
                    meter.taken.fetch_add(wire_size(message), Ordering::AcqRel);
                }
                let waiting = meter.waiting();
                if waiting <= READ_LIMIT {
                    meter.reader.wake();
                }
                Poll::Ready(Some(Incoming {
                    behind: waiting > SHED_LIMIT && matches!(event, Event::Message(_)),
                    event,
                }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // Register before resetting, so that a reader pausing after the reset wakes us.
                meter.taker.register(cx.waker());
                // The channel also answers "pending" when this task has used up its
                // cooperative budget, with messages still queued; only with budget left does
                // it mean that nothing is queued. Then what was read is parsed, or part of a
                // frame still incomplete, and the count starts over.
                if tokio::task::coop::has_budget_remaining() {
                    meter
                        .taken
                        .store(meter.read.load(Ordering::Acquire), Ordering::Release);
                    meter.reader.wake();
                }
                Poll::Pending
            }
        }
    }
}

/// The size of a message on the wire, RESP2 `*3 $7 message $<channel> $<payload>` (RESP3's
/// push frame has the same size; `smessage` is one byte longer). Never more than the real size, so the backlog is never
/// under-counted; a channel name that is not UTF-8 counts as one byte.
fn wire_size(message: &redis::Msg) -> u64 {
    fn bulk(len: usize) -> u64 {
        let digits = u64::from(len.checked_ilog10().unwrap_or(0)) + 1;
        1 + digits + 2 + len as u64 + 2
    }
    let header = "*3\r\n$7\r\nmessage\r\n".len() as u64;
    header + bulk(message.get_channel_name().len()) + bulk(message.get_payload_bytes().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, payload: &[u8]) -> redis::Msg {
        redis::Msg::from_owned_value(redis::Value::Array(vec![
            redis::Value::BulkString(b"message".to_vec()),
            redis::Value::BulkString(channel.as_bytes().to_vec()),
            redis::Value::BulkString(payload.to_vec()),
        ]))
        .expect("a message frame")
    }

    #[test]
    fn wire_size_is_the_resp_frame_length() {
        for (channel, payload) in [
            ("room", &b""[..]),
            ("r", &[7u8; 9][..]),
            ("room:42", &[1; 1234][..]),
        ] {
            let frame = format!(
                "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n",
                channel.len(),
                payload.len()
            );
            let expected = frame.len() + payload.len() + 2;
            assert_eq!(wire_size(&message(channel, payload)), expected as u64);
        }
    }
}
