//! Where the wire link connects and how it paces its attempts: the server list from the URL,
//! the credentials for `CONNECT`, and the reconnect policy, all settled once from
//! [`LinkOptions`] so the connection task only reads them.
//!
//! The policy follows the production link's async-nats configuration: the first attempt after
//! a connection is lost (or the very first one) goes out at once, every later one after
//! `reconnect_wait` plus a jitter of up to [`RECONNECT_JITTER`] from the link's seeded random
//! generator, so hubs restarted together do not knock on the server in step and a simulation
//! replays the same waits. `max_reconnects` counts attempts since the last connection (`None` or
//! `Some(0)` never gives up, as in async-nats). Attempts rotate through the servers in the order
//! given, so after losing one server the next attempt goes to the next one.

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use secrecy::ExposeSecret;

use super::protocol::ConnectInfo;
use crate::backend::nats::{LinkOptions, parse_servers, url_credentials};
use crate::bus::BusError;

/// The most a reconnect attempt is delayed beyond `reconnect_wait` (the NATS Go client's
/// default jitter for plain TCP).
pub(super) const RECONNECT_JITTER: Duration = Duration::from_millis(100);

/// How often the link pings an idle server when the options do not say (async-nats's default).
pub(super) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(60);

/// The longest ping interval: a year is as good as never, and a clock deadline that far away
/// still fits in an `Instant`.
const MAX_PING_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Everything the connection task needs to know about where and how to connect.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// `host:port` of every server, in the URL's order.
    pub servers: Vec<String>,
    /// The `CONNECT` sent on every connection (with the credentials).
    pub connect: ConnectInfo,
    /// Attempts since the last connection before giving up; `None` never gives up.
    pub max_reconnects: Option<usize>,
    pub reconnect_wait: Duration,
    pub connect_timeout: Duration,
    pub ping_interval: Duration,
    /// Messages one subscription buffers before it drops (slow consumer).
    pub subscription_capacity: usize,
}

impl Plan {
    /// Settles `options`; refuses what this link cannot do (TLS, `.creds` files) with a
    /// [`BusError::Config`] naming the setting.
    pub(super) fn new(options: &LinkOptions) -> Result<Self, BusError> {
        let addresses = parse_servers(&options.url)?;
        if let Some(server) =
            (addresses.iter()).find(|server| server.tls_required() || server.is_websocket())
        {
            return Err(BusError::config(
                "nats.url",
                format!(
                    "{}://{}:{}: the wire link speaks plain TCP only (no TLS, no WebSocket); \
                     use nats:// or the async-nats link",
                    server.scheme(),
                    server.host(),
                    server.port()
                ),
            ));
        }
        if options.require_tls || options.tls_ca_file.is_some() {
            let key = if options.require_tls {
                "nats.require_tls"
            } else {
                "nats.tls_ca_file"
            };
            return Err(BusError::config(
                key,
                "the wire link does not speak TLS; use the async-nats link",
            ));
        }
        if options.credentials_file.is_some() {
            return Err(BusError::config(
                "nats.credentials_file",
                "the wire link cannot sign with a .creds file (JWT and NKey); use a user and \
                 password or a token, or the async-nats link",
            ));
        }
        if options.connect_timeout.is_zero() {
            return Err(BusError::config(
                "nats.connect_timeout",
                "must be greater than zero (the default is 2s)",
            ));
        }
        let servers = addresses
            .iter()
            .map(|server| match server.host() {
                host if host.contains(':') => format!("[{host}]:{}", server.port()),
                host => format!("{host}:{}", server.port()),
            })
            .collect();
        let (url_user_password, url_token) = url_credentials(&addresses);
        let user_password = (options.user_password.as_ref())
            .map(|(user, password)| (user.clone(), password.expose_secret().to_owned()))
            .or(url_user_password);
        let token = (options.token.as_ref())
            .map(|token| token.expose_secret().to_owned())
            .or(url_token);
        let (user, pass) = user_password.unzip();
        let connect = ConnectInfo {
            verbose: false,
            pedantic: false,
            tls_required: false,
            lang: "rust".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: 1,
            echo: true,
            headers: true,
            no_responders: true,
            name: None,
            user,
            pass,
            auth_token: token,
        };
        Ok(Plan {
            servers,
            connect,
            max_reconnects: options.max_reconnects.filter(|max| *max > 0),
            reconnect_wait: options.reconnect_wait,
            connect_timeout: options.connect_timeout,
            ping_interval: options
                .ping_interval
                .filter(|interval| !interval.is_zero())
                .unwrap_or(DEFAULT_PING_INTERVAL)
                .min(MAX_PING_INTERVAL),
            subscription_capacity: options.subscription_capacity.max(1),
        })
    }

    /// True when `failures` attempts since the last connection are all the policy allows.
    pub(super) fn gives_up_after(&self, failures: usize) -> bool {
        self.max_reconnects.is_some_and(|max| failures >= max)
    }

