//! The NATS client protocol as nats-server 2.9 reads it, and the lines the server writes back.
//!
//! [`Decoder`] turns the bytes a client sends into [`ClientOp`]s and mirrors how nats-server's
//! parser reacts to what it does not accept, because clients (and the differential test against
//! a real server) see those reactions: an unknown verb, or a payload not followed by CRLF, is
//! `-ERR 'Unknown Protocol Operation'`; a malformed argument list (`PUB foo`, `SUB foo`) closes
//! the connection without a word; anything but `CONNECT` before authentication is an
//! authorization violation. Verbs are case-insensitive, `\n` alone ends a line, and a line or
//! payload over its limit is refused before it is buffered, so what a client can make the
//! server hold is bounded by the two limits. No input panics the decoder.

use bytes::{Buf, Bytes, BytesMut};

/// The longest argument line nats-server accepts (`max_control_line`, 4 KiB by default).
pub(super) const MAX_CONTROL_LINE: usize = 4096;

/// The header block of a no-responders status: `NATS/1.0 503`, then the blank line.
pub(super) const NO_RESPONDERS: &[u8] = b"NATS/1.0 503\r\n\r\n";

/// `+OK`, what a verbose client gets for every accepted operation.
pub(super) const OK: &[u8] = b"+OK\r\n";
/// The server's liveness probe.
pub(super) const PING: &[u8] = b"PING\r\n";
/// The answer to a client's `PING`.
pub(super) const PONG: &[u8] = b"PONG\r\n";

/// What the decoder must know about the connection it reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct DecodeContext {
    /// The server requires authentication and the client has not sent `CONNECT` yet.
    pub(super) awaiting_auth: bool,
    /// The client announced `headers: true`; only then is `HPUB` allowed.
    pub(super) headers: bool,
    /// The largest payload (headers included) a publish may carry.
    pub(super) max_payload: usize,
}

/// One operation a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ClientOp {
    /// `CONNECT <json>`: the raw JSON, parsed by the session.
    Connect(Bytes),
    /// `PUB` or `HPUB`.
    Publish(Publish),
    /// `SUB <subject> [queue] <sid>`.
    Subscribe {
        subject: String,
        queue: Option<String>,
        sid: String,
    },
    /// `UNSUB <sid> [max]`; `max` is `None` for "now" (absent, zero or not a number).
    Unsubscribe { sid: String, max: Option<u64> },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `INFO <json>`, which a server ignores from a client as long as it is JSON.
    Info(Bytes),
    /// `+OK`, ignored.
    Ok,
    /// `-ERR <text>`: the client gave up; the server closes.
    Err(Bytes),
}

/// A message a client published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Publish {
    /// Where it goes.
    pub(super) subject: String,
    /// Where answers go.
    pub(super) reply: Option<String>,
    /// The header block of an `HPUB` (`NATS/1.0 ...` up to the blank line), as sent; empty for
    /// `PUB` and for an `HPUB` with a header length of 0.
    pub(super) headers: Bytes,
    /// The payload after the headers.
    pub(super) body: Bytes,
}

/// Input the server does not accept, with nats-server's reaction. Every one closes the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ProtocolError {
    /// Not a client verb, a verb without its separator, or a payload not followed by CRLF.
    #[error("unknown protocol operation")]
    UnknownOperation,
    /// Something other than `CONNECT` while authentication is required.
    #[error("authorization violation")]
    AuthorizationViolation,
    /// An argument line longer than [`MAX_CONTROL_LINE`].
    #[error("maximum control line exceeded")]
    MaxControlLine,
    /// A publish larger than the connection's maximum payload.
    #[error("maximum payload violation")]
    MaxPayload,
    /// Arguments nats-server cannot parse; it closes without telling the client why.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

impl ProtocolError {
    /// The `-ERR` text nats-server sends before it closes, if any.
    pub(super) fn reply(self) -> Option<&'static str> {
        match self {
            ProtocolError::UnknownOperation => Some("Unknown Protocol Operation"),
            ProtocolError::AuthorizationViolation => Some("Authorization Violation"),
            ProtocolError::MaxControlLine => Some("maximum control line exceeded"),
            ProtocolError::MaxPayload => Some("Maximum Payload Violation"),
            ProtocolError::Malformed(_) => None,
        }
    }
}

