//! Namespaces: one store seen as many, each under its own key prefix.

use super::{
    Capabilities, KeyRange, KvPair, KvStore, KvTransaction, ReadMany, ScanOptions, VisitRow,
    VisitValue,
};
use crate::kv::KvResult;
use async_trait::async_trait;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

/// The raw byte every namespace prefix starts with.
const NAMESPACES: &[u8] = b"n";

/// A view of a store under a key prefix (a tenant or namespace). Two
/// namespaces never see each other's keys (see [`Namespaced::new`]).
#[derive(Clone)]
pub struct Namespaced {
    inner: Arc<dyn KvStore>,
    prefix: Arc<[u8]>,
    caps: Capabilities,
}

impl fmt::Debug for Namespaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespaced")
            .field("prefix", &self.prefix)
            .field("backend", &self.caps.backend)
            .finish()
    }
}

impl Namespaced {
    /// Scopes `inner` to `namespace`. Nesting namespaces nests prefixes.
    ///
    /// The prefix is `"n"`, the namespace's byte length (packed integer),
    /// then its bytes. That makes prefixes prefix-free: no key of one
    /// namespace, however crafted, starts with another namespace's prefix.
    pub fn new(inner: Arc<dyn KvStore>, namespace: &str) -> Self {
        let caps = inner.capabilities().clone();
        Namespaced {
            inner,
            prefix: Self::prefix_of(namespace).into(),
            caps,
        }
    }

    /// The key prefix of `namespace` in the store it is a view of.
    pub fn prefix_of(namespace: &str) -> Vec<u8> {
        let mut prefix = crate::tuple::KeyBuilder::with_raw(NAMESPACES)
            .u64(namespace.len() as u64)
            .finish();
        prefix.extend_from_slice(namespace.as_bytes());
        prefix
    }

    /// The namespace whose keys include `key` (a key of the underlying
    /// store), or `None` for a key outside every namespace.
    pub fn namespace_of(key: &[u8]) -> Option<&str> {
        if !key.starts_with(NAMESPACES) {
            return None;
        }
        let mut r = crate::tuple::KeyReader::new(key);
        r.skip_raw(NAMESPACES.len()).ok()?;
        let len = r.u64().ok()?;
        let head = crate::tuple::KeyBuilder::with_raw(NAMESPACES)
            .u64(len)
            .finish()
            .len();
        let name = key.get(head..head.checked_add(usize::try_from(len).ok()?)?)?;
        std::str::from_utf8(name).ok()
    }

    /// The namespaces that hold keys in `kv` (not nested ones), sorted.
    /// One key is read per namespace: the scan skips past each prefix. A
    /// key under the namespaces' tag that belongs to none (not eskv's) is
    /// passed over.
    pub async fn list(kv: &dyn KvStore) -> KvResult<Vec<String>> {
        let mut txn = kv.begin().await?;
        let all = KeyRange::prefix(NAMESPACES);
        let mut start = all.start.clone();
        let mut names = Vec::new();
        loop {
            let range = KeyRange {
                start,
                end: all.end.clone(),
            };
            let rows = txn.scan(range, ScanOptions::forward(Some(1))).await?;
            let Some((key, _)) = rows.into_iter().next() else {
                break;
            };
            let Some(name) = Self::namespace_of(&key) else {
                // Not eskv's (another program's key on a shared cluster,
                // say): no namespace, step past it.
                start = Bound::Excluded(key);
                continue;
            };
            let next = crate::tuple::prefix_successor(&Self::prefix_of(name));
            names.push(name.to_owned());
            match next {
                Some(next) => start = Bound::Included(next),
                None => break,
            }
        }
        names.sort();
        Ok(names)
    }

