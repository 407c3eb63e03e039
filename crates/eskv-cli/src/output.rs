//! What the tool prints: exit codes and one-line errors, JSON lines or
//! aligned tables, progress on stderr.

use eskv::export::line::EventLine;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// An error with its own exit code.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    Exit {
        code: 2,
        message: message.into(),
    }
    .into()
}

/// Prints clap's error as one line (help and version go to stdout whole).
pub(crate) fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = write!(io::stdout(), "{e}");
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let _ = writeln!(
                io::stderr(),
                "error: no command given; the commands are {} (see 'eskv --help')",
                command_names()
            );
            ExitCode::from(2)
        }
        _ => {
            let _ = writeln!(io::stderr(), "error: {}", clap_message(&e.to_string()));
            ExitCode::from(2)
        }
    }
}

/// The tool's commands, from its argument definitions: "a, b and c".
fn command_names() -> String {
    use clap::CommandFactory;
    let cli = crate::args::Cli::command();
    let names: Vec<&str> = cli
        .get_subcommands()
        .map(|c| c.get_name())
        .filter(|n| *n != "help")
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// clap's whole message on one line: every line up to its usage summary
/// (the arguments a "required arguments were not provided" error names
/// are on the lines after the first), then the usage.
pub(crate) fn clap_message(text: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut usage_line = None;
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = l.strip_prefix("Usage: ") {
            usage_line = Some(u.to_owned());
        } else if l.starts_with("For more information") {
        } else {
            let l = l.strip_prefix("error: ").unwrap_or(l);
            match parts.last_mut() {
                Some(p) if p.ends_with(':') => {
                    p.push(' ');
                    p.push_str(l);
                }
                Some(p) if l.starts_with('-') || l.starts_with('<') => {
                    p.push_str(", ");
                    p.push_str(l);
                }
                _ => parts.push(l.to_owned()),
            }
        }
    }
    let mut msg = if parts.is_empty() {
        "bad usage".to_owned()
    } else {
        parts.join("; ")
    };
    if let Some(u) = usage_line {
        msg.push_str(&format!(" (usage: {u}; see 'eskv --help')"));
    } else {
        msg.push_str(" (see 'eskv --help')");
    }
    one_line(&msg)
}

/// The exit code for an error of the store (see the README's table).
pub(crate) fn store_error_code(e: &eskv::Error) -> Option<u8> {
    match e {
        eskv::Error::WrongExpectedVersion { .. }
        | eskv::Error::ConditionFailed { .. }
        | eskv::Error::IdempotencyViolation { .. }
        | eskv::Error::StreamTombstoned { .. }
        | eskv::Error::NotFound { .. } => Some(3),
        eskv::Error::InvalidInput { .. }
        | eskv::Error::LimitExceeded { .. }
        | eskv::Error::UnknownEventType { .. }
        | eskv::Error::UnknownSubject { .. }
        | eskv::Error::WrongStoreKey { .. } => Some(2),
        _ => None,
    }
}

/// Prints an error as one line and picks the exit code.
pub(crate) fn report(e: anyhow::Error) -> ExitCode {
    if e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    }) {
        // The reader went away (`eskv read | head`): not an error.
        return ExitCode::SUCCESS;
    }
    let code = e
        .chain()
        .find_map(|c| {
            if let Some(x) = c.downcast_ref::<Exit>() {
                return Some(x.code);
            }
            c.downcast_ref::<eskv::Error>().and_then(store_error_code)
        })
        .unwrap_or(1);
    let msg = cli_terms(&chain_text(&e));
    let _ = writeln!(io::stderr(), "error: {}", one_line(&msg));
    ExitCode::from(code)
}

/// The error's chain as one message, without causes that their error
/// already quotes.
fn chain_text(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if msg.contains(&t) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&t);
    }
    msg
}

/// `e` as an error with exit code `code`, whatever its causes would give
/// (its message is kept).
pub(crate) fn with_code(e: anyhow::Error, code: u8) -> anyhow::Error {
    Exit {
        code,
        message: chain_text(&e),
    }
    .into()
}

