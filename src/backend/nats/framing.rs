//! How one bus message travels on NATS, both ways (the contract is in `docs/bus_spec.md`,
//! "NATS: headers, version 2").
//!
//! Written in [`NatsFraming::Headers`] (the default), the payload is the publisher's bytes as
//! they are and the bus's metadata rides in NATS headers: `Hubbus-Id` (the id as a UUID),
//! `Hubbus-Origin` (the node id) and `Hubbus-Time` (Unix nanoseconds), then the message's own
//! headers. So a plain NATS subscriber reads what the hub published, and a plain NATS publisher
//! reaches the hubs. [`NatsFraming::Envelope`] writes the version 1 envelope as the payload, as
//! earlier releases did: a rolling upgrade writes it until every node reads both.
//!
//! Reading takes either: a message with `Hubbus-Id` is a bus message in headers, one whose
//! payload is an envelope ([`is_envelope`]) is a bus message in the envelope, and anything else
//! is foreign (from a publisher outside the bus). A message that claims to be a bus message and
//! does not read as one is malformed.

use bytes::Bytes;

use crate::backend::{BusOptions, frame_at};
use crate::bus::BusError;
use crate::config::NatsFraming;
use crate::envelope::{Envelope, is_envelope};
use crate::id::{MessageId, NodeId};

/// The message id, as a UUID in its hyphenated form.
pub(crate) const ID: &str = "Hubbus-Id";
/// The publishing node's id.
pub(crate) const ORIGIN: &str = "Hubbus-Origin";
/// The publish time, in Unix nanoseconds (decimal).
pub(crate) const TIME: &str = "Hubbus-Time";
/// The header JetStream de-duplicates publishes by.
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";

/// Header names the bus and NATS keep for themselves (compared ignoring ASCII case): a
/// message's own headers may not use them, and a received message's headers leave them out.
const RESERVED_PREFIXES: [&str; 2] = ["hubbus-", "nats-"];

fn is_reserved(name: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|prefix| {
        name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
    })
}

/// Why header `name: value` cannot travel as a NATS header; `None` when it can.
fn header_problem(name: &str, value: &str) -> Option<&'static str> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        Some("a NATS header name is 1 or more visible ASCII characters other than ':'")
    } else if value.contains(['\r', '\n']) {
        Some("a NATS header value is one line (no CR or LF)")
    } else if is_reserved(name) {
        Some("names starting with Hubbus- or Nats- are the bus's and NATS's own")
    } else {
        None
    }
}

/// The headers and payload of one message as `framing` writes it.
pub(crate) fn encode(
    framing: NatsFraming,
    options: &BusOptions,
    (id, published_at): (MessageId, u64),
    headers: Vec<(String, String)>,
    payload: Bytes,
) -> Result<(Vec<(String, String)>, Bytes), BusError> {
    match framing {
        NatsFraming::Envelope => Ok((
            Vec::new(),
            frame_at(options, id, published_at, headers, payload)?,
        )),
        NatsFraming::Headers => {
            if let Some((name, reason)) = headers
                .iter()
                .find_map(|(name, value)| Some((name, header_problem(name, value)?)))
            {
                return Err(BusError::InvalidHeader {
                    key: name.chars().take(64).collect(),
                    reason,
                });
            }
            let mut all = Vec::with_capacity(3 + headers.len());
            all.push((ID.to_owned(), id.to_text()));
            all.push((ORIGIN.to_owned(), options.node_id.as_str().to_owned()));
            all.push((
                TIME.to_owned(),
                itoa::Buffer::new().format(published_at).to_owned(),
            ));
            all.extend(headers);
            Ok((all, payload))
        }
    }
}

/// The bytes `headers` take on the wire (`NATS/1.0`, a line per header, the blank line; none
/// without headers): the server's size limit counts them with the payload.
pub(crate) fn header_block_len(headers: &[(String, String)]) -> usize {
    if headers.is_empty() {
        return 0;
    }
    "NATS/1.0\r\n".len()
        + headers
            .iter()
            .map(|(name, value)| name.len() + ": ".len() + value.len() + "\r\n".len())
            .sum::<usize>()
        + "\r\n".len()
}

/// What a received message is.
#[derive(Debug, PartialEq)]
pub(crate) enum Received {
    /// A bus message, in either framing.
    Bus(Envelope),
    /// From a publisher outside the bus: its payload and headers as they came (the reserved
    /// ones left out), and its `Nats-Msg-Id` when that is a UUID.
    Foreign {
        payload: Bytes,
        headers: Vec<(String, String)>,
        given_id: Option<MessageId>,
    },
    /// Claims to be a bus message and is not one; the reason says why.
    Malformed(String),
}

