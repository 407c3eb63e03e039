//! Tenants (`eskv serve --auth-file` credentials with a tenant keep their
//! events in a `Namespaced` key prefix of the same store): `--tenant`,
//! listing them, and backups, copies and checks that never leave one out.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_eskv");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .args(args)
        .env_remove("ESKV_STORE")
        .env_remove("ESKV_TENANT")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let out = c.output().expect("the eskv binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn run(dir: &Path, args: &[&str]) -> Run {
    run_env(dir, args, &[])
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let r = run(dir, args);
    assert_eq!(r.code, 0, "eskv {args:?} failed: {}{}", r.stderr, r.stdout);
    r.stdout
}

fn fails(dir: &Path, args: &[&str]) -> Run {
    let r = run(dir, args);
    assert_ne!(r.code, 0, "eskv {args:?} should fail: {}", r.stdout);
    assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
    assert!(r.stderr.starts_with("error: "), "{args:?}: {}", r.stderr);
    r
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Event lines without their recording times (same events, other store).
fn events(dir: &Path, args: &[&str]) -> Vec<Value> {
    json_lines(&ok(dir, args))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A store as `eskv serve` leaves it with two tenants: one root event,
/// two events of tenant `acme` (a stream, a registered type), one DCB
/// event of tenant `globex`.
fn tenant_store(path: &Path) {
    rt().block_on(async {
        let kv: Arc<dyn eskv::KvStore> = Arc::new(eskv::RedbStore::open(path).await.unwrap());
        let root = eskv::EventStore::open(kv.clone()).await.unwrap();
        root.append_to_stream(
            "root-1",
            eskv::ExpectedVersion::NoStream,
            vec![eskv::NewEvent::new("RootEvent", b"{}".to_vec())],
        )
        .await
        .unwrap();
        let acme = eskv::EventStore::open(Arc::new(eskv::Namespaced::new(kv.clone(), "acme")))
            .await
            .unwrap();
        acme.register_event_types(["OrderPlaced"]).await.unwrap();
        acme.append_to_stream(
            "order-1",
            eskv::ExpectedVersion::NoStream,
            vec![
                eskv::NewEvent::new("OrderPlaced", br#"{"n":1}"#.to_vec()),
                eskv::NewEvent::new("OrderPlaced", br#"{"n":2}"#.to_vec()),
            ],
        )
        .await
        .unwrap();
        let globex = eskv::EventStore::open(Arc::new(eskv::Namespaced::new(kv, "globex")))
            .await
            .unwrap();
        globex
            .append(
                vec![eskv::NewEvent::new("Hired", b"{}".to_vec()).with_tags(["person:p1"])],
                None,
            )
            .await
            .unwrap();
    });
}

#[test]
fn info_lists_the_tenants_and_tenant_selects_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tenant_store(&d.join("t.redb"));
    let s = "redb:t.redb";
    let info: Value = serde_json::from_str(&ok(d, &["--store", s, "info"])).unwrap();
    assert_eq!(
        info["tenants"],
        serde_json::json!(["acme", "globex"]),
        "{info}"
    );
    assert_eq!(info["head"], 1, "{info}");
    if let Some(text) = on_terminal(d, &["--store", s, "info"]) {
        assert!(
            text.contains("tenants:") && text.contains("acme, globex"),
            "{text}"
        );
    }

    // --tenant (and ESKV_TENANT) works on that tenant's namespace.
    let acme = events(d, &["--store", s, "--tenant", "acme", "read"]);
    assert_eq!(acme.len(), 2, "{acme:?}");
    assert_eq!(acme[0]["type"], "OrderPlaced");
    let r = run_env(d, &["--store", s, "read"], &[("ESKV_TENANT", "globex")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let globex = json_lines(&r.stdout);
    assert_eq!(globex.len(), 1);
    assert_eq!(globex[0]["type"], "Hired");
    let info: Value =
        serde_json::from_str(&ok(d, &["--store", s, "--tenant", "acme", "info"])).unwrap();
    assert_eq!(info["head"], 2, "{info}");
    assert_eq!(info["tenant"], "acme", "{info}");
    let types: Value =
        serde_json::from_str(&ok(d, &["--store", s, "--tenant", "acme", "types"])).unwrap();
    assert_eq!(types["types"], serde_json::json!(["OrderPlaced"]));

    // An append with --tenant lands in the tenant only.
    ok(
        d,
        &[
            "--store", s, "--tenant", "globex", "append", "--type", "Fired",
        ],
    );
    assert_eq!(
        events(d, &["--store", s, "--tenant", "globex", "read"]).len(),
        2
    );
    let root = events(d, &["--store", s, "read"]);
    assert_eq!(root.len(), 1, "{root:?}");
    assert_eq!(root[0]["type"], "RootEvent");

    // A tenant that is not there is an error, as a missing store is, and
    // nothing is created.
    let r = fails(d, &["--store", s, "--tenant", "acne", "read"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("acne") && r.stderr.contains("acme, globex"),
        "{}",
        r.stderr
    );
    let info: Value = serde_json::from_str(&ok(d, &["--store", s, "info"])).unwrap();
    assert_eq!(
        info["tenants"],
        serde_json::json!(["acme", "globex"]),
        "{info}"
    );

    // Names the auth file cannot hold are bad usage.
    for bad in ["", "two words", "tab\there"] {
        let r = fails(d, &["--store", s, "--tenant", bad, "read"]);
        assert_eq!(r.code, 2, "{bad:?}: {}", r.stderr);
        assert!(r.stderr.contains("--tenant"), "{bad:?}: {}", r.stderr);
    }
    // `serve` serves the whole store: tenants come from its credentials.
    let r = fails(d, &["--store", s, "--tenant", "acme", "serve"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--auth-file"), "{}", r.stderr);
}

#[test]
fn export_refuses_to_leave_tenants_out_and_each_tenant_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tenant_store(&d.join("t.redb"));
    let s = "redb:t.redb";

    let r = fails(d, &["--store", s, "export", "--out", "all.jsonl"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in ["acme", "globex", "--tenant", "--root-only"] {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
    assert!(!d.join("all.jsonl").exists());
    assert!(!d.join("all.jsonl.partial").exists());
    let r = fails(d, &["--store", s, "export"]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    // The root alone, when asked for.
    ok(
        d,
        &["--store", s, "export", "--root-only", "--out", "root.jsonl"],
    );
    let root = std::fs::read_to_string(d.join("root.jsonl")).unwrap();
    assert!(
        root.contains("RootEvent") && !root.contains("OrderPlaced"),
        "{root}"
    );

    // Each tenant, restored into a tenant of a new store.
    for (tenant, n) in [("acme", 2), ("globex", 1)] {
        let file = format!("{tenant}.jsonl");
        ok(
            d,
            &["--store", s, "--tenant", tenant, "export", "--out", &file],
        );
        let imported = json_lines(&ok(
            d,
            &[
                "--store",
                "redb:new.redb",
                "--tenant",
                tenant,
                "import",
                "--in",
                &file,
            ],
        ));
        assert_eq!(imported[0]["events"], n, "{imported:?}");
        assert_eq!(imported[0]["verified"], true, "{imported:?}");
        assert_eq!(
            events(d, &["--store", "redb:new.redb", "--tenant", tenant, "read"]),
            events(d, &["--store", s, "--tenant", tenant, "read"]),
        );
    }
    ok(
        d,
        &["--store", "redb:new.redb", "import", "--in", "root.jsonl"],
    );
    assert_eq!(
        events(d, &["--store", "redb:new.redb", "read"]),
        events(d, &["--store", s, "read"])
    );
    let info: Value = serde_json::from_str(&ok(d, &["--store", "redb:new.redb", "info"])).unwrap();
    assert_eq!(
        info["tenants"],
        serde_json::json!(["acme", "globex"]),
        "{info}"
    );
    // The tenant's registered types came along.
    let types: Value = serde_json::from_str(&ok(
        d,
        &["--store", "redb:new.redb", "--tenant", "acme", "types"],
    ))
    .unwrap();
    assert_eq!(types["types"], serde_json::json!(["OrderPlaced"]));
    // A second import into the same tenant is refused: it is not empty.
    let r = fails(
        d,
        &[
            "--store",
            "redb:new.redb",
            "--tenant",
            "acme",
            "import",
            "--in",
            "acme.jsonl",
        ],
    );
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    // --root-only is about the root: with --tenant it is bad usage.
    let r = fails(
        d,
        &["--store", s, "--tenant", "acme", "export", "--root-only"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn copy_carries_every_tenant_and_check_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tenant_store(&d.join("t.redb"));
    let s = "redb:t.redb";

    let lines = json_lines(&ok(d, &["copy", "--from", s, "--to", "redb:c.redb"]));
    let tenants: Vec<&Value> = lines.iter().map(|l| &l["tenant"]).collect();
    // The tenants first, the root last: the root's import mark spans the
    // whole copy.
    assert_eq!(
        tenants,
        [&Value::from("acme"), &Value::from("globex"), &Value::Null],
        "{lines:?}"
    );
    for (l, n) in lines.iter().zip([2, 1, 1]) {
        assert_eq!(l["verified"], true, "{l}");
        assert_eq!(l["events"], n, "{l}");
        assert_eq!(l["target_events"], n, "{l}");
    }
    for tenant in [None, Some("acme"), Some("globex")] {
        let mut args = vec!["--store", "redb:c.redb"];
        let mut src = vec!["--store", s];
        if let Some(t) = tenant {
            args.extend(["--tenant", t]);
            src.extend(["--tenant", t]);
        }
        args.push("read");
        src.push("read");
        assert_eq!(events(d, &args), events(d, &src), "{tenant:?}");
    }
    let info: Value = serde_json::from_str(&ok(d, &["--store", "redb:c.redb", "info"])).unwrap();
    assert_eq!(
        info["tenants"],
        serde_json::json!(["acme", "globex"]),
        "{info}"
    );

    // One tenant alone, with --tenant, into that tenant of the target.
    let one = json_lines(&ok(
        d,
        &[
            "--tenant",
            "acme",
            "copy",
            "--from",
            s,
            "--to",
            "redb:one.redb",
        ],
    ));
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["tenant"], "acme");
    let info: Value = serde_json::from_str(&ok(d, &["--store", "redb:one.redb", "info"])).unwrap();
    assert_eq!(info["tenants"], serde_json::json!(["acme"]), "{info}");
    assert_eq!(info["head"], 0, "{info}");

    // check: the root and every tenant, each reported.
    let report = json_lines(&ok(d, &["--store", s, "check"]));
    assert_eq!(report.len(), 3, "{report:?}");
    for (l, (t, n)) in
        report
            .iter()
            .zip([(Value::Null, 1), ("acme".into(), 2), ("globex".into(), 1)])
    {
        assert_eq!(l["tenant"], t, "{l}");
        assert_eq!(l["clean"], true, "{l}");
        assert_eq!(l["events"], n, "{l}");
    }
    // Damage in one tenant: exit 4, the report names it.
    rt().block_on(async {
        use eskv::KvStore;
        let kv: Arc<dyn eskv::KvStore> =
            Arc::new(eskv::RedbStore::open(d.join("c.redb")).await.unwrap());
        let globex = eskv::Namespaced::new(kv, "globex");
        let mut t = globex.begin().await.unwrap();
        t.delete(eskv::layout::tag_key("person:p1", 1));
        t.commit().await.unwrap();
    });
    let r = run(d, &["--store", "redb:c.redb", "check"]);
    assert_eq!(r.code, 4, "{}{}", r.stderr, r.stdout);
    assert!(r.stderr.contains("globex"), "{}", r.stderr);
    let report = json_lines(&r.stdout);
    let clean: Vec<(&Value, &Value)> = report.iter().map(|l| (&l["tenant"], &l["clean"])).collect();
    assert_eq!(
        clean,
        [
            (&Value::Null, &Value::Bool(true)),
            (&Value::from("acme"), &Value::Bool(true)),
            (&Value::from("globex"), &Value::Bool(false)),
        ],
        "{report:?}"
    );
}

/// What a person sees on a terminal (through `script`), or None without it.
fn on_terminal(dir: &Path, args: &[&str]) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        return None;
    }
    let quoted: Vec<String> = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let out = Command::new("script")
        .args(["-qefc", &quoted.join(" "), "/dev/null"])
        .current_dir(dir)
        .env_remove("ESKV_STORE")
        .env_remove("ESKV_TENANT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).replace('\r', ""))
}

/// A copy into a target that is not empty, in its root or in any tenant,
/// is refused before anything is written: no tenant of the source appears
/// in the target, and a tenant the target has already keeps its events.
#[test]
fn a_refused_copy_writes_no_namespace_of_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tenant_store(&d.join("t.redb"));
    let s = "redb:t.redb";

    // A root event in the target.
    ok(
        d,
        &[
            "--store",
            "redb:root.redb",
            "append",
            "--type",
            "T",
            "--data",
            "{}",
        ],
    );
    let r = fails(d, &["copy", "--from", s, "--to", "redb:root.redb"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    let info: Value = serde_json::from_str(&ok(d, &["--store", "redb:root.redb", "info"])).unwrap();
    assert_eq!(info["tenants"], serde_json::json!([]), "{info}");

    // An event in one tenant of the target, none in its root.
    ok(
        d,
        &[
            "--store",
            "redb:ten.redb",
            "--tenant",
            "other",
            "append",
            "--type",
            "T",
            "--data",
            "{}",
        ],
    );
    let r = fails(d, &["copy", "--from", s, "--to", "redb:ten.redb"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("tenant other"), "{}", r.stderr);
    let info: Value = serde_json::from_str(&ok(d, &["--store", "redb:ten.redb", "info"])).unwrap();
    assert_eq!(info["tenants"], serde_json::json!(["other"]), "{info}");
    // Nothing was marked: the target checks clean.
    ok(d, &["--store", "redb:ten.redb", "check"]);
}

/// A copy that fails in a tenant after others were written says so (exit
/// 1, the target is unfinished) and leaves a target that `check` reports
/// as damaged, never one that looks complete.
#[test]
fn a_copy_failing_after_other_namespaces_leaves_a_marked_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tenant_store(&d.join("t.redb"));
    // Tenant "zeta", copied after acme and globex, holds personal data,
    // which the copy cannot move without the store key.
    rt().block_on(async {
        let kv: Arc<dyn eskv::KvStore> =
            Arc::new(eskv::RedbStore::open(d.join("t.redb")).await.unwrap());
        let zeta = eskv::EventStore::open_with(
            Arc::new(eskv::Namespaced::new(kv, "zeta")),
            eskv::EventStoreOptions::default().store_key(eskv::StoreKey::generate()),
        )
        .await
        .unwrap();
        zeta.append(
            vec![eskv::NewEvent::new("Registered", b"{}".to_vec())
                .with_personal_data("user-1", b"Ada".to_vec())],
            None,
        )
        .await
        .unwrap();
    });
    let r = fails(d, &["copy", "--from", "redb:t.redb", "--to", "redb:c.redb"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("unfinished import"), "{}", r.stderr);
    let check = run(d, &["--store", "redb:c.redb", "check"]);
    assert_eq!(check.code, 4, "{}{}", check.stdout, check.stderr);
}

/// Commands that do not create a store never bind a namespace to the
/// store key they are given: `check`, `read`, `info` and `compact` with a
/// key on a fjall store
/// (opened for writing, unlike a read-only redb file) whose root and
/// tenant hold no personal data record no key check, so the application
/// can still take its own key there afterwards. A mistyped key used to be
/// recorded, and the right one was then refused as the wrong store key.
#[test]
fn looking_with_a_store_key_binds_no_namespace_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let typo = "ab".repeat(32);
    let right = "cd".repeat(32);
    for (i, tenant) in [None, Some("acme")].into_iter().enumerate() {
        let s = &format!("fjall:events-{i}");
        ok(d, &["--store", s, "append", "--type", "RootEvent"]);
        ok(
            d,
            &[
                "--store",
                s,
                "--tenant",
                "acme",
                "append",
                "--type",
                "TenantEvent",
            ],
        );
        ok(d, &["--store", s, "--store-key", &typo, "check"]);
        ok(d, &["--store", s, "--store-key", &typo, "info"]);
        ok(d, &["--store", s, "--store-key", &typo, "compact"]);
        let mut look = vec!["--store", s, "--store-key", &typo];
        let mut write = vec!["--store", s, "--store-key", &right];
        if let Some(t) = tenant {
            look.extend(["--tenant", t]);
            write.extend(["--tenant", t]);
        }
        assert_eq!(events(d, &[&look[..], &["read"]].concat()).len(), 1);
        ok(d, &[&look[..], &["check"]].concat());
        // The application's key is taken, and then bound: the typo is
        // refused from now on.
        ok(d, &[&write[..], &["append", "--type", "Later"]].concat());
        let refused = run(d, &[&look[..], &["read"]].concat());
        assert_eq!(refused.code, 2, "{tenant:?}: {}", refused.stderr);
        assert!(refused.stderr.contains("store key"), "{}", refused.stderr);
    }
}
