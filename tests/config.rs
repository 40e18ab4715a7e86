//! The configuration promises: documented defaults; layers (defaults, TOML, environment) and
//! URLs whose values are read as the settings' types; a `BusError::Config { key, reason }`
//! naming a key that exists for every mistake; tooling variables that never touch the
//! configuration; and secrets that never show.

mod support;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use hubbus::config::PublishMode;
use hubbus::{BusConfig, BusError, BusKind, HealthState};
use secrecy::ExposeSecret;

fn config_error(result: Result<BusConfig, BusError>) -> String {
    match result {
        Err(error @ BusError::Config { .. }) => error.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[cfg(any(feature = "redis", feature = "nats"))]
fn config_key(result: Result<impl std::fmt::Debug, BusError>) -> String {
    match result {
        Err(BusError::Config { key, .. }) => key,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// The configuration as its TOML, to compare two configurations.
fn as_toml(cfg: &BusConfig) -> String {
    toml::to_string(cfg).unwrap()
}

#[cfg(feature = "nats")]
/// Whether the dotted `key` names a setting of the documented TOML (the serialized defaults).
fn exists_in_toml(key: &str) -> bool {
    let documented: toml::Table = toml::from_str(&as_toml(&BusConfig::default())).unwrap();
    let mut parts = key.split('.').peekable();
    let mut table = &documented;
    while let Some(part) = parts.next() {
        match (table.get(part), parts.peek()) {
            (Some(toml::Value::Table(inner)), Some(_)) => table = inner,
            (Some(value), None) => return !value.is_table(),
            _ => return false,
        }
    }
    false
}

/// Set in the child process of [`in_child_process`].
const CHILD: &str = "HUBBUS_TEST_CHILD";

/// Runs the test `name` again in a child process with `vars` added to an environment without
/// any other `HUBBUS_*` variable, and asserts that it passed there. Tests about the process
/// environment run this way because a test must not change its own process's environment:
/// the other tests run alongside.
fn in_child_process(name: &str, vars: Vec<(OsString, OsString)>) {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", name, "--test-threads=1", "--nocapture"]);
    for (var, _) in std::env::vars_os() {
        if var
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("HUBBUS_")
        {
            command.env_remove(var);
        }
    }
    command.env(CHILD, "1").envs(vars);
    let output = command.output().expect("run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed in its child process:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn os(text: &str) -> OsString {
    OsString::from(text)
}

#[test]
fn defaults_are_the_plans() {
    let cfg = BusConfig::default();
    assert_eq!(cfg.kind, BusKind::Memory);
    assert_eq!(cfg.namespace, "gohub");
    assert_eq!(cfg.max_payload, 1024 * 1024);
    assert_eq!(cfg.subscriber_queue, 1024);
    assert_eq!(cfg.redis.publish_timeout, Duration::from_millis(50));
    assert_eq!(cfg.nats.publish_timeout, Duration::from_millis(50));
    assert_eq!(cfg.nats.max_reconnects, -1);
    assert_eq!(cfg.nats.reconnect_wait, Duration::from_secs(2));
    assert_eq!(cfg.nats.publish_mode, PublishMode::Server);
    assert_eq!(
        cfg.nats.subscription_capacity, 65_536,
        "the NATS client's own default"
    );
    assert!(!cfg.nats.jetstream);
    assert!(cfg.validate().is_ok());
    assert_eq!(
        as_toml(&BusConfig::from_toml_str("").unwrap()),
        as_toml(&cfg)
    );
    assert_eq!(
        as_toml(&BusConfig::from_env_vars(Vec::<(OsString, OsString)>::new()).unwrap()),
        as_toml(&cfg)
    );
}

#[test]
fn defaults_serialise_to_the_documented_toml() {
    insta::assert_snapshot!(as_toml(&BusConfig::default()));
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
        token = "t0ken"
        stream_replicas = 3
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
    assert_eq!(cfg.nats.token.unwrap().expose_secret(), "t0ken");
    assert_eq!(cfg.nats.stream_replicas, 3);
}

#[test]
fn mistakes_in_toml_name_the_key() {
    let cases = [
        ("unknown top-level key", "knd = \"noop\""),
        ("unknown section key", "[redis]\npublish_timout = \"50ms\""),
        ("unknown section", "[kafka]\nurl = \"x\""),
        ("unknown kind", "kind = \"kafka\""),
        ("wrong type", "subscriber_queue = \"many\""),
        ("number for a string", "node_id = 42"),
        ("bad duration", "[nats]\npublish_timeout = \"soon\""),
        ("zero timeout", "[redis]\npublish_timeout = \"0s\""),
        ("zero queue", "subscriber_queue = 0"),
        ("huge payload limit", "max_payload = 1000000000"),
        ("bad node id", "node_id = \"hub a\""),
        ("reserved node id", "node_id = \"external\""),
        ("unknown foreign policy", "foreign_messages = \"keep\""),
        ("bad namespace", "namespace = \"9lives\""),
        ("bad reconnect count", "[nats]\nmax_reconnects = -2"),
        (
            "bad core subject prefix",
            "[nats]\nsubject_prefix = \"hub.>\"",
        ),
        ("negative size", "max_payload = -1"),
        ("not toml", "kind = "),
        (
            "not toml, later line",
            "kind = \"noop\"\n[nats]\njetstream = yes",
        ),
    ];
    let report: Vec<String> = cases
        .iter()
        .map(|(name, text)| format!("{name}: {}", config_error(BusConfig::from_toml_str(text))))
        .collect();
    insta::assert_snapshot!(report.join("\n"));
}

#[test]
fn environment_overrides_toml_and_ignores_other_variables() {
    let cfg = BusConfig::from_toml_and_env_vars(
        "kind = \"memory\"\nsubscriber_queue = 8\nnamespace = \"chat\"",
        [
            ("HUBBUS_KIND", "noop"),
            ("hubbus_subscriber_queue", "32"),
            ("HUBBUS_REDIS__PUBLISH_TIMEOUT", "80ms"),
            ("HUBBUS_NATS__JETSTREAM", "true"),
            ("HUBBUS_NODE_ID", "hub-9"),
            ("PATH", "/usr/bin"),
            ("HUBBUS", "not ours: no prefix"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.kind, BusKind::Noop);
    assert_eq!(cfg.subscriber_queue, 32);
    assert_eq!(
        cfg.namespace, "chat",
        "what the environment leaves alone stays"
    );
    assert_eq!(cfg.redis.publish_timeout, Duration::from_millis(80));
    assert!(cfg.nats.jetstream);
    assert_eq!(cfg.node_id.as_deref(), Some("hub-9"));
}

#[test]
fn environment_values_are_read_as_the_settings_types() {
    let cfg = BusConfig::from_env_vars([
        ("HUBBUS_NODE_ID", "42"),
        ("HUBBUS_NAMESPACE", "hub_1"),
        ("HUBBUS_NATS__TOKEN", "12345"),
        ("HUBBUS_MAX_PAYLOAD", "1024"),
        ("HUBBUS_NATS__JETSTREAM", "true"),
        ("HUBBUS_NATS__MAX_RECONNECTS", "-1"),
        ("HUBBUS_NATS__STREAM_MAX_BYTES", "1048576"),
        ("HUBBUS_NATS__STREAM", "007"),
        ("HUBBUS_NATS__SUBJECT_PREFIX", "true"),
        ("HUBBUS_REDIS__PUBLISH_TIMEOUT", "80ms"),
        ("HUBBUS_REDIS__TLS_CA_FILE", "/etc/ssl/ca.pem"),
    ])
    .unwrap();
    assert_eq!(cfg.node_id.as_deref(), Some("42"));
    assert_eq!(cfg.namespace, "hub_1");
    assert_eq!(cfg.nats.token.unwrap().expose_secret(), "12345");
    assert_eq!(cfg.max_payload, 1024);
    assert!(cfg.nats.jetstream);
    assert_eq!(cfg.nats.max_reconnects, -1);
    assert_eq!(cfg.nats.stream_max_bytes, 1_048_576);
    assert_eq!(
        cfg.nats.stream, "007",
        "a string stays a string, leading zero and all"
    );
    assert_eq!(cfg.nats.subject_prefix, "true");
    assert_eq!(cfg.redis.publish_timeout, Duration::from_millis(80));
    assert_eq!(
        cfg.redis.tls_ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ssl/ca.pem"))
    );
}

#[test]
fn every_setting_can_be_set_from_the_environment() {
    // A configuration with no default value left, written out as environment variables, reads
    // back the same: every key and every type of the schema goes through the environment.
    let text = r#"
        kind = "noop"
        node_id = "7"
        namespace = "n7"
        max_payload = 7
        subscriber_queue = 7
        lag_timeout = "7s"
        wait_for_connection = false
        foreign_messages = "drop"
        [redis]
        url = "redis://r7:7"
        publish_timeout = "7ms"
        connect_timeout = "7s"
        reconnect_backoff = "7ms"
        reconnect_backoff_max = "7s"
        liveness_interval = "7s"
        liveness_timeout = "7s"
        tls_ca_file = "/7.pem"
        [nats]
        url = "nats://n7:7"
        publish_timeout = "7ms"
        publish_mode = "flush"
        framing = "envelope"
        max_reconnects = 7
        reconnect_wait = "7s"
        connect_timeout = "7s"
        ping_interval = "7s"
        subscription_capacity = 7
        jetstream = true
        subject_prefix = "s7"
        credentials_file = "/7.creds"
        tls_ca_file = "/7.pem"
        require_tls = true
        stream = "S7"
        stream_subject_prefix = "js7"
        stream_max_age = "7h"
        stream_max_bytes = 7
        stream_replicas = 3
        ack_timeout = "7s"
        ack_wait = "7s"
        max_deliver = 7
        pull_batch = 7
        pull_expires = "7s"
        max_ack_pending = 7
        inactive_threshold = "77s"
        resume_window = "7s"
        api_timeout = "7s"
    "#;
    let from_toml = BusConfig::from_toml_str(text).unwrap();
    let table: toml::Table = toml::from_str(text).unwrap();
    let mut vars = Vec::new();
    for (key, value) in &table {
        let mut add = |name: String, value: &toml::Value| {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vars.push((name.to_ascii_uppercase(), text));
        };
        match value {
            toml::Value::Table(section) => {
                for (inner, value) in section {
                    add(format!("HUBBUS_{key}__{inner}"), value);
                }
            }
            value => add(format!("HUBBUS_{key}"), value),
        }
    }
    let documented: toml::Table = toml::from_str(&as_toml(&BusConfig::default())).unwrap();
    for (key, value) in &documented {
        match value {
            toml::Value::Table(section) => {
                for inner in section.keys() {
                    assert!(
                        table[key].get(inner).is_some(),
                        "{key}.{inner} is not covered"
                    );
                }
            }
            _ => assert!(table.contains_key(key), "{key} is not covered"),
        }
    }
    let from_env = BusConfig::from_env_vars(vars).unwrap();
    assert_eq!(as_toml(&from_env), as_toml(&from_toml));
}

#[test]
fn non_unicode_environment_variables_never_panic() {
    let not_unicode = || OsString::from_vec(b"caf\xe9".to_vec());
    // Someone else's variable is none of our business, name or value.
    let cfg = BusConfig::from_env_vars([
        (not_unicode(), os("x")),
        (os("LANG_OLD"), not_unicode()),
        (os("HUBBUS_KIND"), os("noop")),
    ])
    .unwrap();
    assert_eq!(cfg.kind, BusKind::Noop);
    // ...but one of ours is reported, by name.
    let value = config_error(BusConfig::from_env_vars([(
        os("HUBBUS_NATS__URL"),
        not_unicode(),
    )]));
    assert!(
        value.contains("`nats.url`") && value.contains("HUBBUS_NATS__URL"),
        "{value}"
    );
    let mut name = b"HUBBUS_".to_vec();
    name.extend_from_slice(b"caf\xe9");
    let name = config_error(BusConfig::from_env_vars([(
        OsString::from_vec(name),
        os("1"),
    )]));
    assert!(name.contains("HUBBUS_caf"), "{name}");
}

#[test]
fn from_env_reads_the_process_environment_with_non_unicode_variables_in_it() {
    if is_child() {
        let cfg = BusConfig::from_env().expect("the environment is valid");
        assert_eq!(cfg.kind, BusKind::Noop);
        assert_eq!(cfg.node_id.as_deref(), Some("42"));
        return;
    }
    in_child_process(
        "from_env_reads_the_process_environment_with_non_unicode_variables_in_it",
        vec![
            (os("HUBBUS_KIND"), os("noop")),
            (os("HUBBUS_NODE_ID"), os("42")),
            (os("LEGACY_LATIN1"), OsString::from_vec(b"caf\xe9".to_vec())),
            (OsString::from_vec(b"LEGACY_\xe9".to_vec()), os("1")),
        ],
    );
}

/// The tooling variables the docs tell developers to set (test servers, simulation seeds).
const TOOLING_VARIABLES: [(&str, &str); 6] = [
    ("HUBBUS_TEST_REDIS_SERVER", "/usr/bin/redis-server"),
    ("HUBBUS_TEST_NATS_SERVER", "/usr/sbin/nats-server"),
    ("HUBBUS_TEST_SKIP_REAL_SERVERS", "1"),
    ("HUBBUS_TEST_SIM_SEED", "17"),
    ("HUBBUS_TEST_SIM_SEEDS", "200"),
    ("hubbus_test_anything_else", "reserved too"),
];

#[test]
fn tooling_variables_do_not_affect_the_configuration() {
    let mut vars: Vec<(&str, &str)> = TOOLING_VARIABLES.to_vec();
    vars.push(("HUBBUS_KIND", "noop"));
    let cfg = BusConfig::from_env_vars(vars).unwrap();
    let expected = BusConfig {
        kind: BusKind::Noop,
        ..BusConfig::default()
    };
    assert_eq!(as_toml(&cfg), as_toml(&expected));
}

#[test]
fn from_env_works_while_the_tooling_variables_are_set() {
    if is_child() {
        for (name, _) in TOOLING_VARIABLES {
            assert!(std::env::var_os(name).is_some(), "{name} is set");
        }
        let cfg = BusConfig::from_env().expect("tooling variables are not settings");
        assert_eq!(cfg.kind, BusKind::Noop);
        return;
    }
    let mut vars: Vec<(OsString, OsString)> = TOOLING_VARIABLES
        .iter()
        .map(|(name, value)| (os(name), os(value)))
        .collect();
    vars.push((os("HUBBUS_KIND"), os("noop")));
    in_child_process("from_env_works_while_the_tooling_variables_are_set", vars);
}

#[test]
fn mistakes_in_the_environment_name_the_key() {
    let cases: Vec<(&str, Vec<(OsString, OsString)>)> = vec![
        ("unknown key", vec![(os("HUBBUS_QUEUE"), os("4"))]),
        (
            "unknown section key",
            vec![(os("HUBBUS_NATS__JET"), os("true"))],
        ),
        ("not a section", vec![(os("HUBBUS_KIND__X"), os("1"))]),
        (
            "wrong type",
            vec![(os("HUBBUS_NATS__JETSTREAM"), os("maybe"))],
        ),
        ("negative size", vec![(os("HUBBUS_MAX_PAYLOAD"), os("-1"))]),
        (
            "bad duration",
            vec![(os("HUBBUS_REDIS__PUBLISH_TIMEOUT"), os("soon"))],
        ),
        (
            "out of range",
            vec![(os("HUBBUS_NATS__STREAM_REPLICAS"), os("9"))],
        ),
        ("empty part", vec![(os("HUBBUS_NATS____URL"), os("x"))]),
        ("no key", vec![(os("HUBBUS_"), os("x"))]),
        (
            "set twice",
            vec![
                (os("HUBBUS_KIND"), os("noop")),
                (os("hubbus_kind"), os("memory")),
            ],
        ),
        (
            "value not unicode",
            vec![(os("HUBBUS_NODE_ID"), OsString::from_vec(b"\xff".to_vec()))],
        ),
    ];
    let report: Vec<String> = cases
        .into_iter()
        .map(|(name, vars)| format!("{name}: {}", config_error(BusConfig::from_env_vars(vars))))
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
    assert_eq!(BusConfig::from_url("noop:///").unwrap().kind, BusKind::Noop);
    let cfg =
        BusConfig::from_url("memory://?node_id=hub-b&subscriber_queue=4&max_payload=10").unwrap();
    assert_eq!(cfg.node_id.as_deref(), Some("hub-b"));
    assert_eq!(cfg.subscriber_queue, 4);
    assert_eq!(cfg.max_payload, 10);
}

#[test]
fn url_query_values_are_read_as_the_settings_types() {
    let cfg = BusConfig::from_url("memory://?node_id=42&namespace=n%5F1").unwrap();
    assert_eq!(cfg.node_id.as_deref(), Some("42"));
    assert_eq!(cfg.namespace, "n_1", "percent-decoded");
    #[cfg(feature = "redis")]
    {
        let cfg = BusConfig::from_url("redis://h?node_id=42&publish_timeout=80ms").unwrap();
        assert_eq!(cfg.node_id.as_deref(), Some("42"));
        assert_eq!(cfg.redis.publish_timeout, Duration::from_millis(80));
        assert_eq!(cfg.redis.url, "redis://h");
    }
    #[cfg(feature = "nats")]
    {
        let cfg = BusConfig::from_url(
            "nats://h:4222?node_id=007&jetstream=true&max_deliver=-1&stream_replicas=3&stream=123",
        )
        .unwrap();
        assert_eq!(cfg.node_id.as_deref(), Some("007"));
        assert!(cfg.nats.jetstream);
        assert_eq!(cfg.nats.max_deliver, -1);
        assert_eq!(cfg.nats.stream_replicas, 3);
        assert_eq!(cfg.nats.stream, "123");
    }
}

#[test]
fn the_nats_publish_mode_and_subscription_capacity_come_from_every_layer() {
    let toml =
        BusConfig::from_toml_str("[nats]\npublish_mode = \"buffered\"\nsubscription_capacity = 1")
            .unwrap();
    assert_eq!(toml.nats.publish_mode, PublishMode::Buffered);
    assert_eq!(
        toml.nats.subscription_capacity, 1,
        "1 is the least accepted"
    );
    let env = BusConfig::from_toml_and_env_vars(
        "[nats]\npublish_mode = \"buffered\"",
        [
            ("HUBBUS_NATS__PUBLISH_MODE", "flush"),
            ("HUBBUS_NATS__SUBSCRIPTION_CAPACITY", "8192"),
        ],
    )
    .unwrap();
    assert_eq!(
        env.nats.publish_mode,
        PublishMode::Flush,
        "the environment wins"
    );
    assert_eq!(env.nats.subscription_capacity, 8192);
    for (text, mode) in [
        ("server", PublishMode::Server),
        ("flush", PublishMode::Flush),
        ("buffered", PublishMode::Buffered),
    ] {
        #[cfg(feature = "nats")]
        {
            let cfg = BusConfig::from_url(&format!(
                "nats://h:4222?publish_mode={text}&subscription_capacity=3"
            ))
            .unwrap();
            assert_eq!(cfg.nats.publish_mode, mode);
            assert_eq!(cfg.nats.subscription_capacity, 3);
            assert_eq!(cfg.nats.url, "nats://h:4222");
            let options = cfg.nats.options();
            assert_eq!(options.publish_mode, mode);
            assert_eq!(options.link.subscription_capacity, 3);
        }
        assert_eq!(mode.to_string(), text);
    }
    #[cfg(feature = "nats")]
    {
        let defaults = BusConfig::default().nats.options();
        assert_eq!(defaults.publish_mode, PublishMode::Server);
        assert_eq!(defaults.link.subscription_capacity, 65_536);
    }
}

#[test]
fn bad_nats_publish_modes_and_subscription_capacities_name_their_key() {
    let key = |result: Result<BusConfig, BusError>| match result {
        Err(BusError::Config { key, reason }) => format!("{key}: {reason}"),
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let mut report = vec![
        key(BusConfig::from_toml_str("[nats]\npublish_mode = \"async\"")),
        key(BusConfig::from_toml_str("[nats]\npublish_mode = 1")),
        key(BusConfig::from_toml_str(
            "[nats]\nsubscription_capacity = 0",
        )),
        key(BusConfig::from_toml_str(
            "[nats]\nsubscription_capacity = -1",
        )),
        key(BusConfig::from_env_vars([(
            "HUBBUS_NATS__PUBLISH_MODE",
            "Server",
        )])),
        key(BusConfig::from_env_vars([(
            "HUBBUS_NATS__SUBSCRIPTION_CAPACITY",
            "0",
        )])),
        key(BusConfig::from_env_vars([(
            "HUBBUS_NATS__SUBSCRIPTION_CAPACITY",
            "lots",
        )])),
    ];
    #[cfg(feature = "nats")]
    {
        report.push(key(BusConfig::from_url("nats://h:4222?publish_mode=")));
        report.push(key(BusConfig::from_url(
            "nats://h:4222?subscription_capacity=0",
        )));
    }
    for line in &report {
        let expected = if line.contains("mode") {
            "nats.publish_mode"
        } else {
            "nats.subscription_capacity"
        };
        assert!(line.starts_with(expected), "{line}");
    }
    assert!(
        report[0].contains("`server`, `flush`, `buffered`"),
        "{}",
        report[0]
    );
    assert!(report[2].contains("at least 1"), "{}", report[2]);
    assert!(
        report[4].contains("HUBBUS_NATS__PUBLISH_MODE"),
        "{}",
        report[4]
    );
}

#[test]
fn mistakes_in_urls_name_the_key() {
    let cases = [
        ("not a url", "memory"),
        ("unknown scheme", "kafka://broker:9092"),
        ("host on memory", "memory://somewhere"),
        ("unknown parameter", "memory://?colour=blue"),
        ("section parameter", "noop://?redis.url=x"),
        ("kind parameter", "noop://?kind=memory"),
        ("bad value", "memory://?subscriber_queue=lots"),
        ("given twice", "memory://?node_id=a&node_id=b"),
        ("not utf-8", "memory://?node_id=%ff"),
    ];
    let report: Vec<String> = cases
        .iter()
        .map(|(name, url)| format!("{name}: {}", config_error(BusConfig::from_url(url))))
        .collect();
    insta::assert_snapshot!(report.join("\n"));
}

#[test]
fn load_reads_a_file_under_the_environment_and_reports_a_missing_one() {
    const DIR: &str = "HUBBUS_TEST_CONFIG_DIR";
    if is_child() {
        let path = std::path::PathBuf::from(std::env::var_os(DIR).unwrap()).join("bus.toml");
        let cfg = BusConfig::load(&path).unwrap();
        assert_eq!(cfg.kind, BusKind::Noop, "from the file");
        assert_eq!(
            cfg.node_id.as_deref(),
            Some("from-env"),
            "the environment wins"
        );
        return;
    }
    let dir = support::ScratchDir::new("config-load");
    let path = dir.0.join("bus.toml");
    std::fs::write(&path, "kind = \"noop\"\nnode_id = \"from-file\"").unwrap();
    in_child_process(
        "load_reads_a_file_under_the_environment_and_reports_a_missing_one",
        vec![
            (os("HUBBUS_NODE_ID"), os("from-env")),
            (os(DIR), dir.0.clone().into_os_string()),
        ],
    );
    let missing = config_error(BusConfig::load(dir.0.join("absent.toml")));
    assert!(missing.contains("<file>"), "{missing}");
    std::fs::write(&path, "kind = \"noop\"\n\nnode_id = ").unwrap();
    let broken = config_error(BusConfig::load(&path));
    assert!(
        broken.contains("<toml>") && broken.contains("bus.toml line 3"),
        "{broken}"
    );
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn jetstream_mistakes_name_keys_that_exist_in_the_toml() {
    type Mistake = (&'static str, fn(&mut hubbus::config::NatsConfig));
    let mistakes: [Mistake; 17] = [
        ("stream name with a dot", |n| n.stream = "a.b".into()),
        ("stream name with a space", |n| n.stream = "a b".into()),
        ("stream name with a slash", |n| n.stream = "a/b".into()),
        ("empty stream name", |n| n.stream = String::new()),
        ("wildcard subject prefix", |n| {
            n.stream_subject_prefix = "js.>".into()
        }),
        ("empty token in subject prefix", |n| {
            n.stream_subject_prefix = "js..x".into()
        }),
        ("no replicas", |n| n.stream_replicas = 0),
        ("too many replicas", |n| n.stream_replicas = 6),
        ("zero ack timeout", |n| n.ack_timeout = Duration::ZERO),
        ("zero ack wait", |n| n.ack_wait = Duration::ZERO),
        ("sub-millisecond pull expiry", |n| {
            n.pull_expires = Duration::from_micros(500)
        }),
        ("zero pull batch", |n| n.pull_batch = 0),
        ("zero max deliver", |n| n.max_deliver = 0),
        ("max deliver below -1", |n| n.max_deliver = -2),
        ("zero max bytes", |n| n.stream_max_bytes = 0),
        ("max bytes below -1", |n| n.stream_max_bytes = -5),
        ("core subject prefix", |n| n.subject_prefix = "a b".into()),
    ];
    let mut report = Vec::new();
    for (name, mistake) in mistakes {
        let mut cfg = BusConfig::from_url("nats://127.0.0.1:1?jetstream=true").unwrap();
        mistake(&mut cfg.nats);
        let error = cfg.validate().expect_err(name);
        let BusError::Config { key, .. } = &error else {
            panic!("{name}: {error:?}");
        };
        assert!(exists_in_toml(key), "{name}: `{key}` is not a TOML key");
        // Building the bus refuses it the same way, before anything connects.
        let registry = prometheus::Registry::new();
        let connected = hubbus::connect(&cfg, &registry).await;
        assert_eq!(config_key(connected), *key, "{name}");
        report.push(format!("{name}: {error}"));
    }
    insta::assert_snapshot!(report.join("\n"));
}

#[cfg(feature = "nats")]
#[test]
fn jetstream_settings_at_their_limits_are_accepted() {
    let cfg = BusConfig::from_toml_str(
        "[nats]\njetstream = true\nstream = \"HUB-1_x\"\nstream_subject_prefix = \"a.b-c\"\n\
         stream_replicas = 5\nmax_deliver = 1\nstream_max_bytes = 1\nstream_max_age = \"0s\"\n\
         ack_wait = \"1ms\"\npull_expires = \"1ms\"\nack_timeout = \"1ms\"\npull_batch = 1",
    )
    .unwrap();
    let js = cfg.nats.options().jetstream.expect("jetstream options");
    assert_eq!(js.replicas, 5);
    assert_eq!(js.max_deliver, Some(1));
    assert_eq!(js.max_bytes, Some(1));
    assert_eq!(js.max_age, Duration::ZERO);
}

#[test]
#[cfg_attr(
    not(any(feature = "redis", feature = "nats")),
    allow(unused_mut, reason = "the broker cases add to the lists")
)]
fn secrets_never_appear_in_debug_display_or_errors() {
    // Every secret below contains one of these.
    const SECRETS: [&str; 2] = ["s3cret", "86420"];
    let assert_clean = |surface: &str, text: &str| {
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{surface} shows the secret {secret:?}: {text}"
            );
        }
    };

    // Configurations holding secrets in URLs (userinfo, a second server, a query parameter)
    // and in fields, from every way in.
    let mut configs = vec![
        BusConfig::from_toml_str(
            r#"
            [redis]
            url = "redis+sentinel://app:s3cret-pw@s1,s2/main?sentinel_password=s3cret-sentinel"
            [nats]
            url = "nats://n1:4222,hub:s3cret-pw@n2:4222"
            token = "s3cret-token"
            "#,
        )
        .unwrap(),
        BusConfig::from_env_vars([
            ("HUBBUS_NATS__TOKEN", "86420"),
            ("HUBBUS_REDIS__URL", "rediss://:s3cret-pw@cache:6380/2"),
            ("HUBBUS_NATS__URL", "nats://s3cret-token@n1:4222"),
        ])
        .unwrap(),
    ];
    #[cfg(feature = "redis")]
    configs.push(BusConfig::from_url("redis://app:s3cret-pw@cache:6379/1?node_id=a").unwrap());
    #[cfg(feature = "nats")]
    configs.push(BusConfig::from_url("nats://hub:s3cret-pw@n1:4222?jetstream=true").unwrap());
    for cfg in &configs {
        assert_clean("Debug of BusConfig", &format!("{cfg:?}"));
        assert_clean("Debug of BusConfig (pretty)", &format!("{cfg:#?}"));
        assert_clean("Debug of RedisConfig", &format!("{:?}", cfg.redis));
        assert_clean("Debug of NatsConfig", &format!("{:?}", cfg.nats));
        assert_clean("Debug of the token", &format!("{:?}", cfg.nats.token));
        #[cfg(feature = "redis")]
        {
            let options = cfg.redis.options().unwrap();
            assert_clean("Debug of RedisOptions", &format!("{options:?}"));
            assert_clean("Debug of RedisTarget", &format!("{:?}", options.target));
        }
        #[cfg(feature = "nats")]
        {
            let options = cfg.nats.options();
            assert_clean("Debug of NatsOptions", &format!("{options:?}"));
            assert_clean("Debug of LinkOptions", &format!("{:?}", options.link));
        }
    }
    // Serializing writes URLs as given (they are the configuration) but never the token.
    let toml = as_toml(&configs[0]);
    assert!(!toml.contains("s3cret-token"), "{toml}");

    // Errors about values that carry credentials.
    let mut errors: Vec<(&str, BusError)> = vec![
        (
            "not a URL",
            BusConfig::from_url("app:s3cret-pw@cache:6379").unwrap_err(),
        ),
        (
            "bad TOML on a token line",
            BusConfig::from_toml_str("[nats]\ntoken = s3cret-token").unwrap_err(),
        ),
        (
            "token of the wrong type",
            BusConfig::from_toml_str("[nats]\ntoken = 86420").unwrap_err(),
        ),
        (
            "token as a list",
            BusConfig::from_toml_str("[nats]\ntoken = [\"s3cret-token\"]").unwrap_err(),
        ),
        (
            "token as a section from the environment",
            BusConfig::from_env_vars([("HUBBUS_NATS__TOKEN__X", "s3cret-token")]).unwrap_err(),
        ),
        (
            "misspelt token",
            BusConfig::from_env_vars([("HUBBUS_NATS__TOKNE", "s3cret-token")]).unwrap_err(),
        ),
    ];
    #[cfg(feature = "redis")]
    errors.extend([
        (
            "Redis URL with a bad path",
            BusConfig::from_url("redis://app:s3cret-pw@cache:6379/0/9").unwrap_err(),
        ),
        (
            "Redis URL with a bad value",
            BusConfig::from_url("redis://app:s3cret-pw@cache?publish_timeout=soon").unwrap_err(),
        ),
        (
            "Redis URL with an unknown parameter",
            BusConfig::from_toml_str(
                "kind = \"redis\"\n[redis]\nurl = \"redis+sentinel://s1/m?sentinel_password=s3cret-sentinel&x=1\"",
            )
            .unwrap_err(),
        ),
        (
            "Redis password with a stray `?`",
            BusConfig::from_url("redis://app:s3cret?-pw@cache:6379/0/9").unwrap_err(),
        ),
        (
            "Redis password with a stray `/`, from TOML",
            BusConfig::from_toml_str("kind = \"redis\"\n[redis]\nurl = \"redis://app:s3cret/pw@cache\"")
                .unwrap_err(),
        ),
        (
            "Redis password with a stray `?`, from TOML",
            BusConfig::from_toml_str("kind = \"redis\"\n[redis]\nurl = \"redis://app:s3cret?pw@cache\"")
                .unwrap_err(),
        ),
        (
            "Redis target without a scheme",
            hubbus::backend::redis::RedisTarget::parse("app:s3cret-pw@cache").unwrap_err(),
        ),
    ]);
    #[cfg(feature = "nats")]
    errors.extend([
        (
            "NATS URL with a bad port",
            BusConfig::from_url("nats://hub:s3cret-pw@n1:http").unwrap_err(),
        ),
        (
            "NATS second server with a bad port",
            BusConfig::from_toml_str(
                "kind = \"nats\"\n[nats]\nurl = \"nats://n1:4222,hub:s3cret-pw@n2:http\"",
            )
            .unwrap_err(),
        ),
        (
            "NATS password with a stray `?`",
            BusConfig::from_url("nats://hub:s3cret?pw@n1:4222").unwrap_err(),
        ),
        (
            "NATS URL with a bad value",
            BusConfig::from_url("nats://s3cret-token@n1?ack_wait=0s").unwrap_err(),
        ),
    ]);
    for (surface, error) in &errors {
        assert!(
            matches!(error, BusError::Config { .. }),
            "{surface}: {error:?}"
        );
        assert_clean(surface, &error.to_string());
        assert_clean(surface, &format!("{error:?}"));
    }
}

#[cfg(any(feature = "redis", feature = "nats"))]
#[tokio::test]
async fn health_reasons_never_show_credentials() {
    let port = support::free_port();
    let mut urls: Vec<String> = Vec::new();
    #[cfg(feature = "redis")]
    urls.push(format!("redis://app:s3cret-pw@127.0.0.1:{port}"));
    #[cfg(feature = "nats")]
    urls.push(format!("nats://hub:s3cret-pw@127.0.0.1:{port}"));
    for url in urls {
        let cfg = BusConfig::from_url(&url).unwrap();
        let registry = prometheus::Registry::new();
        let bus = hubbus::connect(&cfg, &registry).await.unwrap();
        let down = support::eventually(Duration::from_secs(10), || {
            bus.health().state == HealthState::Down && bus.health().reason.is_some()
        })
        .await;
        let health = bus.health();
        assert!(down, "{url}: {health:?}");
        let shown = format!("{health:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        bus.close().await;
    }
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

    // A second bus with the same node id cannot count into the same registry...
    let again = hubbus::connect(&cfg, &registry).await;
    assert!(matches!(again, Err(BusError::Config { ref key, .. }) if key == "node_id"));
    // ...one with another node id can...
    let other = BusConfig::from_url("noop://?node_id=other").unwrap();
    hubbus::connect(&other, &registry).await.unwrap();
    // ...and any bus can count into metrics of its own.
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
    assert_eq!(
        options.link.ping_interval,
        Some(Duration::from_secs(1)),
        "a silent server is noticed within seconds, not NATS's minutes"
    );
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

    assert_eq!(
        config_key(BusConfig::from_url("nats://a:4222?colour=blue")),
        "nats.colour"
    );
    let zero = config_error(BusConfig::from_url(
        "nats://a:4222?jetstream=true&ack_wait=0s",
    ));
    assert!(
        zero.contains("nats.ack_wait") && zero.contains("the URL parameter `ack_wait`"),
        "{zero}"
    );
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
    let cfg = BusConfig::from_url("redis+cluster://n1,n2?sharded=true&node_id=hub-s").unwrap();
    assert_eq!(cfg.redis.url, "redis+cluster://n1,n2?sharded=true");
    assert!(
        hubbus::backend::redis::RedisTarget::parse(&cfg.redis.url)
            .unwrap()
            .sharded
    );
    assert_eq!(
        config_key(BusConfig::from_url("redis://h?timeout=1")),
        "redis.timeout"
    );
}
