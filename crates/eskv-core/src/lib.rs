//! Core of eskv: the [`KvStore`] contract, the key codec, the in-memory
//! backend, and the event-sourcing layout on top.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod kv;
pub mod memory;
pub mod oracle;
pub mod tuple;

pub use error::{Error, ExpectedVersion, Result};
pub use kv::{
    Capabilities, KeyRange, KvPair, KvStore, KvStoreExt, KvTransaction, Namespaced, ScanOptions,
    WriteBuffer,
};
pub use memory::MemoryStore;

/// Renders a key for messages: printable ASCII as is, other bytes as `\xNN`,
/// cut after 64 bytes.
pub fn display_key(key: &[u8]) -> String {
    let mut s = String::new();
    for &b in key.iter().take(64) {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if key.len() > 64 {
        s.push_str("...");
    }
    s
}
