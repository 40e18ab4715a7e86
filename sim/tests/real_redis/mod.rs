//! Real `redis-server` processes for the simulation's differential tests: each test starts its
//! own on a free port and kills it when the handle drops; the machine's shared Redis is never
//! touched.
//!
//! This is the small part of the workspace's `tests/support` that a test in `sim/` needs (that
//! module also starts nats-server and brings dependencies this crate does not have), with the
//! same conventions: the binary comes from `HUBBUS_TEST_REDIS_SERVER`, then `PATH`, then
//! `/usr/bin` and `/usr/sbin`; without one a test fails with the install hint, unless
//! `HUBBUS_TEST_SKIP_REAL_SERVERS=1` is set, in which case it returns early and says so.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// The `redis-server` binary, or `None` when it is missing and skipping is allowed.
fn find_binary() -> Option<PathBuf> {
    const ENV: &str = "HUBBUS_TEST_REDIS_SERVER";
    let skip = std::env::var("HUBBUS_TEST_SKIP_REAL_SERVERS").is_ok_and(|v| v == "1");
    if let Some(path) = std::env::var_os(ENV).map(PathBuf::from) {
        if path.is_file() {
            return Some(path);
        }
        if skip {
            eprintln!(
                "{ENV}={} is not a file and HUBBUS_TEST_SKIP_REAL_SERVERS=1: skipping",
                path.display()
            );
            return None;
        }
        panic!("{ENV}={} is not a file", path.display());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")]);
    if let Some(found) = dirs
        .into_iter()
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file())
    {
        return Some(found);
    }
    if skip {
        eprintln!("redis-server not found and HUBBUS_TEST_SKIP_REAL_SERVERS=1: skipping this test");
        return None;
    }
    panic!(
        "redis-server not found: install it (Debian: `apt-get install redis-server`), point \
         {ENV} at it, or set HUBBUS_TEST_SKIP_REAL_SERVERS=1 to skip real-server tests"
    );
}

/// A port that was free a moment ago and that this test process has not handed out before, so
/// that two tests starting servers at once never get the same one (the second server would
/// fail to bind, but the first could answer its readiness check meanwhile).
fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("bind an ephemeral port");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A `redis-server` (or `redis-server --sentinel`) child process of this test, with a scratch
/// directory of its own. Killed, and its directory removed, on drop.
pub struct RedisProcess {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl RedisProcess {
    /// A server with extra command-line arguments (`--requirepass x`, ...); `None` only when
    /// skipping is allowed.
    pub fn start(tag: &str, extra: &[&str]) -> Option<Self> {
        let binary = find_binary()?;
        Some(Self::launch(tag, |port, dir| {
            let mut command = Command::new(&binary);
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .args(extra);
            command
        }))
    }

    /// A Sentinel monitoring the master `name` at `127.0.0.1:<master_port>`; `None` only when
    /// skipping is allowed.
    pub fn sentinel(name: &str, master_port: u16) -> Option<Self> {
        let binary = find_binary()?;
        let config = format!("bind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {master_port} 1\n");
        Some(Self::launch("sentinel", |port, dir| {
            // Sentinel rewrites its configuration file, so it gets a file of its own.
            let file = dir.join("sentinel.conf");
            std::fs::write(&file, &config).expect("write sentinel.conf");
            let mut command = Command::new(&binary);
            command
                .arg(file)
                .arg("--sentinel")
                .args(["--port", &port.to_string()])
                .arg("--dir")
                .arg(dir);
            command
        }))
    }

    /// Starts the command on a free port; a port can be taken between the check and the bind,
    /// so a few are tried.
    fn launch(tag: &str, command: impl Fn(u16, &PathBuf) -> Command) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("hubbus-sim-{tag}-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create a scratch directory");
            let child = command(port, &dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut process = RedisProcess { child, port, dir };
            if process.wait_until_serving() {
                return process;
            }
        }
        panic!("redis-server ({tag}) did not start on any of 5 free ports");
    }

    /// Waits until the server answers `PING`, or its process exits (the port was taken).
    fn wait_until_serving(&mut self) -> bool {
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if answers_ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// True when a RESP server on `port` answers `PING` (`+PONG`, or `-NOAUTH` when it wants a
/// password).
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
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
