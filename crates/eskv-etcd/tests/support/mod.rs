//! Test support: a real etcd cluster on 127.0.0.1, started by the tests
//! themselves and stopped by PID.
//!
//! Every node runs the `etcd` binary found at build time (`ESKV_ETCD_BIN`,
//! overridable with `ETCD_BIN` at run time) with its data directory under one
//! temporary directory. Nodes are children of the test process; a small
//! watchdog shell also kills them (by the PIDs in `<dir>/*.pid`) and removes
//! the directory when the test process exits, since a cluster kept in a
//! `static` is never dropped.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The etcd binary to run.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .or(option_env!("ESKV_ETCD_BIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// One member of a test cluster.
pub struct Node {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

impl Node {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of `etcd` processes on loopback.
pub struct Cluster {
    dir: PathBuf,
    token: String,
    pub nodes: Vec<Node>,
    watchdog: Option<Child>,
    fast_failover: bool,
}

/// Reserves `n` distinct free loopback ports. They are released before
/// etcd binds them, so another process could take one in between; `start`
/// retries with new ports if a node fails to come up.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `GET /health` over plain HTTP/1.1: true when the member has a leader and
/// serves requests.
fn healthy(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Cluster {
    /// Starts an `n`-node cluster and waits until every node is healthy.
    /// Panics with the nodes' log tails if it cannot.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, false)
    }

    /// Like [`start`](Self::start); `fast_failover` shortens the heartbeat
    /// (50 ms) and election timeout (500 ms) for fault tests.
    pub fn start_with(n: usize, fast_failover: bool) -> Cluster {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(n, fast_failover) {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!(
            "could not start a {n}-node etcd cluster with {}: {last}",
            etcd_bin().display()
        );
    }

    fn try_start(n: usize, fast_failover: bool) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("eskv-etcd-test-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let ports = free_ports(2 * n);
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
for f in "$2"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
rm -rf "$2""#,
            )
            .arg("eskv-etcd-watchdog")
            .arg(std::process::id().to_string())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the watchdog shell: {e}"))?;
        let mut cluster = Cluster {
            token: format!("eskv-test-{}-{}", std::process::id(), ports[0]),
            dir,
            nodes,
            watchdog: Some(watchdog),
            fast_failover,
        };
        for i in 0..n {
            cluster.spawn(i, true)?;
        }
        for i in 0..n {
            cluster.wait_healthy(i, Duration::from_secs(20))?;
        }
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}=http://127.0.0.1:{}", n.name, n.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.nodes[i].name))
    }

    fn spawn(&mut self, i: usize, new: bool) -> Result<(), String> {
        let initial = self.initial_cluster();
        let node = &self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", node.name)))
            .map_err(|e| e.to_string())?;
        let client = format!("http://127.0.0.1:{}", node.client_port);
        let peer = format!("http://127.0.0.1:{}", node.peer_port);
        let (heartbeat, election) = if self.fast_failover {
            ("50", "500")
        } else {
            ("100", "1000")
        };
        let child = Command::new(etcd_bin())
            .arg("--name")
            .arg(&node.name)
            .arg("--data-dir")
            .arg(self.dir.join(format!("{}.etcd", node.name)))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", &self.token])
            .args([
                "--initial-cluster-state",
                if new { "new" } else { "existing" },
            ])
            .args(["--heartbeat-interval", heartbeat])
            .args(["--election-timeout", election])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", etcd_bin().display()))?;
        std::fs::write(
            self.dir.join(format!("{}.pid", node.name)),
            child.id().to_string(),
        )
        .map_err(|e| e.to_string())?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Waits until node `i` answers `/health` with a leader.
    pub fn wait_healthy(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if healthy(self.nodes[i].client_port) {
                return Ok(());
            }
            if let Some(c) = self.nodes[i].child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "{} exited with {status}; log:\n{}",
                        self.nodes[i].name,
                        tail(&self.log_path(i))
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{} not healthy after {timeout:?}; log:\n{}",
            self.nodes[i].name,
            tail(&self.log_path(i))
        ))
    }

    /// Client endpoints of the running nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::endpoint).collect()
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{}.pid", self.nodes[i].name)));
    }

    /// Restarts node `i` on its old data directory and waits until healthy.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].is_running(), "node {i} is running");
        self.spawn(i, false).unwrap();
        self.wait_healthy(i, Duration::from_secs(20)).unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One 3-node cluster shared by every test of a test binary. It is never
/// dropped; the watchdog stops it when the test process exits.
pub fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(3))
}
