//! The commands every Redis-speaking server answers the same way, run for one connection:
//! `PING`, `ECHO`, `QUIT`, `AUTH`, `HELLO`, `CLIENT`, `SUBSCRIBE`, `UNSUBSCRIBE`. Before any
//! command runs, the checks Redis makes come first, in Redis's order (see `commands.rs`);
//! commands the shared core does not run go to the server's [`Dialect`].
//!
//! Replies copy Redis's texts because clients match on them: redis-rs retries `AUTH` without a
//! user name only if the error says "wrong number of arguments for 'auth' command", and counts
//! `UNSUBSCRIBE` confirmations to know when the command is complete. The texts are those of
//! Redis 7.2; `sim/tests/redis_differential.rs` compares them with a real server.

use bytes::Bytes;

use super::commands::{self, CommandSpec};
use super::registry::{ConnId, Space};
use super::{Auth, Dialect, PubSub, Server};
use crate::resp::{Frame, parse_integer};

/// The version `HELLO` reports; recent enough that clients enable every RESP2 feature.
const SERVER_VERSION: &str = "7.2.4";

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
    /// The connection said `HELLO 3`: subscriptions are confirmed with pushes, and subscribed
    /// mode does not restrict commands.
    resp3: bool,
}

impl<'a, D: Dialect> Session<'a, D> {
    pub(super) fn new(server: &'a Server<D>, id: ConnId) -> Self {
        Session {
            server,
            id,
            authenticated: server.config.auth == Auth::Open,
            name: None,
            resp3: false,
        }
    }

    fn pubsub(&self) -> &PubSub {
        &self.server.pubsub
    }

    /// Runs one command (`command[0]` is its name, in any case).
    pub(super) fn execute(&mut self, command: &[Bytes]) -> Response {
        if command.is_empty() {
            return Response {
                frames: Vec::new(),
                close: false,
            };
        }
        let spec = match commands::lookup(self.server.dialect.commands(), command) {
            Ok(spec) => spec,
            Err(error) => return error.into(),
        };
        let args = &command[1..];
        if let Some(refusal) = self.refusal(spec, args) {
            return refusal.into();
        }
        match spec.name {
            "quit" => Response {
                frames: vec![Frame::ok()],
                close: true,
            },
            "ping" => self.ping(args).into(),
            "echo" => match args {
                [message] => Frame::Bulk(message.clone()).into(),
                _ => super::wrong_arity("echo").into(),
            },
            "auth" => self.auth(args).into(),
            "hello" => self.hello(args).into(),
            "client|setinfo" => client_setinfo(subcommand_args(args)).into(),
            "client|setname" => self.client_setname(subcommand_args(args)).into(),
            "client|getname" => self.name.clone().map_or(Frame::Null, Frame::Bulk).into(),
            "client|id" => Frame::Integer(self.id as i64).into(),
            "subscribe" => self.subscribe(Space::Classic, args),
            "unsubscribe" => self.unsubscribe(Space::Classic, args),
            "ssubscribe" => match self.server.dialect.shard_redirect(args) {
                Some(redirect) => redirect.into(),
                None => self.subscribe(Space::Shard, args),
            },
            "sunsubscribe" => self.unsubscribe(Space::Shard, args),
            name => self
                .server
                .dialect
                .execute(name, self.pubsub(), args)
                .into(),
        }
    }

