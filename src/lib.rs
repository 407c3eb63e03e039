#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use eskv_core::*;

/// `#[derive(DomainEvent)]` (feature `derive`, on by default): see the
/// [`DomainEvent`](trait@DomainEvent) trait.
#[cfg(feature = "derive")]
pub use eskv_derive::DomainEvent;

pub mod blocking;
pub mod export;
mod open;
pub mod url;

#[cfg(feature = "redb")]
pub use open::OpenRedb;
pub use open::{open, open_url, OpenOptions};
pub use url::StoreUrl;

/// The traits an application usually needs in scope:
/// `use eskv::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "redb")]
    pub use crate::OpenRedb;
    pub use eskv_core::{Decision, DomainEvent};
}

/// The embedded redb backend (feature `redb`, on by default).
#[cfg(feature = "redb")]
pub use eskv_redb as redb;

#[cfg(feature = "redb")]
#[doc(inline)]
pub use eskv_redb::RedbStore;

/// The embedded fjall backend (feature `fjall`): a log-structured store
/// whose commit is one journal append.
#[cfg(feature = "fjall")]
pub use eskv_fjall as fjall;

#[cfg(feature = "fjall")]
#[doc(inline)]
pub use eskv_fjall::FjallStore;

/// The TiKV backend (feature `tikv`).
#[cfg(feature = "tikv")]
pub use eskv_tikv as tikv;

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub use eskv_etcd as etcd;
