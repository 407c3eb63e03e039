//! Store URLs: one string that names a store on any backend, as
//! [`open`](crate::open), the `eskv` CLI's `--store` and the server accept.
//!
//! | form | meaning |
//! | --- | --- |
//! | `redb:PATH` | an embedded redb file (created on first write); `redb:PATH?cache=64MiB` sets redb's page cache (bytes, KiB, MiB or GiB; default 64 MiB). A path cannot contain `?`: what follows it is options, and an unknown one is an error |
//! | `fjall:PATH` | an embedded fjall store: a directory (created on first write); `fjall:PATH?cache=64MiB` sets fjall's block cache (default 64 MiB) |
//! | `memory:` | an empty in-memory store that lives as long as the process |
//! | `tikv://PD[,PD...][/PREFIX]` | a TiKV cluster through its PD endpoints |
//! | `etcd://HOST[,HOST...][/PREFIX]` | an etcd cluster |
//!
//! Each endpoint is `host:port` (the port defaults to 2379), `host` being
//! a DNS name, an IPv4 address or a bracketed IPv6 address (`[::1]:2379`).
//! The optional `/PREFIX` scopes every key under a namespace, so several
//! stores can share one cluster.
//!
//! ```
//! use eskv::url::StoreUrl;
//! let url: StoreUrl = "tikv://pd1:2379,pd2/orders".parse().unwrap();
//! assert_eq!(
//!     url,
//!     StoreUrl::Tikv {
//!         endpoints: vec!["pd1:2379".into(), "pd2:2379".into()],
//!         prefix: Some("orders".into()),
//!     }
//! );
//! assert_eq!(url.to_string(), "tikv://pd1:2379,pd2:2379/orders");
//! assert!("./events.redb".parse::<StoreUrl>().is_err());
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The forms a store URL may take, for error messages and help.
///
/// ```
/// assert!(eskv::url::ACCEPTED_FORMS.contains("redb:PATH"));
/// ```
pub const ACCEPTED_FORMS: &str = "redb:PATH, fjall:PATH, memory:, tikv://HOST:PORT[,HOST:PORT...][/PREFIX] or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]";

/// The port used when an endpoint has none (PD's and etcd's client port).
///
/// ```
/// use eskv::url::{StoreUrl, DEFAULT_PORT};
/// let url: StoreUrl = "etcd://node1".parse().unwrap();
/// assert_eq!(url.to_string(), format!("etcd://node1:{DEFAULT_PORT}"));
/// ```
pub const DEFAULT_PORT: u16 = 2379;

/// A parsed store URL; see the [module docs](self) for the forms.
///
/// ```
/// use eskv::url::StoreUrl;
/// let url: StoreUrl = "redb:/var/lib/app/events.redb?cache=256MiB".parse().unwrap();
/// assert_eq!(url, StoreUrl::Redb { path: "/var/lib/app/events.redb".into(), cache: Some(256 << 20) });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An embedded redb file.
    Redb {
        /// The file.
        path: PathBuf,
        /// redb's page cache in bytes (`?cache=64MiB`); the backend's
        /// default when absent.
        cache: Option<usize>,
    },
    /// An embedded fjall store (a directory).
    Fjall {
        /// The directory.
        path: PathBuf,
        /// fjall's block cache in bytes (`?cache=64MiB`); the backend's
        /// default when absent.
        cache: Option<usize>,
    },
    /// A fresh in-memory store (gone when the process exits).
    Memory,
    /// A TiKV cluster.
    Tikv {
        /// PD endpoints, each `host:port`.
        endpoints: Vec<String>,
        /// Key namespace, if any.
        prefix: Option<String>,
    },
    /// An etcd cluster.
    Etcd {
        /// etcd endpoints, each `host:port`.
        endpoints: Vec<String>,
        /// Key namespace, if any.
        prefix: Option<String>,
    },
}

impl StoreUrl {
    /// The backend's name: `redb`, `fjall`, `memory`, `tikv` or `etcd`.
    ///
    /// ```
    /// let url: eskv::url::StoreUrl = "fjall:./data".parse().unwrap();
    /// assert_eq!(url.backend(), "fjall");
    /// ```
    pub fn backend(&self) -> &'static str {
        match self {
            StoreUrl::Redb { .. } => "redb",
            StoreUrl::Fjall { .. } => "fjall",
            StoreUrl::Memory => "memory",
            StoreUrl::Tikv { .. } => "tikv",
            StoreUrl::Etcd { .. } => "etcd",
        }
    }
}

/// Why a store URL was rejected. Displays as one line that names the
/// accepted forms.
///
/// ```
/// use eskv::url::StoreUrl;
/// let err = "postgres://db/events".parse::<StoreUrl>().unwrap_err();
/// assert_eq!(err.url, "postgres://db/events");
/// assert!(err.to_string().contains("accepted forms: redb:PATH"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid store URL '{}': {}; accepted forms: {ACCEPTED_FORMS}",
            self.url.escape_debug(),
            self.reason
        )
    }
}

