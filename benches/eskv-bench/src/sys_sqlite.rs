//! SQLite through rusqlite: WAL, `synchronous=FULL` (fsync of the WAL on
//! every commit), in two relational event store schemas, both with an
//! events table holding a global sequence and a unique
//! (stream_id, version):
//!
//! - [`Layout::TagsJoined`]: the tags only in a tags table indexed by
//!   (tag, position) and by position; reads gather each event's tags with a
//!   `group_concat` subquery.
//! - [`Layout::TagsInline`]: each event's tags in a `tags` column of its
//!   row (as most teams would write it), plus a `(tag, position)` index
//!   table (`WITHOUT ROWID`) for conditions and tag reads; reads return the
//!   tags from the event row.

use crate::common::{err, now_ms, Ev, Res, Store, EVENT_TYPE};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where an event's tags live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    TagsJoined,
    TagsInline,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY,   -- the global sequence
    id          BLOB NOT NULL,
    stream_id   TEXT,
    version     INTEGER,
    event_type  TEXT NOT NULL,
    data        BLOB NOT NULL,
    recorded_at INTEGER NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE IF NOT EXISTS event_tags (
    tag      TEXT NOT NULL,
    position INTEGER NOT NULL REFERENCES events(position)
);
CREATE INDEX IF NOT EXISTS event_tags_by_tag ON event_tags (tag, position);
CREATE INDEX IF NOT EXISTS event_tags_by_position ON event_tags (position);
";

/// The inline schema: `tags` holds the event's tags joined with the unit
/// separator (U+001F).
const SCHEMA_INLINE: &str = "
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY,   -- the global sequence
    id          BLOB NOT NULL,
    stream_id   TEXT,
    version     INTEGER,
    event_type  TEXT NOT NULL,
    tags        TEXT NOT NULL,
    data        BLOB NOT NULL,
    recorded_at INTEGER NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE IF NOT EXISTS event_tags (
    tag      TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (tag, position)
) WITHOUT ROWID;
";

const INSERT_EVENT_INLINE: &str = "INSERT INTO events (id, stream_id, version, event_type, tags, data, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
/// Columns of an event, its tags from its own row.
const EVENT_COLUMNS_INLINE: &str =
    "e.position, e.id, e.stream_id, e.version, e.event_type, e.data, e.recorded_at, e.tags";

impl Layout {
    fn schema(self) -> &'static str {
        match self {
            Layout::TagsJoined => SCHEMA,
            Layout::TagsInline => SCHEMA_INLINE,
        }
    }

    fn columns(self) -> &'static str {
        match self {
            Layout::TagsJoined => EVENT_COLUMNS,
            Layout::TagsInline => EVENT_COLUMNS_INLINE,
        }
    }
}

const INSERT_EVENT: &str = "INSERT INTO events (id, stream_id, version, event_type, data, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const INSERT_TAG: &str = "INSERT INTO event_tags (tag, position) VALUES (?1, ?2)";
/// Columns of an event plus its tags, joined with the unit separator.
const EVENT_COLUMNS: &str = "e.position, e.id, e.stream_id, e.version, e.event_type, e.data, e.recorded_at, (SELECT group_concat(t2.tag, char(31)) FROM event_tags t2 WHERE t2.position = e.position)";

pub struct Sqlite {
    conn: Connection,
    path: PathBuf,
    layout: Layout,
}

/// An event as read back, fully materialized like the other systems'.
#[allow(dead_code)]
struct Row {
    position: i64,
    id: Vec<u8>,
    stream: Option<(String, i64)>,
    event_type: String,
    data: Vec<u8>,
    recorded_at: i64,
    tags: Vec<String>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let stream: Option<String> = r.get(2)?;
    let version: Option<i64> = r.get(3)?;
    let tags: Option<String> = r.get(7)?;
    Ok(Row {
        position: r.get(0)?,
        id: r.get(1)?,
        stream: stream.zip(version),
        event_type: r.get(4)?,
        data: r.get(5)?,
        recorded_at: r.get(6)?,
        tags: tags.map_or_else(Vec::new, |t| t.split('\u{1f}').map(str::to_owned).collect()),
    })
}

fn connect(path: &Path) -> Res<Connection> {
    let conn = Connection::open(path).map_err(err("sqlite open"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(err("sqlite wal"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("sqlite: journal mode is {mode}, not WAL"));
    }
    conn.execute_batch("PRAGMA synchronous=FULL;")
        .map_err(err("sqlite pragma"))?;
    conn.busy_timeout(Duration::from_secs(120))
        .map_err(err("sqlite busy timeout"))?;
    Ok(conn)
}

/// Inserts one event and its tags; returns its position.
fn insert(
    tx: &rusqlite::Transaction<'_>,
    layout: Layout,
    ev: &Ev,
    stream: Option<(&str, u64)>,
    now: i64,
) -> Res<i64> {
    match layout {
        Layout::TagsJoined => tx.prepare_cached(INSERT_EVENT).and_then(|mut s| {
            s.execute(params![
                ev.id.to_be_bytes().as_slice(),
                stream.map(|s| s.0),
                stream.map(|s| s.1 as i64),
                EVENT_TYPE,
                &ev.data[..],
                now
            ])
        }),
        Layout::TagsInline => tx.prepare_cached(INSERT_EVENT_INLINE).and_then(|mut s| {
            s.execute(params![
                ev.id.to_be_bytes().as_slice(),
                stream.map(|s| s.0),
                stream.map(|s| s.1 as i64),
                EVENT_TYPE,
                ev.tags.join("\u{1f}"),
                &ev.data[..],
                now
            ])
        }),
    }
    .map_err(err("sqlite insert event"))?;
    let pos = tx.last_insert_rowid();
    let mut st = tx
        .prepare_cached(INSERT_TAG)
        .map_err(err("sqlite prepare"))?;
    for t in &ev.tags {
        st.execute(params![t, pos])
            .map_err(err("sqlite insert tag"))?;
    }
    Ok(pos)
}

/// One W1 append on `conn`.
fn append_cond_on(conn: &mut Connection, layout: Layout, ev: &Ev, cond_tag: &str) -> Res<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("sqlite begin"))?;
    let hit = tx
        .prepare_cached("SELECT 1 FROM event_tags WHERE tag = ?1 AND position > ?2 LIMIT 1")
        .and_then(|mut s| s.exists(params![cond_tag, 0i64]))
        .map_err(err("sqlite condition"))?;
    if hit {
        return Err("sqlite: condition failed".into());
    }
    insert(&tx, layout, ev, None, now_ms() as i64)?;
    tx.commit().map_err(err("sqlite commit"))
}

