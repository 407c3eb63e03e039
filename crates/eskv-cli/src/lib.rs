//! Library half of the `eskv` command-line tool: the parts that are worth
//! testing on their own (store URLs, the query language, the event-line
//! format, export/import), used by the `eskv` binary.
//!
//! ```
//! use eskv_cli::url::StoreUrl;
//! let url: StoreUrl = "redb:./events.redb".parse().unwrap();
//! assert_eq!(url.backend(), "redb");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod archive;
pub mod line;
pub mod open;
pub mod serve;
pub mod spec;
pub mod transfer;
/// Store URLs, from the library (`eskv::url`).
pub use eskv::url;
