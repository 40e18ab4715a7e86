//! The benchmark's own brokers: a `redis-server` and a `nats-server -js` on free loopback ports,
//! each with a scratch directory, stopped when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A broker process of this run.
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a server binary is: `PATH`, then `/usr/sbin` and `/usr/bin` (Debian puts
/// `nats-server` in `/usr/sbin`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("`{name}` is not installed: on Debian, `apt-get install {name}`"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn scratch(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hubbus-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn wait_for_port(port: u16, child: &mut Child, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited at start: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{name} did not listen on port {port} within 10 s")
}

fn start(name: &str, dir: PathBuf, port: u16, mut command: Command) -> anyhow::Result<Server> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {name}"))?;
    if let Err(error) = wait_for_port(port, &mut child, name) {
        let _ = child.kill();
        return Err(error);
    }
    Ok(Server { child, port, dir })
}

/// A `redis-server` that keeps nothing on disk.
pub fn redis() -> anyhow::Result<Server> {
    let port = free_port()?;
    let dir = scratch("redis")?;
    let mut command = Command::new(binary("redis-server")?);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir);
    start("redis-server", dir, port, command)
}

/// A `nats-server` with JetStream and a store of its own.
pub fn nats() -> anyhow::Result<Server> {
    let port = free_port()?;
    let dir = scratch("nats")?;
    let mut command = Command::new(binary("nats-server")?);
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir);
    start("nats-server", dir, port, command)
}

impl Server {
    /// The scratch directory.
    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The brokers of one run, started when a scenario first needs them.
#[derive(Default)]
pub struct Brokers {
    redis: Option<Server>,
    nats: Option<Server>,
}

impl Brokers {
    /// The Redis server's port.
    pub fn redis(&mut self) -> anyhow::Result<u16> {
        if self.redis.is_none() {
            self.redis = Some(redis()?);
        }
        Ok(self.redis.as_ref().expect("just started").port)
    }

    /// The NATS server's port.
    pub fn nats(&mut self) -> anyhow::Result<u16> {
        if self.nats.is_none() {
            self.nats = Some(nats()?);
        }
        Ok(self.nats.as_ref().expect("just started").port)
    }
}