impl std::error::Error for UrlError {}

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        parse(s).map_err(|reason| UrlError {
            url: s.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Redb { path, cache } | StoreUrl::Fjall { path, cache } => {
                write!(f, "{}:{}", self.backend(), path.display())?;
                if let Some(c) = cache {
                    write!(f, "?cache={c}")?;
                }
                Ok(())
            }
            StoreUrl::Memory => f.write_str("memory:"),
            StoreUrl::Tikv { endpoints, prefix } | StoreUrl::Etcd { endpoints, prefix } => {
                write!(f, "{}://{}", self.backend(), endpoints.join(","))?;
                if let Some(p) = prefix {
                    write!(f, "/{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// A byte count such as `67108864`, `64MiB`, `512KiB` or `1GiB`.
fn parse_size(s: &str) -> Result<usize, String> {
    let bad = || {
        format!(
            "cache={s:?} is not a size; write bytes or a number with KiB, MiB or GiB, for example cache=64MiB"
        )
    };
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: usize = digits.parse().map_err(|_| bad())?;
    let mult: usize = match unit {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

fn parse(s: &str) -> Result<StoreUrl, String> {
    let Some((scheme, rest)) = s.split_once(':') else {
        return Err(if s.is_empty() {
            "it is empty".into()
        } else {
            format!("it has no scheme (for a file, write redb:{s})")
        });
    };
    match scheme.to_ascii_lowercase().as_str() {
        scheme @ ("redb" | "fjall") => {
            if rest.is_empty() {
                return Err(match scheme {
                    "redb" => "redb: needs a file path, for example redb:./events.redb".into(),
                    _ => "fjall: needs a directory path, for example fjall:./events".into(),
                });
            }
            if rest.chars().any(char::is_control) {
                return Err("the path contains a control character".into());
            }
            // Everything after the first '?' is options: a path never
            // holds one, so a misspelled option is an error, not a file.
            let (path, query) = match rest.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(format!("{scheme}: needs a path before the '?'"));
            }
            let mut cache = None;
            for option in query.into_iter().flat_map(|q| q.split('&')) {
                match option.split_once('=') {
                    Some(("cache", size)) if cache.is_none() => cache = Some(parse_size(size)?),
                    Some(("cache", _)) => return Err("cache= is given twice".into()),
                    _ => {
                        return Err(format!(
                            "unknown option {option:?} after '?' in {scheme}:{rest}: the only option is cache (for example {scheme}:{path}?cache=64MiB), and a path cannot contain '?'"
                        ))
                    }
                }
            }
            let path = PathBuf::from(path);
            Ok(match scheme {
                "redb" => StoreUrl::Redb { path, cache },
                _ => StoreUrl::Fjall { path, cache },
            })
        }
        "memory" => {
            if rest.is_empty() || rest == "//" {
                Ok(StoreUrl::Memory)
            } else {
                Err("memory: takes nothing after the colon".into())
            }
        }
        scheme @ ("tikv" | "etcd") => {
            let Some(rest) = rest.strip_prefix("//") else {
                return Err(format!(
                    "{scheme} URLs start with {scheme}:// followed by HOST:PORT endpoints"
                ));
            };
            let (hosts, prefix) = match rest.split_once('/') {
                Some((h, p)) => (h, (!p.is_empty()).then(|| p.to_owned())),
                None => (rest, None),
            };
            if let Some(p) = &prefix {
                if p.chars().any(char::is_control) {
                    return Err("the key prefix contains a control character".into());
                }
            }
            if hosts.is_empty() {
                return Err(format!("{scheme}:// needs at least one HOST:PORT endpoint"));
            }
            let endpoints = hosts
                .split(',')
                .map(endpoint)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if scheme == "tikv" {
                StoreUrl::Tikv { endpoints, prefix }
            } else {
                StoreUrl::Etcd { endpoints, prefix }
            })
        }
        other => Err(format!("unknown scheme '{}'", other.escape_debug())),
    }
}

/// Checks one `host[:port]` endpoint and returns it as `host:port`.
fn endpoint(e: &str) -> Result<String, String> {
    if e.is_empty() {
        return Err("an endpoint in the list is empty (two commas in a row?)".into());
    }
    let bad = || format!("endpoint '{}' is not HOST:PORT", e.escape_debug());
    let (host, port) = if let Some(v6) = e.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(bad());
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match e.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (e, None),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !host_ok {
            return Err(bad());
        }
        (host.to_owned(), port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "endpoint '{}' has an invalid port (expected 1 to 65535)",
                    e.escape_debug()
                ))
            }
        },
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> StoreUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        s.parse::<StoreUrl>().unwrap_err().to_string()
    }

    #[test]
    fn redb_cache_size() {
        assert_eq!(
            ok("redb:./e.redb?cache=64MiB"),
            StoreUrl::Redb {
                path: "./e.redb".into(),
                cache: Some(64 << 20)
            }
        );
        assert_eq!(
            ok("redb:e.redb?cache=4096"),
            StoreUrl::Redb {
                path: "e.redb".into(),
                cache: Some(4096)
            }
        );
        let u = ok("redb:e.redb?cache=1GiB");
        assert_eq!(u.to_string().parse::<StoreUrl>().unwrap(), u);
        for bad in [
            "redb:e.redb?cache=",
            "redb:e.redb?cache=64MB",
            "redb:e.redb?cache=x",
        ] {
            assert!(err(bad).contains("not a size"), "{bad}: {}", err(bad));
        }
    }

    #[test]
    fn fjall_directories() {
        assert_eq!(
            ok("fjall:./events?cache=256MiB"),
            StoreUrl::Fjall {
                path: "./events".into(),
                cache: Some(256 << 20)
            }
        );
        let u = ok("FJALL:/var/lib/app/events");
        assert_eq!(u.backend(), "fjall");
        assert_eq!(u.to_string(), "fjall:/var/lib/app/events");
        assert_eq!(u.to_string().parse::<StoreUrl>().unwrap(), u);
        assert!(err("fjall:").contains("needs a directory path"));
        assert!(err("fjall:e?cache=1TB").contains("not a size"));
        // A misspelled or unknown option is refused, never part of a path.
        for bad in [
            "redb:ev.redb?cahce=64MiB",
            "fjall:ev?cahce=64MiB",
            "redb:ev.redb?cache=64MiB&foo=1",
            "redb:what?.redb",
            "redb:ev.redb?",
        ] {
            assert!(err(bad).contains("unknown option"), "{bad}: {}", err(bad));
        }
        assert!(err("redb:e?cache=1&cache=2").contains("twice"));
        assert!(err("redb:?cache=1").contains("needs a path"));
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(
            ok("redb:./events.redb"),
            StoreUrl::Redb {
                path: "./events.redb".into(),
                cache: None
            }
        );
        assert_eq!(
            ok("redb:/tmp/a b.redb"),
            StoreUrl::Redb {
                path: "/tmp/a b.redb".into(),
                cache: None
            }
        );
        assert_eq!(ok("memory:"), StoreUrl::Memory);
        assert_eq!(ok("MEMORY:"), StoreUrl::Memory);
        assert_eq!(
            ok("tikv://pd1:2379,pd2:2380"),
            StoreUrl::Tikv {
                endpoints: vec!["pd1:2379".into(), "pd2:2380".into()],
                prefix: None
            }
        );
        assert_eq!(
            ok("etcd://127.0.0.1/app/tenant-1"),
            StoreUrl::Etcd {
                endpoints: vec!["127.0.0.1:2379".into()],
                prefix: Some("app/tenant-1".into())
            }
        );
        assert_eq!(
            ok("etcd://[::1]:23790,[fe80::1]"),
            StoreUrl::Etcd {
                endpoints: vec!["[::1]:23790".into(), "[fe80::1]:2379".into()],
                prefix: None
            }
        );
        assert_eq!(
            ok("tikv://pd:1/"),
            StoreUrl::Tikv {
                endpoints: vec!["pd:1".into()],
                prefix: None
            }
        );
    }

    #[test]
    fn rejections_name_the_accepted_forms() {
        for (url, why) in [
            ("", "empty"),
            (
                "./events.redb",
                "no scheme (for a file, write redb:./events.redb)",
            ),
            ("redb:", "needs a file path"),
            ("memory:x", "takes nothing"),
            ("postgres://x", "unknown scheme 'postgres'"),
            ("tikv:pd:2379", "start with tikv://"),
            ("tikv://", "at least one HOST:PORT"),
            ("tikv:///prefix", "at least one HOST:PORT"),
            ("tikv://a:2379,,b", "empty"),
            ("etcd://a:0", "invalid port"),
            ("etcd://a:99999", "invalid port"),
            ("etcd://a:+1", "invalid port"),
            ("etcd://a b:1", "not HOST:PORT"),
            ("etcd://[::1", "not HOST:PORT"),
            ("etcd://[::1]x", "not HOST:PORT"),
        ] {
            let e = err(url);
            assert!(e.contains(why), "{url}: {e}");
            assert!(e.contains(ACCEPTED_FORMS), "{url}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Parsing never panics, errors are one line, and a parsed URL
        /// displays as a URL that parses back to the same value.
        #[test]
        fn parse_is_total_and_display_round_trips(s in "\\PC{0,40}|(redb|fjall|memory|tikv|etcd|TIKV):[/\\[\\]:a-z0-9,.\\-]{0,30}") {
            match s.parse::<StoreUrl>() {
                Ok(url) => {
                    let again: StoreUrl = url.to_string().parse().expect("display parses");
                    prop_assert_eq!(again, url);
                }
                Err(e) => prop_assert!(!e.to_string().contains('\n')),
            }
        }
    }
}
