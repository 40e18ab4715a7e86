//! RESP2, the Redis wire protocol, from the server's side of the socket.
//!
//! A server reads commands and writes replies, so this module holds exactly those two halves:
//! [`CommandDecoder`] turns the bytes a client sent into commands (arrays of bulk strings, or
//! the whitespace-separated "inline" form that `redis-cli` and telnet users type), and
//! [`Frame`] encodes the replies. The decoder is incremental and keeps its progress between
//! calls, so a command that arrives a few bytes at a time costs no more than one that arrives
//! whole, and pipelined commands come out one per call.
//!
//! Everything a client sends is untrusted. The decoder never panics, never allocates more than
//! [`Limits`] allows for one command, and reports a violation as a [`ProtocolError`] whose text
//! matches what real Redis says (`-ERR Protocol error: invalid bulk length`); the server answers
//! with it and closes the connection, as Redis does.

use bytes::{Buf, Bytes, BytesMut};

/// How large one command may be. A client that declares more gets a [`ProtocolError`] before
/// the server buffers the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string (one argument), in bytes.
    pub max_bulk_len: usize,
    /// Most arguments in one command.
    pub max_array_len: usize,
    /// Longest inline command line, in bytes.
    pub max_inline_len: usize,
    /// Most wire bytes one command may take, headers included. This bounds what a client can
    /// make the server hold with many large arguments.
    pub max_command_len: usize,
}

impl Default for Limits {
    /// 8 MiB per argument, 1 Mi arguments, 64 KiB inline lines and 16 MiB per command. Real Redis
    /// allows larger bulk strings (512 MiB); a bus message is capped at 1 MiB, so 8 MiB leaves
    /// room for tests of oversized payloads without letting one client hold much memory.
    fn default() -> Self {
        Limits {
            max_bulk_len: 8 * 1024 * 1024,
            max_array_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
            max_command_len: 16 * 1024 * 1024,
        }
    }
}

/// Input that is not RESP2 or breaks a [`Limits`] bound. `Display` gives the text real Redis
/// sends after `-ERR Protocol error: `.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The `*<n>` header is not a number, or `n` exceeds [`Limits::max_array_len`].
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    /// The `$<n>` header is not a number, is negative, or exceeds [`Limits::max_bulk_len`].
    #[error("invalid bulk length")]
    InvalidBulkLength,
    /// An array element is not a bulk string (the byte is what came instead of `$`).
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    /// The `*<n>` header line does not end within a few bytes.
    #[error("too big mbulk count string")]
    TooBigMultibulkCount,
    /// The `$<n>` header line does not end within a few bytes.
    #[error("too big bulk count string")]
    TooBigBulkCount,
    /// An inline command line is longer than [`Limits::max_inline_len`].
    #[error("too big inline request")]
    TooBigInline,
    /// A bulk string's payload is not followed by CRLF. Redis skips those two bytes unchecked;
    /// the fake is stricter so that a client framing bug shows up in the simulation.
    #[error("bulk string not terminated by CRLF")]
    UnterminatedBulk,
    /// The command's wire size exceeds [`Limits::max_command_len`].
    #[error("command exceeds the query buffer limit")]
    CommandTooLarge,
}

/// The longest `*<n>` / `$<n>` header line accepted: a sign, 19 digits, and some slack. Anything
/// longer cannot be a valid length, so waiting for more bytes would only let a client make the
/// server buffer garbage.
const MAX_HEADER_LINE: usize = 32;

/// Decodes client commands from a byte buffer, one per [`decode`](Self::decode) call.
///
/// After an error the decoder's state is undefined; the connection must be closed.
#[derive(Debug)]
pub struct CommandDecoder {
    limits: Limits,
    partial: Option<PartialCommand>,
}

/// An array command whose header has been read but not all of its arguments.
#[derive(Debug)]
struct PartialCommand {
    remaining: usize,
    args: Vec<Bytes>,
    wire_len: usize,
}

