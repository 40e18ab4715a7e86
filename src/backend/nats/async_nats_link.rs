//! The production [`NatsLink`]: async-nats, configured the way the plan asks (reconnect forever,
//! 2 s between attempts, both configurable), with its connection events turned into
//! [`LinkEvent`]s.
//!
//! This file only translates between async-nats types and the link's; no bus logic lives here,
//! so the simulated link can replace it without changing what the bus does. It logs only what
//! the bus cannot see: the raw events at debug level, and lame duck mode.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::header::{HeaderName, HeaderValue, IntoHeaderName};
use async_nats::{ConnectOptions, HeaderMap, ServerAddr};
use async_trait::async_trait;
use futures_core::stream::BoxStream;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::broadcast;

use super::framing;
use super::link::{
    LinkError, LinkEvent, LinkMessage, LinkPublish, LinkSubscription, NatsLink, transit_capacity,
};
use super::{EVENT_BACKLOG, event_stream};
use crate::bus::BusError;
use crate::config::redact_url;

/// How to reach NATS, for [`AsyncNatsLink::connect`].
#[derive(Clone, Default)]
pub struct LinkOptions {
    /// `nats://h1:4222,h2:4222` (`tls://` for TLS); user and password may ride in the URL.
    pub url: String,
    /// Reconnect attempts in a row before giving up; `None` (or `Some(0)`, as async-nats reads
    /// it) reconnects forever (the plan's -1).
    pub max_reconnects: Option<usize>,
    /// Pause between reconnect attempts (the plan's 2 s).
    pub reconnect_wait: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Authentication token.
    pub token: Option<SecretString>,
    /// User and password (when not in the URL).
    pub user_password: Option<(String, SecretString)>,
    /// A `.creds` file (JWT + NKey).
    pub credentials_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) for TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Require TLS even for `nats://` URLs.
    pub require_tls: bool,
    /// Messages the link buffers per subscription before it drops the oldest, each counted in
    /// the [`LinkSubscription`]. Every read first moves all the client holds for the
    /// subscription into that buffer; the client's own channel (at least 65 536 messages) only
    /// carries what arrives between two reads.
    pub subscription_capacity: usize,
    /// How often the client pings the server when nothing else arrived; after two unanswered
    /// pings the connection counts as lost. `None` (or zero) is async-nats's default, 60 s.
    pub ping_interval: Option<Duration>,
}

impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of logs and health reasons.
        f.debug_struct("LinkOptions")
            .field("url", &redact_url(&self.url))
            .field("max_reconnects", &self.max_reconnects)
            .field("reconnect_wait", &self.reconnect_wait)
            .field("connect_timeout", &self.connect_timeout)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("credentials_file", &self.credentials_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("require_tls", &self.require_tls)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("ping_interval", &self.ping_interval)
            .finish_non_exhaustive()
    }
}

/// Parses `nats://a:4222,nats://b:4222` (or `nats://a:4222,b:4222`) into server addresses.
pub(crate) fn parse_servers(url: &str) -> Result<Vec<ServerAddr>, BusError> {
    let mut scheme = "nats://";
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|one| {
            let full = match one.find("://") {
                Some(at) => {
                    scheme = &one[..at + 3];
                    one.to_owned()
                }
                None => format!("{scheme}{one}"),
            };
            full.parse::<ServerAddr>()
                .map_err(|e| BusError::config("nats.url", format!("{}: {e}", redact_url(&full))))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|servers| {
            if servers.is_empty() {
                Err(BusError::config("nats.url", "no server given"))
            } else {
                Ok(servers)
            }
        })
}

/// The credentials of the first server URL that carries any, percent-decoded:
/// `nats://user:password@host` gives a user and password, `nats://token@host` a token.
pub(crate) fn url_credentials(
    servers: &[ServerAddr],
) -> (Option<(String, String)>, Option<String>) {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    match servers.iter().find(|server| server.has_user_pass()) {
        Some(server) => match (server.username(), server.password()) {
            (Some(user), Some(password)) => (Some((decode(user), decode(password))), None),
            (Some(token), None) => (None, Some(decode(token))),
            _ => (None, None),
        },
        None => (None, None),
    }
}

