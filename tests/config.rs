//! The configuration promises: documented defaults, three ways in (TOML, environment, URL), and
//! a `BusError::Config { key, reason }` naming the setting to fix for every mistake.

use std::time::Duration;

use hubbus::{BusConfig, BusError, BusKind, HealthState};

fn config_error(result: Result<BusConfig, BusError>) -> String {
    match result {
        Err(error @ BusError::Config { .. }) => error.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_the_plans() {
    let cfg = BusConfig::default();
    assert_eq!(cfg.kind, BusKind::Memory);
    assert_eq!(cfg.namespace, "gohub");
    assert_eq!(cfg.max_payload, 1024 * 1024);
    assert_eq!(cfg.subscriber_queue, 1024);
    assert_eq!(cfg.redis.publish_timeout, Duration::from_millis(50));
    assert_eq!(cfg.nats.publish_timeout, Duration::from_millis(10));
    assert_eq!(cfg.nats.max_reconnects, -1);
    assert_eq!(cfg.nats.reconnect_wait, Duration::from_secs(2));
    assert!(!cfg.nats.jetstream);
    assert_eq!(BusConfig::from_toml_str("").unwrap(), cfg);
}

#[test]
fn defaults_serialise_to_the_documented_toml() {
    insta::assert_snapshot!(toml::to_string(&BusConfig::default()).unwrap());
}

#[test]
fn toml_sets_every_section() {
    let cfg = BusConfig::from_toml_str(
        r#"
        kind = "noop"
        node_id = "hub-a"
        namespace = "chat"
        max_payload = 2048
        subscriber_queue = 16

        [redis]
        url = "redis://10.0.0.1:6380"
        publish_timeout = "75ms"

        [nats]
        url = "nats://n1:4222,n2:4222"
        publish_timeout = "20ms"
        max_reconnects = 5
        reconnect_wait = "500ms"
        jetstream = true
        "#,
    )
    .unwrap();
    assert_eq!(cfg.kind, BusKind::Noop);
    assert_eq!(cfg.node_id.as_deref(), Some("hub-a"));
    assert_eq!(cfg.namespace, "chat");
    assert_eq!(cfg.max_payload, 2048);
    assert_eq!(cfg.subscriber_queue, 16);
    assert_eq!(cfg.redis.url, "redis://10.0.0.1:6380");
    assert_eq!(cfg.redis.publish_timeout, Duration::from_millis(75));
    assert_eq!(cfg.nats.max_reconnects, 5);
    assert_eq!(cfg.nats.reconnect_wait, Duration::from_millis(500));
    assert!(cfg.nats.jetstream);
}

#[test]
fn mistakes_in_toml_name_the_key() {
    let cases = [
        ("unknown top-level key", "knd = \"noop\""),
        ("unknown section key", "[redis]\npublish_timout = \"50ms\""),
        ("unknown kind", "kind = \"kafka\""),
        ("wrong type", "subscriber_queue = \"many\""),
        ("bad duration", "[nats]\npublish_timeout = \"soon\""),
        ("zero timeout", "[redis]\npublish_timeout = \"0s\""),
        ("zero queue", "subscriber_queue = 0"),
        ("huge payload limit", "max_payload = 1000000000"),
        ("bad node id", "node_id = \"hub a\""),
        ("bad namespace", "namespace = \"9lives\""),
        ("bad reconnect count", "[nats]\nmax_reconnects = -2"),
        ("negative size", "max_payload = -1"),
        ("not toml", "kind = "),
    ];
    let report: Vec<String> = cases
        .iter()
        .map(|(name, text)| format!("{name}: {}", config_error(BusConfig::from_toml_str(text))))
        .collect();
    insta::assert_snapshot!(report.join("\n"));
}

#[test]
fn environment_overrides_win_and_ignore_other_variables() {
    let cfg = BusConfig::from_toml_str("kind = \"memory\"\nsubscriber_queue = 8")
        .unwrap()
        .with_env(env(&[
            ("HUBBUS_KIND", "noop"),
            ("hubbus_subscriber_queue", "32"),
            ("HUBBUS_REDIS__PUBLISH_TIMEOUT", "80ms"),
            ("HUBBUS_NATS__JETSTREAM", "true"),
            ("HUBBUS_NODE_ID", "hub-9"),
            ("PATH", "/usr/bin"),
        ]))
        .unwrap();
    assert_eq!(cfg.kind, BusKind::Noop);
    assert_eq!(cfg.subscriber_queue, 32);
    assert_eq!(cfg.redis.publish_timeout, Duration::from_millis(80));
    assert!(cfg.nats.jetstream);
    assert_eq!(cfg.node_id.as_deref(), Some("hub-9"));
}

#[test]
fn mistakes_in_the_environment_name_the_key() {
    let cases = [
        ("unknown key", ("HUBBUS_QUEUE", "4")),
        ("unknown section key", ("HUBBUS_NATS__JET", "true")),
        ("not a section", ("HUBBUS_KIND__X", "1")),
        ("wrong type", ("HUBBUS_NATS__JETSTREAM", "maybe")),
    ];
    let report: Vec<String> = cases
        .iter()
        .map(|(name, var)| {
            format!(
                "{name}: {}",
                config_error(BusConfig::default().with_env(env(&[*var])))
            )
        })
        .collect();
    insta::assert_snapshot!(report.join("\n"));
}

#[test]
fn urls_select_the_backend_and_set_top_level_keys() {
    assert_eq!(
        BusConfig::from_url("memory://").unwrap().kind,
        BusKind::Memory
    );
    assert_eq!(BusConfig::from_url("noop://").unwrap().kind, BusKind::Noop);
    let cfg =
        BusConfig::from_url("memory://?node_id=hub-b&subscriber_queue=4&max_payload=10").unwrap();
    assert_eq!(cfg.node_id.as_deref(), Some("hub-b"));
    assert_eq!(cfg.subscriber_queue, 4);
    assert_eq!(cfg.max_payload, 10);
}

#[test]
fn mistakes_in_urls_name_the_key() {
    let cases = [
        ("not a url", "memory"),
        ("unknown scheme", "kafka://broker:9092"),
        ("host on memory", "memory://somewhere"),
        ("unknown parameter", "memory://?colour=blue"),
        ("section parameter", "noop://?redis.url=x"),
        ("bad value", "memory://?subscriber_queue=lots"),
    ];
    let report: Vec<String> = cases
        .iter()
        .map(|(name, url)| format!("{name}: {}", config_error(BusConfig::from_url(url))))
        .collect();
    insta::assert_snapshot!(report.join("\n"));
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("hubbus-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bus.toml");
    std::fs::write(&path, "kind = \"noop\"\nnode_id = \"from-file\"").unwrap();
    let cfg = BusConfig::load(&path).unwrap();
    assert_eq!(cfg.kind, BusKind::Noop);
    std::fs::remove_dir_all(&dir).unwrap();
    let missing = config_error(BusConfig::load(dir.join("absent.toml")));
    assert!(missing.contains("<file>"), "{missing}");
}

#[tokio::test]
async fn connect_builds_the_configured_backend() {
    let registry = prometheus::Registry::new();
    let cfg = BusConfig::from_url("noop://?node_id=solo").unwrap();
    let bus = hubbus::connect(&cfg, &registry).await.unwrap();
    assert_eq!(bus.node_id().as_str(), "solo");
    assert_eq!(bus.health().state, HealthState::Connected);
    let mut sub = bus.subscribe("room1").await.unwrap();
    bus.publish("room1", "x".into()).await.unwrap();
    assert!(sub.try_recv().is_none(), "noop delivers nothing");

    // A second bus cannot register the same collectors into the same registry...
    let again = hubbus::connect(&cfg, &registry).await;
    assert!(matches!(again, Err(BusError::Config { ref key, .. }) if key == "namespace"));
    // ...but can share the first one's metrics.
    let metrics = hubbus::BusMetrics::unregistered("other").unwrap();
    let memory = hubbus::connect_with_metrics(&BusConfig::default(), metrics)
        .await
        .unwrap();
    assert!(memory.node_id().as_str().starts_with("node-"));
}

#[cfg(feature = "nats")]
#[test]
fn nats_urls_carry_servers_and_settings() {
    let cfg = BusConfig::from_url(
        "nats://a:4222,b:4223?jetstream=true&ack_wait=5s&node_id=hub-n&reconnect_wait=100ms",
    )
    .unwrap();
    assert_eq!(cfg.kind, BusKind::Nats);
    assert_eq!(cfg.nats.url, "nats://a:4222,b:4223");
    assert!(cfg.nats.jetstream);
    assert_eq!(cfg.nats.ack_wait, Duration::from_secs(5));
    assert_eq!(cfg.nats.reconnect_wait, Duration::from_millis(100));
    assert_eq!(cfg.node_id.as_deref(), Some("hub-n"));
    let options = cfg.nats.options();
    assert_eq!(options.link.max_reconnects, None, "-1 reconnects forever");
    let jetstream = options.jetstream.expect("jetstream options");
    assert_eq!(jetstream.ack_wait, Duration::from_secs(5));
    assert_eq!(jetstream.max_bytes, None);
    assert!(
        BusConfig::from_url("nats://a:4222")
            .unwrap()
            .nats
            .options()
            .jetstream
            .is_none()
    );

    let unknown = config_error(BusConfig::from_url("nats://a:4222?colour=blue"));
    assert!(
        unknown.contains("unknown NATS URL parameter `colour`"),
        "{unknown}"
    );
    let zero = config_error(BusConfig::from_url(
        "nats://a:4222?jetstream=true&ack_wait=0s",
    ));
    assert!(zero.contains("nats.ack_wait"), "{zero}");
}

#[cfg(feature = "redis")]
#[test]
fn redis_urls_keep_their_own_parameters_and_take_ours() {
    let cfg = BusConfig::from_url(
        "redis+sentinel://s1,s2/main?sentinel_password=x&publish_timeout=80ms&node_id=hub-r",
    )
    .unwrap();
    assert_eq!(cfg.kind, BusKind::Redis);
    assert_eq!(
        cfg.redis.url,
        "redis+sentinel://s1,s2/main?sentinel_password=x"
    );
    assert_eq!(cfg.redis.publish_timeout, Duration::from_millis(80));
    assert_eq!(cfg.node_id.as_deref(), Some("hub-r"));
    let bad = config_error(BusConfig::from_url("redis://h?timeout=1"));
    assert!(
        bad.contains("redis.url") && bad.contains("unknown URL parameter"),
        "{bad}"
    );
}
