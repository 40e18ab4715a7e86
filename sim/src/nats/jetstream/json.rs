//! JSON the way nats-server (Go's `encoding/json`) reads and writes it, and the API's error
//! values.
//!
//! Reading: a request body is an object whose keys match field names case-insensitively,
//! unknown keys are ignored, `null` leaves a field at its zero value, and a value of the wrong
//! type fails the whole request (the server then answers "invalid JSON"). [`Request`] gives
//! exactly that over a parsed `serde_json` value.
//!
//! Writing: Go escapes `<`, `>` and `&` (so `hubbus.>` travels as `hubbus.\u003e`), and writes
//! times as RFC 3339 with trailing zeros of the fraction dropped. [`to_go_json`] and
//! [`go_time`] do the same, so replies compare byte for byte with a real server's.

use std::io;

use bytes::Bytes;
use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use serde_json::{Map, Value};

/// Nanoseconds since the Unix epoch at simulated time zero: 2023-01-01T00:00:00Z. Timestamps
/// the engine reports (stream and consumer creation, message times in ack subjects) are this
/// plus the simulated elapsed time.
pub const EPOCH_UNIX_NANOS: i128 = 1_672_531_200 * 1_000_000_000;

/// An error as the JetStream API reports it: `{"code":404,"err_code":10059,"description":...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// The HTTP-like status.
    pub code: u16,
    /// JetStream's own error code.
    pub err_code: u32,
    /// What went wrong.
    pub description: String,
}

impl ApiError {
    /// An error with `code`, `err_code` and `description`.
    pub(crate) fn new(code: u16, err_code: u32, description: impl Into<String>) -> Self {
        ApiError {
            code,
            err_code,
            description: description.into(),
        }
    }

    pub(crate) fn invalid_json() -> Self {
        Self::new(400, 10025, "invalid JSON")
    }
    pub(crate) fn not_empty_request() -> Self {
        Self::new(400, 10038, "expected an empty request payload")
    }
    pub(crate) fn stream_not_found() -> Self {
        Self::new(404, 10059, "stream not found")
    }
    pub(crate) fn consumer_not_found() -> Self {
        Self::new(404, 10014, "consumer not found")
    }
    pub(crate) fn stream_mismatch() -> Self {
        Self::new(400, 10056, "stream name in subject does not match request")
    }
    pub(crate) fn stream_name_exists() -> Self {
        Self::new(
            400,
            10058,
            "stream name already in use with a different configuration",
        )
    }
    pub(crate) fn subjects_overlap() -> Self {
        Self::new(400, 10065, "subjects overlap with an existing stream")
    }
    pub(crate) fn stream_invalid_config(reason: &str) -> Self {
        Self::new(500, 10052, reason)
    }
    pub(crate) fn replicas_not_supported() -> Self {
        Self::new(
            500,
            10074,
            "replicas > 1 not supported in non-clustered mode",
        )
    }
    pub(crate) fn replicas_negative() -> Self {
        Self::new(400, 10133, "replicas count cannot be negative")
    }
    pub(crate) fn max_consumers() -> Self {
        Self::new(400, 10026, "maximum consumers limit reached")
    }
    pub(crate) fn consumer_create(reason: &str) -> Self {
        Self::new(500, 10012, reason)
    }
    pub(crate) fn stream_update(reason: &str) -> Self {
        Self::new(500, 10069, reason)
    }
    pub(crate) fn store_failed(reason: &str) -> Self {
        Self::new(503, 10077, reason)
    }
    pub(crate) fn message_too_large() -> Self {
        Self::new(400, 10054, "message size exceeds maximum allowed")
    }
    pub(crate) fn stream_sealed() -> Self {
        Self::new(400, 10109, "invalid operation on sealed stream")
    }
}

/// Serialises `value` as Go's `encoding/json` would.
pub(crate) fn to_go_json<T: Serialize>(value: &T) -> Bytes {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Every value serialised here is a plain struct of strings, numbers and maps: it cannot
    // fail, and an empty reply would show up in every test at once.
    if value.serialize(&mut serializer).is_err() {
        out.clear();
    }
    Bytes::from(out)
}

