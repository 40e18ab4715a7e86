//! Ack subjects and what a client may publish to them.
//!
//! Every delivery carries the reply subject
//! `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>`,
//! where the timestamp is when the message was stored (nanoseconds since the Unix epoch) and
//! `pending` how many messages were left for the consumer. A client settles the delivery by
//! publishing to it: nothing or `+ACK` (also `+OK`), `-NAK` optionally followed by a delay
//! (`{"delay": <ns>}` or a Go duration such as `5s`), `+TERM`, `+WPI` (still working: the ack
//! wait starts again) or `+NXT` (ack, and a pull request for more). Numbers are read the way the
//! server reads them: a token that is not a number reads as `u64::MAX`, which matches nothing.

use super::json::{Request, parse_go_duration};

/// The parts of an ack subject the server reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckSubject<'a> {
    pub(crate) stream: &'a str,
    pub(crate) consumer: &'a str,
    pub(crate) delivered: u64,
    pub(crate) stream_sequence: u64,
    pub(crate) delivery: u64,
}

/// The ack subject of a delivery.
pub(crate) fn ack_subject(
    stream: &str,
    consumer: &str,
    delivered: u64,
    stream_sequence: u64,
    delivery: u64,
    timestamp: i128,
    pending: u64,
) -> String {
    format!(
        "$JS.ACK.{stream}.{consumer}.{delivered}.{stream_sequence}.{delivery}.{timestamp}.{pending}"
    )
}

/// `parseAckReplyNum`: digits only, wrapping like Go's int64; anything else is -1.
fn number(token: &str) -> u64 {
    if token.is_empty() {
        return u64::MAX;
    }
    let mut n: i64 = 0;
    for byte in token.bytes() {
        if !byte.is_ascii_digit() {
            return u64::MAX;
        }
        n = n.wrapping_mul(10).wrapping_add(i64::from(byte - b'0'));
    }
    n as u64
}

/// Reads an ack subject of the 9-token form a single server hands out; `None` for anything a
/// consumer's ack subscription (`$JS.ACK.<stream>.<consumer>.*.*.*.*.*`) would not receive.
pub(crate) fn parse_ack_subject(subject: &str) -> Option<AckSubject<'_>> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.len() != 9 || tokens[0] != "$JS" || tokens[1] != "ACK" {
        return None;
    }
    if tokens.iter().any(|token| token.is_empty()) {
        return None;
    }
    Some(AckSubject {
        stream: tokens[2],
        consumer: tokens[3],
        delivered: number(tokens[4]),
        stream_sequence: number(tokens[5]),
        delivery: number(tokens[6]),
    })
}

/// What a client published to an ack subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AckKind {
    /// Acknowledged.
    Ack,
    /// Acknowledged, and the rest is a pull request (`+NXT`).
    Next(Vec<u8>),
    /// Declined; deliver again after the delay (nanoseconds), or at once.
    Nak(Option<i64>),
    /// Still working on it.
    Progress,
    /// Never deliver it again.
    Term,
    /// Not an ack body the server knows: ignored.
    Unknown,
}

/// Reads an ack body.
pub(crate) fn ack_kind(body: &[u8]) -> AckKind {
    match body {
        b"" | b"+ACK" | b"+OK" => AckKind::Ack,
        b"+WPI" => AckKind::Progress,
        b"+TERM" => AckKind::Term,
        _ if body.starts_with(b"+NXT") => AckKind::Next(body[4..].to_vec()),
        _ if body.starts_with(b"-NAK") => AckKind::Nak(nak_delay(&body[4..])),
        _ => AckKind::Unknown,
    }
}

/// The delay of a nak; a delay that cannot be read makes it a plain nak (as on the server).
fn nak_delay(rest: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(rest).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.starts_with('{') {
        return Request::parse(text.as_bytes()).ok()?.int("delay").ok();
    }
    parse_go_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_round_trip() {
        let subject = ack_subject("S", "c1", 2, 7, 9, 1_700_000_000_000_000_000, 3);
        assert_eq!(subject, "$JS.ACK.S.c1.2.7.9.1700000000000000000.3");
        let parsed = parse_ack_subject(&subject).unwrap();
        assert_eq!(
            (
                parsed.stream,
                parsed.consumer,
                parsed.delivered,
                parsed.stream_sequence,
                parsed.delivery
            ),
            ("S", "c1", 2, 7, 9)
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK.S.c1.x.7.9.1.0")
                .unwrap()
                .delivered,
            u64::MAX
        );
        assert!(parse_ack_subject("$JS.ACK.a.b.S.c.1.2.3.4.5").is_none());
        assert!(parse_ack_subject("$JS.ACK.S.c.1.2.3.4").is_none());
    }

    #[test]
    fn ack_bodies_are_read_like_the_server() {
        assert_eq!(ack_kind(b""), AckKind::Ack);
        assert_eq!(ack_kind(b"+OK"), AckKind::Ack);
        assert_eq!(ack_kind(b"-NAK"), AckKind::Nak(None));
        assert_eq!(
            ack_kind(b"-NAK {\"delay\":250000000}"),
            AckKind::Nak(Some(250_000_000))
        );
        assert_eq!(ack_kind(b"-NAK 2s"), AckKind::Nak(Some(2_000_000_000)));
        assert_eq!(ack_kind(b"-NAK {bad"), AckKind::Nak(None));
        assert_eq!(ack_kind(b"+TERM"), AckKind::Term);
        assert_eq!(ack_kind(b"+WPI"), AckKind::Progress);
        assert_eq!(ack_kind(b"+NXT 5"), AckKind::Next(b" 5".to_vec()));
        assert_eq!(ack_kind(b"+ACK "), AckKind::Unknown);
    }
}
