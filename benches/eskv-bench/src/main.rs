//! eskv benchmark harness (issue 9).
#![forbid(unsafe_code)]

fn main() {}
