//! The commands every Redis-speaking server answers the same way, run for one connection:
//! `PING`, `ECHO`, `QUIT`, `AUTH`, `HELLO`, `CLIENT`, `SUBSCRIBE`, `UNSUBSCRIBE`, with the
//! authentication and subscribed-mode gates in front of them. Anything else goes to the
//! server's [`Dialect`], and what that does not know either gets Redis's "unknown command".
//!
//! Replies copy Redis's texts because clients match on them: redis-rs retries `AUTH` without a
//! user name only if the error says "wrong number of arguments for 'auth' command", and counts
//! `UNSUBSCRIBE` confirmations to know when the command is complete.

use bytes::Bytes;

use super::registry::ConnId;
use super::{Auth, Dialect, PubSub, Server, wrong_arity};
use crate::resp::Frame;

/// The version `HELLO` reports; recent enough that clients enable every RESP2 feature.
const SERVER_VERSION: &str = "7.2.4";

/// Commands a connection in subscribed mode may still send (RESP2 rules).
const SUBSCRIBED_MODE_COMMANDS: [&[u8]; 9] = [
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PSUBSCRIBE",
    b"PUNSUBSCRIBE",
    b"SSUBSCRIBE",
    b"SUNSUBSCRIBE",
    b"PING",
    b"QUIT",
    b"RESET",
];

/// What one command produced.
pub(super) struct Response {
    /// The replies, in order (one per channel for `SUBSCRIBE a b`).
    pub(super) frames: Vec<Frame>,
    /// Whether the connection closes after the replies are written.
    pub(super) close: bool,
}

impl From<Frame> for Response {
    fn from(frame: Frame) -> Self {
        Response {
            frames: vec![frame],
            close: false,
        }
    }
}

/// The per-connection state: authentication and the client's name. Subscriptions live in the
/// [`PubSub`], where publishes find them.
pub(super) struct Session<'a, D> {
    server: &'a Server<D>,
    id: ConnId,
    authenticated: bool,
    name: Option<Bytes>,
}

impl<'a, D: Dialect> Session<'a, D> {
    pub(super) fn new(server: &'a Server<D>, id: ConnId) -> Self {
        Session {
            server,
            id,
            authenticated: server.config.auth == Auth::Open,
            name: None,
        }
    }

    fn pubsub(&self) -> &PubSub {
        &self.server.pubsub
    }

