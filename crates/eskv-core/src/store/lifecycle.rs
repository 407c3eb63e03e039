//! Lifecycle changes: retention, soft delete, tombstone, and forgetting a
//! data subject. Each is one transaction that also appends a system event
//! (`crate::lifecycle::system_types`) at the next position, so it is
//! ordered in the log with every append (it writes the head) and every
//! subscriber sees it. A lost acknowledgement is resolved by the system
//! event's id, fixed before the first attempt.

use super::live::{first_version_by_age, now_ms};
use super::options::AppendResult;
use super::EventStore;
use crate::crypto::SubjectRecord;
use crate::error::{Error, ExpectedVersion, Result};
use crate::event::{NewEvent, Position, StreamVersion};
use crate::kv::KvTransaction;
use crate::layout::event_rows;
use crate::layout::{self, IdEntry, StreamMeta};
use crate::lifecycle::{
    checked_next, stream_tag, subject_tag, system_types, LogLife, Retention, StreamLife, LOG_TAG,
};
use crate::retry::retry;
use crate::validate::{validate_stream_id, validate_subject};
use ulid::Ulid;

/// What [`EventStore::forget`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgetOutcome {
    /// The subject's key was destroyed; the `$subject-forgotten` event is
    /// at this position.
    Forgotten {
        /// Position of the `$subject-forgotten` event.
        position: Position,
    },
    /// The subject was already forgotten; nothing was written.
    AlreadyForgotten,
}

/// What [`EventStore::truncate_log_before`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTruncation {
    /// Every event below the position is released now; the
    /// `$log-truncated` event is at `position`.
    Truncated {
        /// Position of the `$log-truncated` event.
        position: Position,
    },
    /// The log was truncated at or beyond this position already; nothing
    /// was written.
    AlreadyTruncated {
        /// The log's first live position.
        before: Position,
    },
}

#[derive(Clone, Copy)]
enum Change<'a> {
    Retention(&'a Retention, ExpectedVersion),
    Delete(ExpectedVersion),
    Tombstone(ExpectedVersion),
}

impl EventStore {
    /// Sets `stream`'s retention, if its metadata revision matches
    /// `expected_revision` (`NoStream`: never set; `Exact(n)`: revision
    /// `n`, as [`StreamInfo::metadata_revision`] shows; `Any`). Events it
    /// releases stop being returned by every read path at once; their rows
    /// are removed by [`compact`](Self::compact). Released events never
    /// come back: loosening a setting keeps released what the old settings
    /// released (`truncate_before` moves up to it). Appends a
    /// `$stream-retention-set` event; returns its position.
    ///
    /// Errors: [`Error::WrongExpectedVersion`] (revision mismatch),
    /// [`Error::StreamTombstoned`], and [`Error::InvalidInput`] for a
    /// `truncate_before` beyond the stream's next version, a `max_count`
    /// of 0, or a `max_age` under 1 ms or over `u64::MAX` ms.
    ///
    /// [`StreamInfo::metadata_revision`]: crate::StreamInfo::metadata_revision
    pub async fn set_retention(
        &self,
        stream: impl AsRef<str>,
        retention: Retention,
        expected_revision: ExpectedVersion,
    ) -> Result<AppendResult> {
        let stream = stream.as_ref();
        if retention.max_count == Some(0) {
            return Err(Error::invalid(format!(
                "max_count 0 for stream '{stream}' would keep no event; use delete_stream to delete a stream, or a max_count of at least 1"
            )));
        }
        if let Some(age) = retention.max_age {
            // Stored in whole milliseconds: refuse what would round to
            // "release everything at once" or wrap.
            match u64::try_from(age.as_millis()) {
                Ok(0) => {
                    return Err(Error::invalid(format!(
                        "max_age {age:?} for stream '{stream}' would release every event at once; use delete_stream to delete a stream, or a max_age of at least 1 ms"
                    )))
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(Error::invalid(format!(
                        "max_age {age:?} for stream '{stream}' is longer than eskv can store ({} ms); leave max_age unset to keep events regardless of age",
                        u64::MAX
                    )))
                }
            }
        }
        self.change_stream(stream, Change::Retention(&retention, expected_revision))
            .await
    }

