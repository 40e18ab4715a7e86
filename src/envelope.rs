//! The wire framing of one bus message, as network backends put it on Redis or NATS.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "hb"
//! 2       1     version (1)
//! 3       1     flags (bit 0: headers present; other bits must be zero)
//! 4       16    message id, big-endian
//! 20      8     published_at, unix nanoseconds, big-endian
//! 28      1     origin length n (1..=255)
//! 29      n     origin node id (ASCII, the NodeId rule)
//! [headers, when flag bit 0 is set]
//!         2     header count, big-endian
//!         per header: 2 key length, key (UTF-8), 4 value length, value (UTF-8)
//! rest          payload (everything to the end of the frame)
//! ```
//!
//! The payload is the rest of the frame, so decoding it is a zero-copy slice of the received
//! buffer. [`Envelope::decode`] accepts any byte slice: it never panics, checks every length
//! against what is left before using it, and so never allocates more than the input implies.
//! The layout is pinned by a snapshot test; changing it means a new version number.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::id::{MessageId, NodeId};

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"hb";

/// The version this crate writes, and the only one it reads.
pub const VERSION: u8 = 1;

const FLAG_HEADERS: u8 = 0b0000_0001;
const FIXED_LEN: usize = 2 + 1 + 1 + 16 + 8 + 1;

/// Why a frame could not be decoded. Backends count these and drop the frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The frame ended before the field named here was complete.
    #[error("frame truncated in {0}")]
    Truncated(&'static str),
    /// The frame does not start with `hb`: it was not written by a hubbus publisher.
    #[error("not a hubbus frame (bad magic)")]
    BadMagic,
    /// Written by a newer (or unknown) version of the format.
    #[error("unknown envelope version {0}; this build reads version {VERSION}")]
    UnknownVersion(u8),
    /// Flag bits this version does not define are set.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// The origin is empty or breaks the node id rule.
    #[error("invalid origin node id")]
    InvalidOrigin,
    /// A header key or value is not UTF-8.
    #[error("header is not UTF-8")]
    InvalidHeader,
    /// A header cannot be framed: `what` says which limit it breaks (encoding only; nothing
    /// is truncated).
    #[error("header {key:?} cannot be framed: {what}")]
    HeaderTooLarge {
        /// The offending header key (cut to 64 characters).
        key: String,
        /// Which limit it breaks.
        what: &'static str,
    },
}

/// The most headers a frame carries.
pub const MAX_HEADERS: usize = u16::MAX as usize;

/// The longest header key a frame carries, in bytes.
pub const MAX_HEADER_KEY: usize = u16::MAX as usize;

/// The longest header value a frame carries, in bytes.
pub const MAX_HEADER_VALUE: usize = u32::MAX as usize;

/// True when `frame` claims to be an envelope: it starts with the magic `hb` and then a byte
/// below `0x20` (a version number; text never has one there). Anything else is a message from
/// a publisher outside the bus; a frame that claims to be an envelope but does not decode is
/// malformed.
pub fn is_envelope(frame: &[u8]) -> bool {
    matches!(frame, [b'h', b'b', version, ..] if *version < 0x20)
}

/// One bus message with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The message id.
    pub id: MessageId,
    /// The publishing node.
    pub origin: NodeId,
    /// When it was published, in unix nanoseconds by the publisher's clock.
    pub published_at: u64,
    /// Application headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
}

impl Envelope {
    /// How many bytes [`Envelope::encode`] will produce.
    pub fn encoded_len(&self) -> usize {
        let headers = if self.headers.is_empty() {
            0
        } else {
            2 + self
                .headers
                .iter()
                .map(|(k, v)| 2 + k.len() + 4 + v.len())
                .sum::<usize>()
        };
        FIXED_LEN + self.origin.as_str().len() + headers + self.payload.len()
    }

    /// Checks that the headers can be framed: at most [`MAX_HEADERS`] headers, keys of at
    /// most [`MAX_HEADER_KEY`] bytes and values of at most [`MAX_HEADER_VALUE`] bytes.
    pub fn check_headers(headers: &[(String, String)]) -> Result<(), EnvelopeError> {
        let refuse = |key: &str, what| {
            Err(EnvelopeError::HeaderTooLarge {
                key: key.chars().take(64).collect(),
                what,
            })
        };
        if headers.len() > MAX_HEADERS {
            return refuse(&headers[MAX_HEADERS].0, "more than 65 535 headers");
        }
        for (key, value) in headers {
            if key.len() > MAX_HEADER_KEY {
                return refuse(key, "the key is longer than 65 535 bytes");
            }
            if value.len() > MAX_HEADER_VALUE {
                return refuse(key, "the value is longer than 4 GiB");
            }
        }
        Ok(())
    }