/// Reads a received message (its headers as the link gives them, and its payload).
pub(crate) fn decode(mut headers: Vec<(String, String)>, payload: Bytes) -> Received {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let Some(id) = find(ID) else {
        if is_envelope(&payload) {
            return match Envelope::decode(payload) {
                Ok(envelope) => Received::Bus(envelope),
                Err(error) => Received::Malformed(error.to_string()),
            };
        }
        let given_id = find(MSG_ID).and_then(|value| value.parse::<MessageId>().ok());
        retain_own(&mut headers);
        return Received::Foreign {
            payload,
            headers,
            given_id,
        };
    };
    let Ok(id) = id.parse::<MessageId>() else {
        return Received::Malformed(format!("{ID} is not a UUID"));
    };
    let Some(Ok(origin)) = find(ORIGIN).map(NodeId::new) else {
        return Received::Malformed(format!("{ORIGIN} is missing or not a node id"));
    };
    let Some(Ok(published_at)) = find(TIME).map(str::parse::<u64>) else {
        return Received::Malformed(format!("{TIME} is missing or not a number"));
    };
    retain_own(&mut headers);
    Received::Bus(Envelope {
        id,
        origin,
        published_at,
        headers,
        payload,
    })
}

/// The id of a foreign message read from a JetStream stream, the same on every node and on
/// every redelivery: `given` (its `Nats-Msg-Id` when that is a UUID, so a publisher that
/// de-duplicates by UUIDs sees its own ids), else an id in the UUIDv7 layout made of the
/// millisecond the stream stored it and its stream sequence (in place of the random bits).
pub(crate) fn foreign_stream_id(
    given: Option<MessageId>,
    stored_at_nanos: u64,
    sequence: u64,
) -> MessageId {
    given.unwrap_or_else(|| {
        let mut bits = [0u8; 10];
        bits[2..].copy_from_slice(&sequence.to_be_bytes());
        let id = uuid::Builder::from_unix_timestamp_millis(stored_at_nanos / 1_000_000, &bits);
        MessageId::from_u128(id.into_uuid().as_u128())
    })
}

