//! The NATS client protocol as bytes: a [`Parser`] for what a server sends (`INFO`, `MSG`,
//! `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`) and encoders for what a client sends (`CONNECT`,
//! `PUB`, `HPUB`, `SUB`, `UNSUB`, `PING`, `PONG`), plus the header block both directions share.
//!
//! It does no I/O, so the same code reads a real socket, turmoil's simulated one, and a fuzzer's
//! bytes. Everything it reads comes from the network and is treated as hostile: every length is
//! checked against a limit before anything is allocated for it, a control line may be at most
//! [`MAX_CONTROL_LINE`] bytes, a message at most the parser's message limit, and anything
//! malformed is a typed [`ProtocolError`], never a panic. Bytes may arrive split anywhere; the
//! parser keeps what it has not used yet and returns each operation once it is complete.
//!
//! Two kinds of malformed input are kept apart on purpose. A broken *frame* (an unknown
//! operation, a bad length, a payload not followed by CRLF) means client and server no longer
//! agree where operations start: the connection must be dropped, and the parser stays failed.
//! A broken *header block* inside a well-framed `HMSG` concerns one message only, written by
//! whoever published it: [`HeaderBlock::parse`] reports it, and the caller can drop that message
//! and keep the connection.
//!
//! [`ServerOp::encode`] writes server operations too, for tests, fuzzing and fake servers.
//!
//! ```
//! use hubbus::backend::nats::wire::protocol::{Parser, ServerOp};
//!
//! let mut parser = Parser::new();
//! parser.push(b"MSG hubbus.room1 7 5\r\nhel");
//! assert_eq!(parser.next_op(), Ok(None), "the payload is not complete yet");
//! parser.push(b"lo\r\nPING\r\n");
//! match parser.next_op() {
//!     Ok(Some(ServerOp::Msg(msg))) => {
//!         assert_eq!((msg.subject.as_str(), msg.sid), ("hubbus.room1", 7));
//!         assert_eq!(msg.payload.as_ref(), b"hello");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(parser.next_op(), Ok(Some(ServerOp::Ping)));
//! assert_eq!(parser.next_op(), Ok(None));
//! ```

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The longest control line (an operation without its payload) the parser accepts, in bytes.
///
/// nats-server itself limits client lines to 4 KiB by default; an `INFO` can be longer (it
/// lists the cluster's URLs), so the client side allows more, but never an unbounded amount.
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

/// The largest message (header block and payload) [`Parser::new`] accepts, in bytes: nats-server
/// refuses a `max_payload` above 64 MiB, so no server sends more.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The first line of every header block.
const VERSION_LINE: &str = "NATS/1.0";

/// What went wrong reading or writing the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A control line did not end within [`MAX_CONTROL_LINE`] bytes.
    #[error("a control line longer than {limit} bytes")]
    ControlLineTooLong {
        /// The limit.
        limit: usize,
    },
    /// The line does not start with an operation this client knows.
    #[error("unknown operation {0:?}")]
    UnknownOperation(String),
    /// A known operation with arguments that do not fit it.
    #[error("malformed {op}: {reason}")]
    Malformed {
        /// The operation (`MSG`, `HMSG`, ...).
        op: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A message larger than the parser accepts.
    #[error("a message of {size} bytes, over the limit of {limit}")]
    MessageTooLarge {
        /// The size the server announced.
        size: usize,
        /// The parser's limit.
        limit: usize,
    },
    /// A message's payload was not followed by CRLF: the stream is out of step.
    #[error("a message's payload is not followed by CRLF")]
    MissingTerminator,
    /// An `INFO` whose JSON cannot be read.
    #[error("unreadable INFO: {0}")]
    Info(String),
    /// A header block that is not `NATS/1.0[ status[ description]]`, header lines and a blank
    /// line.
    #[error("malformed header block: {0}")]
    Header(String),
    /// A subject, header or status that cannot be written as it is (it would break the
    /// protocol's framing).
    #[error("{field} cannot be written: {reason}")]
    Unwritable {
        /// What was refused (`subject`, `header name`, ...).
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl ProtocolError {
    fn malformed(op: &'static str, reason: impl Into<String>) -> Self {
        ProtocolError::Malformed {
            op,
            reason: reason.into(),
        }
    }
}

/// What a server says about itself in `INFO`: the fields this client uses, defaults for the
/// ones a server leaves out; unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    /// The server's unique id.
    pub server_id: String,
    /// The server's configured name.
    pub server_name: String,
    /// The server's version.
    pub version: String,
    /// The protocol version (1 supports `INFO` updates).
    pub proto: i64,
    /// The largest message (headers and payload) the server accepts.
    pub max_payload: usize,
    /// The server understands `HPUB` / `HMSG`.
    pub headers: bool,
    /// The server wants credentials in `CONNECT`.
    pub auth_required: bool,
    /// The server speaks TLS only.
    pub tls_required: bool,
    /// JetStream is enabled.
    pub jetstream: bool,
    /// Other servers of the cluster a client may connect to.
    pub connect_urls: Vec<String>,
    /// The server is in lame duck mode: it will shut down soon.
    #[serde(rename = "ldm")]
    pub lame_duck_mode: bool,
}

/// One message as a server delivers it (`MSG` or `HMSG`).
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    /// The subject it was published to.
    pub subject: String,
    /// The client's id of the subscription it matched.
    pub sid: u64,
    /// The reply subject, if the publisher set one.
    pub reply: Option<String>,
    /// The raw header block of an `HMSG` (read it with [`HeaderBlock::parse`]); `None` for `MSG`.
    pub headers: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Msg")
            .field("subject", &self.subject)
            .field("sid", &self.sid)
            .field("reply", &self.reply)
            .field(
                "headers",
                &self.headers.as_ref().map(|h| String::from_utf8_lossy(h)),
            )
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// One operation a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    /// `INFO {json}`: on connect, and again when something changes.
    Info(Box<ServerInfo>),
    /// `MSG` / `HMSG`: a message for one of the client's subscriptions.
    Msg(Msg),
    /// `PING`: the client must answer `PONG`.
    Ping,
    /// `PONG`: the answer to the client's oldest unanswered `PING`.
    Pong,
    /// `+OK`: an acknowledgement (only in verbose mode).
    Ok,
    /// `-ERR '<text>'`: the server refused something; the text without its quotes.
    Err(String),
}

