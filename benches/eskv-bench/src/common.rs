//! What every system is given: the events, the operations of the workloads,
//! and small measuring helpers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors are strings: the harness only reports them.
pub type Res<T> = Result<T, String>;

/// Turns any displayable error into the harness's error.
pub fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// The one event type every workload uses.
pub const EVENT_TYPE: &str = "BenchEvent";

/// Event data: about 200 bytes of JSON, the same for every system.
pub fn payload() -> Arc<[u8]> {
    let mut s = String::from(
        r#"{"order":"o-000000","customer":"c-000000","amount":1234.56,"currency":"EUR","note":""#,
    );
    while s.len() < 198 {
        s.push('x');
    }
    s.push_str("\"}");
    Arc::from(s.into_bytes())
}

/// One event to append: its id, two sorted tags, data, and the stream it
/// belongs to (id and 1-based version) when it is loaded as a stream event.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: u128,
    pub tags: [String; 2],
    pub data: Arc<[u8]>,
    pub stream: Option<(String, u64)>,
}

impl Ev {
    fn new(tags: [String; 2], data: &Arc<[u8]>) -> Ev {
        let mut tags = tags;
        tags.sort();
        Ev {
            id: eskv::Ulid::generate().0,
            tags,
            data: data.clone(),
            stream: None,
        }
    }

    /// W1, W4 and W8: a fresh entity tag and one of 100 group tags. W1's
    /// condition is on the entity tag.
    pub fn plain(n: u64, data: &Arc<[u8]>) -> Ev {
        Ev::new([format!("e:{n}"), format!("g:{}", n % 100)], data)
    }

    /// W4r: tags that repeat, one of 1000 entity tags and one of 100 group
    /// tags (chosen independently of the entity), so that most appends
    /// add positions to tags that already exist.
    pub fn repeating(n: u64, data: &Arc<[u8]>) -> Ev {
        let g = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % 100;
        Ev::new([format!("e:{}", n % 1000), format!("g:{g}")], data)
    }

    /// W3: an event of writer `w`; its condition tag (the first) is
    /// unique in the run, so disjoint from every other writer's and from
    /// the writer's own earlier rounds.
    pub fn writer(w: usize, data: &Arc<[u8]>) -> Ev {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Ev::new([format!("e:{w}-{n}"), format!("w:{w}")], data)
    }

    /// W2: an event of `stream`, tagged with the stream so that a pure DCB
    /// store (UmaDB) can express the expected version as a condition.
    pub fn of_stream(stream: &str, n: u64, data: &Arc<[u8]>) -> Ev {
        Ev::new([format!("e:{n}"), stream_tag(stream)], data)
    }

    /// The read data set (W5 to W7): event `i` carries one of `tags` query
    /// tags (so each has `n / tags` events) and belongs to one of `streams`
    /// streams, interleaved over the log.
    pub fn dataset(i: u64, tags: u64, streams: u64, data: &Arc<[u8]>) -> Ev {
        let s = format!("s-{}", i % streams);
        let mut e = Ev::new([format!("tag:{}", i % tags), stream_tag(&s)], data);
        e.stream = Some((s, i / streams + 1));
        e
    }
}

/// The tag that marks an event of `stream` (used by the DCB-only peers).
pub fn stream_tag(stream: &str) -> String {
    format!("stream:{stream}")
}

/// The operations of the workloads, implemented by each system.
pub trait Store {
    /// W1: append one event unless an event carrying `cond_tag` exists
    /// (a DCB condition with no `after`: the uniqueness pattern).
    fn append_cond(&mut self, ev: &Ev, cond_tag: &str) -> Res<()>;
    /// W2: append one event to `stream` if its version is `expected`
    /// (0: the stream must not exist). `last_pos` is the position of the
    /// stream's last event as the writer saw it. Returns the new position.
    fn append_stream(&mut self, ev: &Ev, stream: &str, expected: u64, last_pos: u64) -> Res<u64>;
    /// W4: append all `evs` atomically, without a condition.
    fn append_batch(&mut self, evs: &[Ev]) -> Res<()>;
    /// Setup: bulk-load `evs` (stream events when `stream` is set).
    fn load(&mut self, evs: &[Ev]) -> Res<()>;
    /// W5: every event carrying `tag`, with data and tags.
    fn read_tag(&mut self, tag: &str) -> Res<usize>;
    /// W6: the whole log.
    fn read_all(&mut self) -> Res<usize>;
    /// W7: one stream, in version order.
    fn read_stream(&mut self, stream: &str) -> Res<usize>;
    /// DISK: the bytes the engine counts as in use in its files, where it
    /// preallocates far more than it uses (UmaDB); `None` elsewhere.
    fn used_bytes(&self) -> Res<Option<u64>> {
        Ok(None)
    }
}

/// Percentile of sorted `v` (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `op` until `budget` has passed or `max` operations are done;
/// returns (operations, elapsed).
pub fn run_for(
    budget: Duration,
    max: u64,
    mut op: impl FnMut(u64) -> Res<()>,
) -> Res<(u64, Duration)> {
    let start = Instant::now();
    let mut n = 0;
    while n < max && (n == 0 || start.elapsed() < budget) {
        op(n)?;
        n += 1;
    }
    Ok((n, start.elapsed()))
}

/// This process's resident set size and its peak, in bytes.
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Context switches (voluntary and involuntary) of every live thread of
/// this process so far, from `/proc/self/task/*/status`; 0 where there is
/// no `/proc`. Threads that exited no longer count.
pub fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Bytes allocated on disk to the files under `path` (what `du` counts:
/// 512-byte blocks, so sparse regions do not count).
pub fn disk_allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| disk_allocated(&e.path())).sum())
        .unwrap_or(0)
}

/// Bytes used by the files under `path`.
pub fn disk_usage(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The rows eskv writes for one event (with `append` the positions of the
/// append it belongs to), from the library's own layout, so the raw peers
/// that write eskv's keys write exactly them.
pub fn layout_rows(
    rows: &mut Vec<(Vec<u8>, Vec<u8>)>,
    pos: u64,
    append: (u64, u64),
    ev: &Ev,
    now: u64,
    stream: Option<(&str, u64)>,
) -> Res<()> {
    let e = eskv::NewEvent {
        id: eskv::Ulid(ev.id),
        event_type: EVENT_TYPE.to_string(),
        tags: ev.tags.to_vec(),
        data: ev.data.to_vec(),
        metadata: Default::default(),
        personal: None,
    };
    eskv::layout::event_rows(rows, pos, &e, now, (stream, None), append).map_err(err("encode"))?;
    Ok(())
}
