//! eskv facade: the core plus the backends picked with Cargo features.
#![forbid(unsafe_code)]

pub use eskv_core::*;

#[cfg(feature = "redb")]
#[doc(inline)]
pub use eskv_redb::RedbStore;

/// The embedded redb backend (feature `redb`, on by default).
#[cfg(feature = "redb")]
pub use eskv_redb as redb;

/// The TiKV backend (feature `tikv`).
#[cfg(feature = "tikv")]
pub use eskv_tikv as tikv;

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub use eskv_etcd as etcd;
