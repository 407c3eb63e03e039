#![forbid(unsafe_code)]
//! Project tasks: `cargo xtask <task>`. One dependency beyond std,
//! `protoc-bin-vendored` (a `protoc` binary shipped inside a crate), so it
//! builds in seconds.
//!
//! | task | what it does |
//! |---|---|
//! | `ci` | installs what the tests need (below), then format check, clippy `-D warnings`, every test (the etcd tests start their own cluster), the official UmaDB and KurrentDB Python clients against `eskv serve` (a virtual environment with `umadb` and `kurrentdbclient` from PyPI), doc tests, `cargo doc` with warnings denied, a type check of the `fuzz/` workspace, and a `--quick` benchmark smoke run |
//! | `test` | every test and doc test, without the lint steps |
//! | `bench [ARGS]` | installs `etcd` as `ci` does (for the etcd rows), then the benchmark harness (full run by default; `--quick` for a smoke run); writes `BENCHMARKS.md` |
//! | `tikv-test` | the TiKV conformance suite against the cluster in `PD_ADDRS` |
//! | `soak [SECONDS]` | 16 writers and 4 live subscribers on redb for SECONDS (default 600) |
//! | `python-clients` | only the Python client run of `ci` |
//! | `protos` | regenerates `crates/eskv-server/src/proto/` from the server's `.proto` files (commit the result) |
//! | `fuzz [SECONDS]` | every cargo-fuzz target in `fuzz/` for SECONDS each (default 60; needs nightly and cargo-fuzz) |
//!
//! # What the tests need, and where it comes from
//!
//! - **`etcd`**, for the etcd backend's tests, which start their own 3-node
//!   cluster on 127.0.0.1, and for the benchmark's etcd rows. When it is
//!   missing, `ci` and `bench` install Debian's
//!   `etcd-server` with apt if it runs as root; otherwise it prints the
//!   command to run and stops (a skipped suite never counts as a pass).
//! - **`protoc`**, only for the UmaDB client crates that the benchmark
//!   harness and the server's tests use (their build script compiles
//!   UmaDB's `.proto`). eskv itself needs no
//!   `protoc`. Every cargo command started here gets `PROTOC` pointing at
//!   the binary from the `protoc-bin-vendored` crate, unless `PROTOC` is
//!   already set.

use std::process::{Command, ExitCode};

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if std::env::var_os("PROTOC").is_none() {
        // Only the UmaDB client crates (bench peers, server tests) compile
        // `.proto` files.
        if let Ok(p) = protoc_bin_vendored::protoc_bin_path() {
            cmd.env("PROTOC", p);
        }
    }
    if std::env::var_os("ETCD_BIN").is_none() {
        // eskv-etcd's build script looks for etcd to compile its cluster
        // tests in. Naming the binary makes the script run again when etcd
        // was installed after an earlier build (a package keeps its files'
        // old modification times, which cargo's file check misses).
        if let Some(p) = find_on_path("etcd") {
            cmd.env("ETCD_BIN", p);
        }
    }
    cmd
}

fn find_on_path(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            std::path::PathBuf::from("/usr/bin"),
            std::path::PathBuf::from("/usr/local/bin"),
        ])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn on_path(bin: &str) -> bool {
    find_on_path(bin).is_some()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes sure the `etcd` binary is there for the etcd backend's tests:
/// installs Debian's `etcd-server` when this runs as root with apt, and
/// otherwise says what to run.
fn ensure_etcd() -> Result<(), String> {
    if std::env::var_os("ETCD_BIN").is_some() || on_path("etcd") {
        return Ok(());
    }
    const HOW: &str = "apt-get update && apt-get install -y --no-install-recommends etcd-server";
    if !(is_root() && on_path("apt-get")) {
        return Err(format!(
            "the etcd backend's tests need the `etcd` binary, and this is not root with apt \
             to install it; run `sudo sh -c '{HOW}'` (Debian/Ubuntu) or set ETCD_BIN=/path/to/etcd"
        ));
    }
    eprintln!("xtask: `etcd` not found; installing Debian's etcd-server (the etcd tests start their own cluster)");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "etcd-server",
        ]))?;
    if on_path("etcd") {
        Ok(())
    } else {
        Err(format!(
            "installed etcd-server but no `etcd` binary is on PATH; run `{HOW}` by hand and check"
        ))
    }
}

fn cargo_run(args: &[&str]) -> Result<(), String> {
    run(cargo().args(args))
}

fn workspace_has(member: &str) -> bool {
    std::fs::read_to_string("Cargo.toml").is_ok_and(|s| s.contains(member))
}

fn test() -> Result<(), String> {
    cargo_run(&["test", "--workspace", "--all-targets"])?;
    // The `metrics` feature's test and example (a real recorder).
    cargo_run(&[
        "test",
        "-p",
        "eskv",
        "--features",
        "metrics",
        "--test",
        "observability",
        "--example",
        "observability",
    ])?;
    cargo_run(&["test", "--workspace", "--doc"])
}

fn bench(args: &[String]) -> Result<(), String> {
    if !workspace_has("benches/eskv-bench") {
        return Err("the benchmark crate benches/eskv-bench is not in the workspace".into());
    }
    // The etcd rows need the binary; without it the harness reports them
    // as not measured (and fails when CI is set), so go on.
    if let Err(e) = ensure_etcd() {
        eprintln!("xtask: {e}; the etcd systems will not be measured");
    }
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-p", "eskv-bench", "--"])
        .args(args);
    run(&mut cmd)
}