/// The library's messages in the command line's terms: what it calls
/// `EventStoreOptions::store_key` is `--store-key` here, and a
/// condition's `after` is `--after`.
pub(crate) fn cli_terms(msg: &str) -> String {
    const TERMS: [(&str, &str); 3] = [
        (
            "open it with EventStoreOptions::store_key (the key it was written with)",
            "give the key it was written with (--store-key HEX or ESKV_STORE_KEY)",
        ),
        (
            "the store key given in EventStoreOptions::store_key",
            "the store key given with --store-key (or ESKV_STORE_KEY)",
        ),
        (
            "pass the consistent_through of the read your decision used",
            "pass the head the read behind your decision saw (`eskv info` shows the store's head)",
        ),
    ];
    let mut msg = msg.to_owned();
    for (library, cli) in TERMS {
        msg = msg.replace(library, cli);
    }
    // "condition's after (N) is past" -> "--after N is past".
    const AFTER: &str = "condition's after (";
    if let Some(at) = msg.find(AFTER) {
        let rest = &msg[at + AFTER.len()..];
        if let Some(close) = rest.find(')') {
            msg = format!(
                "{}--after {}{}",
                &msg[..at],
                &rest[..close],
                &rest[close + 1..]
            );
        }
    }
    msg
}

pub(crate) fn one_line(s: &str) -> String {
    strip_source_locations(
        &s.split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Removes source locations some client libraries put in their messages
/// ("[/home/u/.cargo/registry/src/.../cluster.rs:209]: "): they say
/// nothing to the person reading the error.
pub(crate) fn strip_source_locations(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| open + c) else {
            break;
        };
        let inner = &rest[open + 1..close];
        let is_location = inner.rsplit_once(':').is_some_and(|(file, line)| {
            file.ends_with(".rs") && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
        });
        if is_location {
            out.push_str(&rest[..open]);
            rest = &rest[close + 1..];
            rest = rest.strip_prefix(':').unwrap_or(rest).trim_start();
        } else {
            out.push_str(&rest[..=close]);
            rest = &rest[close + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Standard output: JSON lines or human text.
pub(crate) struct Out {
    pub(crate) w: BufWriter<io::Stdout>,
    pub(crate) json: bool,
}

impl Out {
    pub(crate) fn new(force_json: bool) -> Self {
        Out {
            w: BufWriter::new(io::stdout()),
            json: force_json || !io::stdout().is_terminal(),
        }
    }

    pub(crate) fn line(&mut self, s: &str) -> io::Result<()> {
        self.w.write_all(s.as_bytes())?;
        self.w.write_all(b"\n")
    }

    pub(crate) fn value(&mut self, v: &serde_json::Value) -> io::Result<()> {
        self.line(&v.to_string())
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// How wide `s` is on a terminal (wide characters take two columns).
pub(crate) fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// `s` cut to at most `n` terminal columns, with "…" when cut.
pub(crate) fn cut(s: &str, n: usize) -> String {
    if width(s) <= n {
        return s.to_owned();
    }
    let mut t = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = UnicodeWidthChar::width(c).unwrap_or(0);
        if w + cw + 1 > n {
            break;
        }
        t.push(c);
        w += cw;
    }
    t.push('…');
    t
}

/// `s` padded with spaces to `n` terminal columns.
pub(crate) fn pad(s: &str, n: usize, right: bool) -> String {
    let fill = " ".repeat(n.saturating_sub(width(s)));
    if right {
        fill + s
    } else {
        format!("{s}{fill}")
    }
}

pub(crate) const TABLE_HEAD: [&str; 6] = ["POS", "TYPE", "STREAM@VER", "TAGS", "RECORDED", "DATA"];
/// Most columns a table cell takes (DATA, the last, included).
pub(crate) const TABLE_MAX: [usize; 6] = [12, 32, 32, 40, 24, 60];
/// The widths `tail` uses from its first line on, before it has seen any
/// rows: wide enough for most values (longer ones are cut with "…").
pub(crate) const TAIL_WIDTHS: [usize; 5] = [8, 24, 24, 32, 24];

/// Rows as a table: aligned by terminal width, with a header. `fixed`
/// gives the widths of the first five columns (for `tail`, whose rows
/// arrive one by one); otherwise they fit the rows.
pub(crate) fn table(rows: &[EventLine], fixed: Option<[usize; 5]>) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let stream = match (&r.stream, r.version) {
                (Some(s), Some(v)) => format!("{s}@{v}"),
                _ => "-".into(),
            };
            let data = if let Some(d) = &r.data {
                d.get().to_owned()
            } else if let Some(t) = &r.data_text {
                format!("{t:?}")
            } else if let Some(b) = &r.data_base64 {
                format!("base64:{b}")
            } else {
                String::new()
            };
            let tags = if r.tags.is_empty() {
                "-".to_owned()
            } else {
                r.tags.join(",")
            };
            [
                r.position.map_or(String::new(), |p| p.to_string()),
                r.event_type.clone(),
                stream,
                tags,
                r.recorded_at.clone().unwrap_or_default(),
                data,
            ]
        })
        .collect();
    let mut w = [0; 6];
    match fixed {
        Some(f) => w[..5].copy_from_slice(&f),
        None => {
            for (i, h) in TABLE_HEAD.iter().enumerate() {
                w[i] = cells
                    .iter()
                    .map(|c| width(&c[i]))
                    .fold(width(h), usize::max)
                    .min(TABLE_MAX[i]);
            }
        }
    }
    let mut s = String::new();
    let mut row = |r: [&str; 6]| {
        let mut l = pad(&cut(r[0], w[0]), w[0], true);
        for i in 1..6 {
            l.push_str("  ");
            if i == 5 {
                l.push_str(&cut(r[i], TABLE_MAX[5]));
            } else {
                l.push_str(&pad(&cut(r[i], w[i]), w[i], false));
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    row(TABLE_HEAD);
    for c in &cells {
        row([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]].map(String::as_str));
    }
    s
}

// ------------------------------------------------- export, import, copy

/// "event" or "events".
pub(crate) fn events_word(n: u64) -> &'static str {
    if n == 1 {
        "event"
    } else {
        "events"
    }
}

/// A rate as a person reads it: a whole number per second.
pub(crate) fn rate_text(per_sec: f64) -> String {
    if per_sec.is_finite() {
        format!("{:.0}/s", per_sec)
    } else {
        "-/s".to_owned()
    }
}

/// A progress style with a whole-number rate as `{rate}`.
pub(crate) fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn fmt::Write| {
                let _ = w.write_str(&rate_text(s.per_sec()));
            },
        )
        .progress_chars("=> ")
}

/// A progress bar over `len` events on stderr, when it is a terminal
/// (hidden otherwise).
pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(style(&format!(
        "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {} ({{rate}}, eta {{eta}})",
        events_word(len)
    )));
    pb.set_message(what.to_owned());
    pb.tick();
    pb
}

