//! Real servers for integration tests: each test starts its own `redis-server` or `nats-server`
//! on a free port and stops it when the handle drops. The machine's shared servers are never
//! touched.
//!
//! `redis-server` is looked up in `HUBBUS_TEST_REDIS_SERVER`, `nats-server` in
//! `HUBBUS_TEST_NATS_SERVER`, then on `PATH`, then in `/usr/bin` and `/usr/sbin`.
//! Without it a test fails with the install hint, unless `HUBBUS_TEST_SKIP_REAL_SERVERS=1` is
//! set, in which case the test returns early and says so (never set in CI). Tooling variables
//! live under `HUBBUS_TEST_`, a prefix the bus configuration never reads.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

pub mod counting;
pub mod jetstream;
pub mod links;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Finds a server binary, or explains how to get one.
pub fn find_binary(name: &str, env: &str, package: &str) -> Option<PathBuf> {
    let skip = std::env::var("HUBBUS_TEST_SKIP_REAL_SERVERS").is_ok_and(|v| v == "1");
    if let Some(path) = std::env::var_os(env).map(PathBuf::from) {
        if path.is_file() {
            return Some(path);
        }
        if skip {
            eprintln!(
                "{env}={} is not a file and HUBBUS_TEST_SKIP_REAL_SERVERS=1: skipping",
                path.display()
            );
            return None;
        }
        panic!("{env}={} is not a file", path.display());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")]);
    if let Some(found) = dirs
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
    {
        return Some(found);
    }
    if skip {
        eprintln!("{name} not found and HUBBUS_TEST_SKIP_REAL_SERVERS=1: skipping this test");
        return None;
    }
    panic!(
        "{name} not found: install it (Debian: `apt-get install {package}`), point {env} at it, \
         or set HUBBUS_TEST_SKIP_REAL_SERVERS=1 to skip real-server tests"
    );
}

/// A port that was free a moment ago and that this test process has not handed out before.
///
/// Tests run in parallel and some kill a server to start it again on the same port later; a
/// port must not go to another test in between, which the operating system would allow.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A scratch directory removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hubbus-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server child process of this test: how to start it on a port, and how to tell that it
/// serves. Killed when dropped.
struct ServerProcess {
    child: Option<Child>,
    port: u16,
    command: Box<dyn Fn(u16) -> Command + Send + Sync>,
    ready: fn(u16) -> bool,
}

impl ServerProcess {
    /// Starts the server on a free port; a free port can be taken between the check and the
    /// bind, so a few ports are tried.
    fn start(
        name: &str,
        mut command: Box<dyn Fn(u16) -> Command + Send + Sync>,
        ready: fn(u16) -> bool,
    ) -> Self {
        for _ in 0..5 {
            let mut server = ServerProcess {
                child: None,
                port: free_port(),
                command,
                ready,
            };
            if server.spawn() {
                return server;
            }
            command = server.take_command();
        }
        panic!("{name} did not start on any of 5 free ports");
    }

    fn take_command(&mut self) -> Box<dyn Fn(u16) -> Command + Send + Sync> {
        std::mem::replace(&mut self.command, Box::new(|_| Command::new("false")))
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process (SIGSTOP): its sockets stay open and nothing answers, as with a wedged
    /// server or a black-holed network.
    fn pause(&self) {
        self.signal("-STOP");
        // The signal is only sent when `kill` returns; threads running on another core stop a
        // moment later. Wait until every thread of the process is stopped, so nothing the
        // test sends next is still answered.
        let Some(child) = &self.child else {
            return;
        };
        let deadline = Instant::now() + START_DEADLINE;
        while !all_threads_stopped(child.id()) {
            assert!(
                Instant::now() < deadline,
                "process {} did not stop",
                child.id()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets a paused process run again (SIGCONT).
    fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} {}", child.id());
        }
    }

    /// Starts the server again on the same port (after `kill`).
    fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_DEADLINE;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "the server did not come back on {}",
                self.port
            );
        }
    }

    /// Spawns the process and waits until it serves, or exits (port taken).
    fn spawn(&mut self) -> bool {
        let child = (self.command)(self.port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the server");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return false;
            }
            if (self.ready)(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // A paused process must run again to die of SIGKILL promptly and release its port.
        self.resume();
        self.kill();
    }
}

/// A `redis-server` (or `redis-server --sentinel`) child process of this test.
pub struct RedisServer {
    process: ServerProcess,
    pub port: u16,
    dir: ScratchDir,
}

