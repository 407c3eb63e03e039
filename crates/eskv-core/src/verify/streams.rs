//! Streams: the stream metadata (`0x20`) against the stream index
//! (`0x21`), merged in one pass since both are ordered by stream id.

use super::pager::{Cursor, Pager};
use super::{corrupt_message, Checker, PAGE};
use crate::error::Result;
use crate::event::Position;
use crate::kv::{KvPair, KvTransaction};
use crate::layout::{self, StreamMeta};

/// One stream's index entries, gathered while scanning `0x21`.
struct StreamGroup {
    stream: String,
    /// Highest version seen.
    version: u64,
    /// Position of the highest version.
    last_position: Position,
}

impl Checker<'_> {
    /// Stream metadata (`0x20`) merged with the stream index (`0x21`); both
    /// are ordered by stream id.
    pub(super) async fn streams(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut metas = Cursor::new(layout::stream_meta_range());
        let mut group: Option<StreamGroup> = None;
        let mut pager = Pager::new(layout::stream_event_table_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            let mut entries = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let (s, ver) = match layout::parse_stream_event_key(&k) {
                    Ok(x) => x,
                    Err(e) => {
                        self.unparsed_key(&k, "stream index", &e);
                        continue;
                    }
                };
                match layout::parse_stream_entry(&k, &v) {
                    Ok(p) => entries.push((k, s, ver, p)),
                    Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
                }
            }
            let positions: Vec<Position> = entries.iter().map(|(_, _, _, p)| *p).collect();
            let events = self.load(txn, &positions).await?;
            for ((k, s, ver, p), e) in entries.into_iter().zip(events) {
                match e {
                    None => self.violation(
                        Some(&k),
                        Some(p),
                        format!("version {ver} of stream '{s}' points at position {p}, which holds no event"),
                    ),
                    Some(Err(_)) => {}
                    Some(Ok(e)) => {
                        let named = e.stream.as_ref().map(|r| (r.stream_id.as_str(), r.version));
                        if named != Some((s.as_str(), ver)) {
                            self.violation(
                                Some(&k),
                                Some(p),
                                format!(
                                    "version {ver} of stream '{s}' points at position {p}, whose event belongs to {}",
                                    match named {
                                        Some((x, v)) => format!("stream '{x}' version {v}"),
                                        None => "no stream".into(),
                                    }
                                ),
                            );
                        }
                    }
                }
                let same = group.as_ref().is_some_and(|g| g.stream == s);
                if !same {
                    if let Some(g) = group.take() {
                        self.finish_stream(txn, &mut metas, g).await?;
                    }
                    // Versions below the compacted edge were removed.
                    let kept = self.first_kept_version(&s);
                    group = Some(StreamGroup {
                        stream: s.clone(),
                        version: kept - 1,
                        last_position: 0,
                    });
                }
                if let Some(g) = group.as_mut() {
                    if ver != g.version + 1 {
                        let msg = if ver == 0 {
                            format!("stream '{s}' has a version 0 (versions start at 1)")
                        } else {
                            format!(
                                "stream '{s}' is missing versions {}..={}",
                                g.version + 1,
                                ver - 1
                            )
                        };
                        self.violation(Some(&k), Some(p), msg);
                    }
                    if p <= g.last_position {
                        self.violation(
                            Some(&k),
                            Some(p),
                            format!(
                                "version {ver} of stream '{s}' is at position {p}, not after version {}'s position {}",
                                g.version, g.last_position
                            ),
                        );
                    }
                    g.version = ver;
                    g.last_position = p;
                }
            }
        }
        if let Some(g) = group.take() {
            self.finish_stream(txn, &mut metas, g).await?;
        }
        // Metadata of streams with no index entry at all.
        while let Some((k, v)) = self.next_meta(txn, &mut metas).await? {
            self.meta_without_entries(&k, &v);
        }
        Ok(())
    }

    /// Pops the next metadata pair, counting streams.
    async fn next_meta(
        &mut self,
        txn: &mut dyn KvTransaction,
        metas: &mut Cursor,
    ) -> Result<Option<KvPair>> {
        if metas.peek(txn).await?.is_none() {
            return Ok(None);
        }
        let pair = metas.pop();
        if pair.is_some() {
            self.report.streams += 1;
            self.report.keys += 1;
        }
        Ok(pair)
    }

    fn meta_without_entries(&mut self, k: &[u8], v: &[u8]) {
        let name = match layout::parse_stream_meta_key(k) {
            Ok(s) => format!("stream '{s}'"),
            Err(e) => {
                self.unparsed_key(k, "stream", &e);
                return;
            }
        };
        let what = match StreamMeta::decode(v) {
            Ok(m) => {
                // Every version removed by compaction: no entries left.
                let stream = layout::parse_stream_meta_key(k).unwrap_or_default();
                if self.first_kept_version(&stream) > m.version {
                    return;
                }
                format!("version {}", m.version)
            }
            Err(e) => corrupt_message(&e),
        };
        self.violation(
            Some(k),
            None,
            format!("{name} has metadata ({what}) but no stream index entries"),
        );
    }

    /// Matches a finished group of index entries with its metadata.
    async fn finish_stream(
        &mut self,
        txn: &mut dyn KvTransaction,
        metas: &mut Cursor,
        g: StreamGroup,
    ) -> Result<()> {
        loop {
            let Some((k, _)) = metas.peek(txn).await? else {
                break;
            };
            let before = match layout::parse_stream_meta_key(k) {
                Ok(s) => s < g.stream,
                // Malformed keys sort by bytes; report them where found.
                Err(_) => k.as_slice() < layout::stream_key(&g.stream).as_slice(),
            };
            if !before {
                break;
            }
            if let Some((k, v)) = self.next_meta(txn, metas).await? {
                self.meta_without_entries(&k, &v);
            }
        }
        let key = layout::stream_key(&g.stream);
        let matches = matches!(metas.peek(txn).await?, Some((k, _)) if *k == key);
        if !matches {
            self.violation(
                Some(&key),
                Some(g.last_position),
                format!(
                    "stream '{}' has index entries up to version {} but no metadata",
                    g.stream, g.version
                ),
            );
            return Ok(());
        }
        let Some((k, v)) = self.next_meta(txn, metas).await? else {
            return Ok(());
        };
        match StreamMeta::decode(&v) {
            Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
            Ok(m) => {
                if m.version != g.version {
                    self.violation(
                        Some(&k),
                        Some(g.last_position),
                        format!(
                            "stream '{}' metadata says version {}, its index ends at version {}",
                            g.stream, m.version, g.version
                        ),
                    );
                } else if m.last_position != g.last_position {
                    self.violation(
                        Some(&k),
                        Some(m.last_position),
                        format!(
                            "stream '{}' metadata says its last event is at position {}, the index says {}",
                            g.stream, m.last_position, g.last_position
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}