    /// How long to wait before the next attempt, after `failures` attempts failed since the last
    /// connection.
    pub(super) fn delay(&self, failures: usize, rng: &mut StdRng) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let jitter = u64::try_from(RECONNECT_JITTER.as_nanos()).unwrap_or(u64::MAX);
        self.reconnect_wait
            .saturating_add(Duration::from_nanos(rng.random_range(0..=jitter)))
    }

    /// The server of attempt number `attempt` (counting every attempt of the link).
    pub(super) fn server(&self, attempt: usize) -> &str {
        &self.servers[attempt % self.servers.len()]
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use secrecy::SecretString;

    use super::*;

    fn options(url: &str) -> LinkOptions {
        LinkOptions {
            url: url.to_owned(),
            reconnect_wait: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ..LinkOptions::default()
        }
    }

    #[test]
    fn servers_rotate_in_the_urls_order() {
        let plan = Plan::new(&options("nats://a:1,b:2,nats://[::1]:3")).unwrap();
        assert_eq!(plan.servers, ["a:1", "b:2", "[::1]:3"]);
        let order: Vec<&str> = (0..4).map(|attempt| plan.server(attempt)).collect();
        assert_eq!(order, ["a:1", "b:2", "[::1]:3", "a:1"]);
    }

    #[test]
    fn credentials_come_from_the_options_before_the_url() {
        let plan = Plan::new(&options("nats://hub:s%40cret@a:1")).unwrap();
        assert_eq!(plan.connect.user.as_deref(), Some("hub"));
        assert_eq!(plan.connect.pass.as_deref(), Some("s@cret"));
        let plan = Plan::new(&options("nats://t0ken@a:1")).unwrap();
        assert_eq!(plan.connect.auth_token.as_deref(), Some("t0ken"));
        let mut explicit = options("nats://hub:url@a:1");
        explicit.user_password = Some(("ops".into(), SecretString::from("given")));
        explicit.token = Some(SecretString::from("tok"));
        let plan = Plan::new(&explicit).unwrap();
        assert_eq!(plan.connect.user.as_deref(), Some("ops"));
        assert_eq!(plan.connect.pass.as_deref(), Some("given"));
        assert_eq!(plan.connect.auth_token.as_deref(), Some("tok"));
        assert!(
            !format!("{plan:?}").contains("given"),
            "Debug hides secrets"
        );
    }

    #[test]
    fn what_the_link_cannot_do_is_a_config_error_naming_the_setting() {
        let refused = |options: LinkOptions| match Plan::new(&options) {
            Err(BusError::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(refused(options("tls://a:1")), "nats.url");
        assert_eq!(refused(options("ws://a:1")), "nats.url");
        let mut tls = options("nats://a:1");
        tls.require_tls = true;
        assert_eq!(refused(tls), "nats.require_tls");
        let mut ca = options("nats://a:1");
        ca.tls_ca_file = Some("ca.pem".into());
        assert_eq!(refused(ca), "nats.tls_ca_file");
        let mut creds = options("nats://a:1");
        creds.credentials_file = Some("hub.creds".into());
        assert_eq!(refused(creds), "nats.credentials_file");
        let mut instant = options("nats://a:1");
        instant.connect_timeout = Duration::ZERO;
        assert_eq!(refused(instant), "nats.connect_timeout");
        assert_eq!(refused(options("")), "nats.url");
    }

    #[test]
    fn the_first_attempt_is_immediate_and_later_ones_wait_with_seeded_jitter() {
        let plan = Plan::new(&options("nats://a:1")).unwrap();
        let delays = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|failures| plan.delay(failures, &mut rng))
                .collect::<Vec<_>>()
        };
        let first = delays(7);
        assert_eq!(first[0], Duration::ZERO);
        for delay in &first[1..] {
            assert!(
                *delay >= plan.reconnect_wait && *delay <= plan.reconnect_wait + RECONNECT_JITTER,
                "{delay:?}"
            );
        }
        assert_eq!(first, delays(7), "the same seed, the same waits");
        assert_ne!(first, delays(8));
    }

    #[test]
    fn max_reconnects_counts_attempts_and_zero_means_forever() {
        let mut limited = options("nats://a:1");
        limited.max_reconnects = Some(3);
        let plan = Plan::new(&limited).unwrap();
        assert!(!plan.gives_up_after(2));
        assert!(plan.gives_up_after(3));
        for forever in [None, Some(0)] {
            let mut options = options("nats://a:1");
            options.max_reconnects = forever;
            assert!(!Plan::new(&options).unwrap().gives_up_after(usize::MAX));
        }
    }

    #[test]
    fn the_ping_interval_defaults_like_async_nats() {
        assert_eq!(
            Plan::new(&options("nats://a:1")).unwrap().ping_interval,
            DEFAULT_PING_INTERVAL
        );
        let mut quick = options("nats://a:1");
        quick.ping_interval = Some(Duration::from_millis(250));
        assert_eq!(
            Plan::new(&quick).unwrap().ping_interval,
            Duration::from_millis(250)
        );
        let mut never = options("nats://a:1");
        never.ping_interval = Some(Duration::MAX);
        assert_eq!(Plan::new(&never).unwrap().ping_interval, MAX_PING_INTERVAL);
    }
}
