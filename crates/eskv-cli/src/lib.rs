//! Library half of the `eskv` command-line tool: the parts that are worth
//! testing on their own (store URLs, the query language, archiving), used
//! by the `eskv` binary. The event-line and export formats live in the
//! library (`eskv::export`).
//!
//! ```
//! use eskv_cli::url::StoreUrl;
//! let url: StoreUrl = "redb:./events.redb".parse().unwrap();
//! assert_eq!(url.backend(), "redb");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod archive;
pub mod open;
pub mod serve;
pub mod spec;
pub mod tenant;
/// The export format and event lines, from the library (`eskv::export`).
pub use eskv::export;
/// The JSON-lines event format, from the library (`eskv::export::line`).
pub use eskv::export::line;
/// Store URLs, from the library (`eskv::url`).
pub use eskv::url;
