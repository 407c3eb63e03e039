//! Moving subject keys between stores, wrapped: what a backup of personal
//! data carries besides the sealed parts. A key is never in clear outside
//! `crypto` (only [`WrappedSubjectKey::rewrap`] opens one, to wrap it
//! under another store key).

use super::options::PersonalParts;
use super::EventStore;
use crate::crypto::{SubjectRecord, WrappedSubjectKey};
use crate::error::{Error, Result};
use crate::layout;
use crate::retry::retry;
use crate::validate::validate_subject;

impl EventStore {
    /// The key records of `subjects` as stored (wrapped under the store
    /// key, or forgotten), in order; `None` for a subject that never had
    /// personal data here. Needs no store key: nothing is unwrapped.
    pub async fn subject_keys(&self, subjects: &[&str]) -> Result<Vec<Option<WrappedSubjectKey>>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = subjects.iter().map(|s| layout::subject_key(s)).collect();
        let mut txn = self.inner.kv.begin().await?;
        let vals = txn.get_many(&keys).await?;
        subjects
            .iter()
            .zip(vals)
            .map(|(s, v)| {
                v.map(|v| {
                    SubjectRecord::decode(&v)
                        .map(|r| WrappedSubjectKey::from_record((*s).to_owned(), r))
                })
                .transpose()
            })
            .collect()
    }

    /// Writes subject key records taken from another store
    /// ([`subject_keys`](Self::subject_keys), or an export file), for a
    /// restore: afterwards the sealed personal parts of those subjects
    /// read (with this store's key) and `forget` shreds them here too.
    ///
    /// All or nothing, one transaction. Every live key must open with this
    /// store's key ([`Error::WrongStoreKey`] otherwise, and without a
    /// store key; use [`WrappedSubjectKey::rewrap`] between stores with
    /// different keys). A subject that has a record here already keeps it:
    /// the same record again is a no-op, any other is
    /// [`Error::InvalidInput`], so a key forgotten here never comes back.
    pub async fn import_subject_keys(&self, keys: &[WrappedSubjectKey]) -> Result<()> {
        for k in keys {
            validate_subject(k.subject(), &self.inner.opts.limits)?;
            if !k.is_forgotten() {
                let store_key = self
                    .inner
                    .opts
                    .store_key
                    .as_ref()
                    .ok_or_else(super::live::no_store_key)?;
                k.check(store_key)?;
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let kv = &self.inner.kv;
        retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            let ids: Vec<Vec<u8>> = keys.iter().map(|k| layout::subject_key(k.subject())).collect();
            let found = txn.get_many(&ids).await?;
            let mut write = false;
            for ((k, id), f) in keys.iter().zip(&ids).zip(found) {
                match f {
                    None => {
                        txn.put(id.clone(), k.record.encode());
                        write = true;
                    }
                    Some(v) if SubjectRecord::decode(&v)? == k.record => {}
                    Some(_) => {
                        return Err(Error::invalid(format!(
                            "data subject '{}' already has a key record in this store (another key, or forgotten here); a subject's key is imported only into a store that has none for it",
                            k.subject()
                        )))
                    }
                }
            }
            if write {
                txn.commit().await?;
            }
            Ok(())
        })
        .await
    }

    /// A handle on the same store whose reads return events as stored:
    /// personal parts sealed ([`PersonalParts::Sealed`]) and payloads at
    /// the schema version they were written in (no upcasters). What
    /// export, archive and copy read through, so no personal data is ever
    /// in clear in them, and a backup is the same whatever options the
    /// store was opened with (an upcaster runs again on the restored
    /// store's reads). Needs no store key.
    pub async fn sealed_reads(&self) -> Result<EventStore> {
        let mut opts = self.inner.opts.clone();
        opts.store_key = None;
        opts.personal_parts = PersonalParts::Sealed;
        opts.upcasters = crate::Upcasters::new();
        EventStore::open_with(self.inner.kv.clone(), opts).await
    }
}
