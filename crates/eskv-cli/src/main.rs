//! `eskv`: look inside an eskv event store, append to it, back it up,
//! check it and move it between backends. Run `eskv --help`.
#![forbid(unsafe_code)]

mod args;
mod commands;
mod output;

use crate::args::*;
use crate::commands::*;
use crate::output::*;
use anyhow::Result;
use clap::Parser;
use eskv_cli::open;
use eskv_cli::url::StoreUrl;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

/// The last panic's message and place, for the internal-error report.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn main() -> ExitCode {
    // The hook only remembers the message: a panic inside a backend (redb
    // trusts page contents and can panic on a damaged page) is caught and
    // reported as `Corrupt` there, and the store must then close normally,
    // or a readable file could be left needing a repair. A panic that
    // reaches `main` is reported below as an internal error (exit 101).
    std::panic::set_hook(Box::new(|info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("{}{at}", one_line(&msg)));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    // A server uses every core; the other commands need little.
    let workers = match cli.command {
        Command::Serve(_) => std::thread::available_parallelism().map_or(2, |n| n.get()),
        _ => 2,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(cli))));
    // Close stores before the process exits.
    rt.shutdown_timeout(Duration::from_secs(5));
    let Ok(res) = res else {
        let msg = LAST_PANIC
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| "unknown panic".into());
        let _ = writeln!(
            io::stderr(),
            "error: internal error in eskv (please report it): {msg}"
        );
        return ExitCode::from(101);
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

fn parse_url(s: &str) -> Result<StoreUrl> {
    s.parse::<StoreUrl>().map_err(|e| usage(e.to_string()))
}

async fn run(cli: Cli) -> Result<()> {
    open::set_lock_wait(Duration::from_secs(cli.lock_timeout));
    if let Some(k) = &cli.store_key {
        open::set_store_key(Some(
            open::parse_store_key(k).map_err(|e| usage(e.to_string()))?,
        ));
    }
    if let Some(t) = &cli.tenant {
        eskv_cli::tenant::check_name(t)
            .map_err(|e| usage(format!("--tenant (or ESKV_TENANT): {e}")))?;
        if matches!(cli.command, Command::Serve(_)) {
            return Err(usage(
                "serve serves the whole store, not one tenant (--tenant): give a credential its tenant in --auth-file (`token TOKEN TENANT`, `basic USER PASSWORD TENANT`)",
            ));
        }
        open::set_tenant(Some(t.clone()));
    }
    let url = parse_url(&cli.store)?;
    let mut out = Out::new(cli.json);
    match cli.command {
        Command::Append(a) => append(&url, a, &mut out).await?,
        Command::Read(a) => read(&url, a, &mut out).await?,
        Command::Tail(a) => tail(&url, a, &mut out).await?,
        Command::Streams(a) => streams(&url, a, &mut out).await?,
        Command::Info => info(&url, &mut out).await?,
        Command::Types { action } => {
            types(&url, action.unwrap_or(TypesAction::List), &mut out).await?
        }
        Command::Check => check(&url, &mut out).await?,
        Command::Compact => compact(&url, &mut out).await?,
        Command::Retention(a) => retention(&url, a, &mut out).await?,
        Command::DeleteStream(a) => delete_stream(&url, a, &mut out).await?,
        Command::Forget { subject } => forget(&url, subject, &mut out).await?,
        Command::Archive(a) => archive(&url, a, &mut out).await?,
        Command::Export {
            out: file,
            root_only,
        } => export(&url, file, root_only, &mut out).await?,
        Command::Import { input, keys_from } => {
            let keys_from = keys_from.as_deref().map(parse_url).transpose()?;
            import(&url, input, keys_from.as_ref(), &mut out).await?
        }
        Command::Copy {
            from,
            to,
            to_store_key,
        } => {
            let to_key = match to_store_key {
                Some(k) => Some(open::parse_store_key(&k).map_err(|e| usage(e.to_string()))?),
                None => open::store_key(),
            };
            copy(&parse_url(&from)?, &parse_url(&to)?, to_key, &mut out).await?
        }
        Command::Serve(a) => eskv_cli::serve::serve(&url, a).await?,
    }
    out.flush()?;
    Ok(())
}
