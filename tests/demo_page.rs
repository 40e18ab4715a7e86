//! The example hub's live page (`GET /`) in a real headless Chromium, driven over WebDriver
//! (`chromedriver`): two hub processes on a real redis-server, one page on each. A message
//! published on page A appears on page B with its origin; a publish to an invalid channel shows
//! the hub's error; hub B killed and started again, page B reconnects by itself and receives
//! again. Screenshots of both pages are saved (see `docs/testing.md` for regenerating the
//! README's).
//!
//! Each hub is this test binary run again as a child process (the ignored test `hub_process`,
//! which serves the example hub until it is killed), so that hub B can be killed like a crashed
//! process and the two hubs share nothing but Redis.

#![allow(
    dead_code,
    reason = "the example's `main` and CLI belong to its binary; these tests drive `serve`"
)]

mod support;

#[path = "../examples/hub.rs"]
mod hub_example;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use support::{RedisServer, ScratchDir, find_binary, free_port};

const DEADLINE: Duration = Duration::from_secs(30);

/// Where a child hub process listens, on which bus, as which node (set by [`Hub::start`]).
const LISTEN: &str = "HUBBUS_TEST_DEMO_HUB_LISTEN";
const BUS: &str = "HUBBUS_TEST_DEMO_HUB_BUS";

/// Not a test: the body of a hub child process. Run by [`Hub::start`] with `--ignored`.
#[tokio::test]
#[ignore = "the body of a hub process started by demo_page_shows_messages_across_two_hubs"]
async fn hub_process() {
    let (Ok(listen), Ok(bus)) = (std::env::var(LISTEN), std::env::var(BUS)) else {
        panic!("run by demo_page_shows_messages_across_two_hubs, with {LISTEN} and {BUS} set");
    };
    let config = hubbus::BusConfig::from_url(&bus).expect("a bus URL");
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("the hub's port is free");
    let (hub, registry) = hub_example::build_hub(&config).await.expect("hub starts");
    hub_example::serve(listener, hub, registry, std::future::pending())
        .await
        .expect("serves until killed");
}

/// A hub child process.
struct Hub {
    child: Child,
    port: u16,
    bus: String,
}