impl CommandDecoder {
    /// A decoder that enforces `limits`.
    pub fn new(limits: Limits) -> Self {
        CommandDecoder {
            limits,
            partial: None,
        }
    }

    /// Takes the next complete command out of `buf`: `Ok(Some(args))` with the command name
    /// first, `Ok(None)` when `buf` holds no complete command yet (read more and call again).
    ///
    /// Bytes of complete arguments are consumed from `buf` as they are recognised and kept
    /// inside the decoder, so `buf` never has to hold more than one argument. Empty commands
    /// (`*0`, `*-1`, a blank inline line) are skipped, as Redis skips them.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            let Some(partial) = self.partial.as_mut() else {
                match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => match self.start_array(buf)? {
                        Some(()) => continue,
                        None => return Ok(None),
                    },
                    Some(_) => match self.inline(buf)? {
                        Some(args) if args.is_empty() => continue,
                        found => return Ok(found),
                    },
                }
            };
            while partial.remaining > 0 {
                let Some(arg) = next_bulk(&self.limits, partial.wire_len, buf)? else {
                    return Ok(None);
                };
                partial.wire_len += arg.wire_len;
                partial.args.push(arg.data);
                partial.remaining -= 1;
            }
            let done = self.partial.take().map(|p| p.args);
            return Ok(done);
        }
    }

    /// Reads a `*<n>` header. `Some(())` when the header was consumed (an empty array is consumed
    /// and forgotten), `None` when it is not complete yet.
    fn start_array(&mut self, buf: &mut BytesMut) -> Result<Option<()>, ProtocolError> {
        let Some(header) = header_number(buf, ProtocolError::TooBigMultibulkCount)? else {
            return Ok(None);
        };
        let count = header.value.ok_or(ProtocolError::InvalidMultibulkLength)?;
        buf.advance(header.len);
        if count <= 0 {
            return Ok(Some(()));
        }
        let count = usize::try_from(count).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
        if count > self.limits.max_array_len {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        // The declared count is untrusted: reserve a little and let the vector grow as
        // arguments actually arrive.
        self.partial = Some(PartialCommand {
            remaining: count,
            args: Vec::with_capacity(count.min(16)),
            wire_len: header.len,
        });
        Ok(Some(()))
    }

    /// Reads one inline command line (`PING\r\n`, `SUBSCRIBE a b\n`). Arguments are separated by
    /// ASCII whitespace; unlike Redis, quotes are not interpreted.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let window = &buf[..buf.len().min(self.limits.max_inline_len)];
        let Some(newline) = window.iter().position(|&b| b == b'\n') else {
            if buf.len() >= self.limits.max_inline_len {
                return Err(ProtocolError::TooBigInline);
            }
            return Ok(None);
        };
        let line = buf.split_to(newline + 1).freeze();
        let text = line.slice(..newline);
        let text = text.strip_suffix(b"\r").unwrap_or(&text);
        let args = text
            .split(u8::is_ascii_whitespace)
            .filter(|word| !word.is_empty())
            .map(|word| line.slice_ref(word))
            .collect();
        Ok(Some(args))
    }
}

/// One decoded bulk string and the wire bytes it took.
struct Bulk {
    data: Bytes,
    wire_len: usize,
}