    /// The authentication, channel permission and subscribed-mode gates, which Redis checks
    /// in this order after a command's existence and arity.
    fn refusal(&self, spec: &CommandSpec, args: &[Bytes]) -> Option<Frame> {
        if !self.authenticated && !spec.no_auth {
            return Some(Frame::error("NOAUTH Authentication required."));
        }
        // The channels the ACL checks: every argument of SUBSCRIBE, the first of PUBLISH (not
        // UNSUBSCRIBE's). One channel refused refuses the whole command, as in Redis 7.0.
        let channels = match spec.name {
            "subscribe" | "ssubscribe" => args,
            "publish" | "spublish" => args.get(..1).unwrap_or_default(),
            _ => &[],
        };
        let acl = &self.server.config.channels;
        if channels.iter().any(|channel| !acl.allows(channel)) {
            return Some(Frame::error(
                "NOPERM this user has no permissions to access one of the channels used as \
                 arguments",
            ));
        }
        if !self.resp3 && self.pubsub().subscription_count(self.id) > 0 && !spec.in_subscribed_mode
        {
            return Some(Frame::error(format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
                 RESET are allowed in this context",
                spec.name
            )));
        }
        None
    }

    fn ping(&self, args: &[Bytes]) -> Frame {
        let message = match args {
            [] => None,
            [message] => Some(message.clone()),
            _ => return super::wrong_arity("ping"),
        };
        if !self.resp3 && self.pubsub().subscription_count(self.id) > 0 {
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
            _ => return Frame::error("ERR syntax error"),
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

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`, as Redis 7.2 runs it: every option
    /// is checked before any takes effect, and the name is set only once the client is
    /// authenticated. `HELLO 3` switches to RESP3 where the dialect speaks it (a cluster node,
    /// for sharded Pub/Sub) and is refused elsewhere.
    fn hello(&mut self, args: &[Bytes]) -> Frame {
        let (version, mut options) = match args.split_first() {
            None => (None, args),
            Some((version, options)) => match parse_integer(version) {
                None => {
                    return Frame::error("ERR Protocol version is not an integer or out of range");
                }
                Some(version @ 2..=3) => (Some(version), options),
                Some(_) => return Frame::error("NOPROTO unsupported protocol version"),
            },
        };
        let mut credentials = None;
        let mut name = None;
        while let Some((option, rest)) = options.split_first() {
            match (option.to_ascii_uppercase().as_slice(), rest) {
                (b"AUTH", [user, password, rest @ ..]) => {
                    credentials = Some((user, password));
                    options = rest;
                }
                (b"SETNAME", [new_name, rest @ ..]) => {
                    if !valid_client_name(new_name) {
                        return invalid_client_name();
                    }
                    name = Some(new_name);
                    options = rest;
                }
                _ => {
                    return Frame::error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        commands::quote_all(option)
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
        if version == Some(3) && !self.server.dialect.resp3() {
            return Frame::error("NOPROTO unsupported protocol version");
        }
        if let Some(name) = name {
            self.name = (!name.is_empty()).then(|| name.clone());
        }
        let (mode, role) = self.server.dialect.hello_identity();
        let mut fields = vec![
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
        ];
        if let Some(role) = role {
            fields.extend([Frame::bulk("role"), Frame::bulk(role)]);
        }
        fields.extend([Frame::bulk("modules"), Frame::Array(Vec::new())]);
        if version == Some(3) {
            self.resp3 = true;
            self.server.pubsub.set_resp3(self.id);
            fields[5] = Frame::Integer(3);
            let mut fields = fields.into_iter();
            let mut pairs = Vec::new();
            while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
                pairs.push((key, value));
            }
            return Frame::Map(pairs);
        }
        Frame::Array(fields)
    }

    /// `*3 <kind> <channel> :<count>`, the answer to (UN)SUBSCRIBE, one per channel; a RESP3
    /// push on a connection that said `HELLO 3`.
    fn confirmation(&self, kind: &str, channel: Frame, count: usize) -> Frame {
        let items = vec![Frame::bulk(kind), channel, Frame::Integer(count as i64)];
        if self.resp3 {
            Frame::Push(items)
        } else {
            Frame::Array(items)
        }
    }

    /// `CLIENT SETNAME <name>`; an empty name removes the name.
    fn client_setname(&mut self, args: &[Bytes]) -> Frame {
        let [name] = args else {
            return super::wrong_arity("client|setname");
        };
        if !valid_client_name(name) {
            return invalid_client_name();
        }
        self.name = (!name.is_empty()).then(|| name.clone());
        Frame::ok()
    }

    /// `SUBSCRIBE` or `SSUBSCRIBE`: one confirmation per channel.
    fn subscribe(&mut self, space: Space, channels: &[Bytes]) -> Response {
        let kind = match space {
            Space::Classic => "subscribe",
            Space::Shard => "ssubscribe",
        };
        let frames = channels
            .iter()
            .map(|channel| {
                let count = self.pubsub().subscribe(self.id, space, channel.clone());
                self.confirmation(kind, Frame::Bulk(channel.clone()), count)
            })
            .collect();
        Response {
            frames,
            close: false,
        }
    }

    /// `UNSUBSCRIBE [channel ...]` (or `SUNSUBSCRIBE`): one confirmation per channel; without
    /// arguments, one per subscribed channel, or a single one with a nil channel when there are
    /// none (what redis-rs counts on to know the command is complete).
    fn unsubscribe(&mut self, space: Space, channels: &[Bytes]) -> Response {
        let kind = match space {
            Space::Classic => "unsubscribe",
            Space::Shard => "sunsubscribe",
        };
        let channels = if channels.is_empty() {
            self.pubsub().channels_of(self.id, space)
        } else {
            channels.to_vec()
        };
        let frames = if channels.is_empty() {
            vec![self.confirmation(kind, Frame::Null, 0)]
        } else {
            channels
                .into_iter()
                .map(|channel| {
                    let count = self.pubsub().unsubscribe(self.id, space, &channel);
                    self.confirmation(kind, Frame::Bulk(channel), count)
                })
                .collect()
        };
        Response {
            frames,
            close: false,
        }
    }
}

/// `CLIENT SETINFO <LIB-NAME|LIB-VER> <value>`, which redis-rs sends on connect (and ignores
/// the answer). The value is checked like a client name, then forgotten.
fn client_setinfo(args: &[Bytes]) -> Frame {
    let [option, value] = args else {
        return super::wrong_arity("client|setinfo");
    };
    let option_text = commands::quote_all(option);
    if !option.eq_ignore_ascii_case(b"LIB-NAME") && !option.eq_ignore_ascii_case(b"LIB-VER") {
        return Frame::error(format!("ERR Unrecognized option '{option_text}'"));
    }
    if !valid_client_name(value) {
        return Frame::error(format!(
            "ERR {option_text} cannot contain spaces, newlines or special characters."
        ));
    }
    Frame::ok()
}

/// The arguments after a subcommand's name.
fn subcommand_args(args: &[Bytes]) -> &[Bytes] {
    args.get(1..).unwrap_or_default()
}

/// Client names (and library names) are printable ASCII without spaces, so that `CLIENT LIST`
/// stays splittable.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|byte| (b'!'..=b'~').contains(byte))
}

fn invalid_client_name() -> Frame {
    Frame::error("ERR Client names cannot contain spaces, newlines or special characters.")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;
    use tokio::sync::{Notify, mpsc};

    use super::*;
    use crate::server::commands;
    use crate::server::registry::Outgoing;
    use crate::server::{ChannelAcl, ServerConfig};

    /// A server that knows only the shared commands, plus PUBLISH.
    struct Bare;

    static BARE_COMMANDS: [CommandSpec; 9] = [
        commands::PING,
        commands::ECHO,
        commands::QUIT,
        commands::AUTH,
        commands::HELLO,
        commands::CLIENT,
        commands::SUBSCRIBE,
        commands::UNSUBSCRIBE,
        commands::PUBLISH,
    ];

    impl Dialect for Bare {
        fn hello_identity(&self) -> (&'static str, Option<&'static str>) {
            ("standalone", Some("master"))
        }

        fn commands(&self) -> &'static [CommandSpec] {
            &BARE_COMMANDS
        }

        fn execute(&self, name: &str, pubsub: &PubSub, args: &[Bytes]) -> Frame {
            match (name, args) {
                ("publish", [channel, payload]) => {
                    Frame::Integer(pubsub.publish(channel, payload) as i64)
                }
                _ => super::super::wrong_arity(name),
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
                channels: ChannelAcl::default(),
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
        assert_eq!(conn.run("AUTH a b c"), "-ERR syntax error\r\n");
        assert_eq!(
            conn.run("AUTH"),
            "-ERR wrong number of arguments for 'auth' command\r\n",
            "the text redis-rs looks for to retry AUTH without a user name"
        );
    }

    #[test]
    fn hello_2_describes_the_server_and_hello_3_is_refused() {
        let server = server(Auth::Password("pw".into()));
        let mut conn = connect(&server);
        for line in ["HELLO", "HELLO 2", "HELLO 3"] {
            assert!(
                conn.run(line).starts_with(
                    "-NOAUTH HELLO must be called with the client already \
                                  authenticated, otherwise the HELLO <proto> AUTH"
                ),
                "{line}: authentication is checked before the version is acted on"
            );
        }
        assert_eq!(
            conn.run("HELLO 4"),
            "-NOPROTO unsupported protocol version\r\n"
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
        assert_eq!(
            conn.run("HELLO 3"),
            "-NOPROTO unsupported protocol version\r\n",
            "the fakes speak RESP2 only"
        );
    }

    #[test]
    fn hello_checks_every_option_before_any_takes_effect() {
        let server = server(Auth::Password("pw".into()));
        let mut conn = connect(&server);
        assert!(conn.run("HELLO 2 SETNAME early").starts_with("-NOAUTH"));
        assert!(
            conn.run("HELLO 2 AUTH default pw BOGUS")
                .starts_with("-ERR Syntax error in HELLO option 'BOGUS'")
        );
        assert_eq!(
            conn.run("PING"),
            "-NOAUTH Authentication required.\r\n",
            "a HELLO that failed did not authenticate"
        );
        assert_eq!(
            conn.run("HELLO 2 SETNAME tab\t"),
            "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        );
        assert_eq!(conn.run("AUTH pw"), "+OK\r\n");
        assert_eq!(
            conn.run("CLIENT GETNAME"),
            "$-1\r\n",
            "a HELLO that failed named nothing"
        );
    }

    #[test]
    fn sentinel_hello_reports_no_role() {
        struct NoRole;

        impl Dialect for NoRole {
            fn hello_identity(&self) -> (&'static str, Option<&'static str>) {
                ("sentinel", None)
            }

            fn commands(&self) -> &'static [CommandSpec] {
                &BARE_COMMANDS
            }

            fn execute(&self, name: &str, _pubsub: &PubSub, _args: &[Bytes]) -> Frame {
                super::super::wrong_arity(name)
            }
        }

        let server = Server {
            pubsub: Arc::new(PubSub::detached()),
            dialect: NoRole,
            config: ServerConfig {
                auth: Auth::Open,
                outgoing_queue: 8,
                channels: ChannelAcl::default(),
            },
        };
        let (outbox, _queue) = mpsc::channel(8);
        let id = server.pubsub.register(outbox, Arc::new(Notify::new()));
        let mut session = Session::new(&server, id);
        let reply = session.execute(&[Bytes::from_static(b"HELLO")]).frames;
        let Some(Frame::Array(fields)) = reply.first() else {
            panic!("HELLO answers an array: {reply:?}");
        };
        assert_eq!(fields.len(), 12, "six fields, no role");
        assert!(!fields.contains(&Frame::bulk("role")));
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
            conn.run("CLIENT SETINFO lib-name tab\t"),
            "-ERR lib-name cannot contain spaces, newlines or special characters.\r\n"
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

    /// The transcript of a real `redis-server` 7.0.15 with `ACL SETUSER alice on >pw
    /// resetchannels &room* &a?c +@all ~*`: a channel outside the rules refuses the whole
    /// command, before the subscribed-mode check; `UNSUBSCRIBE` is not checked.
    #[test]
    fn channels_outside_the_acl_are_refused_with_noperm() {
        let mut server = server(Auth::User {
            name: "alice".into(),
            password: "pw".into(),
        });
        server.config.channels = ChannelAcl(Some(vec![
            Bytes::from_static(b"room*"),
            Bytes::from_static(b"a?c"),
        ]));
        let noperm = "-NOPERM this user has no permissions to access one of the channels used as arguments\r\n";
        let mut conn = connect(&server);
        assert_eq!(conn.run("AUTH alice pw"), "+OK\r\n");
        assert_eq!(conn.run("PUBLISH secret x"), noperm);
        assert_eq!(conn.run("PUBLISH room9 x"), ":0\r\n");
        assert_eq!(conn.run("PUBLISH abc x"), ":0\r\n");
        assert_eq!(conn.run("SUBSCRIBE room1 secret"), noperm);
        assert_eq!(
            conn.run("SUBSCRIBE room1"),
            "*3\r\n$9\r\nsubscribe\r\n$5\r\nroom1\r\n:1\r\n"
        );
        assert_eq!(conn.run("PUBLISH secret x"), noperm);
        assert_eq!(
            conn.run("PUBLISH room1 x"),
            "-ERR Can't execute 'publish': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
             RESET are allowed in this context\r\n"
        );
        assert_eq!(conn.run("SUBSCRIBE secret"), noperm);
        assert_eq!(
            conn.run("UNSUBSCRIBE secret"),
            "*3\r\n$11\r\nunsubscribe\r\n$6\r\nsecret\r\n:1\r\n"
        );
        assert_eq!(conn.run("PING"), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    }

    #[test]
    fn acl_channel_patterns_glob_like_redis() {
        let acl = ChannelAcl(Some(vec![
            Bytes::from_static(b"room*"),
            Bytes::from_static(b"a?c"),
        ]));
        for allowed in ["room", "room1", "room.a.b", "abc", "a.c"] {
            assert!(acl.allows(allowed.as_bytes()), "{allowed}");
        }
        for refused in ["roo", "xroom", "ac", "abcd", "secret", ""] {
            assert!(!acl.allows(refused.as_bytes()), "{refused}");
        }
        assert!(ChannelAcl::default().allows(b"anything"));
        assert!(
            !ChannelAcl(Some(Vec::new())).allows(b"room"),
            "resetchannels"
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
    fn existence_and_arity_are_checked_before_authentication_and_subscribed_mode() {
        let server = server(Auth::Password("pw".into()));
        let mut conn = connect(&server);
        assert!(conn.run("FLY").starts_with("-ERR unknown command 'FLY'"));
        assert_eq!(
            conn.run("ECHO"),
            "-ERR wrong number of arguments for 'echo' command\r\n"
        );
        assert_eq!(
            conn.run("CLIENT NOPE"),
            "-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n"
        );
        assert_eq!(conn.run("ECHO x"), "-NOAUTH Authentication required.\r\n");
        conn.run("AUTH pw");
        conn.run("SUBSCRIBE a");
        assert!(conn.run("FLY").starts_with("-ERR unknown command 'FLY'"));
        assert_eq!(
            conn.run("CLIENT SETNAME"),
            "-ERR wrong number of arguments for 'client|setname' command\r\n"
        );
        assert_eq!(
            conn.run("CLIENT SETNAME x"),
            "-ERR Can't execute 'client|setname': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / \
             PING / QUIT / RESET are allowed in this context\r\n",
            "subcommands are named by their full name"
        );
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