/// A [`NatsLink`] over an async-nats [`async_nats::Client`].
#[derive(Debug, Clone)]
pub struct AsyncNatsLink {
    client: async_nats::Client,
    events: broadcast::Sender<LinkEvent>,
    /// Set by `close`: async-nats keeps reporting its last state after a drain, and its errors
    /// afterwards do not say "closed", so the link answers for itself from then on.
    closed: Arc<AtomicBool>,
    /// Set once the server's `INFO` was seen (see `max_payload`).
    info_seen: Arc<AtomicBool>,
    /// Messages buffered per subscription (see [`LinkSubscription::buffered`]).
    subscription_capacity: usize,
}

impl AsyncNatsLink {
    /// Connects. Fails only for bad options; when the server is not reachable yet the link
    /// keeps trying in the background (as it does after any disconnect).
    pub async fn connect(options: LinkOptions) -> Result<Self, BusError> {
        let servers = parse_servers(&options.url)?;
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let sender = events.clone();
        let wait = options.reconnect_wait;
        let mut connect = ConnectOptions::new()
            .max_reconnects(options.max_reconnects)
            .reconnect_delay_callback(
                move |attempts| if attempts <= 1 { Duration::ZERO } else { wait },
            )
            .connection_timeout(options.connect_timeout)
            .retry_on_initial_connect()
            .subscription_capacity(transit_capacity(options.subscription_capacity))
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    let event = match event {
                        async_nats::Event::Connected => LinkEvent::Connected,
                        async_nats::Event::Disconnected => {
                            LinkEvent::Disconnected("connection lost".into())
                        }
                        async_nats::Event::SlowConsumer(sid) => LinkEvent::SlowConsumer(sid),
                        async_nats::Event::ServerError(error) => {
                            LinkEvent::ServerError(error.to_string())
                        }
                        async_nats::Event::ClientError(error) => {
                            LinkEvent::ServerError(error.to_string())
                        }
                        async_nats::Event::Closed => LinkEvent::Closed,
                        // Not a change of the connection, so no link event; but an operator
                        // wants to know the server is about to go (the client moves on by
                        // itself when it does).
                        async_nats::Event::LameDuckMode => {
                            tracing::info!(
                                "the NATS server entered lame duck mode; the connection will \
                                 move to another server"
                            );
                            return;
                        }
                        async_nats::Event::Draining => {
                            tracing::debug!("draining the NATS connection");
                            return;
                        }
                    };
                    // The bus logs what an event means for it; this line is the raw event.
                    tracing::debug!(?event, "NATS link event");
                    // Nobody listening is fine: events are advisory.
                    let _ = sender.send(event);
                }
            });
        // async-nats ignores credentials inside server URLs, so they are passed explicitly.
        let (url_user_password, url_token) = url_credentials(&servers);
        let token = options.token.as_ref().map(|t| t.expose_secret().to_owned());
        if let Some(token) = token.or(url_token) {
            connect = connect.token(token);
        }
        let user_password = (options.user_password.as_ref())
            .map(|(user, password)| (user.clone(), password.expose_secret().to_owned()));
        if let Some((user, password)) = user_password.or(url_user_password) {
            connect = connect.user_and_password(user, password);
        }
        if let Some(path) = &options.credentials_file {
            connect = connect.credentials_file(path).await.map_err(|e| {
                BusError::config("nats.credentials_file", format!("{}: {e}", path.display()))
            })?;
        }
        if let Some(path) = &options.tls_ca_file {
            connect = connect.add_root_certificates(path.clone());
        }
        if options.require_tls {
            connect = connect.require_tls(true);
        }
        if let Some(interval) = options.ping_interval.filter(|i| !i.is_zero()) {
            connect = connect.ping_interval(interval);
        }
        let client = connect
            .connect(servers)
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        Ok(AsyncNatsLink {
            client,
            events,
            closed: Arc::new(AtomicBool::new(false)),
            info_seen: Arc::new(AtomicBool::new(false)),
            subscription_capacity: options.subscription_capacity.max(1),
        })
    }
}