    /// Soft-deletes `stream` if its version matches `expected`: it reads as
    /// absent (every read path skips its events, `stream_info` says
    /// `deleted`), and it can be recreated. Its version continues: the next
    /// append gets version `v + 1` (as in KurrentDB), accepted with
    /// `ExpectedVersion::NoStream`, `Any` or `Exact(v)`. Appends a
    /// `$stream-deleted` event; returns its position. A stream with no
    /// live events is [`Error::NotFound`].
    pub async fn delete_stream(
        &self,
        stream: impl AsRef<str>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        let stream = stream.as_ref();
        self.change_stream(stream, Change::Delete(expected)).await
    }

    /// Tombstones `stream` if its version matches `expected`: it reads as
    /// absent and can never be written again (an append is
    /// [`Error::StreamTombstoned`], forever). Appends a
    /// `$stream-tombstoned` event; returns its position.
    pub async fn tombstone_stream(
        &self,
        stream: impl AsRef<str>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        let stream = stream.as_ref();
        self.change_stream(stream, Change::Tombstone(expected))
            .await
    }

    async fn change_stream(&self, stream: &str, change: Change<'_>) -> Result<AppendResult> {
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let id = Ulid::generate();
        let kv = &self.inner.kv;
        let result = retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            let vals = txn
                .get_many(&[
                    layout::head_key(),
                    layout::stream_key(stream),
                    layout::stream_life_key(stream),
                    layout::id_key(id),
                    layout::log_life_key(),
                ])
                .await?;
            if let Some(done) = already_applied(&vals[3], id)? {
                return Ok(done);
            }
            let head = vals[0]
                .as_deref()
                .map_or(Ok(0), |v| layout::parse_u64(v, "head"))?;
            let meta = vals[1].as_deref().map(StreamMeta::decode).transpose()?;
            let version = meta.map_or(0, |m| m.version);
            // A stream whose every event lies below the log's cut reads as
            // absent, as on every read path.
            let cut = super::live::log_cut_of(vals[4].as_deref())?;
            let below_cut = meta.is_some_and(|m| m.last_position < cut);
            let old = vals[2]
                .as_deref()
                .map(StreamLife::decode)
                .transpose()?
                .unwrap_or_default();
            if old.tombstoned {
                return Err(Error::StreamTombstoned {
                    stream: stream.to_owned(),
                });
            }
            let mut new = old.clone();
            new.revision = checked_next(old.revision, 1, "the stream's metadata revisions")?;
            // Released never comes back, by age either.
            new.truncate_before = first_kept(&mut *txn, stream, &old, version).await?;
            let absent = old.reads_absent(version) || below_cut;
            let (event_type, data) = match change {
                Change::Retention(r, expected) => {
                    // Revision 0 is a record only compaction or an import's
                    // holes wrote: never set, as far as anyone can see.
                    let revision = (old.revision > 0).then_some(old.revision);
                    if !expected_matches(expected, revision, revision.is_none()) {
                        return Err(Error::WrongExpectedVersion {
                            stream: format!("{stream} (retention metadata)"),
                            expected,
                            actual: revision,
                        });
                    }
                    if let Some(tb) = r.truncate_before {
                        if tb > version.saturating_add(1) {
                            return Err(Error::invalid(format!(
                                "truncate_before {tb} is beyond the head of stream '{stream}', which is at version {version}: truncate at most to {} (which releases every event, like delete_stream)",
                                version.saturating_add(1)
                            )));
                        }
                        new.truncate_before = new.truncate_before.max(tb);
                    }
                    new.max_count = r.max_count;
                    // Checked by set_retention: 1 ..= u64::MAX ms.
                    new.max_age_ms = r.max_age.map(|a| a.as_millis().min(u64::MAX.into()) as u64);
                    let body = serde_json::json!({
                        "stream": stream,
                        "revision": new.revision,
                        "max_count": new.max_count,
                        "max_age_ms": new.max_age_ms,
                        "truncate_before": new.truncate_before,
                    });
                    (system_types::RETENTION_SET, body)
                }
                Change::Delete(expected) | Change::Tombstone(expected) => {
                    if !expected_matches(expected, Some(version).filter(|v| *v > 0), absent) {
                        return Err(Error::WrongExpectedVersion {
                            stream: stream.to_owned(),
                            expected,
                            actual: Some(version).filter(|v| *v > 0),
                        });
                    }
                    let tombstone = matches!(change, Change::Tombstone(_));
                    if tombstone {
                        new.tombstoned = true;
                    } else {
                        if absent {
                            return Err(Error::NotFound {
                                what: format!("stream '{stream}' (it has no events, or was deleted already)"),
                            });
                        }
                        new.truncate_before = checked_next(version, 1, "the stream's versions")?;
                    }
                    // A snapshot folded from the deleted events is of no
                    // use to the stream that may start over after them.
                    txn.delete(layout::snapshot_key(layout::SnapshotOf::Stream(stream)));
                    let t = if tombstone {
                        system_types::STREAM_TOMBSTONED
                    } else {
                        system_types::STREAM_DELETED
                    };
                    (t, serde_json::json!({ "stream": stream, "version": version }))
                }
            };
            txn.put(layout::stream_life_key(stream), new.encode());
            let pos = append_system_event(&mut *txn, head, id, event_type, stream_tag(stream), data)?;
            txn.commit().await?;
            Ok(pos)
        })
        .await?;
        self.inner.publish_head(result.last_position);
        Ok(result)
    }

    /// Forgets data subject `subject`: destroys its key, so every personal
    /// part it had reads as erased from now on, on every read path (never
    /// an error, never the bytes); the ciphertext left in the log can never
    /// be opened again, by anyone. Positions, types, tags and the
    /// non-personal data of its events are unchanged. Appends a
    /// `$subject-forgotten` event. Personal data appended for the subject
    /// afterwards gets a new key.
    ///
    /// Errors: [`Error::UnknownSubject`] when no personal data of
    /// `subject` was ever stored.
    pub async fn forget(&self, subject: impl AsRef<str>) -> Result<ForgetOutcome> {
        let subject = subject.as_ref();
        validate_subject(subject, &self.inner.opts.limits)?;
        let id = Ulid::generate();
        let kv = &self.inner.kv;
        let outcome = retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            let vals = txn
                .get_many(&[
                    layout::head_key(),
                    layout::subject_key(subject),
                    layout::id_key(id),
                ])
                .await?;
            if let Some(done) = already_applied(&vals[2], id)? {
                return Ok(ForgetOutcome::Forgotten {
                    position: done.first_position,
                });
            }
            let head = vals[0]
                .as_deref()
                .map_or(Ok(0), |v| layout::parse_u64(v, "head"))?;
            let Some(rec) = vals[1].as_deref() else {
                return Err(Error::UnknownSubject {
                    subject: subject.to_owned(),
                });
            };
            let rec = SubjectRecord::decode(rec)?;
            if rec.wrapped.is_none() {
                return Ok(ForgetOutcome::AlreadyForgotten);
            }
            txn.put(
                layout::subject_key(subject),
                SubjectRecord {
                    generation: rec.generation,
                    wrapped: None,
                }
                .encode(),
            );
            let data = serde_json::json!({ "subject": subject });
            let r = append_system_event(
                &mut *txn,
                head,
                id,
                system_types::SUBJECT_FORGOTTEN,
                subject_tag(subject),
                data,
            )?;
            txn.commit().await?;
            Ok(ForgetOutcome::Forgotten {
                position: r.first_position,
            })
        })
        .await?;
        if let ForgetOutcome::Forgotten { position } = outcome {
            self.inner.publish_head(position);
        }
        Ok(outcome)
    }
}