/// Takes the next `$<n>\r\n<bytes>\r\n` out of `buf`, or `None` if it is not all there yet.
/// `command_so_far` is the wire size of the command's earlier parts, for the command bound.
fn next_bulk(
    limits: &Limits,
    command_so_far: usize,
    buf: &mut BytesMut,
) -> Result<Option<Bulk>, ProtocolError> {
    match buf.first() {
        None => return Ok(None),
        Some(b'$') => {}
        Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
    }
    let Some(header) = header_number(buf, ProtocolError::TooBigBulkCount)? else {
        return Ok(None);
    };
    let header_len = header.len;
    let len = header
        .value
        .and_then(|len| usize::try_from(len).ok())
        .filter(|&len| len <= limits.max_bulk_len)
        .ok_or(ProtocolError::InvalidBulkLength)?;
    let wire_len = header_len + len + 2;
    if command_so_far + wire_len > limits.max_command_len {
        return Err(ProtocolError::CommandTooLarge);
    }
    if buf.len() < wire_len {
        // The length is known and within bounds: make room once instead of growing the buffer
        // read by read.
        buf.reserve(wire_len - buf.len());
        return Ok(None);
    }
    if &buf[header_len + len..wire_len] != b"\r\n" {
        return Err(ProtocolError::UnterminatedBulk);
    }
    buf.advance(header_len);
    let data = buf.split_to(len).freeze();
    buf.advance(2);
    Ok(Some(Bulk { data, wire_len }))
}

/// A complete `*<n>\r\n` or `$<n>\r\n` header line.
struct Header {
    /// The number, or `None` if the line is not one.
    value: Option<i64>,
    /// The line's length including CRLF.
    len: usize,
}

/// Reads the header line at the start of `buf`: `None` while the line is incomplete. A line
/// longer than [`MAX_HEADER_LINE`] is `too_long`.
fn header_number(buf: &[u8], too_long: ProtocolError) -> Result<Option<Header>, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_HEADER_LINE)];
    let Some(cr) = window.windows(2).position(|pair| pair == b"\r\n") else {
        if buf.len() >= MAX_HEADER_LINE {
            return Err(too_long);
        }
        return Ok(None);
    };
    Ok(Some(Header {
        value: parse_integer(&buf[1..cr]),
        len: cr + 2,
    }))
}

/// Parses a decimal integer as Redis does (`string2ll`): an optional `-`, then digits without
/// leading zeros (`0` alone is fine), nothing else, within `i64`. Redis reads the lengths in
/// headers and integer arguments (`SELECT 3`, `HELLO 2`) this way, so `*01` and `SELECT +1` are
/// errors there and must be here.
pub(crate) fn parse_integer(word: &[u8]) -> Option<i64> {
    if word == b"0" {
        return Some(0);
    }
    let (negative, digits) = match word.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, word),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(digit - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(digit)?
        } else {
            value.checked_add(digit)?
        };
    }
    Some(value)
}

/// A reply: RESP2, and the two RESP3 types a connection that said `HELLO 3` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+OK`: a status line.
    Simple(String),
    /// `-ERR message`: the first word is the error code Redis clients match on.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$5\r\nhello`: binary-safe bytes.
    Bulk(Bytes),
    /// `$-1`: the nil bulk string.
    Null,
    /// `*-1`: the nil array (what Sentinel answers for an unknown master).
    NullArray,
    /// `*<n>` followed by `n` frames.
    Array(Vec<Frame>),
    /// RESP3 `><n>` followed by `n` frames: an out-of-band push (a Pub/Sub message, or a
    /// subscription's confirmation) on a connection that said `HELLO 3`.
    Push(Vec<Frame>),
    /// RESP3 `%<n>` followed by `n` key and value frames (what `HELLO 3` answers).
    Map(Vec<(Frame, Frame)>),
}

impl Frame {
    /// `+OK`.
    pub fn ok() -> Frame {
        Frame::Simple("OK".to_owned())
    }

    /// An error reply; `message` starts with the error code (`ERR ...`, `NOAUTH ...`).
    pub fn error(message: impl Into<String>) -> Frame {
        Frame::Error(message.into())
    }

