//! A real etcd cluster on 127.0.0.1, started from the `etcd` binary and
//! stopped by PID. The one launcher behind eskv-etcd's tests and the
//! benchmark harness.
//!
//! Invariants:
//! - every member's data directory, log and PID file live under one
//!   directory ([`ClusterOptions::dir`], else a fresh temporary one);
//! - members are children of this process; [`Cluster`]'s `Drop` SIGKILLs
//!   them, and a watchdog shell kills them (by the PIDs in `<dir>/*.pid`)
//!   when this process exits without unwinding, so a cluster kept in a
//!   `static` never outlives its test binary;
//! - [`Cluster::launch`] returns only when every member answers `/health`
//!   with a leader.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a member may take to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// The etcd binary: `ETCD_BIN` if set, else `etcd` on the `PATH`.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// The version `binary --version` reports, or `(unknown version)`.
pub fn etcd_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "(unknown version)".into())
}

/// Why a cluster did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchError {
    /// There is no etcd binary to run.
    Missing(String),
    /// The binary ran but the cluster did not become healthy; the message
    /// holds the failing member's log tail.
    Failed(String),
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Missing(m) | LaunchError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LaunchError {}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of members.
    pub nodes: usize,
    /// Heartbeat 50 ms and election timeout 500 ms (etcd's defaults are
    /// 100 ms and 1 s), for fault tests that kill leaders.
    pub fast_failover: bool,
    /// Server flags every member gets besides its name, URLs and data
    /// directory (e.g. `--max-txn-ops 2048`).
    pub extra_args: Vec<String>,
    /// The directory that holds the members' files; a fresh temporary
    /// directory when `None`. Removed when the cluster stops.
    pub dir: Option<PathBuf>,
    /// The etcd binary; [`etcd_bin`] when `None`.
    pub binary: Option<PathBuf>,
}

impl ClusterOptions {
    /// `nodes` members with etcd's default timing, in a temporary directory.
    pub fn new(nodes: usize) -> Self {
        ClusterOptions {
            nodes,
            fast_failover: false,
            extra_args: Vec::new(),
            dir: None,
            binary: None,
        }
    }

    /// The binary these options run.
    pub fn binary(&self) -> PathBuf {
        self.binary.clone().unwrap_or_else(etcd_bin)
    }
}

/// One member of a cluster.
pub struct Node {
    /// The member's name (`n1`, `n2`, …).
    pub name: String,
    /// Port of its client URL.
    pub client_port: u16,
    /// Port of its peer URL.
    pub peer_port: u16,
    child: Option<Child>,
}

impl Node {
    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The process id while the member runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the member runs (it was not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A running cluster of `etcd` processes on loopback.
pub struct Cluster {
    dir: PathBuf,
    token: String,
    options: ClusterOptions,
    /// The members, in start order.
    pub nodes: Vec<Node>,
    watchdog: Option<Child>,
}

/// Reserves `n` distinct free loopback ports. They are released before
/// etcd binds them, so another process could take one in between;
/// [`Cluster::launch`] retries with new ports if a member fails to come up.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind a free port: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| format!("local address: {e}"))
        })
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

/// The last lines of a member's log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

impl Cluster {
    /// Starts a cluster and waits until every member is healthy. Retries
    /// twice with fresh ports (a reserved port can be taken before etcd
    /// binds it); a missing binary fails at once.
    pub fn launch(options: ClusterOptions) -> Result<Cluster, LaunchError> {
        let mut last = String::new();
        for attempt in 0..3 {
            match Self::try_launch(&options, attempt) {
                Ok(c) => return Ok(c),
                Err(LaunchError::Missing(e)) => return Err(LaunchError::Missing(e)),
                Err(LaunchError::Failed(e)) => last = e,
            }
        }
        Err(LaunchError::Failed(format!(
            "could not start a {}-node etcd cluster with {}: {last}",
            options.nodes,
            options.binary().display()
        )))
    }

