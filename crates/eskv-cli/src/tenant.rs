//! Tenants: the namespaces of one store that `eskv serve` gives the
//! credentials of its auth file (`token TOKEN TENANT`). A tenant's events
//! live in the same store under a key prefix ([`eskv::Namespaced`]): `b"n"`,
//! the name's byte length as a packed integer, then the name's bytes.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! let kv: Arc<dyn eskv::KvStore> = Arc::new(eskv::MemoryStore::new());
//! let root = eskv::EventStore::open(kv.clone()).await?;
//! let acme = eskv_cli::tenant::open_in(&root, "acme").await?;
//! acme.append(vec![eskv::NewEvent::new("Tick", vec![])], None).await?;
//! assert_eq!(eskv_cli::tenant::list(kv.as_ref()).await?, ["acme"]);
//! assert!(eskv_cli::tenant::check_name("two words").is_err());
//! # Ok(()) }
//! ```

use anyhow::{bail, Result};
use eskv::{EventStore, KvStore, Namespaced};
use std::sync::Arc;

/// Checks a tenant name as the server's auth file reads it: one word
/// (`token TOKEN TENANT`), so not empty and without white space.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a tenant name cannot be empty".into());
    }
    if name.chars().any(char::is_whitespace) {
        return Err(format!(
            "tenant name {name:?} has white space; a tenant is one word of the auth file (`token TOKEN TENANT`)"
        ));
    }
    Ok(())
}

/// The tenants that have keys in `kv`, sorted by name
/// ([`Namespaced::list`]).
pub async fn list(kv: &dyn KvStore) -> Result<Vec<String>> {
    Ok(Namespaced::list(kv).await?)
}

/// True when `tenant` has a key in `kv` ([`Namespaced::exists`]).
pub async fn exists(kv: &dyn KvStore, tenant: &str) -> Result<bool> {
    Ok(Namespaced::exists(kv, tenant).await?)
}

/// The event store of `tenant`'s namespace of `root`'s store, with
/// `root`'s options (store key, limits), as `eskv serve` opens it.
pub async fn open_in(root: &EventStore, tenant: &str) -> eskv::Result<EventStore> {
    let kv = Arc::new(Namespaced::new(root.kv().clone(), tenant));
    EventStore::open_with(kv, root.options().clone()).await
}

/// Like [`open_in`], for a tenant that must be there already: a name
/// with no keys in the store is an error naming the tenants there are
/// (a mistyped tenant never reads as an empty one, nor creates one).
pub async fn open_existing(root: &EventStore, tenant: &str, store: &str) -> Result<EventStore> {
    if !exists(root.kv().as_ref(), tenant).await? {
        let there = list(root.kv().as_ref()).await?;
        let there = if there.is_empty() {
            "it has none".to_owned()
        } else {
            format!("its tenants are {}", there.join(", "))
        };
        bail!("no tenant '{tenant}' in {store} ({there}; writing to a tenant creates it)");
    }
    Ok(open_in(root, tenant).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn list_skips_each_namespace_and_nested_ones() {
        let kv: Arc<dyn KvStore> = Arc::new(eskv::MemoryStore::new());
        let root = EventStore::open(kv.clone()).await.unwrap();
        root.append(vec![eskv::NewEvent::new("R", vec![])], None)
            .await
            .unwrap();
        for t in ["b", "a", "aa", "n"] {
            let s = open_in(&root, t).await.unwrap();
            s.append(vec![eskv::NewEvent::new("T", vec![])], None)
                .await
                .unwrap();
            let nested = open_in(&s, "inner").await.unwrap();
            nested
                .append(vec![eskv::NewEvent::new("T", vec![])], None)
                .await
                .unwrap();
        }
        assert_eq!(list(kv.as_ref()).await.unwrap(), ["a", "aa", "b", "n"]);
        assert!(exists(kv.as_ref(), "aa").await.unwrap());
        assert!(!exists(kv.as_ref(), "c").await.unwrap());
        let err = open_existing(&root, "c", "memory:").await.unwrap_err();
        assert!(err.to_string().contains("a, aa, b, n"), "{err}");
    }
}
