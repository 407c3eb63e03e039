//! etcd backend for eskv (work in progress).