    /// Encodes the frame; fails with [`EnvelopeError::HeaderTooLarge`] for headers that cannot
    /// be framed (see [`Envelope::check_headers`]) rather than cutting them.
    pub fn encode(&self) -> Result<Bytes, EnvelopeError> {
        Self::check_headers(&self.headers)?;
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_slice(&MAGIC);
        out.put_u8(VERSION);
        out.put_u8(if self.headers.is_empty() {
            0
        } else {
            FLAG_HEADERS
        });
        out.put_u128(self.id.as_u128());
        out.put_u64(self.published_at);
        let origin = self.origin.as_str().as_bytes();
        // NodeId guarantees 1..=255 bytes.
        out.put_u8(origin.len() as u8);
        out.put_slice(origin);
        if !self.headers.is_empty() {
            // `check_headers` bounds every length below.
            out.put_u16(self.headers.len() as u16);
            for (key, value) in &self.headers {
                out.put_u16(key.len() as u16);
                out.put_slice(key.as_bytes());
                out.put_u32(value.len() as u32);
                out.put_slice(value.as_bytes());
            }
        }
        out.put_slice(&self.payload);
        Ok(out.freeze())
    }

    /// Decodes a frame; the payload shares `frame`'s memory.
    pub fn decode(frame: Bytes) -> Result<Envelope, EnvelopeError> {
        let mut buf = frame;
        if buf.remaining() < FIXED_LEN {
            // Say which part is missing as precisely as the length allows.
            if buf.remaining() >= 2 && buf[..2] != MAGIC {
                return Err(EnvelopeError::BadMagic);
            }
            if buf.remaining() >= 3 && buf[2] != VERSION {
                return Err(EnvelopeError::UnknownVersion(buf[2]));
            }
            return Err(EnvelopeError::Truncated("fixed header"));
        }
        if buf[..2] != MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        buf.advance(2);
        let version = buf.get_u8();
        if version != VERSION {
            return Err(EnvelopeError::UnknownVersion(version));
        }
        let flags = buf.get_u8();
        if flags & !FLAG_HEADERS != 0 {
            return Err(EnvelopeError::UnknownFlags(flags));
        }
        let id = MessageId::from_u128(buf.get_u128());
        let published_at = buf.get_u64();
        let origin_len = usize::from(buf.get_u8());
        let origin = take(&mut buf, origin_len, "origin")?;
        let origin = std::str::from_utf8(&origin)
            .ok()
            .and_then(|s| NodeId::new(s).ok())
            .ok_or(EnvelopeError::InvalidOrigin)?;
        let headers = if flags & FLAG_HEADERS != 0 {
            decode_headers(&mut buf)?
        } else {
            Vec::new()
        };
        Ok(Envelope {
            id,
            origin,
            published_at,
            headers,
            payload: buf,
        })
    }

    /// Decodes a frame from a byte slice (copies the payload once).
    pub fn decode_slice(frame: &[u8]) -> Result<Envelope, EnvelopeError> {
        Self::decode(Bytes::copy_from_slice(frame))
    }
}

fn decode_headers(buf: &mut Bytes) -> Result<Vec<(String, String)>, EnvelopeError> {
    if buf.remaining() < 2 {
        return Err(EnvelopeError::Truncated("header count"));
    }
    let count = usize::from(buf.get_u16());
    // Each header takes at least 6 bytes, so the input bounds the allocation, not the count.
    let mut headers = Vec::with_capacity(count.min(buf.remaining() / 6));
    for _ in 0..count {
        if buf.remaining() < 2 {
            return Err(EnvelopeError::Truncated("header key length"));
        }
        let key_len = usize::from(buf.get_u16());
        let key = take(buf, key_len, "header key")?;
        if buf.remaining() < 4 {
            return Err(EnvelopeError::Truncated("header value length"));
        }
        let value_len = buf.get_u32() as usize;
        let value = take(buf, value_len, "header value")?;
        let key = String::from_utf8(key.to_vec()).map_err(|_| EnvelopeError::InvalidHeader)?;
        let value = String::from_utf8(value.to_vec()).map_err(|_| EnvelopeError::InvalidHeader)?;
        headers.push((key, value));
    }
    Ok(headers)
}