    /// Runs one command (`command[0]` is its name, in any case).
    pub(super) fn execute(&mut self, command: &[Bytes]) -> Response {
        let Some(first) = command.first() else {
            return Response {
                frames: Vec::new(),
                close: false,
            };
        };
        let name = first.to_ascii_uppercase();
        let args = &command[1..];
        if !self.authenticated && !matches!(name.as_slice(), b"AUTH" | b"HELLO" | b"QUIT") {
            return Frame::error("NOAUTH Authentication required.").into();
        }
        if self.pubsub().subscription_count(self.id) > 0
            && !SUBSCRIBED_MODE_COMMANDS.contains(&name.as_slice())
        {
            return Frame::error(format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
                 RESET are allowed in this context",
                String::from_utf8_lossy(first).to_lowercase()
            ))
            .into();
        }
        match name.as_slice() {
            b"QUIT" => Response {
                frames: vec![Frame::ok()],
                close: true,
            },
            b"PING" => self.ping(args).into(),
            b"ECHO" => match args {
                [message] => Frame::Bulk(message.clone()).into(),
                _ => wrong_arity("echo").into(),
            },
            b"AUTH" => self.auth(args).into(),
            b"HELLO" => self.hello(args).into(),
            b"CLIENT" => self.client(args).into(),
            b"SUBSCRIBE" => self.subscribe(args),
            b"UNSUBSCRIBE" => self.unsubscribe(args),
            _ => self
                .server
                .dialect
                .execute(self.pubsub(), command)
                .unwrap_or_else(|| unknown_command(command))
                .into(),
        }
    }

    fn ping(&self, args: &[Bytes]) -> Frame {
        let message = match args {
            [] => None,
            [message] => Some(message.clone()),
            _ => return wrong_arity("ping"),
        };
        if self.pubsub().subscription_count(self.id) > 0 {
            // RESP2 subscribed mode: replies must look like pushes, so PONG becomes an array.
            return Frame::Array(vec![
                Frame::bulk("pong"),
                Frame::Bulk(message.unwrap_or_default()),
            ]);
        }
        match message {
            None => Frame::Simple("PONG".to_owned()),
            Some(message) => Frame::Bulk(message),
        }
    }

    fn auth(&mut self, args: &[Bytes]) -> Frame {
        let (user, password) = match args {
            [password] => (&b"default"[..], password),
            [user, password] => (user.as_ref(), password),
            _ => return wrong_arity("auth"),
        };
        if args.len() == 1 && self.server.config.auth == Auth::Open {
            return Frame::error(
                "ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?",
            );
        }
        self.authenticate(user, password)
    }

    fn authenticate(&mut self, user: &[u8], password: &[u8]) -> Frame {
        if self.server.config.auth.accepts(user, password) {
            self.authenticated = true;
            Frame::ok()
        } else {
            Frame::error("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`. Only RESP2 is spoken.
    fn hello(&mut self, args: &[Bytes]) -> Frame {
        let (version, mut options) = match args.split_first() {
            None => (2, &[][..]),
            Some((version, options)) => match std::str::from_utf8(version)
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
            {
                Some(version) => (version, options),
                None => {
                    return Frame::error("ERR Protocol version is not an integer or out of range");
                }
            },
        };
        if version != 2 {
            return Frame::error("NOPROTO sorry, this protocol version is not supported");
        }
        let mut credentials = None;
        let mut name = None;
        while let Some((option, rest)) = options.split_first() {
            match (option.to_ascii_uppercase().as_slice(), rest) {
                (b"AUTH", [user, password, rest @ ..]) => {
                    credentials = Some((user, password));
                    options = rest;
                }
                (b"SETNAME", [new_name, rest @ ..]) => {
                    name = Some(new_name);
                    options = rest;
                }
                _ => {
                    return Frame::error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(option)
                    ));
                }
            }
        }
        if let Some((user, password)) = credentials {
            let reply = self.authenticate(user, password);
            if matches!(reply, Frame::Error(_)) {
                return reply;
            }
        }
        if !self.authenticated {
            return Frame::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time",
            );
        }
        if let Some(name) = name {
            self.name = Some(name.clone());
        }
        let (mode, role) = self.server.dialect.hello_identity();
        Frame::Array(vec![
            Frame::bulk("server"),
            Frame::bulk("redis"),
            Frame::bulk("version"),
            Frame::bulk(SERVER_VERSION),
            Frame::bulk("proto"),
            Frame::Integer(2),
            Frame::bulk("id"),
            Frame::Integer(self.id as i64),
            Frame::bulk("mode"),
            Frame::bulk(mode),
            Frame::bulk("role"),
            Frame::bulk(role),
            Frame::bulk("modules"),
            Frame::Array(Vec::new()),
        ])
    }

    /// The `CLIENT` subcommands clients send on connect: `SETINFO` (redis-rs sends
    /// `LIB-NAME` and `LIB-VER` and ignores the answer), `SETNAME`, `GETNAME` and `ID`.
    fn client(&mut self, args: &[Bytes]) -> Frame {
        let Some((sub, rest)) = args.split_first() else {
            return wrong_arity("client");
        };
        let arity = |expected: usize, name: &str| {
            (rest.len() != expected).then(|| wrong_arity(&format!("client|{name}")))
        };
        match sub.to_ascii_uppercase().as_slice() {
            b"SETINFO" => {
                if let Some(error) = arity(2, "setinfo") {
                    return error;
                }
                match rest[0].to_ascii_uppercase().as_slice() {
                    b"LIB-NAME" | b"LIB-VER" => Frame::ok(),
                    _ => Frame::error(format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(&rest[0])
                    )),
                }
            }
            b"SETNAME" => {
                if let Some(error) = arity(1, "setname") {
                    return error;
                }
                let name = &rest[0];
                if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                    return Frame::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!name.is_empty()).then(|| name.clone());
                Frame::ok()
            }
            b"GETNAME" => arity(0, "getname")
                .unwrap_or_else(|| self.name.clone().map_or(Frame::Null, Frame::Bulk)),
            b"ID" => arity(0, "id").unwrap_or(Frame::Integer(self.id as i64)),
            _ => Frame::error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            )),
        }
    }

    fn subscribe(&mut self, channels: &[Bytes]) -> Response {
        if channels.is_empty() {
            return wrong_arity("subscribe").into();
        }
        let frames = channels
            .iter()
            .map(|channel| {
                let count = self.pubsub().subscribe(self.id, channel.clone());
                confirmation("subscribe", Frame::Bulk(channel.clone()), count)
            })
            .collect();
        Response {
            frames,
            close: false,
        }
    }

    /// `UNSUBSCRIBE [channel ...]`: one confirmation per channel; without arguments, one per
    /// subscribed channel, or a single one with a nil channel when there are none (what
    /// redis-rs counts on to know the command is complete).
    fn unsubscribe(&mut self, channels: &[Bytes]) -> Response {
        let channels = if channels.is_empty() {
            self.pubsub().channels_of(self.id)
        } else {
            channels.to_vec()
        };
        let frames = if channels.is_empty() {
            vec![confirmation("unsubscribe", Frame::Null, 0)]
        } else {
            channels
                .into_iter()
                .map(|channel| {
                    let count = self.pubsub().unsubscribe(self.id, &channel);
                    confirmation("unsubscribe", Frame::Bulk(channel), count)
                })
                .collect()
        };
        Response {
            frames,
            close: false,
        }
    }
}

