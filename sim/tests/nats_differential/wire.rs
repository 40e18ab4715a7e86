//! The client side of the NATS protocol, as far as the differential driver needs it: the
//! server's operations parsed from bytes, and what the driver records of them, normalised so
//! that what legitimately differs between any two servers (ids, times, names the server picks)
//! does not count.

use std::fmt;

use serde_json::Value;

/// One operation a server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    Info(String),
    Msg(RawMsg),
    Ping,
    Pong,
    Ok,
    Err(String),
    /// Bytes that are not a server operation.
    Garbled(String),
}

/// A `MSG` or `HMSG` as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMsg {
    pub subject: String,
    pub sid: String,
    pub reply: Option<String>,
    /// The header block of an `HMSG`, with its status line.
    pub headers: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl RawMsg {
    /// The status code of a status message (`NATS/1.0 404 No Messages`).
    pub fn status(&self) -> Option<u16> {
        let headers = self.headers.as_deref()?;
        let first = headers.split(|&b| b == b'\r').next()?;
        let text = std::str::from_utf8(first).ok()?;
        text.strip_prefix("NATS/1.0 ")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }
}

pub enum Parsed {
    Done(ServerOp, usize),
    Incomplete,
}

/// The server operation at the front of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(newline) = buf.windows(2).position(|pair| pair == b"\r\n") else {
        return Parsed::Incomplete;
    };
    let line = String::from_utf8_lossy(&buf[..newline]).into_owned();
    let after = newline + 2;
    let (verb, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    let op = match verb {
        "PING" => ServerOp::Ping,
        "PONG" => ServerOp::Pong,
        "+OK" => ServerOp::Ok,
        "-ERR" => ServerOp::Err(rest.to_owned()),
        "INFO" => ServerOp::Info(rest.to_owned()),
        "MSG" | "HMSG" => {
            let args: Vec<&str> = rest.split(' ').filter(|arg| !arg.is_empty()).collect();
            let headers = verb == "HMSG";
            let sizes = if headers { 2 } else { 1 };
            if args.len() < 2 + sizes || args.len() > 3 + sizes {
                return Parsed::Done(ServerOp::Garbled(line), after);
            }
            let numbers: Option<Vec<usize>> = args[args.len() - sizes..]
                .iter()
                .map(|n| n.parse().ok())
                .collect();
            let Some(numbers) = numbers else {
                return Parsed::Done(ServerOp::Garbled(line), after);
            };
            let total = *numbers.last().expect("one size at least");
            let header_len = if headers { numbers[0] } else { 0 };
            if header_len > total {
                return Parsed::Done(ServerOp::Garbled(line), after);
            }
            let end = after + total + 2;
            if buf.len() < end {
                return Parsed::Incomplete;
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Parsed::Done(ServerOp::Garbled(line), end);
            }
            let body = &buf[after..after + total];
            let msg = RawMsg {
                subject: args[0].to_owned(),
                sid: args[1].to_owned(),
                reply: (args.len() == 3 + sizes).then(|| args[2].to_owned()),
                headers: headers.then(|| body[..header_len].to_vec()),
                payload: body[header_len..].to_vec(),
            };
            return Parsed::Done(ServerOp::Msg(msg), end);
        }
        _ => ServerOp::Garbled(line),
    };
    Parsed::Done(op, after)
}

/// A message as the transcript keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Msg {
    pub subject: String,
    pub sid: String,
    /// An ack subject with its timestamp replaced by `<ts>`.
    pub reply: Option<String>,
    /// The queue group of the subscription it came through, as the driver subscribed it.
    pub queue: Option<String>,
    pub headers: Option<String>,
    /// Text, with JSON normalised (see [`normalise_json`]).
    pub payload: String,
}

