#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use eskv_core::*;

/// The embedded redb backend (feature `redb`, on by default).
#[cfg(feature = "redb")]
pub use eskv_redb as redb;

#[cfg(feature = "redb")]
#[doc(inline)]
pub use eskv_redb::RedbStore;

/// The TiKV backend (feature `tikv`).
#[cfg(feature = "tikv")]
pub use eskv_tikv as tikv;

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub use eskv_etcd as etcd;