/// The client's header map for `headers`, taking the strings over.
///
/// Once per publish, and the client's map is a hash map of owned names and values, so this
/// costs what it can least: the bus's own header names are static (no copy), values are moved
/// in, and each name is hashed once (`insert`) unless a name repeats (`append` keeps them all).
fn to_headers(headers: Vec<(String, String)>) -> Option<HeaderMap> {
    if headers.is_empty() {
        return None;
    }
    let repeats = headers
        .iter()
        .enumerate()
        .any(|(at, (name, _))| headers[..at].iter().any(|(seen, _)| seen == name));
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let (name, value) = (header_name(name), HeaderValue::from(value));
        if repeats {
            map.append(name, value);
        } else {
            map.insert(name, value);
        }
    }
    Some(map)
}

/// The client's name for header `name`: the bus's own without an allocation.
fn header_name(name: String) -> HeaderName {
    const ID: HeaderName = HeaderName::from_static(framing::ID);
    const ORIGIN: HeaderName = HeaderName::from_static(framing::ORIGIN);
    const TIME: HeaderName = HeaderName::from_static(framing::TIME);
    const MSG_ID: HeaderName = HeaderName::from_static(framing::MSG_ID);
    match name.as_str() {
        framing::ID => ID,
        framing::ORIGIN => ORIGIN,
        framing::TIME => TIME,
        framing::MSG_ID => MSG_ID,
        _ => name.into_header_name(),
    }
}

impl From<async_nats::Message> for LinkMessage {
    fn from(message: async_nats::Message) -> Self {
        from_message(message)
    }
}

fn from_message(message: async_nats::Message) -> LinkMessage {
    let mut headers: Vec<(String, String)> = message
        .headers
        .iter()
        .flat_map(|map| {
            map.iter().flat_map(|(key, values)| {
                values
                    .iter()
                    .map(move |value| (key.to_string(), value.to_string()))
            })
        })
        .collect();
    // async-nats keeps headers in a hash map: sort by name so the order is stable (a stable
    // sort, so the values of one name keep the order they came in).
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    LinkMessage {
        // Once per message received: copied as a `str`, not through `Display`.
        subject: message.subject.as_str().to_owned(),
        reply: message.reply.map(|r| r.as_str().to_owned()),
        headers,
        payload: message.payload,
        status: message.status.map(|s| s.as_u16()),
        description: message.description,
    }
}

impl AsyncNatsLink {
    /// Fails once the link was closed, as the trait promises.
    fn check_open(&self) -> Result<(), LinkError> {
        if self.closed.load(Ordering::Acquire) {
            Err(LinkError::Closed)
        } else {
            Ok(())
        }
    }
}

fn other(error: impl std::fmt::Display) -> LinkError {
    LinkError::Other(error.to_string())
}

#[async_trait]
impl NatsLink for AsyncNatsLink {
    async fn publish(&self, message: LinkPublish) -> Result<(), LinkError> {
        self.check_open()?;
        let result = match (message.reply, to_headers(message.headers)) {
            (Some(reply), Some(headers)) => {
                self.client
                    .publish_with_reply_and_headers(
                        message.subject,
                        reply,
                        headers,
                        message.payload,
                    )
                    .await
            }
            (Some(reply), None) => {
                self.client
                    .publish_with_reply(message.subject, reply, message.payload)
                    .await
            }
            (None, Some(headers)) => {
                self.client
                    .publish_with_headers(message.subject, headers, message.payload)
                    .await
            }
            (None, None) => self.client.publish(message.subject, message.payload).await,
        };
        result.map_err(|e| LinkError::NotConnected(e.to_string()))
    }

    async fn flush(&self) -> Result<(), LinkError> {
        self.check_open()?;
        self.client
            .flush()
            .await
            .map_err(|e| LinkError::NotConnected(e.to_string()))
    }