/// The client verbs, each with how its line continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Pub,
    HPub,
    Sub,
    Unsub,
    Ping,
    Pong,
    Connect,
    Info,
    Ok,
    Err,
}

const VERBS: [(&[u8], Verb); 10] = [
    (b"PUB", Verb::Pub),
    (b"HPUB", Verb::HPub),
    (b"SUB", Verb::Sub),
    (b"UNSUB", Verb::Unsub),
    (b"PING", Verb::Ping),
    (b"PONG", Verb::Pong),
    (b"CONNECT", Verb::Connect),
    (b"INFO", Verb::Info),
    (b"+OK", Verb::Ok),
    (b"-ERR", Verb::Err),
];

impl Verb {
    /// Whether anything up to the end of the line is ignored (`PINGxyz` is a `PING`).
    fn ignores_rest_of_line(self) -> bool {
        matches!(self, Verb::Ping | Verb::Pong | Verb::Ok)
    }

    /// Whether a space or tab must follow the verb (`PUBx` is unknown, `CONNECT{` is not).
    fn needs_separator(self) -> bool {
        matches!(
            self,
            Verb::Pub | Verb::HPub | Verb::Sub | Verb::Unsub | Verb::Err
        )
    }

    fn op_without_argument(self) -> ClientOp {
        match self {
            Verb::Pong => ClientOp::Pong,
            Verb::Ok => ClientOp::Ok,
            _ => ClientOp::Ping,
        }
    }
}

/// Splits a client's byte stream into operations; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    /// Inside a `PING`, `PONG` or `+OK` whose line has not ended yet: what follows the verb is
    /// dropped as it arrives instead of buffered, as nats-server does.
    rest_of: Option<Verb>,
}

impl Decoder {
    /// The next complete operation at the front of `buf`, which it removes; `Ok(None)` if more
    /// bytes are needed (nothing is removed then, except ignored bytes).
    pub(super) fn decode(
        &mut self,
        buf: &mut BytesMut,
        context: DecodeContext,
    ) -> Result<Option<ClientOp>, ProtocolError> {
        if let Some(verb) = self.rest_of {
            return Ok(self.finish_ignored_line(buf, verb));
        }
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if context.awaiting_auth && !first.eq_ignore_ascii_case(&b'C') {
            return Err(ProtocolError::AuthorizationViolation);
        }
        let Some((verb, name_len)) = recognise(buf)? else {
            return Ok(None);
        };
        if verb.ignores_rest_of_line() {
            buf.advance(name_len);
            self.rest_of = Some(verb);
            return Ok(self.finish_ignored_line(buf, verb));
        }
        let mut start = name_len;
        if verb.needs_separator() {
            match buf.get(start) {
                None => return Ok(None),
                Some(b' ' | b'\t') => start += 1,
                Some(_) => return Err(ProtocolError::UnknownOperation),
            }
        }
        while matches!(buf.get(start), Some(b' ' | b'\t')) {
            start += 1;
        }
        let Some(newline) = buf[start..].iter().position(|&b| b == b'\n') else {
            // Spaces before the argument count too, so that what is buffered stays bounded.
            if buf.len() - name_len > MAX_CONTROL_LINE {
                return Err(ProtocolError::MaxControlLine);
            }
            return Ok(None);
        };
        let line_end = start + newline;
        let raw = &buf[start..line_end];
        // nats-server drops the last byte before `\n` once it has seen a `\r` in the argument.
        let arg = if raw.contains(&b'\r') {
            &raw[..raw.len() - 1]
        } else {
            raw
        };
        if arg.len() > MAX_CONTROL_LINE {
            return Err(ProtocolError::MaxControlLine);
        }
        let after_line = line_end + 1;
        let (op, consumed) = match verb {
            Verb::Connect => (ClientOp::Connect(Bytes::copy_from_slice(arg)), after_line),
            Verb::Info => (ClientOp::Info(Bytes::copy_from_slice(arg)), after_line),
            Verb::Err => (ClientOp::Err(Bytes::copy_from_slice(arg)), after_line),
            Verb::Sub => (subscribe(arg)?, after_line),
            Verb::Unsub => (unsubscribe(arg)?, after_line),
            Verb::Pub | Verb::HPub => {
                let (subject, reply, header_len, size) = publish_args(verb, arg, context)?;
                let Some(end) = payload_end(buf, after_line, size)? else {
                    return Ok(None);
                };
                let payload = &buf[after_line..after_line + size];
                let publish = Publish {
                    subject,
                    reply,
                    headers: Bytes::copy_from_slice(&payload[..header_len]),
                    body: Bytes::copy_from_slice(&payload[header_len..]),
                };
                (ClientOp::Publish(publish), end)
            }
            // Decoded above already; listed so that the match stays exhaustive without a panic.
            Verb::Ping | Verb::Pong | Verb::Ok => (verb.op_without_argument(), after_line),
        };
        buf.advance(consumed);
        Ok(Some(op))
    }

