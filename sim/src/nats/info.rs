//! The `INFO` line the server greets every client with, and sends again when something a
//! client must know changes (lame duck mode, the maximum payload).
//!
//! The fields and their order are nats-server 2.9's, with its `omitempty` rules: `auth_required`,
//! `jetstream` and `ldm` appear only when true. What a real server reports about its build
//! (`git_commit`, `go`) is fixed, and `server_id` names the run of the host's software, so a
//! client sees a new id after a restart, as it would from a restarted nats-server.

use bytes::Bytes;
use serde::Serialize;

/// The version reported; the one the bus is tested against.
pub(super) const VERSION: &str = "2.9.10";

/// What a run of the server says about itself; the per-client and changing fields are added
/// by [`ServerInfo::line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServerInfo {
    /// Unique per run of the host's software.
    pub(super) server_id: String,
    /// The configured name.
    pub(super) server_name: String,
    /// The port it listens on.
    pub(super) port: u16,
    /// Whether `CONNECT` must carry credentials.
    pub(super) auth_required: bool,
    /// Whether JetStream is enabled.
    pub(super) jetstream: bool,
    /// The configured maximum payload (the control may override it).
    pub(super) max_payload: u32,
}

#[derive(Serialize)]
struct Wire<'a> {
    server_id: &'a str,
    server_name: &'a str,
    version: &'static str,
    proto: u8,
    go: &'static str,
    host: &'static str,
    port: u16,
    headers: bool,
    #[serde(skip_serializing_if = "is_false")]
    auth_required: bool,
    max_payload: u32,
    #[serde(skip_serializing_if = "is_false")]
    jetstream: bool,
    client_id: u64,
    client_ip: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    ldm: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

impl ServerInfo {
    /// `INFO {...} ` for one client, as nats-server writes it (with the space before CRLF).
    pub(super) fn line(
        &self,
        client_id: u64,
        client_ip: &str,
        max_payload: u32,
        lame_duck: bool,
    ) -> Bytes {
        let wire = Wire {
            server_id: &self.server_id,
            server_name: &self.server_name,
            version: VERSION,
            proto: 1,
            go: "go1.19.8",
            host: "0.0.0.0",
            port: self.port,
            headers: true,
            auth_required: self.auth_required,
            max_payload,
            jetstream: self.jetstream,
            client_id,
            client_ip,
            ldm: lame_duck,
        };
        // Serialising a struct of strings, numbers and booleans cannot fail.
        let json = serde_json::to_string(&wire).unwrap_or_default();
        Bytes::from(format!("INFO {json} \r\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_has_nats_server_fields_in_order_and_omits_false_flags() {
        let mut info = ServerInfo {
            server_id: "NFAKE1".into(),
            server_name: "nats".into(),
            port: 4222,
            auth_required: false,
            jetstream: false,
            max_payload: 1024,
        };
        assert_eq!(
            info.line(3, "192.168.0.2", 1024, false),
            "INFO {\"server_id\":\"NFAKE1\",\"server_name\":\"nats\",\"version\":\"2.9.10\",\
             \"proto\":1,\"go\":\"go1.19.8\",\"host\":\"0.0.0.0\",\"port\":4222,\
             \"headers\":true,\"max_payload\":1024,\"client_id\":3,\
             \"client_ip\":\"192.168.0.2\"} \r\n"
        );
        info.auth_required = true;
        info.jetstream = true;
        let line = info.line(3, "192.168.0.2", 1024, true);
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains("\"auth_required\":true,\"max_payload\":1024,\"jetstream\":true"));
        assert!(text.ends_with("\"ldm\":true} \r\n"), "{text}");
    }
}
