//! Publishing into the stream: one request per message, answered by the server's PubAck.
//!
//! The message travels on `<subject_prefix>.<channel>` in the bus's NATS framing (see
//! `framing.rs`) with the header `Nats-Msg-Id: <message id>`, so a publisher that retries with the same id
//! ([`crate::Message::with_id`]) within the stream's duplicate window is acknowledged without a
//! second copy being stored. `Ok` means the PubAck arrived within `publish_timeout`; its stream
//! sequence is [`PublishReceipt::sequence`]. Nothing is held across the round trip, so many
//! publishes are in flight at once and throughput is pipelined.
//!
//! "No responders" means no stream holds the subject: it was deleted, or the server came back
//! with an empty store. The publish then makes sure the stream exists (creating it) and is sent
//! once more within the same deadline; the server de-duplicates it by id should the first
//! attempt have been stored after all. A second "no responders" is reported as
//! [`BusError::NotConnected`].

use tokio::time::Instant;

use super::api::{self, CallError, PubAck};
use super::stream::{self, StreamProblem};
use super::{JetStream, link_error};
use crate::backend::admit;
use crate::backend::nats::framing::{self, MSG_ID};
use crate::backend::nats::link::{LinkError, LinkPublish};
use crate::bus::{BusError, Message, PublishReceipt};

/// Publishes `message` and waits for its PubAck.
pub(super) async fn publish(
    shared: &JetStream,
    message: Message,
) -> Result<PublishReceipt, BusError> {
    let id = admit(&shared.options, &message, false)?;
    shared.refuse_if_unusable()?;
    let payload_len = message.payload.len();
    let (mut headers, payload) = framing::encode(
        shared.framing,
        &shared.options,
        (id, shared.options.ids.now_nanos()),
        message.headers,
        message.payload,
    )?;
    headers.push((MSG_ID.to_owned(), id.to_string()));
    let frame_len = framing::header_block_len(&headers) + payload.len();
    super::super::check_frame(shared.link.as_ref(), frame_len, payload_len)?;
    let request = LinkPublish {
        subject: stream::subject(&shared.js, &message.channel),
        reply: None,
        headers,
        payload,
    };
    let timeout = shared.js.publish_timeout;
    let deadline = Instant::now() + timeout;
    let mut stream_ensured = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BusError::PublishTimeout(timeout));
        }
        let reply = match shared.link.request(request.clone(), left).await {
            Ok(reply) => api::parse_reply::<PubAck>(&reply),
            Err(error) => Err(CallError::Link(error)),
        };
        match reply {
            Ok(ack) => {
                return Ok(PublishReceipt {
                    id,
                    sequence: Some(ack.seq),
                });
            }
            Err(CallError::Link(LinkError::Timeout(_))) => {
                return Err(BusError::PublishTimeout(timeout));
            }
            Err(CallError::Link(LinkError::NoResponders(subject))) => {
                if stream_ensured {
                    return Err(BusError::NotConnected(format!(
                        "no JetStream stream answers on {subject}"
                    )));
                }
                stream_ensured = true;
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, stream::ensure(shared)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(StreamProblem::Incompatible { key, reason })) => {
                        return Err(BusError::config(key, reason));
                    }
                    Ok(Err(StreamProblem::Unavailable(reason))) => {
                        return Err(BusError::NotConnected(format!(
                            "JetStream stream {} is not available: {reason}",
                            shared.js.stream
                        )));
                    }
                    Err(_) => return Err(BusError::PublishTimeout(timeout)),
                }
            }
            Err(CallError::Link(error)) => return Err(link_error(error)),
            Err(CallError::Api(error)) => return Err(BusError::Backend(Box::new(error))),
            Err(CallError::Malformed(reason)) => {
                return Err(BusError::Backend(reason.into()));
            }
        }
    }
}
