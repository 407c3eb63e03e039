//! tikv backend for eskv (work in progress).