impl EventStore {
    /// The log's first live position: 1 when it was never truncated, else
    /// the `before` of the last [`truncate_log_before`](Self::truncate_log_before).
    pub async fn log_truncated_before(&self) -> Result<Position> {
        let mut txn = self.inner.kv.begin().await?;
        super::live::log_cut_of(txn.get(&layout::log_life_key()).await?.as_deref())
    }

    /// Releases every event at a position below `before`, whatever its
    /// stream, DCB events without a stream included, except the streams'
    /// lifecycle events (`$stream-retention-set`, `$stream-deleted`,
    /// `$stream-tombstoned`), which stay live so that every export carries
    /// them and a restore keeps each stream's lifecycle: from now on no read
    /// path returns them, DCB conditions and idempotency ignore them (as
    /// for every release, see [`set_retention`](Self::set_retention)),
    /// and a stream whose last event lies below `before` reads as absent.
    /// [`compact`](Self::compact) removes their rows, recording the holes
    /// (so `verify` accepts them) and raising each stream's first version.
    /// Positions are never reused.
    ///
    /// Appends a `$log-truncated` event (tag `$log`, body `{before,
    /// note}`; `note` is free text, such as the archive the events went
    /// to) in the same transaction. Released never comes back: a `before`
    /// at or below the log's current truncation writes nothing and says
    /// [`LogTruncation::AlreadyTruncated`].
    ///
    /// Errors: [`Error::InvalidInput`] for a `before` of 0 or 1 (nothing
    /// to release) or beyond the head + 1.
    pub async fn truncate_log_before(
        &self,
        before: Position,
        note: Option<&str>,
    ) -> Result<LogTruncation> {
        if before <= 1 {
            return Err(Error::invalid(format!(
                "truncating the log before position {before} releases nothing: give the first position to keep (2 or more)"
            )));
        }
        let id = Ulid::generate();
        let kv = &self.inner.kv;
        let outcome = retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            let vals = txn
                .get_many(&[layout::head_key(), layout::log_life_key(), layout::id_key(id)])
                .await?;
            if let Some(done) = already_applied(&vals[2], id)? {
                return Ok(LogTruncation::Truncated {
                    position: done.first_position,
                });
            }
            let head = vals[0]
                .as_deref()
                .map_or(Ok(0), |v| layout::parse_u64(v, "head"))?;
            let old = vals[1]
                .as_deref()
                .map(LogLife::decode)
                .transpose()?
                .unwrap_or_default();
            if before > head.saturating_add(1) {
                return Err(Error::invalid(format!(
                    "cannot truncate the log before position {before}: it is beyond the head ({head}); truncate at most before {}",
                    head.saturating_add(1)
                )));
            }
            if before <= old.truncate_before {
                return Ok(LogTruncation::AlreadyTruncated {
                    before: old.truncate_before,
                });
            }
            let new = LogLife {
                truncate_before: before,
                ..old
            };
            txn.put(layout::log_life_key(), new.encode());
            let data = serde_json::json!({ "before": before, "note": note });
            let r = append_system_event(
                &mut *txn,
                head,
                id,
                system_types::LOG_TRUNCATED,
                LOG_TAG.to_owned(),
                data,
            )?;
            txn.commit().await?;
            Ok(LogTruncation::Truncated {
                position: r.first_position,
            })
        })
        .await?;
        if let LogTruncation::Truncated { position } = outcome {
            self.inner.publish_head(position);
        }
        Ok(outcome)
    }
}

