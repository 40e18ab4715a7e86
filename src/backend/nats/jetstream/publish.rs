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

use bytes::Bytes;
use tokio::time::Instant;

use super::api::{self, CallError, PubAck};
use super::stream::{self, StreamProblem};
use super::{JetStream, link_error};
use crate::backend::admit_parts;
use crate::backend::nats::framing::{self, MSG_ID};
use crate::backend::nats::link::{LinkError, LinkPublish};
use crate::bus::{BusError, PublishReceipt};
use crate::id::MessageId;

/// Publishes a message given in parts (`publish` has no `Message` to build, `publish_message`
/// takes its own apart) and waits for its PubAck.
pub(super) async fn publish(
    shared: &JetStream,
    channel: &str,
    payload: Bytes,
    id: Option<MessageId>,
    user_headers: Vec<(String, String)>,
) -> Result<PublishReceipt, BusError> {
    // One clock reading for the id and the time the message carries.
    let (id, now) = admit_parts(
        &shared.options,
        channel,
        payload.len(),
        &user_headers,
        id,
        false,
    )?;
    shared.refuse_if_unusable()?;
    // The request, built again only for a second attempt (the link takes it by value, and a
    // copy per publish of its subject and headers would cost more than building it).
    let build = || -> Result<LinkPublish, BusError> {
        let (mut headers, frame) = framing::encode(
            shared.framing,
            &shared.options,
            (id, now),
            user_headers.clone(),
            payload.clone(),
        )?;
        headers.push((MSG_ID.to_owned(), id.to_text()));
        let frame_len = framing::header_block_len(&headers) + frame.len();
        super::super::check_frame(shared.link.as_ref(), frame_len, payload.len())?;
        Ok(LinkPublish {
            subject: stream::subject(&shared.js, channel),
            reply: None,
            headers,
            payload: frame,
        })
    };
    let mut first = Some(build()?);
    let timeout = shared.js.publish_timeout;
    let deadline = Instant::now() + timeout;
    let mut stream_ensured = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BusError::PublishTimeout(timeout));
        }
        let request = match first.take() {
            Some(request) => request,
            None => build()?,
        };
        let reply = match shared.link.request(request, left).await {
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