/// The Python clients' versions the server is tested against.
const PYTHON_CLIENTS: [&str; 2] = ["umadb==0.7.8", "kurrentdbclient==1.3.5"];

/// Runs the official Python clients of UmaDB and KurrentDB against
/// `eskv serve`: a virtual environment under the target directory, the
/// clients from PyPI, then `crates/eskv-server/tests/python/clients.py`.
fn python_clients() -> Result<(), String> {
    cargo_run(&["build", "-p", "eskv-cli"])?;
    let target = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    );
    let venv = target.join("python-clients");
    let python = venv.join("bin").join("python");
    let make_venv = || run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    if !python.is_file() && make_venv().is_err() {
        // Debian splits venv (ensurepip) out of python3; a failed attempt
        // leaves a venv without pip behind.
        let _ = std::fs::remove_dir_all(&venv);
        if !(is_root() && on_path("apt-get")) {
            return Err(
                "the Python client tests need `python3 -m venv`; install python3-venv".into(),
            );
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "python3-venv",
            ]))?;
        make_venv()?;
    }
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(PYTHON_CLIENTS))?;
    run(Command::new(&python)
        .arg("crates/eskv-server/tests/python/clients.py")
        .arg(target.join("debug").join("eskv"))
        .arg("crates/eskv-server/tests/tls"))
}

fn ci() -> Result<(), String> {
    ensure_etcd()?;
    cargo_run(&["fmt", "--all", "--", "--check"])?;
    cargo_run(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo_run(&[
        "clippy",
        "-p",
        "eskv",
        "--features",
        "metrics",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    test()?;
    python_clients()?;
    // Rustdoc warnings (broken links, bad code blocks) fail the run.
    run(cargo()
        .env("RUSTDOCFLAGS", "-D warnings")
        .args(["doc", "--workspace", "--no-deps"]))?;
    // The fuzz targets are their own workspace: type-check them so they
    // keep compiling against the crates they fuzz.
    run(cargo().current_dir("fuzz").args(["check", "--bins"]))?;
    if workspace_has("benches/eskv-bench") {
        // Smoke run only: keeps the harness from rotting; it writes to a
        // scratch file so CI never touches the committed BENCHMARKS.md.
        let out = std::env::temp_dir().join("eskv-bench-quick.md");
        bench(&["--quick".into(), "--out".into(), out.display().to_string()])?;
    }
    Ok(())
}

fn tikv_test() -> Result<(), String> {
    match std::env::var("PD_ADDRS") {
        Ok(addrs) if !addrs.trim().is_empty() => {
            eprintln!("xtask: running the TiKV suite against PD_ADDRS={addrs}");
            // eskv-tikv's build script compiles the conformance suites in
            // only when PD_ADDRS is set.
            cargo_run(&["test", "-p", "eskv-tikv"])
        }
        _ => Err(
            "set PD_ADDRS=host:port[,host:port…] to a running PD; for a local cluster run \
             `tiup playground --mode tikv-slim` (see fixtures/tikv/README.md)"
                .into(),
        ),
    }
}

fn soak(args: &[String]) -> Result<(), String> {
    let secs = args.first().cloned().unwrap_or_else(|| "600".into());
    run(cargo().env("ESKV_SOAK_SECS", &secs).args([
        "test",
        "--release",
        "-p",
        "eskv",
        "--test",
        "soak",
        "--",
        "--nocapture",
    ]))
}

fn fuzz(args: &[String]) -> Result<(), String> {
    let secs = args.first().cloned().unwrap_or_else(|| "60".into());
    let targets = std::fs::read_dir("fuzz/fuzz_targets")
        .map_err(|e| format!("no fuzz/fuzz_targets directory: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect::<Vec<_>>();
    for t in targets {
        run(Command::new("cargo").current_dir("fuzz").args([
            "+nightly",
            "fuzz",
            "run",
            &t,
            "--",
            &format!("-max_total_time={secs}"),
        ]))
        .map_err(|e| {
            format!("{e} (cargo fuzz needs a nightly toolchain and `cargo install cargo-fuzz`)")
        })?;
    }
    Ok(())
}

/// Regenerates the server's checked-in gRPC code. The generator is its own
/// small crate, so xtask itself stays quick to build.
fn protos() -> Result<(), String> {
    cargo_run(&["run", "-p", "eskv-server-codegen"])?;
    cargo_run(&["fmt", "-p", "eskv-server"])
}

fn main() -> ExitCode {
    // Run from the workspace root, wherever `cargo xtask` was invoked.
    if let Some(root) = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        let _ = std::env::set_current_dir(root);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args
        .split_first()
        .map_or(("", &[][..]), |(t, r)| (t.as_str(), r));
    let result = match task {
        "ci" => ci(),
        "test" => test(),
        "bench" => bench(rest),
        "tikv-test" => tikv_test(),
        "soak" => soak(rest),
        "fuzz" => fuzz(rest),
        "protos" => protos(),
        "python-clients" => python_clients(),
        _ => {
            eprintln!("usage: cargo xtask <ci|test|bench [--quick]|tikv-test|soak [SECONDS]|fuzz [SECONDS]|protos|python-clients>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