    /// Drops the rest of an ignored line; the operation once its `\n` has arrived.
    fn finish_ignored_line(&mut self, buf: &mut BytesMut, verb: Verb) -> Option<ClientOp> {
        match buf.iter().position(|&b| b == b'\n') {
            Some(newline) => {
                buf.advance(newline + 1);
                self.rest_of = None;
                Some(verb.op_without_argument())
            }
            None => {
                buf.clear();
                None
            }
        }
    }
}

/// The verb at the front of `buf` and its length; `None` while what is there could still
/// become one.
fn recognise(buf: &[u8]) -> Result<Option<(Verb, usize)>, ProtocolError> {
    let mut could_become_one = false;
    for (name, verb) in VERBS {
        let available = name.len().min(buf.len());
        if buf[..available].eq_ignore_ascii_case(&name[..available]) {
            if available == name.len() {
                return Ok(Some((verb, name.len())));
            }
            could_become_one = true;
        }
    }
    if could_become_one {
        Ok(None)
    } else {
        Err(ProtocolError::UnknownOperation)
    }
}

/// Where the payload that starts at `start` ends, CRLF included; `None` until it has arrived.
/// A payload not followed by CRLF is refused as soon as the offending byte is there.
fn payload_end(buf: &[u8], start: usize, size: usize) -> Result<Option<usize>, ProtocolError> {
    let crlf = start + size;
    for (at, expected) in [(crlf, b'\r'), (crlf + 1, b'\n')] {
        match buf.get(at) {
            None => return Ok(None),
            Some(&byte) if byte != expected => return Err(ProtocolError::UnknownOperation),
            Some(_) => {}
        }
    }
    Ok(Some(crlf + 2))
}

/// Splits an argument line on spaces and tabs, as nats-server does for `PUB` and `HPUB`.
fn split_on_blanks(arg: &[u8]) -> Vec<&[u8]> {
    arg.split(|&b| b == b' ' || b == b'\t')
        .filter(|word| !word.is_empty())
        .collect()
}

/// Splits on any whitespace, as nats-server does for `SUB` and `UNSUB`.
fn split_on_whitespace(arg: &[u8]) -> Vec<&[u8]> {
    arg.split(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .filter(|word| !word.is_empty())
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// nats-server's size parser: 1 to 9 decimal digits, nothing else.
fn parse_size(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0, |size, digit| size * 10 + usize::from(digit - b'0')),
    )
}

fn subscribe(arg: &[u8]) -> Result<ClientOp, ProtocolError> {
    let (subject, queue, sid) = match split_on_whitespace(arg)[..] {
        [subject, sid] => (subject, None, sid),
        [subject, queue, sid] => (subject, Some(text(queue)), sid),
        _ => return Err(ProtocolError::Malformed("SUB arguments")),
    };
    Ok(ClientOp::Subscribe {
        subject: text(subject),
        queue,
        sid: text(sid),
    })
}

fn unsubscribe(arg: &[u8]) -> Result<ClientOp, ProtocolError> {
    let (sid, max) = match split_on_whitespace(arg)[..] {
        [sid] => (sid, None),
        [sid, max] => (sid, parse_size(max).filter(|&max| max > 0)),
        _ => return Err(ProtocolError::Malformed("UNSUB arguments")),
    };
    Ok(ClientOp::Unsubscribe {
        sid: text(sid),
        max: max.map(|max| max as u64),
    })
}

