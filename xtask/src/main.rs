#![forbid(unsafe_code)]
//! Project tasks: `cargo xtask <task>`. No dependencies beyond std, so it
//! builds in seconds.
//!
//! | task | what it does |
//! |---|---|
//! | `ci` | format check, clippy `-D warnings`, every test (the etcd tests start their own cluster), doc tests, and a `--quick` benchmark smoke run |
//! | `test` | every test and doc test, without the lint steps |
//! | `bench [ARGS]` | the benchmark harness (full run by default; `--quick` for a smoke run); writes `BENCHMARKS.md` |
//! | `tikv-test` | the TiKV conformance suite against the cluster in `PD_ADDRS` |
//! | `soak [SECONDS]` | 16 writers and 4 live subscribers on redb for SECONDS (default 600) |
//! | `fuzz [SECONDS]` | every cargo-fuzz target in `fuzz/` for SECONDS each (default 60; needs nightly and cargo-fuzz) |

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
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn cargo_run(args: &[&str]) -> Result<(), String> {
    run(cargo().args(args))
}

fn workspace_has(member: &str) -> bool {
    std::fs::read_to_string("Cargo.toml").is_ok_and(|s| s.contains(member))
}

fn test() -> Result<(), String> {
    cargo_run(&["test", "--workspace", "--all-targets"])?;
    cargo_run(&["test", "--workspace", "--doc"])
}

fn bench(args: &[String]) -> Result<(), String> {
    if !workspace_has("benches/eskv-bench") {
        return Err("the benchmark crate benches/eskv-bench is not in the workspace".into());
    }
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-p", "eskv-bench", "--"])
        .args(args);
    run(&mut cmd)
}

fn ci() -> Result<(), String> {
    cargo_run(&["fmt", "--all", "--", "--check"])?;
    cargo_run(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    test()?;
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
        _ => {
            eprintln!("usage: cargo xtask <ci|test|bench [--quick]|tikv-test|soak [SECONDS]|fuzz [SECONDS]>");
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
