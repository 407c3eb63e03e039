//! Integrity checker (work in progress).