impl ServerOp {
    /// Writes the operation as a server would (for tests, fuzzing and fake servers).
    ///
    /// Subjects are written as they are; a subject or error text containing whitespace or line
    /// breaks produces bytes the parser reads differently (or refuses).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            ServerOp::Info(info) => {
                out.put_slice(b"INFO ");
                out.put_slice(&to_json(info.as_ref()));
                out.put_slice(b"\r\n");
            }
            ServerOp::Msg(msg) => {
                let op = if msg.headers.is_some() { "HMSG" } else { "MSG" };
                out.put_slice(op.as_bytes());
                out.put_u8(b' ');
                out.put_slice(msg.subject.as_bytes());
                out.put_slice(format!(" {}", msg.sid).as_bytes());
                if let Some(reply) = &msg.reply {
                    out.put_u8(b' ');
                    out.put_slice(reply.as_bytes());
                }
                put_lengths(out, msg.headers.as_deref(), &msg.payload);
                if let Some(headers) = &msg.headers {
                    out.put_slice(headers);
                }
                out.put_slice(&msg.payload);
                out.put_slice(b"\r\n");
            }
            ServerOp::Ping => out.put_slice(b"PING\r\n"),
            ServerOp::Pong => out.put_slice(b"PONG\r\n"),
            ServerOp::Ok => out.put_slice(b"+OK\r\n"),
            ServerOp::Err(text) => {
                out.put_slice(b"-ERR '");
                out.put_slice(text.as_bytes());
                out.put_slice(b"'\r\n");
            }
        }
    }
}

/// ` <#header bytes> <#total bytes>\r\n` with headers, ` <#bytes>\r\n` without.
fn put_lengths(out: &mut BytesMut, headers: Option<&[u8]>, payload: &[u8]) {
    let line = match headers {
        Some(headers) => format!(" {} {}\r\n", headers.len(), headers.len() + payload.len()),
        None => format!(" {}\r\n", payload.len()),
    };
    out.put_slice(line.as_bytes());
}

/// JSON for `INFO` and `CONNECT`.
fn to_json(value: &impl Serialize) -> Vec<u8> {
    // Both types are plain structs of strings, numbers, booleans and lists: serializing them
    // cannot fail.
    serde_json::to_vec(value).expect("a struct of plain fields serializes")
}

/// The header block of a message: an optional status (`NATS/1.0 404 No Messages`) and
/// headers in order (a name may repeat).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderBlock {
    /// The status code of a status message (`503` no responders, `404`, `408`, `409`, ...).
    pub status: Option<u16>,
    /// The status description (`No Messages`), if any.
    pub description: Option<String>,
    /// `(name, value)` pairs, in order. Names are case-sensitive; values are trimmed.
    pub headers: Vec<(String, String)>,
}