impl Sqlite {
    pub fn open(path: &Path) -> Res<Sqlite> {
        Self::open_with(path, Layout::TagsJoined)
    }

    pub fn open_with(path: &Path, layout: Layout) -> Res<Sqlite> {
        let conn = connect(path)?;
        conn.execute_batch(layout.schema())
            .map_err(err("sqlite schema"))?;
        Ok(Sqlite {
            conn,
            path: path.to_path_buf(),
            layout,
        })
    }

    fn write_batch(&mut self, evs: &[Ev]) -> Res<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("sqlite begin"))?;
        let now = now_ms() as i64;
        for ev in evs {
            let stream = ev.stream.as_ref().map(|(s, v)| (s.as_str(), *v));
            insert(&tx, self.layout, ev, stream, now)?;
        }
        tx.commit().map_err(err("sqlite commit"))
    }

    fn query(&self, sql: &str, p: impl rusqlite::Params) -> Res<usize> {
        let mut st = self
            .conn
            .prepare_cached(sql)
            .map_err(err("sqlite prepare"))?;
        let rows = st
            .query_map(p, row)
            .map_err(err("sqlite query"))?
            .collect::<rusqlite::Result<Vec<Row>>>()
            .map_err(err("sqlite row"))?;
        Ok(rows.len())
    }

    /// W3 on SQLite: `writers` threads, each with its own connection,
    /// contending for the write lock (busy timeout 120 s).
    pub fn concurrent(
        &self,
        writers: usize,
        budget: Duration,
        data: &Arc<[u8]>,
    ) -> Res<(u64, Duration)> {
        let conns = (0..writers)
            .map(|_| connect(&self.path))
            .collect::<Res<Vec<_>>>()?;
        let layout = self.layout;
        let start = Instant::now();
        let deadline = start + budget;
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(w, mut conn)| {
                let data = data.clone();
                std::thread::spawn(move || -> Res<u64> {
                    let mut n = 0u64;
                    while n == 0 || Instant::now() < deadline {
                        let ev = Ev::writer(w, &data);
                        append_cond_on(&mut conn, layout, &ev, &ev.tags[0])?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h
                .join()
                .map_err(|_| "sqlite W3 thread panicked".to_string())??;
        }
        Ok((total, start.elapsed()))
    }
}

impl Store for Sqlite {
    fn append_cond(&mut self, ev: &Ev, cond_tag: &str) -> Res<()> {
        append_cond_on(&mut self.conn, self.layout, ev, cond_tag)
    }

    /// W2: the stream's current version from the (stream_id, version)
    /// index, checked against the expected one, then the insert (which the
    /// unique constraint would also reject on a race).
    fn append_stream(&mut self, ev: &Ev, stream: &str, expected: u64, _last: u64) -> Res<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("sqlite begin"))?;
        let current: Option<i64> = tx
            .prepare_cached("SELECT max(version) FROM events WHERE stream_id = ?1")
            .and_then(|mut s| s.query_row(params![stream], |r| r.get(0)).optional())
            .map_err(err("sqlite version"))?
            .flatten();
        if current.unwrap_or(0) as u64 != expected {
            return Err("sqlite: wrong expected version".into());
        }
        let pos = insert(
            &tx,
            self.layout,
            ev,
            Some((stream, expected + 1)),
            now_ms() as i64,
        )?;
        tx.commit().map_err(err("sqlite commit"))?;
        Ok(pos as u64)
    }

    fn append_batch(&mut self, evs: &[Ev]) -> Res<()> {
        self.write_batch(evs)
    }

    fn load(&mut self, evs: &[Ev]) -> Res<()> {
        self.write_batch(evs)
    }

    fn read_tag(&mut self, tag: &str) -> Res<usize> {
        let cols = self.layout.columns();
        let sql = format!(
            "SELECT {cols} FROM event_tags t JOIN events e ON e.position = t.position WHERE t.tag = ?1 ORDER BY t.position"
        );
        self.query(&sql, params![tag])
    }

    fn read_all(&mut self) -> Res<usize> {
        let cols = self.layout.columns();
        let sql = format!("SELECT {cols} FROM events e ORDER BY e.position");
        self.query(&sql, [])
    }

    fn read_stream(&mut self, stream: &str) -> Res<usize> {
        let cols = self.layout.columns();
        let sql = format!("SELECT {cols} FROM events e WHERE e.stream_id = ?1 ORDER BY e.version");
        self.query(&sql, params![stream])
    }
}