impl Hub {
    async fn start(port: u16, bus: String) -> Self {
        let child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--ignored", "--exact", "hub_process", "--nocapture"])
            .env(LISTEN, format!("127.0.0.1:{port}"))
            .env(BUS, &bus)
            .stdout(Stdio::null())
            .spawn()
            .expect("start a hub process");
        let hub = Hub { child, port, bus };
        hub.wait_healthy().await;
        hub
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    async fn wait_healthy(&self) {
        let healthz = format!("http://127.0.0.1:{}/healthz", self.port);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(response) = reqwest::get(&healthz).await
                && response.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hub on {} never got healthy",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process (SIGKILL, as a crash) and starts a new one on the same port.
    async fn restart(&mut self) {
        self.kill();
        *self = Hub::start(self.port, self.bus.clone()).await;
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `chromedriver` on a free port, driving Debian's `chromium`.
struct Driver {
    child: Child,
    port: u16,
    chromium: PathBuf,
}

impl Driver {
    /// `None` only when real-server tests may be skipped and a browser is missing.
    async fn start() -> Option<Self> {
        let chromium = find_binary("chromium", "HUBBUS_TEST_CHROMIUM", "chromium")?;
        let chromedriver = find_binary(
            "chromedriver",
            "HUBBUS_TEST_CHROMEDRIVER",
            "chromium-driver",
        )?;
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Driver {
            child,
            port,
            chromium,
        })
    }

    /// A new headless browser session (its own profile) showing `url`.
    async fn open(&self, url: &str, profile: &ScratchDir) -> Client {
        let options = serde_json::json!({
            "binary": self.chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1100,820",
                format!("--user-data-dir={}", profile.0.display()),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a browser session");
        client.goto(url).await.expect("the page loads");
        client
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the JavaScript expression `condition` is true on the page.
async fn until(page: &Client, what: &str, condition: &str) {
    let deadline = Instant::now() + DEADLINE;
    let script = format!("return Boolean({condition});");
    loop {
        if let Ok(value) = page.execute(&script, Vec::new()).await
            && value == serde_json::Value::Bool(true)
        {
            return;
        }
        if Instant::now() > deadline {
            let state = page
                .execute("return document.body.innerText;", Vec::new())
                .await
                .unwrap_or_default();
            panic!("{what}: not within {DEADLINE:?}; the page shows:\n{state}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces the text of the input `id` with `text`, typing it.
async fn type_into(page: &Client, id: &str, text: &str) {
    let input = page.find(Locator::Id(id)).await.expect("the input exists");
    input.clear().await.expect("clear");
    input.send_keys(text).await.expect("type");
}

async fn click(page: &Client, id: &str) {
    page.find(Locator::Id(id))
        .await
        .expect("the button exists")
        .click()
        .await
        .expect("click");
}

async fn join(page: &Client, channel: &str) {
    type_into(page, "channel", channel).await;
    click(page, "join").await;
    until(
        page,
        "the hub confirmed the channel",
        &format!("document.getElementById('joined').textContent.includes('{channel}')"),
    )
    .await;
}

async fn publish(page: &Client, channel: &str, data: &str) {
    type_into(page, "publish-channel", channel).await;
    type_into(page, "data", data).await;
    click(page, "publish").await;
}

/// True on the page once a message from `origin` containing `text` is listed.
fn shows_message(origin: &str, text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages li')].some(li => \
         li.dataset.origin === '{origin}' && li.textContent.includes('{text}') \
         && / ms · /.test(li.textContent))"
    )
}

/// Saves a screenshot of `page` as `<name>.png` in the test's scratch directory, and in
/// `HUBBUS_TEST_DEMO_SCREENSHOTS` when set (`docs/` regenerates the README's).
async fn screenshot(page: &Client, name: &str) {
    let png = page.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG image");
    let mut dirs = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo_page")];
    if let Some(dir) = std::env::var_os("HUBBUS_TEST_DEMO_SCREENSHOTS") {
        dirs.push(PathBuf::from(dir));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).expect("a screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), &png).expect("save the screenshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_messages_across_two_hubs() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(driver) = Driver::start().await else {
        return;
    };
    let bus = |node: &str| format!("{}?node_id={node}", redis.url());
    let hub_a = Hub::start(free_port(), bus("hub-a")).await;
    let mut hub_b = Hub::start(free_port(), bus("hub-b")).await;
    let (profile_a, profile_b) = (ScratchDir::new("chromium-a"), ScratchDir::new("chromium-b"));
    let page_a = driver.open(&hub_a.url(), &profile_a).await;
    let page_b = driver.open(&hub_b.url(), &profile_b).await;

    // Each page knows its hub and its health, and is connected.
    for (page, node) in [(&page_a, "hub-a"), (&page_b, "hub-b")] {
        until(
            page,
            "the page shows its node and a connected bus",
            &format!(
                "document.getElementById('node').textContent === '{node}' \
                 && document.getElementById('health').textContent === 'connected' \
                 && document.getElementById('ws-state').textContent === 'connected'"
            ),
        )
        .await;
        join(page, "room1").await;
    }

    // Published on A, shown on B with its origin and latency (and on A, which joined too).
    publish(&page_a, "room1", r#"{"text":"hello from A"}"#).await;
    until(
        &page_b,
        "B shows A's message",
        &shows_message("hub-a", "hello from A"),
    )
    .await;
    until(
        &page_a,
        "A shows its own message",
        &shows_message("hub-a", "hello from A"),
    )
    .await;

    // An invalid channel: the hub's error is shown.
    publish(&page_a, "no spaces", r#"{"text":"lost"}"#).await;
    until(
        &page_a,
        "A shows the hub's error",
        "document.getElementById('errors').textContent.includes('invalid channel \"no spaces\"')",
    )
    .await;

    // Hub B crashes and comes back: the page reconnects, joins again and receives again.
    hub_b.kill();
    until(
        &page_b,
        "B notices its hub is gone",
        "document.getElementById('ws-state').textContent.startsWith('reconnecting')",
    )
    .await;
    hub_b.restart().await;
    until(
        &page_b,
        "B reconnects and its channel is confirmed again",
        "document.getElementById('ws-state').textContent === 'connected' \
         && document.getElementById('joined').textContent.includes('room1')",
    )
    .await;
    publish(&page_a, "room1", r#"{"text":"after the restart"}"#).await;
    until(
        &page_b,
        "B receives after its hub restarted",
        &shows_message("hub-a", "after the restart"),
    )
    .await;
    publish(&page_b, "room1", r#"{"text":"hello from B"}"#).await;
    until(
        &page_a,
        "A shows B's message",
        &shows_message("hub-b", "hello from B"),
    )
    .await;

    screenshot(&page_a, "demo-hub-a").await;
    screenshot(&page_b, "demo-hub-b").await;
    page_a.close().await.expect("close page A");
    page_b.close().await.expect("close page B");
    drop(hub_a);
}