    /// A bulk string copied from `data`.
    pub fn bulk(data: impl AsRef<[u8]>) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(data.as_ref()))
    }

    /// Appends the wire form to `out`.
    ///
    /// Status and error lines cannot carry CR or LF, so those are written as spaces, as Redis
    /// does when an error message quotes client input.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Simple(text) => line(out, b'+', text),
            Frame::Error(text) => line(out, b'-', text),
            Frame::Integer(n) => header(out, b':', *n),
            Frame::Bulk(data) => {
                header(out, b'$', data.len() as i64);
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Frame::Array(items) | Frame::Push(items) => {
                let kind = if matches!(self, Frame::Push(_)) {
                    b'>'
                } else {
                    b'*'
                };
                header(out, kind, items.len() as i64);
                for item in items {
                    item.encode(out);
                }
            }
            Frame::Map(pairs) => {
                header(out, b'%', pairs.len() as i64);
                for (key, value) in pairs {
                    key.encode(out);
                    value.encode(out);
                }
            }
        }
    }

    /// The wire form as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

fn line(out: &mut BytesMut, kind: u8, text: &str) {
    out.extend_from_slice(&[kind]);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut BytesMut, kind: u8, n: i64) {
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> CommandDecoder {
        CommandDecoder::new(Limits::default())
    }

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    /// Decodes everything in `input` at once.
    fn decode_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut decoder = decoder();
        let mut buf = BytesMut::from(input);
        let mut commands = Vec::new();
        while let Some(command) = decoder.decode(&mut buf)? {
            commands.push(command);
        }
        Ok(commands)
    }

    #[test]
    fn decodes_an_array_of_bulk_strings() {
        let commands = decode_all(b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$5\r\nhello\r\n").unwrap();
        assert_eq!(commands, vec![args(&["PUBLISH", "ch", "hello"])]);
    }

    #[test]
    fn bulk_strings_are_binary_safe() {
        let commands = decode_all(b"*2\r\n$4\r\nECHO\r\n$4\r\n\r\n\0\xff\r\n").unwrap();
        assert_eq!(commands[0][1].as_ref(), b"\r\n\0\xff");
    }

    #[test]
    fn empty_bulk_string_is_an_empty_argument() {
        let commands = decode_all(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n").unwrap();
        assert_eq!(commands, vec![args(&["ECHO", ""])]);
    }

    #[test]
    fn pipelined_commands_come_out_one_per_call_in_order() {
        let mut decoder = decoder();
        let mut buf =
            BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\nQUIT\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(args(&["PING"])));
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(args(&["ECHO", "x"]))
        );
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(args(&["QUIT"])));
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_command_split_at_every_byte_decodes_the_same() {
        let wire = b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$10\r\nbbbbbbbbbb\r\n*1\r\n$4\r\nPING\r\n";
        let mut decoder = decoder();
        let mut buf = BytesMut::new();
        let mut commands = Vec::new();
        for &byte in wire {
            buf.extend_from_slice(&[byte]);
            while let Some(command) = decoder.decode(&mut buf).unwrap() {
                commands.push(command);
            }
        }
        assert_eq!(
            commands,
            vec![args(&["SUBSCRIBE", "a", "bbbbbbbbbb"]), args(&["PING"])]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn completed_arguments_leave_the_buffer_before_the_command_completes() {
        let mut decoder = decoder();
        let mut buf = BytesMut::from(&b"*2\r\n$4\r\nECHO\r\n$5\r\nhel"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"$5\r\nhel", "the header and ECHO were taken");
        buf.extend_from_slice(b"lo\r\n");
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(args(&["ECHO", "hello"]))
        );
    }

    #[test]
    fn empty_and_nil_arrays_are_skipped() {
        let commands = decode_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(commands, vec![args(&["PING"])]);
    }

    #[test]
    fn inline_commands_split_on_whitespace_with_or_without_cr() {
        let commands = decode_all(b"PING\r\nSUBSCRIBE  a\tb\n\r\n\nECHO x\r\n").unwrap();
        assert_eq!(
            commands,
            vec![
                args(&["PING"]),
                args(&["SUBSCRIBE", "a", "b"]),
                args(&["ECHO", "x"])
            ]
        );
    }

    #[test]
    fn an_incomplete_inline_line_waits_for_more() {
        let mut decoder = decoder();
        let mut buf = BytesMut::from(&b"PIN"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"G\r\n");
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(args(&["PING"])));
    }

    #[test]
    fn incomplete_headers_wait_for_more() {
        for partial in [
            &b"*"[..],
            b"*2",
            b"*2\r",
            b"*2\r\n$",
            b"*2\r\n$4",
            b"*2\r\n$4\r",
            b"*2\r\n$4\r\nECHO",
            b"*2\r\n$4\r\nECHO\r",
        ] {
            assert_eq!(
                decode_all(partial).unwrap(),
                Vec::<Vec<Bytes>>::new(),
                "{partial:?}"
            );
        }
    }

    #[test]
    fn a_non_numeric_array_length_is_rejected() {
        for wire in [
            &b"*abc\r\n"[..],
            b"*\r\n",
            b"*1x\r\n",
            b"*+1\r\n",
            b"*-\r\n",
            b"*01\r\n",
            b"*-0\r\n",
        ] {
            assert_eq!(
                decode_all(wire),
                Err(ProtocolError::InvalidMultibulkLength),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn an_array_longer_than_the_limit_is_rejected_before_buffering() {
        assert_eq!(
            decode_all(b"*1048577\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode_all(b"*99999999999999999999\r\n"),
            Err(ProtocolError::InvalidMultibulkLength),
            "overflowing i64"
        );
    }

    #[test]
    fn negative_and_non_numeric_bulk_lengths_are_rejected() {
        for wire in [
            &b"*1\r\n$-1\r\n"[..],
            b"*1\r\n$-5\r\n",
            b"*1\r\n$x\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$4 \r\n",
            b"*1\r\n$04\r\n",
        ] {
            assert_eq!(
                decode_all(wire),
                Err(ProtocolError::InvalidBulkLength),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn a_huge_bulk_length_is_rejected_without_reserving_it() {
        let mut decoder = decoder();
        let mut buf = BytesMut::from(&b"*1\r\n$8388609\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert!(
            buf.capacity() < 1024,
            "nothing was reserved for the declared length"
        );
        assert_eq!(
            decode_all(b"*1\r\n$9223372036854775807\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn a_bulk_at_the_limit_is_accepted() {
        let limits = Limits {
            max_bulk_len: 4,
            ..Limits::default()
        };
        let mut decoder = CommandDecoder::new(limits);
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*1\r\n$5\r\nHELLO\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(args(&["PING"])));
        assert_eq!(
            decoder.decode(&mut buf),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn endless_header_lines_are_rejected() {
        let digits = vec![b'1'; MAX_HEADER_LINE];
        let mut array = b"*".to_vec();
        array.extend_from_slice(&digits);
        assert_eq!(decode_all(&array), Err(ProtocolError::TooBigMultibulkCount));
        let mut bulk = b"*1\r\n$".to_vec();
        bulk.extend_from_slice(&digits);
        assert_eq!(decode_all(&bulk), Err(ProtocolError::TooBigBulkCount));
    }

    #[test]
    fn an_array_element_that_is_not_a_bulk_string_is_rejected() {
        assert_eq!(
            decode_all(b"*1\r\n:1\r\n"),
            Err(ProtocolError::ExpectedBulk(b':'))
        );
        assert_eq!(
            ProtocolError::ExpectedBulk(b':').to_string(),
            "expected '$', got ':'"
        );
    }

    #[test]
    fn a_bulk_without_its_crlf_is_rejected() {
        assert_eq!(
            decode_all(b"*1\r\n$4\r\nPINGxx"),
            Err(ProtocolError::UnterminatedBulk)
        );
    }

    #[test]
    fn an_inline_line_longer_than_the_limit_is_rejected() {
        let limits = Limits {
            max_inline_len: 8,
            ..Limits::default()
        };
        let mut decoder = CommandDecoder::new(limits);
        let mut buf = BytesMut::from(&b"PING 1234567"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(ProtocolError::TooBigInline));
        let mut decoder = CommandDecoder::new(limits);
        let mut buf = BytesMut::from(&b"PING 12\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(args(&["PING", "12"]))
        );
    }

    #[test]
    fn a_command_larger_than_the_limit_is_rejected_before_buffering() {
        let limits = Limits {
            max_command_len: 40,
            ..Limits::default()
        };
        let mut decoder = CommandDecoder::new(limits);
        // 4 + 10 (PUBLISH) + 8 (ch) = 22 bytes so far; a 20-byte payload takes 27 more.
        let mut buf = BytesMut::from(&b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$20\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(ProtocolError::CommandTooLarge)
        );
    }

    #[test]
    fn arbitrary_garbage_never_panics() {
        // A deterministic sweep: every prefix of a few hostile inputs, and a pseudo-random
        // byte soup biased towards protocol characters.
        let hostile: [&[u8]; 6] = [
            b"*2\r\n$3\r\nGET\r\n$-2147483648\r\n",
            b"*-9223372036854775808\r\n",
            b"$5\r\nhello\r\n",
            b"*1\r\n*1\r\n$1\r\nx\r\n",
            b"\r\n\r\n\r\n*",
            b"*3\r\n$1\r\na\r\n$1\r\nb",
        ];
        for input in hostile {
            for end in 0..=input.len() {
                let _ = decode_all(&input[..end]);
            }
        }
        let alphabet = b"*$:+-\r\n0123456789abc \t";
        let mut state: u32 = 0x2545_f491;
        for _ in 0..2_000 {
            let mut soup = Vec::new();
            for _ in 0..(state % 48) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                soup.push(alphabet[state as usize % alphabet.len()]);
            }
            let _ = decode_all(&soup);
        }
    }

    #[test]
    fn integers_parse_like_redis_string2ll() {
        for (text, value) in [
            ("0", Some(0)),
            ("15", Some(15)),
            ("-1", Some(-1)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("01", None),
            ("-0", None),
            ("+1", None),
            (" 1", None),
            ("1x", None),
            ("", None),
            ("-", None),
        ] {
            assert_eq!(parse_integer(text.as_bytes()), value, "{text:?}");
        }
    }

    #[test]
    fn frames_encode_as_resp2() {
        let reply = Frame::Array(vec![
            Frame::bulk("message"),
            Frame::bulk("ch"),
            Frame::Bulk(Bytes::from_static(b"hi")),
        ]);
        assert_eq!(
            &reply.to_bytes()[..],
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
        );
        assert_eq!(&Frame::ok().to_bytes()[..], b"+OK\r\n");
        assert_eq!(&Frame::Integer(-3).to_bytes()[..], b":-3\r\n");
        assert_eq!(&Frame::Null.to_bytes()[..], b"$-1\r\n");
        assert_eq!(&Frame::NullArray.to_bytes()[..], b"*-1\r\n");
        assert_eq!(&Frame::Array(vec![]).to_bytes()[..], b"*0\r\n");
    }

    #[test]
    fn resp3_pushes_and_maps_encode() {
        let push = Frame::Push(vec![
            Frame::bulk("smessage"),
            Frame::bulk("ch"),
            Frame::bulk("hi"),
        ]);
        assert_eq!(
            &push.to_bytes()[..],
            b">3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
        );
        let map = Frame::Map(vec![(Frame::bulk("proto"), Frame::Integer(3))]);
        assert_eq!(&map.to_bytes()[..], b"%1\r\n$5\r\nproto\r\n:3\r\n");
    }

    #[test]
    fn error_lines_cannot_be_split_by_client_text() {
        let reply = Frame::error("ERR unknown command 'a\r\n+OK'");
        assert_eq!(&reply.to_bytes()[..], b"-ERR unknown command 'a  +OK'\r\n");
    }
}