/// A compact formatter with Go's escapes.
struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (index, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..index])?;
            writer.write_all(escape.as_bytes())?;
            start = index + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        char_escape: CharEscape,
    ) -> io::Result<()> {
        let escaped: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::Backspace => b"\\u0008",
            CharEscape::FormFeed => b"\\u000c",
            CharEscape::Solidus => b"/",
            CharEscape::AsciiControl(byte) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let bytes = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ];
                return writer.write_all(&bytes);
            }
        };
        writer.write_all(escaped)
    }
}

/// A time as Go's `time.Time` marshals it (UTC): RFC 3339 with the fraction's trailing zeros
/// dropped; `None` is Go's zero time.
pub(crate) fn go_time(unix_nanos: Option<i128>) -> String {
    let Some(nanos) = unix_nanos else {
        return "0001-01-01T00:00:00Z".to_owned();
    };
    let seconds = nanos.div_euclid(1_000_000_000);
    let fraction = nanos.rem_euclid(1_000_000_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    if fraction > 0 {
        let digits = format!("{fraction:09}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// The proleptic Gregorian date of `days` since 1970-01-01.
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

/// A Go duration string (`"1.5s"`, `"300ms"`, `"1h2m"`) in nanoseconds, as
/// `time.ParseDuration` reads it.
pub(crate) fn parse_go_duration(text: &str) -> Option<i64> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += value * scale;
    }
    if total > i64::MAX as f64 {
        return None;
    }
    let nanos = total as i64;
    Some(if negative { -nanos } else { nanos })
}

/// Why a request body could not be read: the server answers "invalid JSON".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) String);

/// A request body as Go reads it into a struct.
#[derive(Debug, Clone, Default)]
pub(crate) struct Request {
    fields: Map<String, Value>,
}

impl Request {
    /// Parses `payload` as a JSON object (`null` reads as an empty one).
    pub(crate) fn parse(payload: &[u8]) -> Result<Self, Invalid> {
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| Invalid(go_error_text(&e)))?;
        Self::from_value(value)
    }

    fn from_value(value: Value) -> Result<Self, Invalid> {
        match value {
            Value::Null => Ok(Request::default()),
            Value::Object(fields) => Ok(Request { fields }),
            other => Err(Invalid(format!(
                "json: cannot unmarshal {} into Go value of type struct",
                kind(&other)
            ))),
        }
    }

    /// The value under `key`: an exact match first, else one equal ignoring case (Go's rule).
    fn get(&self, key: &str) -> Option<&Value> {
        let value = self.fields.get(key).or_else(|| {
            self.fields
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(key))
                .map(|(_, value)| value)
        })?;
        (!value.is_null()).then_some(value)
    }

    fn mismatch(key: &str, value: &Value, wanted: &str) -> Invalid {
        Invalid(format!(
            "json: cannot unmarshal {} into Go struct field .{key} of type {wanted}",
            kind(value)
        ))
    }

    /// A string field; `""` when absent.
    pub(crate) fn string(&self, key: &str) -> Result<String, Invalid> {
        match self.get(key) {
            None => Ok(String::new()),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(Self::mismatch(key, other, "string")),
        }
    }

    /// A string field holding an enumeration; `None` when absent.
    pub(crate) fn word(&self, key: &str) -> Result<Option<String>, Invalid> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(Self::mismatch(key, other, "string")),
        }
    }

    /// A signed integer field (Go `int`, `int64`, `time.Duration`); 0 when absent.
    pub(crate) fn int(&self, key: &str) -> Result<i64, Invalid> {
        match self.get(key) {
            None => Ok(0),
            Some(value) => value
                .as_i64()
                .ok_or_else(|| Self::mismatch(key, value, "int64")),
        }
    }

    /// An unsigned integer field; 0 when absent.
    pub(crate) fn uint(&self, key: &str) -> Result<u64, Invalid> {
        match self.get(key) {
            None => Ok(0),
            Some(value) => value
                .as_u64()
                .ok_or_else(|| Self::mismatch(key, value, "uint64")),
        }
    }

    /// A boolean field; `false` when absent.
    pub(crate) fn boolean(&self, key: &str) -> Result<bool, Invalid> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => Err(Self::mismatch(key, other, "bool")),
        }
    }

    /// A list of strings; empty when absent.
    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>, Invalid> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.clone()),
                    Value::Null => Ok(String::new()),
                    other => Err(Self::mismatch(key, other, "string")),
                })
                .collect(),
            Some(other) => Err(Self::mismatch(key, other, "[]string")),
        }
    }

    /// A list of durations; empty when absent.
    pub(crate) fn ints(&self, key: &str) -> Result<Vec<i64>, Invalid> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_i64()
                        .ok_or_else(|| Self::mismatch(key, item, "time.Duration"))
                })
                .collect(),
            Some(other) => Err(Self::mismatch(key, other, "[]time.Duration")),
        }
    }

    /// A nested object; empty when absent.
    pub(crate) fn object(&self, key: &str) -> Result<Request, Invalid> {
        match self.get(key) {
            None => Ok(Request::default()),
            Some(value @ Value::Object(_)) => Self::from_value(value.clone()),
            Some(other) => Err(Self::mismatch(key, other, "struct")),
        }
    }

    /// A field kept as it came (mirror, sources, placement: echoed, not interpreted).
    pub(crate) fn raw(&self, key: &str) -> Option<Value> {
        self.get(key).cloned()
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A parse error in words close to Go's (the bus never reads them).
fn go_error_text(error: &serde_json::Error) -> String {
    if error.is_eof() {
        "unexpected end of JSON input".to_owned()
    } else {
        format!("invalid character looking for beginning of value ({error})")
    }
}

/// Whether a request body counts as empty: nothing, `{}`, or an object without keys.
/// For `skip_serializing_if`: Go's `omitempty` leaves out a zero number.
pub(crate) fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// For `skip_serializing_if`: Go's `omitempty` leaves out a zero number.
pub(crate) fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

/// For `skip_serializing_if`: Go's `omitempty` leaves out `false`.
pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

/// Reads the enumeration `key` (`default` when absent), or fails the request like Go's
/// `UnmarshalJSON` does for a value it does not know.
pub(crate) fn choice(
    request: &Request,
    key: &str,
    allowed: &[&str],
    default: &str,
) -> Result<String, ApiError> {
    match request.word(key).map_err(|_| ApiError::invalid_json())? {
        None => Ok(default.to_owned()),
        Some(word) if allowed.contains(&word.as_str()) => Ok(word),
        Some(_) => Err(ApiError::invalid_json()),
    }
}

pub(crate) fn is_empty_request(payload: &[u8]) -> bool {
    if payload.is_empty() || payload == b"{}" {
        return true;
    }
    matches!(serde_json::from_slice::<Value>(payload), Ok(Value::Object(map)) if map.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_escapes_like_go() {
        let json = to_go_json(&serde_json::json!({"subjects": ["a.>"], "x": "<&>"}));
        assert_eq!(
            &json[..],
            br#"{"subjects":["a.\u003e"],"x":"\u003c\u0026\u003e"}"#
        );
    }

    #[test]
    fn times_print_like_go() {
        assert_eq!(go_time(None), "0001-01-01T00:00:00Z");
        assert_eq!(go_time(Some(EPOCH_UNIX_NANOS)), "2023-01-01T00:00:00Z");
        assert_eq!(
            go_time(Some(EPOCH_UNIX_NANOS + 1_540_408_620)),
            "2023-01-01T00:00:01.54040862Z"
        );
        assert_eq!(
            go_time(Some(1_796_064_538_528_606_563)),
            "2026-11-30T18:48:58.528606563Z"
        );
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_go_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("1h2m"), Some(3_720_000_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("x"), None);
    }

    #[test]
    fn requests_read_like_go_structs() {
        let request =
            Request::parse(br#"{"Name":"S","max_age":5,"sealed":null,"extra":[1]}"#).unwrap();
        assert_eq!(request.string("name").unwrap(), "S");
        assert_eq!(request.int("max_age").unwrap(), 5);
        assert!(!request.boolean("sealed").unwrap());
        assert!(request.int("name").is_err());
        assert!(Request::parse(b"null").is_ok());
        assert!(Request::parse(b"[]").is_err());
        assert!(Request::parse(b"{").is_err());
        assert!(
            Request::parse(br#"{"max_age":1.5}"#)
                .unwrap()
                .int("max_age")
                .is_err()
        );
        assert!(is_empty_request(b""));
        assert!(is_empty_request(b" { } "));
        assert!(!is_empty_request(b"x"));
    }
}