/// `*3 <kind> <channel> :<count>`, the RESP2 answer to (UN)SUBSCRIBE, one per channel.
fn confirmation(kind: &str, channel: Frame, count: usize) -> Frame {
    Frame::Array(vec![
        Frame::bulk(kind),
        channel,
        Frame::Integer(count as i64),
    ])
}

/// Redis's answer to a command it does not know, quoting up to 128 characters of arguments.
fn unknown_command(command: &[Bytes]) -> Frame {
    const QUOTE_LIMIT: usize = 128;
    let name: String = command
        .first()
        .map(|name| {
            String::from_utf8_lossy(name)
                .chars()
                .take(QUOTE_LIMIT)
                .collect()
        })
        .unwrap_or_default();
    let mut quoted = String::new();
    for arg in command.iter().skip(1) {
        let room = QUOTE_LIMIT.saturating_sub(quoted.chars().count());
        if room == 0 {
            break;
        }
        let arg: String = String::from_utf8_lossy(arg).chars().take(room).collect();
        quoted.push_str(&format!("'{arg}' "));
    }
    Frame::error(format!(
        "ERR unknown command '{name}', with args beginning with: {quoted}"
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;
    use tokio::sync::{Notify, mpsc};

    use super::*;
    use crate::server::ServerConfig;
    use crate::server::registry::Outgoing;

    /// A server that knows only the shared commands, plus PUBLISH.
    struct Bare;

    impl Dialect for Bare {
        fn hello_identity(&self) -> (&'static str, &'static str) {
            ("standalone", "master")
        }

        fn execute(&self, pubsub: &PubSub, command: &[Bytes]) -> Option<Frame> {
            match command {
                [name, channel, payload] if name.eq_ignore_ascii_case(b"PUBLISH") => {
                    Some(Frame::Integer(pubsub.publish(channel, payload) as i64))
                }
                _ => None,
            }
        }
    }

    fn server(auth: Auth) -> Server<Bare> {
        Server {
            pubsub: Arc::new(PubSub::detached()),
            dialect: Bare,
            config: ServerConfig {
                auth,
                outgoing_queue: 8,
            },
        }
    }

    /// A registered connection; the test reads its replies directly, not through a socket.
    struct TestConn<'a> {
        session: Session<'a, Bare>,
        _queue: mpsc::Receiver<Outgoing>,
    }

    fn connect(server: &Server<Bare>) -> TestConn<'_> {
        let (outbox, queue) = mpsc::channel(server.config.outgoing_queue);
        let id = server.pubsub.register(outbox, Arc::new(Notify::new()));
        TestConn {
            session: Session::new(server, id),
            _queue: queue,
        }
    }

    impl TestConn<'_> {
        /// Runs a space-separated command and returns the wire replies.
        fn run(&mut self, line: &str) -> String {
            let command: Vec<Bytes> = line
                .split(' ')
                .map(|word| Bytes::copy_from_slice(word.as_bytes()))
                .collect();
            let mut out = BytesMut::new();
            for frame in self.session.execute(&command).frames {
                frame.encode(&mut out);
            }
            String::from_utf8_lossy(&out).into_owned()
        }
    }

    #[test]
    fn ping_and_echo_answer_like_redis() {
        let server = server(Auth::Open);
        let mut conn = connect(&server);
        assert_eq!(conn.run("PING"), "+PONG\r\n");
        assert_eq!(conn.run("ping hi"), "$2\r\nhi\r\n");
        assert_eq!(conn.run("ECHO x"), "$1\r\nx\r\n");
        assert_eq!(
            conn.run("ECHO"),
            "-ERR wrong number of arguments for 'echo' command\r\n"
        );
    }

    #[test]
    fn a_password_server_refuses_commands_until_auth() {
        let server = server(Auth::Password("secret".into()));
        let mut conn = connect(&server);
        assert_eq!(conn.run("PING"), "-NOAUTH Authentication required.\r\n");
        assert_eq!(
            conn.run("AUTH wrong"),
            "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        );
        assert_eq!(conn.run("PING"), "-NOAUTH Authentication required.\r\n");
        assert_eq!(conn.run("AUTH default secret"), "+OK\r\n");
        assert_eq!(conn.run("PING"), "+PONG\r\n");
    }

    #[test]
    fn an_acl_user_must_give_its_name() {
        let server = server(Auth::User {
            name: "app".into(),
            password: "pw".into(),
        });
        let mut conn = connect(&server);
        assert!(conn.run("AUTH pw").starts_with("-WRONGPASS"));
        assert!(conn.run("AUTH other pw").starts_with("-WRONGPASS"));
        assert_eq!(conn.run("AUTH app pw"), "+OK\r\n");
    }

    #[test]
    fn auth_without_a_configured_password_is_an_error_like_redis() {
        let server = server(Auth::Open);
        let mut conn = connect(&server);
        assert!(
            conn.run("AUTH x")
                .starts_with("-ERR AUTH <password> called without any password")
        );
        assert_eq!(conn.run("AUTH default anything"), "+OK\r\n");
        assert_eq!(
            conn.run("AUTH a b c"),
            "-ERR wrong number of arguments for 'auth' command\r\n"
        );
    }

    #[test]
    fn hello_2_describes_the_server_and_hello_3_is_refused() {
        let server = server(Auth::Password("pw".into()));
        let mut conn = connect(&server);
        assert!(
            conn.run("HELLO 2")
                .starts_with("-NOAUTH HELLO must be called")
        );
        assert_eq!(
            conn.run("HELLO 3"),
            "-NOPROTO sorry, this protocol version is not supported\r\n"
        );
        let reply = conn.run("HELLO 2 AUTH default pw SETNAME app");
        assert!(
            reply.starts_with("*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
            "{reply}"
        );
        assert!(reply.contains("$5\r\nproto\r\n:2\r\n"), "{reply}");
        assert!(
            reply.ends_with("$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"),
            "{reply}"
        );
        assert_eq!(conn.run("CLIENT GETNAME"), "$3\r\napp\r\n");
        assert!(
            conn.run("HELLO x")
                .starts_with("-ERR Protocol version is not an integer")
        );
        assert!(
            conn.run("HELLO 2 BOGUS")
                .starts_with("-ERR Syntax error in HELLO option")
        );
    }

    #[test]
    fn client_setinfo_and_names_are_accepted() {
        let server = server(Auth::Open);
        let mut conn = connect(&server);
        assert_eq!(conn.run("CLIENT SETINFO LIB-NAME redis-rs"), "+OK\r\n");
        assert_eq!(conn.run("client setinfo lib-ver 1.8.1"), "+OK\r\n");
        assert!(
            conn.run("CLIENT SETINFO COLOR red")
                .starts_with("-ERR Unrecognized option")
        );
        assert_eq!(
            conn.run("CLIENT SETINFO LIB-NAME"),
            "-ERR wrong number of arguments for 'client|setinfo' command\r\n"
        );
        assert_eq!(conn.run("CLIENT GETNAME"), "$-1\r\n");
        assert_eq!(conn.run("CLIENT SETNAME hub-1"), "+OK\r\n");
        assert_eq!(conn.run("CLIENT GETNAME"), "$5\r\nhub-1\r\n");
        assert_eq!(conn.run("CLIENT ID"), ":1\r\n");
        assert_eq!(
            conn.run("CLIENT KILL"),
            "-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n"
        );
    }

    #[test]
    fn subscribe_confirms_each_channel_with_the_running_count() {
        let server = server(Auth::Open);
        let mut conn = connect(&server);
        assert_eq!(
            conn.run("SUBSCRIBE a b"),
            "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
        );
        assert_eq!(
            conn.run("UNSUBSCRIBE b c"),
            "*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n\
             *3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:1\r\n"
        );
        assert_eq!(
            conn.run("UNSUBSCRIBE"),
            "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
        );
        assert_eq!(
            conn.run("UNSUBSCRIBE"),
            "*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n",
            "with nothing subscribed, one confirmation with a nil channel"
        );
    }

    #[test]
    fn subscribed_mode_allows_only_pubsub_commands_and_ping_becomes_an_array() {
        let server = server(Auth::Open);
        let mut conn = connect(&server);
        conn.run("SUBSCRIBE a");
        assert_eq!(conn.run("PING"), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        assert_eq!(conn.run("PING hi"), "*2\r\n$4\r\npong\r\n$2\r\nhi\r\n");
        assert_eq!(
            conn.run("ECHO x"),
            "-ERR Can't execute 'echo': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
             RESET are allowed in this context\r\n"
        );
        conn.run("UNSUBSCRIBE a");
        assert_eq!(conn.run("ECHO x"), "$1\r\nx\r\n");
    }

    #[test]
    fn publish_from_a_session_reaches_other_sessions() {
        let server = server(Auth::Open);
        let mut publisher = connect(&server);
        let mut subscriber = connect(&server);
        subscriber.run("SUBSCRIBE ch");
        assert_eq!(publisher.run("PUBLISH ch hi"), ":1\r\n");
        assert_eq!(
            subscriber.run("PUBLISH ch hi"),
            "-ERR Can't execute 'publish': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / \
             QUIT / RESET are allowed in this context\r\n"
        );
    }

    #[test]
    fn unknown_commands_quote_their_arguments() {
        let server = server(Auth::Open);
        let mut conn = connect(&server);
        assert_eq!(
            conn.run("FLY me away"),
            "-ERR unknown command 'FLY', with args beginning with: 'me' 'away' \r\n"
        );
        let long = "x".repeat(300);
        let reply = conn.run(&format!("FLY {long} {long}"));
        assert!(reply.len() < 250, "quoting is bounded: {}", reply.len());
    }

    #[test]
    fn quit_answers_ok_and_closes_even_before_auth() {
        let server = server(Auth::Password("pw".into()));
        let mut conn = connect(&server);
        let response = conn.session.execute(&[Bytes::from_static(b"QUIT")]);
        assert_eq!(response.frames, vec![Frame::ok()]);
        assert!(response.close);
    }
}