impl HeaderBlock {
    /// Reads a header block: `NATS/1.0[ <status>[ <description>]]\r\n`, then `Name: value\r\n`
    /// lines, then an empty line. A line that starts with whitespace continues the value before
    /// it. Anything else is a [`ProtocolError::Header`].
    pub fn parse(block: &[u8]) -> Result<Self, ProtocolError> {
        let bad = |reason: &str| ProtocolError::Header(reason.to_owned());
        let text = std::str::from_utf8(block).map_err(|_| bad("not UTF-8"))?;
        let body = text
            .strip_suffix("\r\n\r\n")
            .ok_or_else(|| bad("does not end with an empty line"))?;
        let mut lines = body.split("\r\n").peekable();
        let first = lines.next().unwrap_or_default();
        let rest = first
            .strip_prefix(VERSION_LINE)
            .ok_or_else(|| bad("does not start with NATS/1.0"))?;
        let mut block = HeaderBlock::default();
        if !rest.is_empty() {
            if !rest.starts_with([' ', '\t']) {
                return Err(bad("no space after NATS/1.0"));
            }
            let rest = rest.trim();
            let (code, description) = match rest.split_once([' ', '\t']) {
                Some((code, description)) => (code, description.trim()),
                None => (rest, ""),
            };
            if !code.is_empty() {
                if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("the status is not three digits"));
                }
                block.status = code.parse().ok();
            }
            if !description.is_empty() {
                block.description = Some(description.to_owned());
            }
        }
        while let Some(line) = lines.next() {
            if line.is_empty() {
                return Err(bad("an empty line inside the headers"));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad("a header line without a colon"))?;
            check_header_name(name).map_err(|_| bad("a header name that is not a token"))?;
            let mut value = value.trim_start().to_owned();
            while let Some(folded) = lines.next_if(|next| next.starts_with([' ', '\t'])) {
                value.push_str(folded);
            }
            value.truncate(value.trim_end().len());
            block.headers.push((name.to_owned(), value));
        }
        Ok(block)
    }

    /// Writes the block; refuses names, values, statuses and descriptions that would break it.
    ///
    /// Values and the description are written as given, and read back trimmed.
    pub fn encode(&self) -> Result<Bytes, ProtocolError> {
        let mut out = BytesMut::with_capacity(self.encoded_len_hint());
        out.put_slice(VERSION_LINE.as_bytes());
        match (self.status, &self.description) {
            (Some(status), description) => {
                if !(100..=999).contains(&status) {
                    return Err(ProtocolError::Unwritable {
                        field: "status",
                        reason: "must have three digits",
                    });
                }
                out.put_slice(format!(" {status}").as_bytes());
                if let Some(description) = description {
                    check_header_value(description, "status description")?;
                    out.put_u8(b' ');
                    out.put_slice(description.as_bytes());
                }
            }
            (None, Some(_)) => {
                return Err(ProtocolError::Unwritable {
                    field: "status description",
                    reason: "needs a status",
                });
            }
            (None, None) => {}
        }
        out.put_slice(b"\r\n");
        for (name, value) in &self.headers {
            check_header_name(name)?;
            check_header_value(value, "header value")?;
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
        Ok(out.freeze())
    }

    fn encoded_len_hint(&self) -> usize {
        let headers: usize = (self.headers.iter())
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        VERSION_LINE.len() + 4 + 64 + headers
    }
}

/// A header name is a token: printable ASCII without `:` or whitespace.
fn check_header_name(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Err(ProtocolError::Unwritable {
            field: "header name",
            reason: "is empty",
        });
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(ProtocolError::Unwritable {
            field: "header name",
            reason: "must be printable ASCII without ':' or whitespace",
        });
    }
    Ok(())
}

/// A header value may hold anything but line breaks.
fn check_header_value(value: &str, field: &'static str) -> Result<(), ProtocolError> {
    if value.contains(['\r', '\n']) {
        return Err(ProtocolError::Unwritable {
            field,
            reason: "contains a line break",
        });
    }
    Ok(())
}

/// Checks that `subject` can be written in a protocol line: not empty, and no whitespace or
/// control characters (which would split or end the line). Wildcards are the server's business.
pub fn check_subject(subject: &str) -> Result<(), ProtocolError> {
    if subject.is_empty() {
        return Err(ProtocolError::Unwritable {
            field: "subject",
            reason: "is empty",
        });
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ProtocolError::Unwritable {
            field: "subject",
            reason: "contains whitespace or a control character",
        });
    }
    Ok(())
}

/// What a client says about itself in `CONNECT`. Its `Debug` output leaves the credentials out.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectInfo {
    /// Ask for `+OK` after every operation (this client never does).
    pub verbose: bool,
    /// Ask for strict subject checks.
    pub pedantic: bool,
    /// The client wants TLS.
    pub tls_required: bool,
    /// The client's language.
    pub lang: String,
    /// The client's version.
    pub version: String,
    /// The protocol version: 1 receives `INFO` updates.
    pub protocol: u8,
    /// Receive the messages this connection publishes.
    pub echo: bool,
    /// The client understands `HMSG`.
    pub headers: bool,
    /// Answer a request nobody subscribes to with a `503` status message.
    pub no_responders: bool,
    /// A name shown in the server's monitoring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// User name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    /// Authentication token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
}

