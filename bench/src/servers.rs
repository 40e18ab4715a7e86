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

/// Three `redis-server`s with `cluster-enabled`, joined into one cluster by `redis-cli
/// --cluster create` (the slots split evenly, no replicas); returns once every node reports
/// `cluster_state:ok`.
pub async fn redis_cluster() -> anyhow::Result<Vec<Server>> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let port = free_port()?;
        let dir = scratch(&format!("cluster-{port}"))?;
        let mut command = Command::new(binary("redis-server")?);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            // The default bus port, port + 10 000, may be taken or out of range.
            .args(["--cluster-port", &free_port()?.to_string()])
            .args(["--cluster-node-timeout", "1000"])
            .arg("--dir")
            .arg(&dir);
        nodes.push(start("redis-server", dir, port, command)?);
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = Command::new(binary("redis-cli")?)
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()?;
    if !created.status.success() {
        bail!(
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        loop {
            let info = Command::new(binary("redis-cli")?)
                .args(["-p", &node.port.to_string(), "CLUSTER", "INFO"])
                .output()?;
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the cluster did not form within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(nodes)
}

/// The brokers of one run, started when a scenario first needs them.
#[derive(Default)]
pub struct Brokers {
    redis: Option<Server>,
    nats: Option<Server>,
    cluster: Vec<Server>,
}

impl Brokers {
    /// The Redis server's port.
    pub fn redis(&mut self) -> anyhow::Result<u16> {
        if self.redis.is_none() {
            self.redis = Some(redis()?);
        }
        Ok(self.redis.as_ref().expect("just started").port)
    }

    /// The ports of the Redis Cluster's nodes.
    pub async fn redis_cluster(&mut self) -> anyhow::Result<Vec<u16>> {
        if self.cluster.is_empty() {
            self.cluster = redis_cluster().await?;
        }
        Ok(self.cluster.iter().map(|n| n.port).collect())
    }

    /// The NATS server's port.
    pub fn nats(&mut self) -> anyhow::Result<u16> {
        if self.nats.is_none() {
            self.nats = Some(nats()?);
        }
        Ok(self.nats.as_ref().expect("just started").port)
    }
}
