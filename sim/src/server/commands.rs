//! The command table: which commands a server knows, how many arguments each takes, and which
//! may run before authentication or in subscribed mode.
//!
//! Redis checks a command in a fixed order before running it: does the command (or the
//! subcommand of a container such as `CLIENT`) exist, is its arity right, is the client
//! authenticated, and, on a RESP2 connection in subscribed mode, is it a Pub/Sub command. The
//! first check that fails answers. Clients never see the order when they send well-formed
//! commands, but a fake that checked in another order would answer a malformed one differently
//! from Redis, so the order is kept here, in one place, from a table in Redis's own terms
//! (arity counts the command name; a negative arity is a minimum). The differential test in
//! `sim/tests/redis_differential.rs` holds the fakes to it.

use bytes::Bytes;

use super::wrong_arity;
use crate::resp::Frame;

/// One command, or one subcommand of a container command.
#[derive(Debug)]
pub(crate) struct CommandSpec {
    /// The name as Redis writes it in errors: lower case, `container|sub` for subcommands.
    pub(crate) name: &'static str,
    /// Words including the command name (and the subcommand's): exactly `n` when positive, at
    /// least `-n` when negative.
    arity: i32,
    /// Runs before authentication (`AUTH`, `HELLO`, `QUIT`).
    pub(crate) no_auth: bool,
    /// Runs on a RESP2 connection in subscribed mode.
    pub(crate) in_subscribed_mode: bool,
    /// The subcommands, for a container command (`CLIENT`, `SENTINEL`).
    subcommands: &'static [CommandSpec],
}

impl CommandSpec {
    const fn new(name: &'static str, arity: i32) -> Self {
        CommandSpec {
            name,
            arity,
            no_auth: false,
            in_subscribed_mode: false,
            subcommands: &[],
        }
    }

    const fn no_auth(mut self) -> Self {
        self.no_auth = true;
        self
    }

    const fn in_subscribed_mode(mut self) -> Self {
        self.in_subscribed_mode = true;
        self
    }

    const fn container(mut self, subcommands: &'static [CommandSpec]) -> Self {
        self.subcommands = subcommands;
        self
    }

    /// The part of the name after `|` for a subcommand, the whole name otherwise.
    fn own_name(&self) -> &'static str {
        self.name.rsplit('|').next().unwrap_or(self.name)
    }

    fn arity_fits(&self, words: usize) -> bool {
        let words = i64::try_from(words).unwrap_or(i64::MAX);
        let arity = i64::from(self.arity);
        if arity > 0 {
            words == arity
        } else {
            words >= -arity
        }
    }
}

/// The commands every Redis-speaking fake answers the same way.
pub(crate) const PING: CommandSpec = CommandSpec::new("ping", -1).in_subscribed_mode();
pub(crate) const ECHO: CommandSpec = CommandSpec::new("echo", 2);
pub(crate) const QUIT: CommandSpec = CommandSpec::new("quit", -1).no_auth().in_subscribed_mode();
pub(crate) const AUTH: CommandSpec = CommandSpec::new("auth", -2).no_auth();
pub(crate) const HELLO: CommandSpec = CommandSpec::new("hello", -1).no_auth();
pub(crate) const SUBSCRIBE: CommandSpec = CommandSpec::new("subscribe", -2).in_subscribed_mode();
pub(crate) const UNSUBSCRIBE: CommandSpec =
    CommandSpec::new("unsubscribe", -1).in_subscribed_mode();
pub(crate) const CLIENT: CommandSpec = CommandSpec::new("client", -2).container(&[
    CommandSpec::new("client|setinfo", 4),
    CommandSpec::new("client|setname", 3),
    CommandSpec::new("client|getname", 2),
    CommandSpec::new("client|id", 2),
]);

/// Commands of the Redis dialect, and of Sentinel's where noted.
pub(crate) const PUBLISH: CommandSpec = CommandSpec::new("publish", 3);
/// Sharded Pub/Sub (Redis 7.0): the same on a standalone server, routed by slot on a cluster.
pub(crate) const SPUBLISH: CommandSpec = CommandSpec::new("spublish", 3);
pub(crate) const SSUBSCRIBE: CommandSpec = CommandSpec::new("ssubscribe", -2).in_subscribed_mode();
pub(crate) const SUNSUBSCRIBE: CommandSpec =
    CommandSpec::new("sunsubscribe", -1).in_subscribed_mode();
/// What a cluster node answers about the cluster.
pub(crate) const CLUSTER: CommandSpec = CommandSpec::new("cluster", -2).container(&[
    CommandSpec::new("cluster|slots", 2),
    CommandSpec::new("cluster|keyslot", 3),
    CommandSpec::new("cluster|myid", 2),
]);
pub(crate) const SELECT: CommandSpec = CommandSpec::new("select", 2);
pub(crate) const ROLE: CommandSpec = CommandSpec::new("role", 1);
pub(crate) const SENTINEL: CommandSpec = CommandSpec::new("sentinel", -2)
    .container(&[CommandSpec::new("sentinel|get-master-addr-by-name", 3)]);

