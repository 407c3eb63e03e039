//! One module per command (or family of commands).

mod append;
mod backup;
mod inspect;
mod lifecycle;
mod read;
mod tail;

pub(crate) use append::*;
pub(crate) use backup::*;
pub(crate) use inspect::*;
pub(crate) use lifecycle::*;
pub(crate) use read::*;
pub(crate) use tail::*;