    async fn request(
        &self,
        message: LinkPublish,
        timeout: Duration,
    ) -> Result<LinkMessage, LinkError> {
        self.check_open()?;
        let mut request = async_nats::Request::new()
            .payload(message.payload)
            .timeout(Some(timeout));
        if let Some(headers) = to_headers(message.headers) {
            request = request.headers(headers);
        }
        let subject = message.subject;
        match self.client.send_request(subject.clone(), request).await {
            Ok(reply) => Ok(from_message(reply)),
            Err(error) => Err(match error.kind() {
                async_nats::RequestErrorKind::TimedOut => LinkError::Timeout(timeout),
                async_nats::RequestErrorKind::NoResponders => LinkError::NoResponders(subject),
                _ => other(error),
            }),
        }
    }

    async fn subscribe(&self, subject: &str) -> Result<LinkSubscription, LinkError> {
        self.check_open()?;
        let subscriber = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(other)?;
        Ok(LinkSubscription::buffered(
            subscriber,
            self.subscription_capacity,
        ))
    }

    fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    fn events(&self) -> BoxStream<'static, LinkEvent> {
        event_stream(self.events.subscribe())
    }

    fn max_payload(&self) -> Option<usize> {
        // Asked on every publish. `server_info` clones the whole INFO (strings, URL lists), so it
        // is asked only until the first INFO came (before that it reports 0); from then on the
        // client's own limit, which it updates from every INFO, is a plain atomic load.
        if self.info_seen.load(Ordering::Acquire) {
            return Some(self.client.max_payload());
        }
        let max = Some(self.client.server_info().max_payload).filter(|max| *max > 0);
        if max.is_some() {
            self.info_seen.store(true, Ordering::Release);
        }
        max
    }

    fn is_connected(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Closing is best effort: a connection that cannot drain is dropped anyway.
        if let Err(error) = self.client.drain().await {
            tracing::debug!(%error, "the NATS connection did not drain");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bus's own names and a user's come through alike, and a name given twice keeps both
    /// values in their order.
    #[test]
    fn headers_keep_every_value_of_a_repeated_name() {
        let pair = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        assert!(to_headers(Vec::new()).is_none());
        let map = to_headers(vec![
            pair(framing::ID, "id"),
            pair("Trace", "a"),
            pair(framing::ORIGIN, "node-a"),
            pair("Trace", "b"),
        ])
        .unwrap();
        assert_eq!(map.get(framing::ID).unwrap().as_str(), "id");
        assert_eq!(map.get(framing::ORIGIN).unwrap().as_str(), "node-a");
        let traces: Vec<&str> = map.get_all("Trace").map(|v| v.as_str()).collect();
        assert_eq!(traces, ["a", "b"]);
        let map = to_headers(vec![pair(framing::TIME, "1"), pair(framing::MSG_ID, "m")]).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(framing::MSG_ID).unwrap().as_str(), "m");
    }

    #[test]
    fn server_lists_and_redaction() {
        let servers = parse_servers("nats://a:4222,b:4223").unwrap();
        assert_eq!(servers.len(), 2);
        assert!(parse_servers("").is_err());
        assert_eq!(
            redact_url("nats://user:pw@a:4222,nats://b:1"),
            "nats://***@a:4222,nats://b:1"
        );
        assert_eq!(redact_url("nats://a:4222"), "nats://a:4222");
    }

    #[test]
    fn credentials_come_from_the_url() {
        let servers = parse_servers("nats://a:1,nats://hub:s%40cret@b:2").unwrap();
        assert_eq!(
            url_credentials(&servers),
            (Some(("hub".to_owned(), "s@cret".to_owned())), None)
        );
        let servers = parse_servers("nats://t0ken@a:1").unwrap();
        assert_eq!(url_credentials(&servers), (None, Some("t0ken".to_owned())));
        assert_eq!(
            url_credentials(&parse_servers("nats://a:1").unwrap()),
            (None, None)
        );
    }
}