/// An expected version against a version (`None`: none) where `absent`
/// says whether the thing reads as absent.
fn expected_matches(expected: ExpectedVersion, actual: Option<u64>, absent: bool) -> bool {
    match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => absent,
        ExpectedVersion::StreamExists => !absent,
        ExpectedVersion::Exact(v) => actual == Some(v),
    }
}

/// The first version of `stream` (at `version`) that `old` does not
/// release: its first live version by count, truncation and deletion,
/// then past the leading events its `max_age` released by now. A
/// retention change starts from here, so loosening `max_age` cannot bring
/// those back.
async fn first_kept(
    txn: &mut dyn KvTransaction,
    stream: &str,
    old: &StreamLife,
    version: StreamVersion,
) -> Result<StreamVersion> {
    let from = old.first_live(version);
    first_version_by_age(txn, stream, old, version, from, now_ms()).await
}

/// The result of an earlier attempt whose acknowledgement was lost, found
/// by the system event's id.
fn already_applied(entry: &Option<Vec<u8>>, id: Ulid) -> Result<Option<AppendResult>> {
    let Some(v) = entry else { return Ok(None) };
    let e = IdEntry::decode(layout::open_index_value(&layout::id_key(id), v)?)?;
    Ok(Some(AppendResult {
        first_position: e.position,
        last_position: e.position,
        stream_version: None,
    }))
}

/// Buffers a system event at `head + 1` and the new head.
fn append_system_event(
    txn: &mut dyn KvTransaction,
    head: Position,
    id: Ulid,
    event_type: &str,
    tag: String,
    data: serde_json::Value,
) -> Result<AppendResult> {
    let pos = checked_next(head, 1, "the log's positions")?;
    let e = NewEvent::new(event_type, data.to_string().into_bytes())
        .with_id(id)
        .with_tags([tag]);
    let mut rows = Vec::with_capacity(4);
    event_rows(&mut rows, pos, &e, now_ms(), (None, None), (pos, pos))?;
    for (k, v) in rows {
        txn.put(k, v);
    }
    txn.put(layout::head_key(), layout::u64_value(pos));
    txn.validate(layout::head_key());
    Ok(AppendResult {
        first_position: pos,
        last_position: pos,
        stream_version: None,
    })
}
