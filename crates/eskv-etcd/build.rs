//! Finds the `etcd` binary for the tests, which start their own cluster.
//!
//! - `cfg(eskv_etcd_bin)` and `ESKV_ETCD_BIN` when it is found (`ETCD_BIN`,
//!   or `etcd` on `PATH`, or `/usr/bin/etcd`);
//! - `cfg(eskv_ci)` when `CI` is set: then a missing binary fails the tests
//!   instead of showing them as ignored.
use std::path::{Path, PathBuf};

fn find_etcd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(eskv_etcd_bin)");
    println!("cargo::rustc-check-cfg=cfg(eskv_ci)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=ETCD_BIN");
    println!("cargo::rerun-if-env-changed=CI");
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") {
        println!("cargo::rustc-cfg=eskv_ci");
    }
    match find_etcd() {
        Some(p) => {
            println!("cargo::rerun-if-changed={}", p.display());
            println!("cargo::rustc-cfg=eskv_etcd_bin");
            println!("cargo::rustc-env=ESKV_ETCD_BIN={}", p.display());
        }
        // A path that does not exist makes cargo re-run this script on every
        // build, so installing etcd later is noticed.
        None => println!(
            "cargo::rerun-if-changed={}",
            Path::new("/usr/bin/etcd").display()
        ),
    }
}
