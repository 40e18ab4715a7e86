//! The wire framing's promises: what is encoded decodes to the same message, any bytes from the
//! network decode to a value or a typed error (never a panic), and the layout does not change
//! by accident.

use bytes::Bytes;
use hubbus::envelope::{Envelope, EnvelopeError, VERSION};
use hubbus::{MessageId, NodeId};
use proptest::prelude::*;

fn node_id() -> impl Strategy<Value = NodeId> {
    "[A-Za-z0-9_.:-]{1,255}".prop_map(|s| NodeId::new(s).expect("matches the node id rule"))
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u128>(),
        node_id(),
        any::<u64>(),
        prop::collection::vec((".{0,16}", ".{0,64}"), 0..4),
        prop::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(id, origin, published_at, headers, payload)| Envelope {
            id: MessageId::from_u128(id),
            origin,
            published_at,
            headers,
            payload: Bytes::from(payload),
        })
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(envelope in envelope()) {
        let frame = envelope.encode().unwrap();
        prop_assert_eq!(frame.len(), envelope.encoded_len());
        prop_assert_eq!(Envelope::decode(frame).unwrap(), envelope);
    }

    #[test]
    fn arbitrary_bytes_decode_to_a_consistent_envelope_or_a_typed_error(
        flags in 0u8..2,
        tail in prop::collection::vec(any::<u8>(), 0..512),
        raw in any::<bool>(),
    ) {
        // Half the inputs start like a real frame, so decoding gets past the magic and version.
        let bytes = if raw { tail } else { [b"hb\x01".as_slice(), &[flags], &tail].concat() };
        if let Ok(envelope) = Envelope::decode_slice(&bytes) {
            // What decodes was really in the input, and survives a second trip unchanged.
            prop_assert!(envelope.encoded_len() <= bytes.len());
            prop_assert_eq!(Envelope::decode(envelope.encode().unwrap()).unwrap(), envelope);
        }
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_a_typed_error(envelope in envelope(), cut in any::<prop::sample::Index>()) {
        let frame = envelope.encode().unwrap();
        let end = cut.index(frame.len());
        let decoded = Envelope::decode(frame.slice(..end));
        // Cutting into the payload still yields a (shorter) valid frame; anything shorter fails.
        let header_len = frame.len() - envelope.payload.len();
        if end >= header_len {
            prop_assert_eq!(decoded.unwrap().payload, envelope.payload.slice(..end - header_len));
        } else {
            prop_assert!(decoded.is_err());
        }
    }

    #[test]
    fn frames_with_a_corrupted_prefix_are_rejected(envelope in envelope(), byte in 0usize..4, value in any::<u8>()) {
        let mut frame = envelope.encode().unwrap().to_vec();
        prop_assume!(frame[byte] != value);
        // Bit 0 of the flags is defined (headers present); only other bits are unknown.
        prop_assume!(byte != 3 || value & !1 != 0);
        frame[byte] = value;
        let expected = match byte {
            0 | 1 => EnvelopeError::BadMagic,
            2 => EnvelopeError::UnknownVersion(value),
            _ => EnvelopeError::UnknownFlags(value),
        };
        prop_assert_eq!(Envelope::decode_slice(&frame).unwrap_err(), expected);
    }
}

#[test]
fn a_header_count_larger_than_the_input_does_not_allocate_for_it() {
    // 65535 announced headers in a frame that holds none: a typed error, quickly.
    let mut frame = Envelope {
        id: MessageId::from_u128(1),
        origin: NodeId::new("n").unwrap(),
        published_at: 0,
        headers: vec![("k".into(), "v".into())],
        payload: Bytes::new(),
    }
    .encode()
    .unwrap()
    .to_vec();
    let count_at = 2 + 1 + 1 + 16 + 8 + 1 + 1;
    frame[count_at..count_at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(
        Envelope::decode_slice(&frame),
        Err(EnvelopeError::Truncated("header key length"))
    );
}

#[test]
fn wire_format_version_1_is_stable() {
    let envelope = Envelope {
        id: "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap(),
        origin: NodeId::new("hub-a").unwrap(),
        published_at: 1_700_000_000_123_456_789,
        headers: vec![("content-type".into(), "application/json".into())],
        payload: Bytes::from_static(br#"{"text":"hello"}"#),
    };
    assert_eq!(VERSION, 1);
    let frame = envelope.encode().unwrap();
    let hex: Vec<String> = frame
        .chunks(16)
        .map(|row| {
            row.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    insta::assert_snapshot!(hex.join("\n"));
    assert_eq!(Envelope::decode(frame).unwrap(), envelope);
}