impl fmt::Debug for ConnectInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectInfo")
            .field("verbose", &self.verbose)
            .field("lang", &self.lang)
            .field("version", &self.version)
            .field("protocol", &self.protocol)
            .field("echo", &self.echo)
            .field("headers", &self.headers)
            .field("no_responders", &self.no_responders)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "***"))
            .field("auth_token", &self.auth_token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// One operation a client sends. Subjects must have passed [`check_subject`] and header blocks
/// come from [`HeaderBlock::encode`]; the encoder does not check them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// `CONNECT {json}`.
    Connect(&'a ConnectInfo),
    /// `PUB` (or `HPUB` with a header block).
    Pub {
        /// The subject.
        subject: &'a str,
        /// The reply subject.
        reply: Option<&'a str>,
        /// An encoded header block.
        headers: Option<&'a [u8]>,
        /// The payload.
        payload: &'a [u8],
    },
    /// `SUB <subject> <sid>`.
    Sub {
        /// The subject (wildcards allowed).
        subject: &'a str,
        /// The client's id for the subscription.
        sid: u64,
    },
    /// `UNSUB <sid>`.
    Unsub {
        /// The subscription to end.
        sid: u64,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
}

impl ClientOp<'_> {
    /// Appends the operation's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match *self {
            ClientOp::Connect(info) => {
                out.put_slice(b"CONNECT ");
                out.put_slice(&to_json(info));
                out.put_slice(b"\r\n");
            }
            ClientOp::Pub {
                subject,
                reply,
                headers,
                payload,
            } => {
                out.reserve(subject.len() + payload.len() + headers.map_or(0, <[u8]>::len) + 48);
                out.put_slice(if headers.is_some() {
                    &b"HPUB "[..]
                } else {
                    &b"PUB "[..]
                });
                out.put_slice(subject.as_bytes());
                if let Some(reply) = reply {
                    out.put_u8(b' ');
                    out.put_slice(reply.as_bytes());
                }
                put_lengths(out, headers, payload);
                if let Some(headers) = headers {
                    out.put_slice(headers);
                }
                out.put_slice(payload);
                out.put_slice(b"\r\n");
            }
            ClientOp::Sub { subject, sid } => {
                out.put_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
            }
            ClientOp::Unsub { sid } => out.put_slice(format!("UNSUB {sid}\r\n").as_bytes()),
            ClientOp::Ping => out.put_slice(b"PING\r\n"),
            ClientOp::Pong => out.put_slice(b"PONG\r\n"),
        }
    }
}

/// A message whose control line was read and whose bytes are still arriving.
#[derive(Debug)]
struct Pending {
    subject: String,
    sid: u64,
    reply: Option<String>,
    /// The header block's length, for an `HMSG`.
    header_len: Option<usize>,
    /// Header block and payload together.
    total: usize,
}

/// Reads server operations from bytes that arrive in pieces.
///
/// Feed it with [`Parser::push`] (or let the link read straight into its buffer), then call
/// [`Parser::next_op`] until it returns `Ok(None)`. After an error the stream is out of step:
/// the parser keeps returning that error, and the connection must be dropped.
#[derive(Debug)]
pub struct Parser {
    buf: BytesMut,
    /// The message being read, once its control line is.
    pending: Option<Pending>,
    /// How far `buf` was searched for CRLF without finding one, so a long line arriving in
    /// small pieces is not searched from its start every time.
    scanned: usize,
    max_message: usize,
    failed: Option<ProtocolError>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    /// A parser that accepts messages up to [`MAX_MESSAGE`] bytes.
    pub fn new() -> Self {
        Parser::with_max_message(MAX_MESSAGE)
    }

    /// A parser that accepts messages (header block and payload) up to `max_message` bytes.
    pub fn with_max_message(max_message: usize) -> Self {
        Parser {
            buf: BytesMut::new(),
            pending: None,
            scanned: 0,
            max_message,
            failed: None,
        }
    }

    /// Appends bytes that arrived. The parser holds at most one operation plus what was pushed
    /// since the last [`Parser::next_op`] that returned `Ok(None)`.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read the next bytes into, with room for at least `room` more.
    pub(crate) fn read_buffer(&mut self, room: usize) -> &mut BytesMut {
        self.buf.reserve(room);
        &mut self.buf
    }