/// Keeps the message's own headers: everything but the reserved names.
fn retain_own(headers: &mut Vec<(String, String)>) {
    headers.retain(|(name, _)| !is_reserved(name));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BusOptions {
        BusOptions {
            node_id: NodeId::new("hub-a").unwrap(),
            ..BusOptions::default()
        }
    }

    const ID_VALUE: MessageId = MessageId::from_u128(0x0190_f1c2_0000_7000_8000_0000_0000_0001);

    #[test]
    fn headers_framing_keeps_the_payload_raw_and_reads_back() {
        let user = vec![("trace".to_owned(), "t1".to_owned())];
        let (headers, payload) = encode(
            NatsFraming::Headers,
            &options(),
            (ID_VALUE, 1_720_000_000_000_000_000),
            user.clone(),
            Bytes::from_static(b"{\"text\":\"hi\"}"),
        )
        .unwrap();
        assert_eq!(payload.as_ref(), b"{\"text\":\"hi\"}");
        assert_eq!(
            headers,
            [
                ("Hubbus-Id", "0190f1c2-0000-7000-8000-000000000001"),
                ("Hubbus-Origin", "hub-a"),
                ("Hubbus-Time", "1720000000000000000"),
                ("trace", "t1"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let mut received = headers.clone();
        // What JetStream adds comes back too, and is not the message's.
        received.push(("Nats-Msg-Id".to_owned(), ID_VALUE.to_string()));
        let Received::Bus(envelope) = decode(received, payload.clone()) else {
            panic!("not read as a bus message");
        };
        assert_eq!(envelope.id, ID_VALUE);
        assert_eq!(envelope.origin.as_str(), "hub-a");
        assert_eq!(envelope.published_at, 1_720_000_000_000_000_000);
        assert_eq!(envelope.headers, user);
        assert_eq!(envelope.payload, payload);
        assert_eq!(
            header_block_len(&headers),
            "NATS/1.0\r\nHubbus-Id: 0190f1c2-0000-7000-8000-000000000001\r\n\
             Hubbus-Origin: hub-a\r\nHubbus-Time: 1720000000000000000\r\ntrace: t1\r\n\r\n"
                .len()
        );
    }

    /// The example of `docs/bus_spec.md`, "NATS: headers, version 2": `HPUB hubbus.room1 124 126`.
    #[test]
    fn the_documented_example() {
        let options = BusOptions {
            node_id: NodeId::new("a").unwrap(),
            ..BusOptions::default()
        };
        let (headers, payload) = encode(
            NatsFraming::Headers,
            &options,
            (ID_VALUE, 1_720_000_000_000_000_000),
            vec![("trace".to_owned(), "t1".to_owned())],
            Bytes::from_static(b"hi"),
        )
        .unwrap();
        assert_eq!(header_block_len(&headers), 124);
        assert_eq!(header_block_len(&headers) + payload.len(), 126);
    }

    #[test]
    fn the_envelope_framing_is_still_read() {
        let (headers, frame) = encode(
            NatsFraming::Envelope,
            &options(),
            (ID_VALUE, 5),
            Vec::new(),
            Bytes::from_static(b"hi"),
        )
        .unwrap();
        assert!(headers.is_empty());
        assert_eq!(header_block_len(&headers), 0);
        let Received::Bus(envelope) = decode(Vec::new(), frame) else {
            panic!("not read as a bus message");
        };
        assert_eq!((envelope.id, envelope.published_at), (ID_VALUE, 5));
        assert_eq!(envelope.payload.as_ref(), b"hi");
    }

    #[test]
    fn anything_else_is_foreign_unless_it_claims_to_be_a_bus_message() {
        let headers = vec![
            ("Nats-Msg-Id".to_owned(), "order-7".to_owned()),
            ("content-type".to_owned(), "json".to_owned()),
        ];
        assert_eq!(
            decode(headers, Bytes::from_static(b"hello")),
            Received::Foreign {
                payload: Bytes::from_static(b"hello"),
                headers: vec![("content-type".to_owned(), "json".to_owned())],
                given_id: None,
            }
        );
        let given = vec![(MSG_ID.to_owned(), ID_VALUE.to_string())];
        assert!(matches!(
            decode(given, Bytes::from_static(b"x")),
            Received::Foreign { given_id: Some(ID_VALUE), headers, .. } if headers.is_empty()
        ));
        assert!(matches!(
            decode(Vec::new(), Bytes::from_static(b"hb\x01")),
            Received::Malformed(_)
        ));
        let claims = |id: &str, origin: &str, time: &str| {
            [(ID, id), (ORIGIN, origin), (TIME, time)].map(|(k, v)| (k.to_owned(), v.to_owned()))
        };
        let good = ID_VALUE.to_string();
        for (headers, why) in [
            (claims("7", "a", "1"), "Hubbus-Id"),
            (claims(&good, "a b", "1"), "Hubbus-Origin"),
            (claims(&good, "external", "1"), "Hubbus-Origin"),
            (claims(&good, "a", "soon"), "Hubbus-Time"),
        ] {
            match decode(headers.to_vec(), Bytes::new()) {
                Received::Malformed(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{headers:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_foreign_stream_message_keeps_one_id_wherever_it_is_read() {
        let at = 1_720_000_000_123_000_000;
        let derived = foreign_stream_id(None, at, 42);
        assert_eq!(
            derived,
            foreign_stream_id(None, at, 42),
            "the same every time"
        );
        assert_ne!(derived, foreign_stream_id(None, at, 43));
        let uuid = uuid::Uuid::from_u128(derived.as_u128());
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(
            derived.as_u128() >> 80,
            1_720_000_000_123,
            "the stored millisecond"
        );
        assert_eq!(
            derived.as_u128() as u64 & ((1 << 62) - 1),
            42,
            "the sequence"
        );
        assert_eq!(foreign_stream_id(Some(ID_VALUE), at, 42), ID_VALUE);
    }

    #[test]
    fn headers_that_cannot_travel_are_refused_with_the_reason() {
        for (name, value, reason) in [
            ("bad:name", "v", "visible ASCII"),
            ("", "v", "visible ASCII"),
            ("two words", "v", "visible ASCII"),
            ("ok", "two\r\nlines", "one line"),
            ("Hubbus-Id", "x", "own"),
            ("nats-expected-stream", "x", "own"),
        ] {
            let refused = encode(
                NatsFraming::Headers,
                &options(),
                (ID_VALUE, 1),
                vec![(name.to_owned(), value.to_owned())],
                Bytes::new(),
            )
            .unwrap_err();
            match refused {
                BusError::InvalidHeader { key, reason: why } => {
                    assert_eq!(key, name);
                    assert!(why.contains(reason), "{why}");
                }
                other => panic!("{other:?}"),
            }
        }
        // The envelope carries any UTF-8.
        assert!(
            encode(
                NatsFraming::Envelope,
                &options(),
                (ID_VALUE, 1),
                vec![("bad:name".to_owned(), "two\nlines".to_owned())],
                Bytes::new(),
            )
            .is_ok()
        );
    }
}
