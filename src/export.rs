//! The export format: moving a whole store, or an archived part of it, as
//! JSON lines, and back. `eskv export`, `import`, `copy` and `archive` are
//! built on it; applications can use it directly.
//!
//! # File format
//!
//! JSON lines: a [`Header`], one [`EventLine`] per event in position
//! order, with a [`KeyLine`] for each data subject before the first event
//! that has a personal part of it, and a [`Trailer`]:
//!
//! ```json
//! {"eskv_export":2,"head":3,"types":["A","B"],"strict":false}
//! {"position":1,"id":"01J...","type":"A","tags":[],"data":{},"recorded_at":"..."}
//! {"eskv_subject_key":{"subject":"user-1","generation":1,"nonce":"…","key":"…"}}
//! {"position":3,"id":"01J...","type":"B","tags":[],"data":{},"personal":{"subject":"user-1","sealed":{"generation":1,"nonce":"…","ciphertext":"…"}},"recorded_at":"..."}
//! {"eskv_export_end":{"events":2,"crc32c":"1a2b3c4d","subject_keys":1,"keys_crc32c":"5e6f7a8b"}}
//! ```
//!
//! The trailer's checksums are [`Digest`]s over the event lines and the
//! key lines. Import refuses a file whose header promises events that
//! never come, whose trailer is missing, or whose checksums do not match.
//! Plain event lines (the output of `eskv read --json` over the whole
//! log) import too, minus those checks. Format 1 files (before personal
//! data was carried) read unchanged.
//!
//! # Personal data in exports
//!
//! No personal data is ever written in clear: events are read through
//! [`EventStore::sealed_reads`], so a personal part goes into the file as
//! the store holds it, sealed under its subject's key, and the part of a
//! forgotten subject as `"erased":true` with no ciphertext at all.
//!
//! - **A backup** (`eskv export`) carries each subject's key *wrapped under
//!   the store key*, never in clear. Restored into an empty store opened
//!   with the same store key, personal data reads as before and `forget`
//!   shreds it there. A backup taken before a `forget` still holds the
//!   subject's key: like any backup, it must be deleted (or restored and
//!   the subject forgotten again) to complete an erasure.
//! - **An archive** (`eskv archive`) carries no keys: they stay in the
//!   store, so a `forget` there shreds the archived data too, wherever the
//!   file went. Importing an archive takes the keys from the store it came
//!   from ([`Importer::keys_from`], `eskv import --keys-from`); a subject
//!   forgotten there comes back erased.
//! - **A copy** takes the keys from its source and re-wraps them when the
//!   target has another store key.
//! - Import checks every key against the target's store key before writing
//!   anything: a wrong key is [`Error::WrongStoreKey`] and the target is
//!   left as it was.
//!
//! [`Error::WrongStoreKey`]: crate::Error::WrongStoreKey
//! [`EventStore::sealed_reads`]: crate::EventStore::sealed_reads

mod format;
pub mod line;
mod transfer;

pub use format::{
    Archived, End, ExportLine, ExportWriter, Header, KeyFields, KeyLine, Trailer, FORMAT,
    OLDEST_FORMAT,
};
pub use line::{Digest, EventLine, ImportedLine, MetaLine, PersonalLine, SealedLine};
pub use transfer::{
    copy, count_streams, digest_store, Imported, Importer, LogPager, MAX_CHUNK_BYTES,
    MAX_CHUNK_EVENTS, PAGE,
};