    /// [`launch`](Self::launch) with `nodes` members and default options,
    /// for tests: panics with the reason if the cluster cannot start.
    pub fn start(nodes: usize) -> Cluster {
        Self::launch(ClusterOptions::new(nodes)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`start`](Self::start), with [`ClusterOptions::fast_failover`].
    pub fn start_with(nodes: usize, fast_failover: bool) -> Cluster {
        let options = ClusterOptions {
            fast_failover,
            ..ClusterOptions::new(nodes)
        };
        Self::launch(options).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_launch(options: &ClusterOptions, attempt: usize) -> Result<Cluster, LaunchError> {
        let failed = LaunchError::Failed;
        let dir = match &options.dir {
            Some(d) => {
                let d = d.join(format!("try{attempt}"));
                std::fs::create_dir_all(&d)
                    .map_err(|e| failed(format!("create {}: {e}", d.display())))?;
                d
            }
            None => tempfile::Builder::new()
                .prefix("eskv-etcd-")
                .tempdir()
                .map_err(|e| failed(format!("temporary directory: {e}")))?
                .keep(),
        };
        let ports = free_ports(2 * options.nodes).map_err(failed)?;
        let nodes = (0..options.nodes)
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
            .map_err(|e| failed(format!("cannot start the watchdog shell: {e}")))?;
        let mut cluster = Cluster {
            token: format!("eskv-{}-{}", std::process::id(), ports[0]),
            dir,
            options: options.clone(),
            nodes,
            watchdog: Some(watchdog),
        };
        for i in 0..options.nodes {
            cluster.spawn(i, true)?;
        }
        for i in 0..options.nodes {
            cluster.wait_healthy(i, HEALTHY_WITHIN).map_err(failed)?;
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

    fn member_file(&self, i: usize, extension: &str) -> PathBuf {
        self.dir.join(format!("{}.{extension}", self.nodes[i].name))
    }

    fn spawn(&mut self, i: usize, new: bool) -> Result<(), LaunchError> {
        let failed = LaunchError::Failed;
        let initial = self.initial_cluster();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.member_file(i, "log"))
            .map_err(|e| failed(format!("log file: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| failed(format!("log file: {e}")))?;
        let node = &self.nodes[i];
        let client = format!("http://127.0.0.1:{}", node.client_port);
        let peer = format!("http://127.0.0.1:{}", node.peer_port);
        let (heartbeat, election) = if self.options.fast_failover {
            ("50", "500")
        } else {
            ("100", "1000")
        };
        let binary = self.options.binary();
        let child = Command::new(&binary)
            .arg("--name")
            .arg(&node.name)
            .arg("--data-dir")
            .arg(self.member_file(i, "etcd"))
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
            .args(&self.options.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LaunchError::Missing(format!(
                    "no etcd binary ({} not found; set ETCD_BIN or install etcd-server)",
                    binary.display()
                )))
            }
            Err(e) => return Err(failed(format!("cannot run {}: {e}", binary.display()))),
        };
        std::fs::write(self.member_file(i, "pid"), child.id().to_string())
            .map_err(|e| failed(format!("pid file: {e}")))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers `/health` with a leader; the error
    /// holds its log tail.
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
                        tail(&self.member_file(i, "log"))
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{} not healthy after {timeout:?}; log:\n{}",
            self.nodes[i].name,
            tail(&self.member_file(i, "log"))
        ))
    }

    /// Client endpoints (`127.0.0.1:port`) of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::endpoint).collect()
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.member_file(i, "pid"));
    }

    /// Restarts member `i` on its old data directory and waits until it is
    /// healthy; panics with its log tail if it is not.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].is_running(), "member {i} is running");
        if let Err(e) = self.spawn(i, false) {
            panic!("restart {}: {e}", self.nodes[i].name);
        }
        if let Err(e) = self.wait_healthy(i, HEALTHY_WITHIN) {
            panic!("restart: {e}");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_reported_as_missing() {
        let options = ClusterOptions {
            binary: Some(PathBuf::from("/nonexistent/etcd-for-eskv")),
            ..ClusterOptions::new(1)
        };
        match Cluster::launch(options) {
            Err(LaunchError::Missing(m)) => assert!(m.contains("ETCD_BIN"), "{m}"),
            Err(e) => panic!("expected Missing, got {e}"),
            Ok(_) => panic!("a cluster started from a missing binary"),
        }
    }
}