/// The subject, reply, header length and total size of a `PUB` or `HPUB` line, checked in
/// nats-server's order: arguments, sizes, then the payload limit.
fn publish_args(
    verb: Verb,
    arg: &[u8],
    context: DecodeContext,
) -> Result<(String, Option<String>, usize, usize), ProtocolError> {
    let words = split_on_blanks(arg);
    let (subject, reply, header_len, size) = if verb == Verb::HPub {
        if !context.headers {
            return Err(ProtocolError::Malformed("HPUB without headers support"));
        }
        let (subject, reply, header_len, size) = match words[..] {
            [subject, header_len, size] => (subject, None, header_len, size),
            [subject, reply, header_len, size] => (subject, Some(reply), header_len, size),
            _ => return Err(ProtocolError::Malformed("HPUB arguments")),
        };
        let header_len =
            parse_size(header_len).ok_or(ProtocolError::Malformed("HPUB header size"))?;
        let size = parse_size(size).ok_or(ProtocolError::Malformed("HPUB total size"))?;
        if header_len > size {
            return Err(ProtocolError::Malformed("HPUB header size over total size"));
        }
        (subject, reply, header_len, size)
    } else {
        let (subject, reply, size) = match words[..] {
            [subject, size] => (subject, None, size),
            [subject, reply, size] => (subject, Some(reply), size),
            _ => return Err(ProtocolError::Malformed("PUB arguments")),
        };
        let size = parse_size(size).ok_or(ProtocolError::Malformed("PUB size"))?;
        (subject, reply, 0, size)
    };
    if size > context.max_payload {
        return Err(ProtocolError::MaxPayload);
    }
    Ok((text(subject), reply.map(text), header_len, size))
}

/// `-ERR '<text>'`.
pub(super) fn error_line(text: &str) -> Bytes {
    Bytes::from(format!("-ERR '{text}'\r\n"))
}

/// A delivery to subscription `sid`: `HMSG` when there is a header block and the subscriber
/// announced headers, else `MSG` with the payload alone (nats-server strips the headers for a
/// client that cannot read them).
pub(super) fn message_line(
    subject: &str,
    sid: &str,
    reply: Option<&str>,
    headers: &[u8],
    body: &[u8],
    with_headers: bool,
) -> Bytes {
    let mut line = BytesMut::with_capacity(subject.len() + sid.len() + body.len() + 64);
    let reply = reply.map(|reply| format!("{reply} ")).unwrap_or_default();
    let header = if with_headers && !headers.is_empty() {
        let total = headers.len() + body.len();
        format!("HMSG {subject} {sid} {reply}{} {total}\r\n", headers.len())
    } else {
        format!("MSG {subject} {sid} {reply}{}\r\n", body.len())
    };
    line.extend_from_slice(header.as_bytes());
    if with_headers {
        line.extend_from_slice(headers);
    }
    line.extend_from_slice(body);
    line.extend_from_slice(b"\r\n");
    line.freeze()
}

/// The header block for a status and headers: `NATS/1.0[ <code>[ <description>]]`, one
/// `Key: Value` line per header, a blank line. Empty when there is neither, so the message goes
/// out as a plain `MSG`.
pub(super) fn header_block(status: Option<&(u16, String)>, headers: &[(String, String)]) -> Bytes {
    if status.is_none() && headers.is_empty() {
        return Bytes::new();
    }
    let mut block = String::from("NATS/1.0");
    if let Some((code, description)) = status {
        block.push_str(&format!(" {code}"));
        if !description.is_empty() {
            block.push(' ');
            block.push_str(description);
        }
    }
    block.push_str("\r\n");
    for (key, value) in headers {
        block.push_str(&format!("{key}: {value}\r\n"));
    }
    block.push_str("\r\n");
    Bytes::from(block)
}