/// Finds the command `words` names and checks its arity: the spec, or the error Redis answers
/// (unknown command, unknown subcommand, wrong number of arguments).
pub(crate) fn lookup<'t>(
    table: &'t [CommandSpec],
    words: &[Bytes],
) -> Result<&'t CommandSpec, Frame> {
    let Some(name) = words.first() else {
        return Err(unknown_command(words));
    };
    let Some(mut spec) = find(table, name) else {
        return Err(unknown_command(words));
    };
    if !spec.subcommands.is_empty() && words.len() >= 2 {
        spec = find(spec.subcommands, &words[1]).ok_or_else(|| {
            Frame::error(format!(
                "ERR unknown subcommand '{}'. Try {} HELP.",
                quote(&words[1], QUOTE_LIMIT),
                spec.name.to_ascii_uppercase()
            ))
        })?;
    }
    if !spec.arity_fits(words.len()) {
        return Err(wrong_arity(spec.name));
    }
    Ok(spec)
}

fn find<'t>(table: &'t [CommandSpec], name: &[u8]) -> Option<&'t CommandSpec> {
    table
        .iter()
        .find(|spec| spec.own_name().as_bytes().eq_ignore_ascii_case(name))
}

/// How many bytes of client input an error message quotes, as Redis's `%.128s`.
const QUOTE_LIMIT: usize = 128;

/// Up to `limit` bytes of `word` as Redis quotes client input in an error: with `printf`'s
/// `%s`, which stops at the first NUL byte. Bytes that are not UTF-8 become U+FFFD, where
/// Redis would send them as they are (error lines are text here).
pub(crate) fn quote(word: &[u8], limit: usize) -> String {
    let word = c_string(word);
    String::from_utf8_lossy(&word[..word.len().min(limit)]).into_owned()
}

/// The bytes of `word` before its first NUL: what C's `%s` sees.
fn c_string(word: &[u8]) -> &[u8] {
    word.split(|&byte| byte == 0).next().unwrap_or_default()
}

/// A whole argument quoted in an error, as Redis's `%s` does.
pub(crate) fn quote_all(word: &[u8]) -> String {
    quote(word, usize::MAX)
}

/// Redis's answer to a command it does not know, quoting the name and up to 128 bytes of
/// arguments.
fn unknown_command(words: &[Bytes]) -> Frame {
    let name = words
        .first()
        .map(|name| quote(name, QUOTE_LIMIT))
        .unwrap_or_default();
    let mut quoted = String::new();
    let mut quoted_len = 0;
    for arg in words.iter().skip(1) {
        if quoted_len >= QUOTE_LIMIT {
            break;
        }
        // The room is counted in the bytes Redis would write, quotes and space included.
        let take = c_string(arg).len().min(QUOTE_LIMIT - quoted_len);
        quoted_len += take + 3;
        quoted.push_str(&format!("'{}' ", quote(arg, take)));
    }
    Frame::error(format!(
        "ERR unknown command '{name}', with args beginning with: {quoted}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: [CommandSpec; 3] = [PING, ECHO, CLIENT];

    fn words(line: &str) -> Vec<Bytes> {
        line.split(' ')
            .map(|word| Bytes::copy_from_slice(word.as_bytes()))
            .collect()
    }

    fn error_of(line: &str) -> String {
        match lookup(&TABLE, &words(line)) {
            Err(Frame::Error(text)) => text,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn known_commands_and_subcommands_are_found_in_any_case() {
        assert_eq!(lookup(&TABLE, &words("ping")).unwrap().name, "ping");
        assert_eq!(lookup(&TABLE, &words("Ping a")).unwrap().name, "ping");
        assert_eq!(
            lookup(&TABLE, &words("CLIENT setName x")).unwrap().name,
            "client|setname"
        );
    }

    #[test]
    fn arity_counts_the_command_name_and_negative_means_at_least() {
        assert_eq!(
            error_of("ECHO"),
            "ERR wrong number of arguments for 'echo' command"
        );
        assert_eq!(
            error_of("ECHO a b"),
            "ERR wrong number of arguments for 'echo' command"
        );
        assert_eq!(
            error_of("CLIENT"),
            "ERR wrong number of arguments for 'client' command",
            "a container alone is checked against its own arity"
        );
        assert_eq!(
            error_of("CLIENT GETNAME x"),
            "ERR wrong number of arguments for 'client|getname' command"
        );
    }

    #[test]
    fn unknown_commands_and_subcommands_are_named_like_redis_names_them() {
        assert_eq!(
            error_of("FLY me away"),
            "ERR unknown command 'FLY', with args beginning with: 'me' 'away' "
        );
        assert_eq!(
            error_of("client Nope x"),
            "ERR unknown subcommand 'Nope'. Try CLIENT HELP."
        );
    }

    #[test]
    fn quoting_stops_at_a_nul_byte_like_printf() {
        let command = vec![
            Bytes::from_static(b"FLY"),
            Bytes::from_static(b"bin\0\r\n"),
            Bytes::from_static(b"x"),
        ];
        assert_eq!(
            lookup(&TABLE, &command).unwrap_err(),
            Frame::error("ERR unknown command 'FLY', with args beginning with: 'bin' 'x' ")
        );
    }

    #[test]
    fn unknown_command_quotes_at_most_128_bytes_of_arguments() {
        let long = "y".repeat(150);
        let reply = error_of(&format!("FLY {long} {long}"));
        assert_eq!(
            reply,
            format!(
                "ERR unknown command 'FLY', with args beginning with: '{}' ",
                "y".repeat(128)
            )
        );
        let reply = error_of(&format!("FLY a {long}"));
        assert_eq!(
            reply,
            format!(
                "ERR unknown command 'FLY', with args beginning with: 'a' '{}' ",
                "y".repeat(124)
            ),
            "the room left after earlier arguments, quotes and spaces included"
        );
    }
}