fn take(buf: &mut Bytes, len: usize, field: &'static str) -> Result<Bytes, EnvelopeError> {
    if buf.remaining() < len {
        return Err(EnvelopeError::Truncated(field));
    }
    Ok(buf.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: MessageId::from_u128(0x0189_0a5d_ac96_774b_bcce_b302_099a_8057),
            origin: NodeId::new("hub-a").unwrap(),
            published_at: 1_700_000_000_123_456_789,
            headers: vec![("content-type".into(), "application/json".into())],
            payload: Bytes::from_static(br#"{"text":"hi"}"#),
        }
    }

    /// The example of `docs/bus_spec.md`, "The envelope, version 1", byte for byte.
    #[test]
    fn the_documented_example_frame() {
        let frame = Envelope {
            id: MessageId::from_u128(0x0190_f1c2_0000_7000_8000_0000_0000_0001),
            origin: NodeId::new("a").unwrap(),
            published_at: 1_720_000_000_000_000_000,
            headers: Vec::new(),
            payload: Bytes::from_static(b"hi"),
        }
        .encode()
        .unwrap();
        let documented = "68 62 01 00  01 90 f1 c2 00 00 70 00 80 00 00 00 00 00 00 01 \
                          17 de aa e3 15 ac 00 00  01 61  68 69";
        let hex: Vec<String> = frame.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            documented.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    #[test]
    fn a_frame_is_an_envelope_only_with_the_magic_and_a_version_byte() {
        assert!(is_envelope(&sample().encode().unwrap()));
        assert!(is_envelope(b"hb\x01"), "truncated, but it claims to be one");
        assert!(is_envelope(b"hb\x09future version"));
        for foreign in [
            &b"hello"[..],
            b"",
            b"h",
            b"hb",
            b"hbd is great",
            b"{\"hb\":1}",
        ] {
            assert!(!is_envelope(foreign), "{foreign:?}");
        }
    }

    #[test]
    fn round_trips() {
        let envelope = sample();
        let frame = envelope.encode().unwrap();
        assert_eq!(frame.len(), envelope.encoded_len());
        assert_eq!(Envelope::decode(frame).unwrap(), envelope);
    }

    #[test]
    fn round_trips_without_headers_and_with_empty_payload() {
        let envelope = Envelope {
            headers: vec![],
            payload: Bytes::new(),
            ..sample()
        };
        assert_eq!(
            Envelope::decode_slice(&envelope.encode().unwrap()).unwrap(),
            envelope
        );
    }

    #[test]
    fn rejects_foreign_and_future_frames() {
        let mut frame = sample().encode().unwrap().to_vec();
        assert_eq!(Envelope::decode_slice(b"xy"), Err(EnvelopeError::BadMagic));
        assert_eq!(
            Envelope::decode_slice(b"h"),
            Err(EnvelopeError::Truncated("fixed header"))
        );
        assert_eq!(
            Envelope::decode_slice(b"hb\x07"),
            Err(EnvelopeError::UnknownVersion(7))
        );
        frame[2] = 2;
        assert_eq!(
            Envelope::decode_slice(&frame),
            Err(EnvelopeError::UnknownVersion(2))
        );
        frame[2] = VERSION;
        frame[3] = 0x80;
        assert_eq!(
            Envelope::decode_slice(&frame),
            Err(EnvelopeError::UnknownFlags(0x80))
        );
    }

    #[test]
    fn rejects_bad_origin_and_truncated_headers() {
        let mut frame = sample().encode().unwrap().to_vec();
        frame[28] = 0;
        assert_eq!(
            Envelope::decode_slice(&frame),
            Err(EnvelopeError::InvalidOrigin)
        );
        let frame = sample().encode().unwrap();
        let cut = FIXED_LEN + "hub-a".len() + 5;
        assert_eq!(
            Envelope::decode(frame.slice(..cut)),
            Err(EnvelopeError::Truncated("header key"))
        );
    }

    #[test]
    fn headers_that_cannot_be_framed_are_an_error_not_cut() {
        let long_key = Envelope {
            headers: vec![("k".repeat(MAX_HEADER_KEY + 1), "v".into())],
            ..sample()
        };
        assert!(matches!(
            long_key.encode(),
            Err(EnvelopeError::HeaderTooLarge { ref key, .. }) if key.len() == 64
        ));
        let many = Envelope {
            headers: vec![("k".into(), "v".into()); MAX_HEADERS + 1],
            ..sample()
        };
        assert!(matches!(
            many.encode(),
            Err(EnvelopeError::HeaderTooLarge { what, .. }) if what.contains("65 535 headers")
        ));
        let at_limit = Envelope {
            headers: vec![("k".repeat(MAX_HEADER_KEY), "v".into())],
            ..sample()
        };
        let frame = at_limit.encode().unwrap();
        assert_eq!(Envelope::decode(frame).unwrap(), at_limit);
    }
}