/// Progress without a known total ("checking 12345 keys read"), on stderr
/// when it is a terminal.
pub(crate) fn spinner(what: &str, unit: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(style(&format!(
        "{{spinner}} {{msg}}: {{pos}} {unit} ({{rate}}, {{elapsed}})"
    )));
    pb.set_message(what.to_owned());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

pub(crate) fn note(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_keep_the_arguments_they_name() {
        let text = "error: the following required arguments were not provided:\n  --to <URL>\n  --from <URL>\n\nUsage: eskv copy --from <URL> --to <URL>\n\nFor more information, try '--help'.\n";
        let m = clap_message(text);
        assert_eq!(
            m,
            "the following required arguments were not provided: --to <URL>, --from <URL> (usage: eskv copy --from <URL> --to <URL>; see 'eskv --help')"
        );
    }

    #[test]
    fn source_locations_are_dropped_and_other_brackets_kept() {
        assert_eq!(
            strip_source_locations(
                "cannot reach PD a:1: [/x/.cargo/registry/src/tikv-client-0.4.0/src/pd/cluster.rs:209]: PD cluster failed"
            ),
            "cannot reach PD a:1: PD cluster failed"
        );
        assert_eq!(strip_source_locations("tags [a, b]: x"), "tags [a, b]: x");
        assert_eq!(strip_source_locations("open [ end"), "open [ end");
    }

    #[test]
    fn library_terms_become_flags() {
        assert_eq!(
            cli_terms("condition's after (999) is past the head (2); pass the consistent_through of the read your decision used"),
            "--after 999 is past the head (2); pass the head the read behind your decision saw (`eskv info` shows the store's head)"
        );
        let m = cli_terms("store key: this store holds personal data, and no store key was given: open it with EventStoreOptions::store_key (the key it was written with)");
        assert!(
            !m.contains("EventStoreOptions") && m.contains("--store-key"),
            "{m}"
        );
        assert_eq!(cli_terms("plain"), "plain");
    }

    #[test]
    fn rates_are_whole_numbers_and_one_event_is_singular() {
        assert_eq!(rate_text(1234.5678), "1235/s");
        assert_eq!(rate_text(f64::INFINITY), "-/s");
        assert_eq!(events_word(1), "event");
        assert_eq!(events_word(0), "events");
        assert_eq!(events_word(2), "events");
    }

    #[test]
    fn cells_are_cut_and_padded_by_display_width() {
        assert_eq!(width("東京"), 4);
        assert_eq!(pad("東京", 6, false), "東京  ");
        assert_eq!(pad("7", 3, true), "  7");
        let c = cut("東京東京東京", 5);
        assert!(width(&c) <= 5, "{c}");
        assert!(c.ends_with('…'));
        assert_eq!(cut("short", 10), "short");
    }
}