/// What the driver saw in one place of the transcript.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    /// The greeting, normalised.
    Info(String),
    Ok,
    Err(String),
    Msg(Msg),
    /// The server closed the connection.
    Closed,
    /// The `PONG` that ends an op did not come within the deadline.
    Timeout,
    /// This many of the replies the op implies never arrived.
    Missing(usize),
    Garbled(String),
    ConnectFailed,
    /// An ack op found no delivery to settle.
    NothingToAck,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Info(json) => write!(f, "INFO {json}"),
            Seen::Ok => write!(f, "+OK"),
            Seen::Err(text) => write!(f, "-ERR {text}"),
            Seen::Msg(msg) => {
                write!(f, "MSG {} {}", msg.subject, msg.sid)?;
                if let Some(queue) = &msg.queue {
                    write!(f, " (queue {queue})")?;
                }
                if let Some(reply) = &msg.reply {
                    write!(f, " reply {reply}")?;
                }
                if let Some(headers) = &msg.headers {
                    write!(f, " headers \"{headers}\"")?;
                }
                write!(f, " payload {}", msg.payload)
            }
            Seen::Closed => write!(f, "<closed>"),
            Seen::Timeout => write!(f, "<no PONG>"),
            Seen::Missing(n) => write!(f, "<{n} replies never arrived>"),
            Seen::Garbled(text) => write!(f, "<not NATS: {text}>"),
            Seen::ConnectFailed => write!(f, "<connect failed>"),
            Seen::NothingToAck => write!(f, "<nothing delivered to ack>"),
        }
    }
}

/// Bytes as text, with what is not printable ASCII escaped (`\r`, `\x00`).
pub fn show(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| match byte {
            b' '..=b'~' => char::from(byte).to_string(),
            _ => byte.escape_ascii().to_string(),
        })
        .collect()
}

/// An ack subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.
/// <pending>`) with its time and its pending count replaced. nats-server counts what is
/// pending in the consumer's own goroutine, which can lag a publish whose PubAck already
/// came, so that count is timing; the bus reads only the delivery count and the sequences.
pub fn normalise_reply(reply: &str) -> String {
    let tokens: Vec<&str> = reply.split('.').collect();
    if tokens.len() == 9 && tokens[0] == "$JS" && tokens[1] == "ACK" {
        let mut tokens = tokens;
        tokens[7] = "<ts>";
        tokens[8] = "<pending>";
        return tokens.join(".");
    }
    reply.to_owned()
}

/// The record of a message: JSON payloads normalised, everything else shown as text.
pub fn record(msg: &RawMsg, queue: Option<String>, ours: &dyn Fn(&str) -> bool) -> Msg {
    let payload = match serde_json::from_slice::<Value>(&msg.payload) {
        Ok(mut value @ Value::Object(_)) => {
            normalise_json(&mut value, ours);
            canonical(&value)
        }
        _ => format!("\"{}\"", show(&msg.payload)),
    };
    Msg {
        subject: msg.subject.clone(),
        sid: msg.sid.clone(),
        reply: msg.reply.as_deref().map(normalise_reply),
        queue,
        headers: msg.headers.as_deref().map(show),
        payload,
    }
}

/// Replaces what differs between any two servers in a JetStream reply: times (`created`, the
/// state's first and last times, a consumer's last activity), the server that leads the
/// stream, the names a server makes up for consumers created without one (`ours` tells the
/// names the sequence gave), and a consumer's `num_pending`, which nats-server 2.9 keeps as a
/// running count updated from the consumer's goroutine, so that it can be one off for a
/// moment (the bus does not read it; `num_ack_pending` and the sequences stay compared).
pub fn normalise_json(value: &mut Value, ours: &dyn Fn(&str) -> bool) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match (key.as_str(), &*value) {
                    (
                        "created" | "ts" | "first_ts" | "last_ts" | "last_active",
                        Value::String(_),
                    ) => {
                        *value = Value::String("<time>".into());
                    }
                    ("leader", Value::String(_)) => *value = Value::String("<server>".into()),
                    ("num_pending", Value::Number(_)) => *value = Value::String("<n>".into()),
                    ("name", Value::String(name)) if !ours(name) => {
                        *value = Value::String("<made up>".into());
                    }
                    _ => normalise_json(value, ours),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                normalise_json(item, ours);
            }
        }
        _ => {}
    }
}

/// JSON with the keys of every object sorted: the same document, whatever order a server
/// writes its fields in (the bus reads fields by name).
pub fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(key, value)| format!("{}:{}", Value::String(key.clone()), canonical(value)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// The greeting with what names a server, a run or a client replaced.
pub fn normalise_info(json: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(json) else {
        return format!("<not JSON: {json}>");
    };
    if let Value::Object(map) = &mut value {
        for key in [
            "server_id",
            "server_name",
            "version",
            "go",
            "git_commit",
            "host",
            "port",
            "client_id",
            "client_ip",
        ] {
            if let Some(field) = map.get_mut(key) {
                *field = Value::String(format!("<{key}>"));
            }
        }
    }
    canonical(&value)
}