    /// How many bytes are buffered and not yet returned as operations.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete operation, `Ok(None)` when more bytes are needed, or the error that
    /// put the stream out of step (returned again on every later call).
    pub fn next_op(&mut self) -> Result<Option<ServerOp>, ProtocolError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.step();
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            self.buf.clear();
            self.pending = None;
        }
        result
    }

    fn step(&mut self) -> Result<Option<ServerOp>, ProtocolError> {
        if self.pending.is_none() {
            let Some(line_len) = self.find_line_end()? else {
                return Ok(None);
            };
            let line = self.buf.split_to(line_len + 2);
            self.scanned = 0;
            let op = self.control_line(&line[..line_len])?;
            if op.is_some() {
                return Ok(op);
            }
        }
        self.payload()
    }

    /// The length of the first line in the buffer, once its CRLF arrived.
    fn find_line_end(&mut self) -> Result<Option<usize>, ProtocolError> {
        let from = self.scanned.saturating_sub(1);
        match self.buf[from..].windows(2).position(|pair| pair == b"\r\n") {
            Some(at) if from + at > MAX_CONTROL_LINE => Err(ProtocolError::ControlLineTooLong {
                limit: MAX_CONTROL_LINE,
            }),
            Some(at) => Ok(Some(from + at)),
            None if self.buf.len() > MAX_CONTROL_LINE + 1 => {
                Err(ProtocolError::ControlLineTooLong {
                    limit: MAX_CONTROL_LINE,
                })
            }
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    /// Reads one control line: returns the operation, or `None` after a `MSG` / `HMSG` line
    /// whose bytes follow (then `pending` is set).
    fn control_line(&mut self, line: &[u8]) -> Result<Option<ServerOp>, ProtocolError> {
        let start = line
            .iter()
            .position(|b| !is_blank(*b))
            .unwrap_or(line.len());
        let line = &line[start..];
        let name_len = line.iter().position(|b| is_blank(*b)).unwrap_or(line.len());
        let (name, rest) = line.split_at(name_len);
        let rest = trim_blanks(rest);
        let is = |op: &str| name.eq_ignore_ascii_case(op.as_bytes());
        if is("MSG") {
            self.message_line("MSG", rest, false)?;
            Ok(None)
        } else if is("HMSG") {
            self.message_line("HMSG", rest, true)?;
            Ok(None)
        } else if is("PING") {
            no_arguments("PING", rest).map(|()| Some(ServerOp::Ping))
        } else if is("PONG") {
            no_arguments("PONG", rest).map(|()| Some(ServerOp::Pong))
        } else if is("+OK") {
            no_arguments("+OK", rest).map(|()| Some(ServerOp::Ok))
        } else if is("-ERR") {
            let text = String::from_utf8_lossy(rest);
            let text = text.strip_prefix('\'').unwrap_or(&text);
            let text = text.strip_suffix('\'').unwrap_or(text);
            Ok(Some(ServerOp::Err(text.to_owned())))
        } else if is("INFO") {
            let info: ServerInfo =
                serde_json::from_slice(rest).map_err(|e| ProtocolError::Info(e.to_string()))?;
            Ok(Some(ServerOp::Info(Box::new(info))))
        } else {
            let shown: String = String::from_utf8_lossy(name).chars().take(16).collect();
            Err(ProtocolError::UnknownOperation(shown))
        }
    }

    /// `MSG <subject> <sid> [reply] <#bytes>` or
    /// `HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>`.
    fn message_line(
        &mut self,
        op: &'static str,
        args: &[u8],
        headers: bool,
    ) -> Result<(), ProtocolError> {
        let args = std::str::from_utf8(args)
            .map_err(|_| ProtocolError::malformed(op, "arguments are not UTF-8"))?;
        let args: Vec<&str> = args
            .split([' ', '\t'])
            .filter(|arg| !arg.is_empty())
            .take(6)
            .collect();
        let lengths = if headers { 2 } else { 1 };
        let (subject, sid, reply, lengths) = match args.len() - lengths.min(args.len()) {
            2 => (args[0], args[1], None, &args[2..]),
            3 => (args[0], args[1], Some(args[2]), &args[3..]),
            _ => return Err(ProtocolError::malformed(op, "wrong number of arguments")),
        };
        let number = |text: &str, what: &str| {
            text.parse::<usize>()
                .map_err(|_| ProtocolError::malformed(op, format!("{what} is not a number")))
        };
        let sid = sid
            .parse::<u64>()
            .map_err(|_| ProtocolError::malformed(op, "the sid is not a number"))?;
        let (header_len, total) = if headers {
            let header_len = number(lengths[0], "the header length")?;
            let total = number(lengths[1], "the total length")?;
            if header_len > total {
                return Err(ProtocolError::malformed(
                    op,
                    "the header length exceeds the total length",
                ));
            }
            (Some(header_len), total)
        } else {
            (None, number(lengths[0], "the length")?)
        };
        if total > self.max_message {
            return Err(ProtocolError::MessageTooLarge {
                size: total,
                limit: self.max_message,
            });
        }
        self.pending = Some(Pending {
            subject: subject.to_owned(),
            sid,
            reply: reply.map(str::to_owned),
            header_len,
            total,
        });
        Ok(())
    }

    /// The pending message, once its bytes and their CRLF have arrived.
    fn payload(&mut self) -> Result<Option<ServerOp>, ProtocolError> {
        let Some(pending) = &self.pending else {
            return Ok(None);
        };
        let total = pending.total;
        if self.buf.len() < total + 2 {
            return Ok(None);
        }
        if &self.buf[total..total + 2] != b"\r\n" {
            return Err(ProtocolError::MissingTerminator);
        }
        let Some(pending) = self.pending.take() else {
            return Ok(None);
        };
        let headers = pending
            .header_len
            .map(|len| self.buf.split_to(len).freeze());
        let payload = self
            .buf
            .split_to(total - pending.header_len.unwrap_or(0))
            .freeze();
        self.buf.advance(2);
        Ok(Some(ServerOp::Msg(Msg {
            subject: pending.subject,
            sid: pending.sid,
            reply: pending.reply,
            headers,
            payload,
        })))
    }
}

fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !is_blank(*b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_blank(*b))
        .map_or(start, |at| at + 1);
    &bytes[start..end.max(start)]
}