    /// True when `namespace` holds a key in `kv`.
    pub async fn exists(kv: &dyn KvStore, namespace: &str) -> KvResult<bool> {
        let mut txn = kv.begin().await?;
        let rows = txn
            .scan(
                KeyRange::prefix(&Self::prefix_of(namespace)),
                ScanOptions::forward(Some(1)),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    /// `range` inside this namespace.
    fn range(&self, range: KeyRange) -> KeyRange {
        let p = &self.prefix;
        let map = |b: Bound<Vec<u8>>| match b {
            Bound::Included(k) => Bound::Included(self.key(&k)),
            Bound::Excluded(k) => Bound::Excluded(self.key(&k)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let start = match range.start {
            Bound::Unbounded => Bound::Included(p.to_vec()),
            b => map(b),
        };
        let end = match range.end {
            Bound::Unbounded => {
                crate::tuple::prefix_successor(p).map_or(Bound::Unbounded, Bound::Excluded)
            }
            b => map(b),
        };
        KeyRange { start, end }
    }

    /// Rows with this namespace's prefix removed.
    fn strip(&self, rows: Vec<KvPair>) -> Vec<KvPair> {
        let n = self.prefix.len();
        rows.into_iter()
            .map(|(k, v)| (k[n..].to_vec(), v))
            .collect()
    }

    /// Deletes every key of this namespace, in transactions sized by the
    /// backend's limits, and returns how many were deleted. Other
    /// namespaces are untouched.
    pub async fn clear(&self) -> KvResult<u64> {
        let page = self.caps.max_ops_per_txn.map_or(1024, |m| m.clamp(1, 1024));
        let mut deleted = 0u64;
        loop {
            let mut txn = self.begin().await?;
            let rows = txn
                .scan(KeyRange::prefix(b""), ScanOptions::forward(Some(page)))
                .await?;
            if rows.is_empty() {
                return Ok(deleted);
            }
            deleted += rows.len() as u64;
            for (k, _) in rows {
                txn.delete(k);
            }
            txn.commit().await?;
        }
    }

    /// The raw prefix this namespace puts in front of every key.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

// A wrapper forwards every method, defaults included (`commit_watch`,
// `read_many`), so the wrapped backend's own versions run; the lint makes a
// method added to the traits later a compile error here until it is.
#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvStore for Namespaced {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.commit_watch()
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        Ok(Box::new(NamespacedTxn {
            inner: self.inner.begin().await?,
            ns: self.clone(),
        }))
    }
}

struct NamespacedTxn {
    inner: Box<dyn KvTransaction>,
    ns: Namespaced,
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvTransaction for NamespacedTxn {
    async fn get(&mut self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        if key.is_empty() {
            return Ok(None);
        }
        self.inner.get(&self.ns.key(key)).await
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> KvResult<Vec<Option<Vec<u8>>>> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| self.ns.key(k)).collect();
        self.inner.get_many(&keys).await
    }

    async fn get_each(&mut self, keys: &[Vec<u8>], visit: &mut VisitValue<'_>) -> KvResult<()> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| self.ns.key(k)).collect();
        self.inner.get_each(&keys, visit).await
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        let rows = self.inner.scan(self.ns.range(range), opts).await?;
        Ok(self.ns.strip(rows))
    }

    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut VisitRow<'_>,
    ) -> KvResult<()> {
        let n = self.ns.prefix.len();
        self.inner
            .scan_each(self.ns.range(range), opts, &mut |k, v| visit(&k[n..], v))
            .await
    }

    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> KvResult<ReadMany> {
        let gets: Vec<Vec<u8>> = gets.iter().map(|k| self.ns.key(k)).collect();
        let scans: Vec<(KeyRange, ScanOptions)> = scans
            .iter()
            .map(|(r, o)| (self.ns.range(r.clone()), *o))
            .collect();
        let (values, rows) = self.inner.read_many(&gets, &scans).await?;
        Ok((values, rows.into_iter().map(|r| self.ns.strip(r)).collect()))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key.is_empty() {
            // Let the backend's buffer see and reject the empty key.
            self.inner.put(Vec::new(), value);
            return;
        }
        let k = self.ns.key(&key);
        self.inner.put(k, value)
    }

    fn put_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key.is_empty() {
            self.inner.put_new(Vec::new(), value);
            return;
        }
        let k = self.ns.key(&key);
        self.inner.put_new(k, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        if key.is_empty() {
            self.inner.delete(Vec::new());
            return;
        }
        let k = self.ns.key(&key);
        self.inner.delete(k)
    }

    fn validate(&mut self, key: Vec<u8>) {
        let k = self.ns.key(&key);
        self.inner.validate(k)
    }

    async fn commit(self: Box<Self>) -> KvResult<()> {
        self.inner.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_namespace() {
        let kv: Arc<dyn KvStore> = Arc::new(crate::MemoryStore::new());
        for ns in ["a", "acme", "ünï", ""] {
            let view = Namespaced::new(kv.clone(), ns);
            assert_eq!(Namespaced::prefix_of(ns), view.prefix());
            let mut key = Namespaced::prefix_of(ns);
            key.extend_from_slice(b"\x02rest");
            assert_eq!(Namespaced::namespace_of(&key), Some(ns));
        }
        for outside in [&b"n"[..], b"n\x15\x05ab", b"h", b""] {
            assert_eq!(Namespaced::namespace_of(outside), None, "{outside:?}");
        }
    }

    #[tokio::test]
    async fn list_passes_over_keys_that_are_no_namespace() {
        let kv: Arc<dyn KvStore> = Arc::new(crate::MemoryStore::new());
        let mut txn = kv.begin().await.unwrap();
        for key in [&b"nodes/x"[..], b"n", b"zz"] {
            txn.put(key.to_vec(), b"v".to_vec());
        }
        txn.commit().await.unwrap();
        for ns in ["b", "a"] {
            let view = Namespaced::new(kv.clone(), ns);
            let mut txn = view.begin().await.unwrap();
            txn.put(b"k".to_vec(), b"v".to_vec());
            txn.commit().await.unwrap();
        }
        assert_eq!(Namespaced::list(kv.as_ref()).await.unwrap(), ["a", "b"]);
        assert!(Namespaced::exists(kv.as_ref(), "a").await.unwrap());
        assert!(!Namespaced::exists(kv.as_ref(), "c").await.unwrap());
    }
}
