//! Real `nats-server -js` processes for the NATS differential test: each run starts its own on
//! a free port with a store directory of its own, and kills it (removing the directory) when
//! the handle drops; the machine's shared servers are never touched.
//!
//! The conventions are those of `sim/tests/real_redis` and the workspace's `tests/support`: the
//! binary comes from `HUBBUS_TEST_NATS_SERVER`, then `PATH`, then `/usr/bin` and `/usr/sbin`;
//! without one the test fails with the install hint, unless `HUBBUS_TEST_SKIP_REAL_SERVERS=1`
//! is set, in which case it returns early and says so.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// The `nats-server` binary, or `None` when it is missing and skipping is allowed.
fn find_binary() -> Option<PathBuf> {
    const ENV: &str = "HUBBUS_TEST_NATS_SERVER";
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
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file())
    {
        return Some(found);
    }
    if skip {
        eprintln!("nats-server not found and HUBBUS_TEST_SKIP_REAL_SERVERS=1: skipping this test");
        return None;
    }
    panic!(
        "nats-server not found: install it (Debian: `apt-get install nats-server`), point {ENV} \
         at it, or set HUBBUS_TEST_SKIP_REAL_SERVERS=1 to skip real-server tests"
    );
}

/// A port that was free a moment ago and that this test process has not handed out before, so
/// that two tests starting servers at once never get the same one.
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

/// A `nats-server -js` child process of this test, with a store directory of its own. Killed,
/// and its directory removed, on drop.
pub struct NatsProcess {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl NatsProcess {
    /// A JetStream server with extra command-line arguments (`--user a --pass b`); `None` only
    /// when skipping is allowed. A port can be taken between the check and the bind, so a few
    /// are tried.
    pub fn start(tag: &str, extra: &[&str]) -> Option<Self> {
        let binary = find_binary()?;
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("hubbus-sim-{tag}-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create a store directory");
            let child = Command::new(&binary)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&dir)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server");
            let mut process = NatsProcess { child, port, dir };
            if process.wait_until_serving() {
                return Some(process);
            }
        }
        panic!("nats-server ({tag}) did not start on any of 5 free ports");
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

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// True when a NATS server on `port` serves: `PONG` to `PING` after `CONNECT`, or a refusal
/// because it wants credentials.
fn answers_ping(port: u16) -> bool {
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
