//! Library half of the `eskv` command-line tool.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