fn no_arguments(op: &'static str, rest: &[u8]) -> Result<(), ProtocolError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::malformed(op, "unexpected arguments"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation a server sends, as bytes, and what it must parse to.
    fn samples() -> Vec<(&'static [u8], ServerOp)> {
        let info = ServerInfo {
            server_id: "NABC".into(),
            version: "2.9.10".into(),
            proto: 1,
            max_payload: 1048576,
            headers: true,
            jetstream: true,
            ..ServerInfo::default()
        };
        vec![
            (
                b"INFO {\"server_id\":\"NABC\",\"version\":\"2.9.10\",\"proto\":1,\"go\":\"go1.19\",\
                  \"max_payload\":1048576,\"headers\":true,\"jetstream\":true,\"client_id\":7}\r\n",
                ServerOp::Info(Box::new(info)),
            ),
            (b"PING\r\n", ServerOp::Ping),
            (b"PONG\r\n", ServerOp::Pong),
            (b"+OK\r\n", ServerOp::Ok),
            (
                b"-ERR 'Authorization Violation'\r\n",
                ServerOp::Err("Authorization Violation".into()),
            ),
            (
                b"MSG hubbus.room1 7 5\r\nhello\r\n",
                ServerOp::Msg(Msg {
                    subject: "hubbus.room1".into(),
                    sid: 7,
                    reply: None,
                    headers: None,
                    payload: Bytes::from_static(b"hello"),
                }),
            ),
            (
                b"MSG a.b 1 _INBOX.x.1 0\r\n\r\n",
                ServerOp::Msg(Msg {
                    subject: "a.b".into(),
                    sid: 1,
                    reply: Some("_INBOX.x.1".into()),
                    headers: None,
                    payload: Bytes::new(),
                }),
            ),
            (
                b"HMSG _INBOX.x.2 3 16 16\r\nNATS/1.0 503\r\n\r\n\r\n",
                ServerOp::Msg(Msg {
                    subject: "_INBOX.x.2".into(),
                    sid: 3,
                    reply: None,
                    headers: Some(Bytes::from_static(b"NATS/1.0 503\r\n\r\n")),
                    payload: Bytes::new(),
                }),
            ),
            (
                b"HMSG hubbus_js.room1 4 $JS.ACK.S.C.1.2.3.4.0 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n",
                ServerOp::Msg(Msg {
                    subject: "hubbus_js.room1".into(),
                    sid: 4,
                    reply: Some("$JS.ACK.S.C.1.2.3.4.0".into()),
                    headers: Some(Bytes::from_static(b"NATS/1.0\r\nA: b\r\n\r\n")),
                    payload: Bytes::from_static(b"hi"),
                }),
            ),
        ]
    }

    fn parse_all(parser: &mut Parser) -> Result<Vec<ServerOp>, ProtocolError> {
        let mut ops = Vec::new();
        while let Some(op) = parser.next_op()? {
            ops.push(op);
        }
        Ok(ops)
    }

    #[test]
    fn every_server_operation_parses() {
        for (bytes, expected) in samples() {
            let mut parser = Parser::new();
            parser.push(bytes);
            assert_eq!(
                parse_all(&mut parser),
                Ok(vec![expected]),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(parser.buffered(), 0);
        }
    }

    #[test]
    fn a_stream_split_at_any_byte_parses_the_same() {
        let samples = samples();
        let stream: Vec<u8> = samples.iter().flat_map(|(b, _)| b.to_vec()).collect();
        let expected: Vec<ServerOp> = samples.into_iter().map(|(_, op)| op).collect();
        for cut in 0..=stream.len() {
            let mut parser = Parser::new();
            parser.push(&stream[..cut]);
            let mut ops = parse_all(&mut parser).unwrap();
            parser.push(&stream[cut..]);
            ops.extend(parse_all(&mut parser).unwrap());
            assert_eq!(ops, expected, "cut at {cut}");
        }
        // And one byte at a time.
        let mut parser = Parser::new();
        let mut ops = Vec::new();
        for byte in &stream {
            parser.push(std::slice::from_ref(byte));
            ops.extend(parse_all(&mut parser).unwrap());
        }
        assert_eq!(ops, expected);
    }

    #[test]
    fn operation_names_are_case_insensitive_and_blanks_are_flexible() {
        let mut parser = Parser::new();
        parser.push(b"ping\r\nPong\r\nmsg  a\t9   2\r\nok\r\n");
        let ops = parse_all(&mut parser).unwrap();
        assert_eq!(ops[..2], [ServerOp::Ping, ServerOp::Pong]);
        assert!(matches!(&ops[2], ServerOp::Msg(m) if m.sid == 9 && m.payload.as_ref() == b"ok"));
    }

    #[test]
    fn malformed_input_is_a_typed_error_that_sticks() {
        let cases: Vec<(&[u8], ProtocolError)> = vec![
            (
                b"HELLO\r\n",
                ProtocolError::UnknownOperation("HELLO".into()),
            ),
            (
                b"MSG a 1\r\n",
                ProtocolError::malformed("MSG", "wrong number of arguments"),
            ),
            (
                b"MSG a b c d e\r\n",
                ProtocolError::malformed("MSG", "wrong number of arguments"),
            ),
            (
                b"MSG a x 1\r\n",
                ProtocolError::malformed("MSG", "the sid is not a number"),
            ),
            (
                b"MSG a 1 -1\r\n",
                ProtocolError::malformed("MSG", "the length is not a number"),
            ),
            (
                b"MSG a 1 99999999999999999999999\r\n",
                ProtocolError::malformed("MSG", "the length is not a number"),
            ),
            (
                b"HMSG a 1 5 4\r\n",
                ProtocolError::malformed("HMSG", "the header length exceeds the total length"),
            ),
            (b"MSG a 1 2\r\nabcd", ProtocolError::MissingTerminator),
            (
                b"PING now\r\n",
                ProtocolError::malformed("PING", "unexpected arguments"),
            ),
            (
                b"MSG \xff 1 2\r\n",
                ProtocolError::malformed("MSG", "arguments are not UTF-8"),
            ),
            (
                b"MSG a 1 67108865\r\n",
                ProtocolError::MessageTooLarge {
                    size: MAX_MESSAGE + 1,
                    limit: MAX_MESSAGE,
                },
            ),
        ];
        for (bytes, expected) in cases {
            let mut parser = Parser::new();
            parser.push(bytes);
            assert_eq!(
                parser.next_op(),
                Err(expected.clone()),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            parser.push(b"PING\r\n");
            assert_eq!(parser.next_op(), Err(expected), "the error sticks");
        }
        let mut parser = Parser::new();
        parser.push(b"INFO {not json}\r\n");
        assert!(matches!(parser.next_op(), Err(ProtocolError::Info(_))));
    }

    #[test]
    fn a_control_line_may_be_as_long_as_the_limit_and_no_longer() {
        let longest = |extra: usize| {
            let mut line = b"-ERR ".to_vec();
            line.resize(MAX_CONTROL_LINE + extra, b'x');
            line
        };
        let mut parser = Parser::new();
        parser.push(&longest(0));
        assert_eq!(parser.next_op(), Ok(None));
        parser.push(b"\r\n");
        assert!(
            matches!(parser.next_op(), Ok(Some(ServerOp::Err(text))) if text.len() == MAX_CONTROL_LINE - 5)
        );

        let mut parser = Parser::new();
        parser.push(&longest(1));
        parser.push(b"\r");
        assert_eq!(
            parser.next_op(),
            Err(ProtocolError::ControlLineTooLong {
                limit: MAX_CONTROL_LINE
            })
        );
        assert_eq!(parser.buffered(), 0, "the buffer is released");

        let mut parser = Parser::new();
        parser.push(&longest(1));
        parser.push(b"\r\n");
        assert_eq!(
            parser.next_op(),
            Err(ProtocolError::ControlLineTooLong {
                limit: MAX_CONTROL_LINE
            })
        );
    }

    #[test]
    fn the_message_limit_is_the_parsers() {
        let mut parser = Parser::with_max_message(4);
        parser.push(b"MSG a 1 4\r\nabcd\r\nMSG a 1 5\r\n");
        assert!(matches!(parser.next_op(), Ok(Some(ServerOp::Msg(_)))));
        assert_eq!(
            parser.next_op(),
            Err(ProtocolError::MessageTooLarge { size: 5, limit: 4 })
        );
    }

    #[test]
    fn err_text_keeps_everything_but_its_quotes() {
        let mut parser = Parser::new();
        parser.push(b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n-ERR plain\r\n");
        assert_eq!(
            parse_all(&mut parser).unwrap(),
            [
                ServerOp::Err("Permissions Violation for Publish to \"x\"".into()),
                ServerOp::Err("plain".into())
            ]
        );
    }

    #[test]
    fn header_blocks_with_status_description_and_repeated_names() {
        let block = HeaderBlock::parse(
            b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\nA: x\r\nA:  y \r\n\r\n",
        )
        .unwrap();
        assert_eq!(block.status, Some(408));
        assert_eq!(block.description.as_deref(), Some("Request Timeout"));
        assert_eq!(
            block.headers,
            [
                ("Nats-Pending-Messages".to_owned(), "1".to_owned()),
                ("A".to_owned(), "x".to_owned()),
                ("A".to_owned(), "y".to_owned())
            ]
        );
        for (bytes, status, description) in [
            (&b"NATS/1.0 503\r\n\r\n"[..], Some(503), None),
            (
                b"NATS/1.0 404 No Messages\r\n\r\n",
                Some(404),
                Some("No Messages"),
            ),
            (
                b"NATS/1.0 409 Consumer Deleted\r\n\r\n",
                Some(409),
                Some("Consumer Deleted"),
            ),
            (b"NATS/1.0\r\n\r\n", None, None),
        ] {
            let block = HeaderBlock::parse(bytes).unwrap();
            assert_eq!(
                (block.status, block.description.as_deref()),
                (status, description)
            );
        }
        let folded = HeaderBlock::parse(b"NATS/1.0\r\nA: one\r\n two\r\n\r\n").unwrap();
        assert_eq!(folded.headers, [("A".to_owned(), "one two".to_owned())]);
    }

    #[test]
    fn malformed_header_blocks_are_typed_errors() {
        for bytes in [
            &b""[..],
            b"NATS/1.0\r\n",
            b"HTTP/1.1\r\n\r\n",
            b"NATS/1.0x\r\n\r\n",
            b"NATS/1.0 50\r\n\r\n",
            b"NATS/1.0 abc\r\n\r\n",
            b"NATS/1.0\r\nno colon\r\n\r\n",
            b"NATS/1.0\r\n: empty name\r\n\r\n",
            b"NATS/1.0\r\nA: b\r\n\r\nA: c\r\n\r\n",
            b"NATS/1.0\r\n\xff: b\r\n\r\n",
        ] {
            assert!(
                matches!(HeaderBlock::parse(bytes), Err(ProtocolError::Header(_))),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn header_blocks_refuse_what_would_break_them() {
        let with = |name: &str, value: &str| HeaderBlock {
            headers: vec![(name.to_owned(), value.to_owned())],
            ..HeaderBlock::default()
        };
        assert!(with("Nats-Msg-Id", "abc").encode().is_ok());
        for (name, value) in [("", "v"), ("a b", "v"), ("a:b", "v"), ("a", "x\r\ny")] {
            assert!(
                matches!(
                    with(name, value).encode(),
                    Err(ProtocolError::Unwritable { .. })
                ),
                "{name:?}: {value:?}"
            );
        }
        let status = |status, description: Option<&str>| HeaderBlock {
            status,
            description: description.map(str::to_owned),
            headers: Vec::new(),
        };
        assert_eq!(
            status(Some(404), Some("No Messages")).encode().unwrap(),
            Bytes::from_static(b"NATS/1.0 404 No Messages\r\n\r\n")
        );
        assert!(status(Some(42), None).encode().is_err());
        assert!(status(None, Some("orphan")).encode().is_err());
    }

    #[test]
    fn client_operations_are_written_as_the_protocol_says() {
        let mut out = BytesMut::new();
        let headers = HeaderBlock {
            headers: vec![("Nats-Msg-Id".into(), "abc".into())],
            ..HeaderBlock::default()
        }
        .encode()
        .unwrap();
        for op in [
            ClientOp::Pub {
                subject: "a.b",
                reply: None,
                headers: None,
                payload: b"hi",
            },
            ClientOp::Pub {
                subject: "a.b",
                reply: Some("_INBOX.x.1"),
                headers: Some(&headers),
                payload: b"hi",
            },
            ClientOp::Sub {
                subject: "a.*",
                sid: 3,
            },
            ClientOp::Unsub { sid: 3 },
            ClientOp::Ping,
            ClientOp::Pong,
        ] {
            op.encode(&mut out);
        }
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            "PUB a.b 2\r\nhi\r\n\
             HPUB a.b _INBOX.x.1 30 32\r\nNATS/1.0\r\nNats-Msg-Id: abc\r\n\r\nhi\r\n\
             SUB a.* 3\r\nUNSUB 3\r\nPING\r\nPONG\r\n"
        );
    }

    #[test]
    fn connect_carries_the_options_and_debug_hides_the_credentials() {
        let info = ConnectInfo {
            lang: "rust".into(),
            version: "0.1.0".into(),
            protocol: 1,
            echo: true,
            headers: true,
            no_responders: true,
            user: Some("hub".into()),
            pass: Some("s3cret".into()),
            auth_token: Some("t0ken".into()),
            ..ConnectInfo::default()
        };
        let mut out = BytesMut::new();
        ClientOp::Connect(&info).encode(&mut out);
        let line = String::from_utf8(out.to_vec()).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(line.strip_prefix("CONNECT ").unwrap().trim_end()).unwrap();
        for (key, value) in [
            ("verbose", serde_json::json!(false)),
            ("headers", serde_json::json!(true)),
            ("no_responders", serde_json::json!(true)),
            ("echo", serde_json::json!(true)),
            ("protocol", serde_json::json!(1)),
            ("user", serde_json::json!("hub")),
            ("pass", serde_json::json!("s3cret")),
            ("auth_token", serde_json::json!("t0ken")),
        ] {
            assert_eq!(json[key], value, "{key}");
        }
        assert!(json.get("name").is_none(), "unset options stay out");
        let shown = format!("{info:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }

    #[test]
    fn subjects_with_blanks_or_line_breaks_cannot_be_written() {
        assert!(check_subject("hubbus.room-1.>").is_ok());
        assert!(check_subject("_INBOX.abc.*").is_ok());
        for bad in ["", "a b", "a\tb", "a\r\nPUB x 1", "a\u{7f}"] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_operations_encode_to_what_parses_back() {
        for (_, op) in samples() {
            let mut out = BytesMut::new();
            op.encode(&mut out);
            let mut parser = Parser::new();
            parser.push(&out);
            assert_eq!(parse_all(&mut parser).unwrap(), [op]);
        }
    }
}