impl RedisServer {
    /// Starts a plain server on a free port; `None` only when skipping is allowed.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (`--requirepass x`, ...).
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        Self::launch("redis", extra, None)
    }

    /// Starts a sentinel (quorum 1) watching the master `name` at `127.0.0.1:<master_port>`,
    /// with short timeouts so failovers happen within a test.
    pub fn sentinel(name: &str, master_port: u16) -> Option<Self> {
        let config = format!(
            "bind 127.0.0.1\n\
             sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n"
        );
        Self::launch("sentinel", &[], Some(config))
    }

    /// A Redis Cluster of `masters` masters, each with `replicas` replicas, formed with
    /// `redis-cli --cluster create` (slots split evenly) and short timeouts so that a
    /// failover happens within a test; returns once every node reports `cluster_state:ok`.
    pub async fn cluster(masters: usize, replicas: usize) -> Option<Vec<Self>> {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            // The cluster bus port is the client port + 10 000 unless set; set it, since a
            // free client port plus 10 000 may be taken or out of range.
            let bus_port = free_port().to_string();
            let node = Self::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus_port,
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                "--cluster-replica-validity-factor",
                "0",
            ])?;
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let formed = eventually(Duration::from_secs(30), || {
            nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && n.cli(&["CLUSTER", "SLOTS"]).lines().count() > 0
            })
        })
        .await;
        assert!(formed, "the cluster did not form");
        Some(nodes)
    }

    /// This node's cluster id.
    pub fn node_id(&self) -> String {
        self.cli(&["CLUSTER", "MYID"])
    }

    fn launch(tag: &str, extra: &[&str], sentinel_config: Option<String>) -> Option<Self> {
        let binary = find_binary("redis-server", "HUBBUS_TEST_REDIS_SERVER", "redis-server")?;
        let dir = ScratchDir::new(tag);
        let path = dir.0.clone();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let command = move |port: u16| {
            let mut command = Command::new(&binary);
            if let Some(config) = &sentinel_config {
                // Sentinel rewrites its config file, so it must be a file of its own.
                let file = path.join("sentinel.conf");
                std::fs::write(&file, config).expect("write sentinel.conf");
                command.arg(file).arg("--sentinel");
            }
            command
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&path)
                .args(&extra);
            command
        };
        let process = ServerProcess::start(tag, Box::new(command), |port| {
            ping(&format!("127.0.0.1:{port}"))
        });
        Some(RedisServer {
            port: process.port,
            process,
            dir,
        })
    }

    /// The server's scratch directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts a new server process on the same port (after `kill`).
    pub fn restart(&mut self) {
        self.process.restart();
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

/// A `nats-server -js` child process of this test, with its own store directory.
pub struct NatsServer {
    process: ServerProcess,
    pub port: u16,
    _store: ScratchDir,
}

impl NatsServer {
    /// Starts a JetStream-enabled server on a free port; `None` only when skipping is allowed.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// `size` JetStream servers in one cluster (`hubbus`), named `s0`, `s1`, ..., each with
    /// its own client port, cluster port and store, routed to each other; returns once every
    /// server answers its clients. JetStream needs a moment more to elect its meta leader.
    pub fn cluster(size: usize) -> Option<Vec<Self>> {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let all_routes = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::with_capacity(size);
        for (index, route) in routes.iter().enumerate() {
            let name = format!("s{index}");
            let cluster = format!("nats://127.0.0.1:{route}");
            servers.push(Self::start_with(&[
                "-n",
                &name,
                "--cluster_name",
                "hubbus",
                "--cluster",
                &cluster,
                "--routes",
                &all_routes,
            ])?);
        }
        Some(servers)
    }

    /// Starts a server with extra arguments (`--user a --pass b`, ...).
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        let binary = find_binary("nats-server", "HUBBUS_TEST_NATS_SERVER", "nats-server")?;
        let store = ScratchDir::new("nats");
        let path = store.0.clone();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let command = move |port: u16| {
            let mut command = Command::new(&binary);
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&path)
                .args(&extra);
            command
        };
        let process = ServerProcess::start("nats-server", Box::new(command), nats_ready);
        Some(NatsServer {
            port: process.port,
            process,
            _store: store,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// True while the server's process runs (it was not killed).
    pub fn is_running(&self) -> bool {
        self.process.child.is_some()
    }

    /// Kills the server at once (SIGKILL): nothing unsynced survives.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port and store directory (after `kill`).
    pub fn restart(&mut self) {
        self.process.restart();
    }

    /// Empties the store directory (of a killed server): it comes back knowing no stream and
    /// no consumer, as after losing its disk.
    pub fn wipe_store(&self) {
        let store = &self._store.0;
        let _ = std::fs::remove_dir_all(store);
        std::fs::create_dir_all(store).expect("recreate the store directory");
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.process.resume();
    }
}

/// True when the NATS server on `port` answers its monitoring-free handshake: it sends `INFO`
/// on connect and `PONG` to `PING` once it is serving.
fn nats_ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .is_err()
    {
        return false;
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            return false;
        }
        seen.extend_from_slice(&buf[..n]);
        // PONG, or a refusal because the server wants credentials: either way it serves.
        if seen.windows(4).any(|w| w == b"PONG") || seen.windows(13).any(|w| w == b"Authorization")
        {
            return true;
        }
        if seen.len() > 64 * 1024 {
            return false;
        }
    }
    false
}

/// True when a RESP server at `addr` answers `PING` (`+PONG` or `-NOAUTH`).
pub fn ping(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 16];
    match stream.read(&mut reply) {
        Ok(n) if n > 0 => reply[0] == b'+' || reply[..n].starts_with(b"-NOAUTH"),
        _ => false,
    }
}

/// Polls `condition` until it holds or `deadline` passes; returns whether it held.
pub async fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sum of metric `name` over the series whose labels include all of `labels`.
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .filter(|metric| {
            labels.iter().all(|(key, value)| {
                metric
                    .get_label()
                    .iter()
                    .any(|label| label.name() == *key && label.value() == *value)
            })
        })
        .map(|metric| metric.get_counter().get_value() + metric.get_gauge().get_value())
        .sum()
}

/// True when every thread of process `pid` is stopped (state `T` in `/proc`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    })
}

/// Publishes `payload` on the subscription's channel until the subscription receives it
/// (at-most-once buses lose what is published while a node moves to another server), failing
/// the test after `deadline`.
pub async fn publish_until_delivered(
    publisher: &dyn hubbus::MessageBus,
    subscription: &mut hubbus::Subscription,
    payload: &str,
    deadline: Duration,
) {
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "`{payload}` on `{}` was never delivered; publisher {:?}",
            subscription.channel(),
            publisher.health()
        );
        let _ = publisher
            .publish(subscription.channel(), payload.to_owned().into())
            .await;
        while let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(200), subscription.recv()).await
        {
            if delivery.payload().as_ref() == payload.as_bytes() {
                return;
            }
        }
    }
}
