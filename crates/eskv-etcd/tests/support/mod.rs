//! Test support shared by the etcd test binaries: the cluster launcher
//! (`eskv-etcd-launcher`) running the `etcd` binary found at build time
//! (`ESKV_ETCD_BIN`, overridable with `ETCD_BIN` at run time), one shared
//! cluster per test binary, and helpers for tests that kill members.
#![allow(dead_code)]

pub mod auth;

use eskv_etcd::EtcdOptions;
pub use eskv_etcd_launcher::{Cluster, ClusterOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The etcd binary: `ETCD_BIN` at run time, else the one the build found.
fn binary() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .or(option_env!("ESKV_ETCD_BIN").map(PathBuf::from))
        .unwrap_or_else(eskv_etcd_launcher::etcd_bin)
}

/// Starts an `n`-member cluster of [`binary`]; panics with the reason if it
/// cannot. `fast_failover` shortens heartbeat and election for fault tests.
/// Without it the members are patient: a 250 ms heartbeat, a 5 s election
/// timeout and pre-vote, so that a disk sync stalled by a loaded machine
/// does not start an election (etcd answers "no leader" at once during
/// one, and tests that kill no member expect none). etcd takes the last
/// value of a repeated flag.
pub fn start(nodes: usize, fast_failover: bool) -> Cluster {
    launch(nodes, fast_failover, &[])
}

/// Like [`start`] with patient members, each also given the server flags
/// `extra_args` (e.g. `["--quota-backend-bytes", "8388608"]`).
pub fn start_with(nodes: usize, extra_args: &[&str]) -> Cluster {
    launch(nodes, false, extra_args)
}

fn launch(nodes: usize, fast_failover: bool, extra: &[&str]) -> Cluster {
    let patient = [
        "--heartbeat-interval",
        "250",
        "--election-timeout",
        "5000",
        "--pre-vote",
    ];
    let mut extra_args: Vec<String> = if fast_failover {
        Vec::new()
    } else {
        patient.iter().map(|a| a.to_string()).collect()
    };
    extra_args.extend(extra.iter().map(|a| a.to_string()));
    let options = ClusterOptions {
        fast_failover,
        extra_args,
        binary: Some(binary()),
        ..ClusterOptions::new(nodes)
    };
    Cluster::launch(options).unwrap_or_else(|e| panic!("{e}"))
}

/// One 3-node cluster shared by every test of a test binary. It is never
/// dropped; the launcher's watchdog stops it when the test process exits.
pub fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| start(3, false))
}

/// The index of the current leader, asked of every running member.
pub async fn find_leader(cluster: &Arc<Mutex<Cluster>>) -> usize {
    let members: Vec<(usize, String)> = {
        let c = cluster.lock().unwrap();
        c.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_running())
            .map(|(i, n)| (i, n.endpoint()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let mut ids = Vec::new();
        let mut leader = 0u64;
        for (i, ep) in &members {
            let opts = EtcdOptions::new([ep.clone()])
                .connect_timeout(Duration::from_secs(1))
                .request_timeout(Duration::from_secs(1));
            let Ok(c) = eskv_etcd::EtcdClient::connect(&opts).await else {
                continue;
            };
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await {
                if let Some(h) = &s.header {
                    ids.push((*i, h.member_id));
                }
                if s.leader != 0 {
                    leader = s.leader;
                }
            }
        }
        if let Some((i, _)) = ids.iter().find(|(_, id)| *id == leader) {
            return *i;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no etcd leader found within 15 s");
}

/// Runs a blocking cluster operation (kill, restart) off the runtime.
pub async fn blocking<R: Send + 'static>(
    cluster: &Arc<Mutex<Cluster>>,
    f: impl FnOnce(&mut Cluster) -> R + Send + 'static,
) -> R {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || f(&mut c.lock().unwrap()))
        .await
        .unwrap()
}

/// An error a check may wait out: the cluster is electing, or a request
/// timed out while it did.
pub trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for eskv_core::Error {
    fn transient(&self) -> bool {
        self.is_retryable()
    }
}

impl Transient for eskv_core::KvError {
    fn transient(&self) -> bool {
        self.is_retryable()
    }
}

/// `op`'s answer once the cluster gives one: a fault test's checks run
/// right after a kill, while a leader may still be elected, and a read
/// that fails with a transient error is asked again, for up to 30 s. Any
/// other error, or a transient one past the deadline, panics.
pub async fn settled<T, E, Fut>(what: &str, mut op: impl FnMut() -> Fut) -> T
where
    E: Transient + std::fmt::Debug,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if e.transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}