/// The headers of a header block, in order, without its status line; lines without a colon
/// are skipped, keys and values trimmed.
pub(super) fn parse_header_block(block: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(block);
    text.split("\r\n")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            Some((key.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    const OPEN: DecodeContext = DecodeContext {
        awaiting_auth: false,
        headers: true,
        max_payload: 1024,
    };

    /// Decodes everything in `input` at once; the operations, then the error if any.
    fn decode_all(input: &[u8], context: DecodeContext) -> (Vec<ClientOp>, Option<ProtocolError>) {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(input);
        let mut ops = Vec::new();
        loop {
            match decoder.decode(&mut buf, context) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => return (ops, None),
                Err(error) => return (ops, Some(error)),
            }
        }
    }

    fn publish(subject: &str, reply: Option<&str>, headers: &str, body: &str) -> ClientOp {
        ClientOp::Publish(Publish {
            subject: subject.into(),
            reply: reply.map(Into::into),
            headers: Bytes::copy_from_slice(headers.as_bytes()),
            body: Bytes::copy_from_slice(body.as_bytes()),
        })
    }

    #[test]
    fn every_client_verb_decodes_in_any_case() {
        let input = b"CONNECT {\"verbose\":false}\r\nsub foo 1\r\nSUB bar q 2\r\n\
            pub foo 5\r\nhello\r\nPUB foo reply 0\r\n\r\n\
            HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nunsub 1\r\nUNSUB 2 10\r\n\
            ping\r\nPONG\r\n+OK\r\nINFO {}\r\n-ERR 'x'\r\n";
        let (ops, error) = decode_all(input, OPEN);
        assert_eq!(error, None);
        assert_eq!(
            ops,
            vec![
                ClientOp::Connect(Bytes::from_static(b"{\"verbose\":false}")),
                ClientOp::Subscribe {
                    subject: "foo".into(),
                    queue: None,
                    sid: "1".into()
                },
                ClientOp::Subscribe {
                    subject: "bar".into(),
                    queue: Some("q".into()),
                    sid: "2".into()
                },
                publish("foo", None, "", "hello"),
                publish("foo", Some("reply"), "", ""),
                publish("foo", None, "NATS/1.0\r\n\r\n", "hi"),
                ClientOp::Unsubscribe {
                    sid: "1".into(),
                    max: None
                },
                ClientOp::Unsubscribe {
                    sid: "2".into(),
                    max: Some(10)
                },
                ClientOp::Ping,
                ClientOp::Pong,
                ClientOp::Ok,
                ClientOp::Info(Bytes::from_static(b"{}")),
                ClientOp::Err(Bytes::from_static(b"'x'")),
            ]
        );
    }

    #[test]
    fn lines_may_end_in_a_bare_newline_and_ping_ignores_what_follows() {
        let (ops, error) = decode_all(b"SUB a\t 1\nPING foo\nPINGPONG\r\nPUB a 1\nx\r\n", OPEN);
        assert_eq!(error, None);
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[1], ClientOp::Ping);
        assert_eq!(ops[2], ClientOp::Ping);
        assert_eq!(ops[3], publish("a", None, "", "x"));
    }

    #[test]
    fn operations_split_anywhere_decode_the_same() {
        let input: &[u8] =
            b"CONNECT {}\r\nSUB a 1\r\nHPUB a r 12 17\r\nNATS/1.0\r\n\r\nhello\r\nPING\r\n";
        let (whole, _) = decode_all(input, OPEN);
        for split in 1..input.len() {
            let mut decoder = Decoder::default();
            let mut buf = BytesMut::from(&input[..split]);
            let mut ops = Vec::new();
            while let Some(op) = decoder.decode(&mut buf, OPEN).unwrap() {
                ops.push(op);
            }
            buf.extend_from_slice(&input[split..]);
            while let Some(op) = decoder.decode(&mut buf, OPEN).unwrap() {
                ops.push(op);
            }
            assert_eq!(ops, whole, "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn unknown_verbs_are_refused_at_the_first_wrong_byte() {
        for input in [
            &b"X"[..],
            b"PX",
            b"PUBX",
            b"MSG foo 1 2\r\n",
            b"HMSG foo 1 2 2\r\n",
            b"\r\n",
            b" PING\r\n",
            b"-ERRx\r\n",
        ] {
            assert_eq!(
                decode_all(input, OPEN).1,
                Some(ProtocolError::UnknownOperation),
                "{input:?}"
            );
        }
        assert_eq!(
            decode_all(b"PU", OPEN),
            (vec![], None),
            "could still be PUB"
        );
    }

    #[test]
    fn a_payload_must_end_in_crlf() {
        assert_eq!(
            decode_all(b"PUB a 2\r\nhiX", OPEN).1,
            Some(ProtocolError::UnknownOperation)
        );
        assert_eq!(
            decode_all(b"PUB a 2\r\nhi\rX", OPEN).1,
            Some(ProtocolError::UnknownOperation)
        );
        assert_eq!(decode_all(b"PUB a 2\r\nhi\r", OPEN), (vec![], None));
    }

    #[test]
    fn malformed_arguments_close_without_an_error_text() {
        let no_headers = DecodeContext {
            headers: false,
            ..OPEN
        };
        let cases: [(&[u8], DecodeContext); 11] = [
            (b"PUB foo\r\n", OPEN),
            (b"PUB foo x\r\n", OPEN),
            (b"PUB a b c d\r\n", OPEN),
            (b"PUB foo -1\r\n", OPEN),
            (b"PUB foo 9999999999\r\n", OPEN),
            (b"SUB foo\r\n", OPEN),
            (b"SUB a b c d\r\n", OPEN),
            (b"UNSUB \r\n", OPEN),
            (b"HPUB foo 20 10\r\n", OPEN),
            (b"HPUB foo 12\r\n", OPEN),
            (b"HPUB foo 12 14\r\n", no_headers),
        ];
        for (input, context) in cases {
            let error = decode_all(input, context).1.expect("an error");
            assert!(matches!(error, ProtocolError::Malformed(_)), "{input:?}");
            assert_eq!(error.reply(), None);
        }
    }

    #[test]
    fn limits_are_enforced_before_anything_is_buffered() {
        assert_eq!(
            decode_all(b"PUB foo 1025\r\n", OPEN).1,
            Some(ProtocolError::MaxPayload)
        );
        assert_eq!(
            decode_all(b"HPUB foo 10 1025\r\n", OPEN).1,
            Some(ProtocolError::MaxPayload)
        );
        let long = [&b"SUB "[..], &[b'a'; MAX_CONTROL_LINE + 1]].concat();
        assert_eq!(
            decode_all(&long, OPEN).1,
            Some(ProtocolError::MaxControlLine),
            "even before the line ends"
        );
        let mut complete = long.clone();
        complete.extend_from_slice(b" 1\r\n");
        assert_eq!(
            decode_all(&complete, OPEN).1,
            Some(ProtocolError::MaxControlLine)
        );
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"PING"[..]);
        for _ in 0..100 {
            buf.extend_from_slice(&[b'x'; 1000]);
            assert_eq!(decoder.decode(&mut buf, OPEN), Ok(None));
            assert!(
                buf.is_empty(),
                "a PING's trailing bytes are dropped, not kept"
            );
        }
        buf.extend_from_slice(b"\r\nPONG\r\n");
        assert_eq!(decoder.decode(&mut buf, OPEN), Ok(Some(ClientOp::Ping)));
        assert_eq!(decoder.decode(&mut buf, OPEN), Ok(Some(ClientOp::Pong)));
    }

    #[test]
    fn before_authentication_only_connect_is_allowed() {
        let awaiting = DecodeContext {
            awaiting_auth: true,
            ..OPEN
        };
        assert_eq!(
            decode_all(b"PING\r\n", awaiting).1,
            Some(ProtocolError::AuthorizationViolation)
        );
        assert_eq!(
            decode_all(b"XX", awaiting).1,
            Some(ProtocolError::AuthorizationViolation)
        );
        let (ops, error) = decode_all(b"connect {}\r\n", awaiting);
        assert_eq!((ops.len(), error), (1, None));
    }

    #[test]
    fn unsubscribe_without_a_positive_count_is_immediate() {
        for input in [&b"UNSUB 1 0\r\n"[..], b"UNSUB 1 x\r\n", b"UNSUB 1\r\n"] {
            let (ops, _) = decode_all(input, OPEN);
            assert_eq!(
                ops,
                vec![ClientOp::Unsubscribe {
                    sid: "1".into(),
                    max: None
                }]
            );
        }
    }

    #[test]
    fn deliveries_are_msg_or_hmsg_as_nats_server_writes_them() {
        assert_eq!(
            message_line("a.b", "7", None, b"", b"hi", true),
            &b"MSG a.b 7 2\r\nhi\r\n"[..]
        );
        assert_eq!(
            message_line(
                "a",
                "1",
                Some("r"),
                b"NATS/1.0\r\nA: b\r\n\r\n",
                b"hi",
                true
            ),
            &b"HMSG a 1 r 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n"[..]
        );
        assert_eq!(
            message_line(
                "a",
                "1",
                Some("r"),
                b"NATS/1.0\r\nA: b\r\n\r\n",
                b"hi",
                false
            ),
            &b"MSG a 1 r 2\r\nhi\r\n"[..],
            "a client without headers support gets the payload alone"
        );
        assert_eq!(
            message_line("in", "7", None, NO_RESPONDERS, b"", true),
            &b"HMSG in 7 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"[..]
        );
        assert_eq!(
            error_line("Invalid Subject"),
            &b"-ERR 'Invalid Subject'\r\n"[..]
        );
    }

    #[test]
    fn header_blocks_round_trip_with_status_lines() {
        let headers = vec![("Nats-Msg-Id".to_owned(), "42".to_owned())];
        assert_eq!(header_block(None, &[]), Bytes::new());
        assert_eq!(
            header_block(Some(&(503, String::new())), &[]),
            NO_RESPONDERS
        );
        let block = header_block(Some(&(404, "No Messages".into())), &headers);
        assert_eq!(
            block,
            &b"NATS/1.0 404 No Messages\r\nNats-Msg-Id: 42\r\n\r\n"[..]
        );
        assert_eq!(parse_header_block(&block), headers);
        assert_eq!(
            parse_header_block(b"NATS/1.0\r\nA:  b \r\nnocolon\r\nC:d\r\n\r\nE: f\r\n"),
            vec![("A".into(), "b".into()), ("C".into(), "d".into())]
        );
    }

    proptest! {
        /// Whatever arrives, in whatever pieces: no panic, and what the decoder keeps waiting
        /// for more is bounded by one control line, one read and one payload.
        #[test]
        fn arbitrary_bytes_never_panic_and_buffering_stays_bounded(
            chunks in vec(vec(any::<u8>(), 0..512), 0..16),
            awaiting_auth: bool,
            headers: bool,
        ) {
            let context = DecodeContext { awaiting_auth, headers, max_payload: 1024 };
            let mut decoder = Decoder::default();
            let mut buf = BytesMut::new();
            'input: for chunk in chunks {
                buf.extend_from_slice(&chunk);
                loop {
                    match decoder.decode(&mut buf, context) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'input,
                    }
                }
                prop_assert!(buf.len() <= MAX_CONTROL_LINE + 512 + 1024 + 16, "{}", buf.len());
            }
        }

        /// Valid operations with arbitrary subjects and payloads decode to what was sent.
        #[test]
        fn publishes_decode_to_what_was_sent(
            subject in "[a-z*>.]{1,20}",
            reply in proptest::option::of("[A-Z_.]{1,20}"),
            body in vec(any::<u8>(), 0..200),
        ) {
            let mut wire = format!("PUB {subject} ").into_bytes();
            if let Some(reply) = &reply {
                wire.extend_from_slice(format!("{reply} ").as_bytes());
            }
            wire.extend_from_slice(format!("{}\r\n", body.len()).as_bytes());
            wire.extend_from_slice(&body);
            wire.extend_from_slice(b"\r\n");
            let mut buf = BytesMut::from(&wire[..]);
            let op = Decoder::default().decode(&mut buf, OPEN);
            prop_assert_eq!(op, Ok(Some(ClientOp::Publish(Publish {
                subject,
                reply,
                headers: Bytes::new(),
                body: Bytes::from(body),
            }))));
            prop_assert!(buf.is_empty());
        }
    }
}
