//! The systemd units and the packaged config: linted by `systemd-analyze verify` and
//! `systemd-analyze security --offline`, checked for the settings production depends on,
//! and the config checked by the real binary; and the docs and unit comments checked for
//! what tests/systemd_boot.rs sees under the real systemd (what READY=1 waits for, reload,
//! CPUAffinity= drop-ins). Needs `systemd-analyze` (Debian package
//! `systemd`, on the machine image; `.ci/run` installs it where missing): without it these
//! tests fail rather than pass silently.

mod common;

use common::repo;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const UNITS: [&str; 2] = ["ingestd.service", "ingestd@.service"];
const PACKAGED_BIN: &str = "/usr/bin/ingestd";

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(repo().join("systemd").join(name)).unwrap()
}

/// `[Section]` + `Key=Value` pairs of a unit file, comments and blank lines dropped.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not Key=Value: {line}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

fn values<'a>(unit: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

fn one<'a>(unit: &'a [(String, String, String)], key: &str) -> &'a str {
    let v = values(unit, key);
    assert_eq!(v.len(), 1, "{key}= set {} times", v.len());
    v[0]
}

/// systemd time span ("45s", "2min", "90") in milliseconds.
fn span_ms(v: &str) -> u64 {
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("time span {v:?}"));
    match &v[digits.len()..] {
        "" | "s" | "sec" => n * 1000,
        "ms" => n,
        "min" | "m" => n * 60_000,
        other => panic!("unit {other:?} in {v:?}"),
    }
}

/// Runs systemd-analyze, failing with a clear message when it is not installed.
fn systemd_analyze(args: &[&str], dir: &Path) -> Output {
    match Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze not found: install Debian's `systemd` package \
             (apt-get install systemd; .ci/run does this) to lint the units"
        ),
        Err(e) => panic!("systemd-analyze: {e}"),
    }
}

static DIR_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A copy of the unit in a fresh temp dir, with ExecStart pointing at the binary cargo
/// built: `verify` checks that ExecStart's program exists and is executable, and
/// /usr/bin/ingestd exists only once the package is installed. (`--root=` would make it
/// resolve every path, units included, under a fake root; a rewritten copy is simpler.)
fn unit_copy(name: &str, as_name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "ingestd-units-{}-{}",
        std::process::id(),
        DIR_SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let text = unit_text(name);
    let exec = format!("ExecStart={PACKAGED_BIN} ");
    assert_eq!(
        text.matches(&exec).count(),
        1,
        "{name}: one ExecStart={PACKAGED_BIN}"
    );
    let text = text.replace(
        &exec,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_ingestd")),
    );
    let path = dir.join(as_name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn check_verify(name: &str, as_name: &str) {
    let (dir, path) = unit_copy(name, as_name);
    let out = systemd_analyze(&["verify", "--man=no", path.to_str().unwrap()], &dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Warnings (unknown keys, bad values) do not change the exit code: fail on any line
    // about our unit, and print everything.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("ingestd")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {as_name} ({:?}):\n{text}",
        out.status
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn units_pass_systemd_analyze_verify() {
    check_verify("ingestd.service", "ingestd.service");
    check_verify("ingestd@.service", "ingestd@.service");
    // And an instance of the template, as `systemctl start ingestd@edge-a` loads it.
    check_verify("ingestd@.service", "ingestd@edge-a.service");
}

#[test]
fn units_have_low_exposure_in_systemd_analyze_security() {
    for name in UNITS {
        let (dir, path) = unit_copy(name, &name.replace("@.", "@x."));
        let out = systemd_analyze(
            &[
                "security",
                "--offline=yes",
                "--no-pager",
                path.to_str().unwrap(),
            ],
            &dir,
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let level = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure level:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        // 0 = fully locked down, 10 = unprotected; 1.6 when written. Network daemons that
        // must reach any broker cannot get much lower.
        assert!(level <= 2.5, "{name}: exposure {level}\n{text}");
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn units_set_what_production_needs() {
    let shutdown_ms = packaged_config()["shutdown_timeout_ms"]
        .as_integer()
        .unwrap() as u64;
    for name in UNITS {
        let u = parse_unit(&unit_text(name));
        let ctx = |what: &str| format!("{name}: {what}");
        assert_eq!(one(&u, "Type"), "notify", "{}", ctx("Type"));
        assert_eq!(one(&u, "NotifyAccess"), "main");
        let config = if name.contains('@') { "%i" } else { "ingestd" };
        assert_eq!(
            one(&u, "ExecStart"),
            format!("{PACKAGED_BIN} --config /etc/ingestd/{config}.toml")
        );
        // SIGHUP loads the TLS files again; nothing else reloads.
        assert_eq!(one(&u, "ExecReload"), "/bin/kill -HUP $MAINPID");
        assert_eq!(one(&u, "Restart"), "on-failure");
        assert_eq!(one(&u, "User"), "ingestd");
        assert_eq!(one(&u, "Group"), "ingestd");

        let nofile: u64 = one(&u, "LimitNOFILE").parse().expect("LimitNOFILE number");
        assert!(nofile >= 65_536, "{}", ctx("LimitNOFILE"));
        let memlock = one(&u, "LimitMEMLOCK");
        assert!(
            memlock == "infinity" || memlock.ends_with('M') || memlock.ends_with('G'),
            "{}: LimitMEMLOCK={memlock}: io_uring wants >= 512K per executor",
            name
        );
        assert!(!one(&u, "CPUAffinity").is_empty(), "{}", ctx("CPUAffinity"));
        let watchdog = span_ms(one(&u, "WatchdogSec"));
        assert!(
            (2_000..=120_000).contains(&watchdog),
            "{}",
            ctx("WatchdogSec")
        );
        // The graceful stop is a connection drain plus a producer flush, each bounded by
        // shutdown_timeout_ms: systemd must wait longer than both before SIGKILL.
        let stop = span_ms(one(&u, "TimeoutStopSec"));
        assert!(
            stop > 2 * shutdown_ms,
            "{name}: TimeoutStopSec {stop} ms <= 2 x shutdown_timeout_ms {shutdown_ms}"
        );

        for (k, v) in [
            ("NoNewPrivileges", "yes"),
            ("CapabilityBoundingSet", ""),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectKernelLogs", "yes"),
            ("ProtectControlGroups", "yes"),
            (
                "RestrictAddressFamilies",
                "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
            ),
            ("RestrictNamespaces", "yes"),
            ("LockPersonality", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
            ("SystemCallArchitectures", "native"),
        ] {
            assert_eq!(one(&u, k), v, "{}", ctx(k));
        }
        // io_uring allowed by name in an allow list, and nothing denies it (or the
        // sched_setaffinity executors pin themselves with, in @resources).
        let filters = values(&u, "SystemCallFilter");
        let allow: BTreeSet<&str> = filters
            .iter()
            .filter(|f| !f.starts_with('~'))
            .flat_map(|f| f.split_whitespace())
            .collect();
        for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
            assert!(
                allow.contains(call),
                "{name}: SystemCallFilter allows {call}"
            );
        }
        for deny in filters.iter().filter(|f| f.starts_with('~')) {
            for bad in [
                "io_uring",
                "@aio",
                "@resources",
                "sched_setaffinity",
                "@system-service",
            ] {
                assert!(
                    !deny.contains(bad),
                    "{name}: SystemCallFilter={deny} denies {bad}"
                );
            }
        }
    }

    // The template differs from the main unit only where it must.
    let strip = |name: &str| -> Vec<(String, String, String)> {
        parse_unit(&unit_text(name))
            .into_iter()
            .filter(|(_, k, _)| k != "Description" && k != "ExecStart" && k != "StateDirectory")
            .collect()
    };
    assert_eq!(
        strip("ingestd.service"),
        strip("ingestd@.service"),
        "keep the two units in step"
    );
}

fn packaged_config() -> toml::Table {
    std::fs::read_to_string(repo().join("packaging/ingestd.toml"))
        .unwrap()
        .parse()
        .expect("packaging/ingestd.toml is TOML")
}

/// `ingestd --check-config [--config FILE]` with no INGESTD_* variables around.
fn check_config(config: Option<&Path>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingestd"));
    cmd.arg("--check-config");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("INGESTD_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "ingestd --check-config {config:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn packaged_config_passes_check_config_and_lists_every_key_with_its_default() {
    let path = repo().join("packaging/ingestd.toml");
    // The effective values, without the comments that say where each came from.
    let values = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split("  # ").next().unwrap().to_string())
            .collect()
    };
    let packaged = check_config(Some(&path));
    let defaults = check_config(None);
    // The one deliberate difference: the package turns the durable spool on, in the
    // unit's StateDirectory= (off by default: no directory to assume).
    let spool = r#"spool_dir = "/var/lib/ingestd/spool""#;
    let mut packaged_values = values(&packaged);
    let before = packaged_values.len();
    packaged_values.retain(|l| l != spool);
    assert_eq!(
        before,
        packaged_values.len() + 1,
        "the package sets {spool}"
    );
    assert_eq!(
        packaged_values,
        values(&defaults),
        "packaging/ingestd.toml must state the built-in defaults"
    );
    for unit in ["ingestd.service", "ingestd@.service"] {
        let text = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
        assert!(
            text.contains("\nStateDirectory=ingestd"),
            "{unit}: StateDirectory="
        );
    }
    // Every field of Config (as --check-config prints it) appears in the file, set or
    // commented out.
    let fields: BTreeSet<&str> = defaults
        .lines()
        .take_while(|l| *l != "[kafka]")
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(fields.len() > 20, "{fields:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let keys: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches('#');
            if l == "[kafka]" {
                return Some("kafka".to_string());
            }
            let (k, _) = l.split_once(" = ")?;
            Some(k.to_string())
        })
        .collect();
    let missing: Vec<&&str> = fields.iter().filter(|f| !keys.contains(**f)).collect();
    assert!(
        missing.is_empty(),
        "packaging/ingestd.toml lacks {missing:?}"
    );
}

/// What READY=1 waits for, said the same way in every place that says it: both units'
/// comments, README.md, docs/OPERATING.md and src/notify.rs (compared without comment
/// markers, backticks and line breaks). tests/systemd_boot.rs checks it under systemd.
const READY_STATEMENT: &str = "READY=1, and with it the return of systemctl start, \
    comes once every executor listens and, with a spool (spool_dir, set in the packaged \
    config), each executor's first spool segment is ready: it does not wait for the \
    broker, because the spool takes records (201/202) while the broker is away. Without a \
    spool it also waits for the broker's metadata and the producer's idempotent producer \
    id; a broker that stays unreachable then fails the start after TimeoutStartSec=.";

/// Text as read: comment markers at line starts, backticks and runs of whitespace removed.
fn prose(text: &str) -> String {
    let words: Vec<&str> = text
        .lines()
        .map(|l| {
            let l = l.trim_start();
            ["//!", "///", "//", "#"]
                .iter()
                .find_map(|m| l.strip_prefix(m))
                .unwrap_or(l)
        })
        .flat_map(str::split_whitespace)
        .collect();
    words.join(" ").replace('`', "")
}

#[test]
fn docs_and_unit_comments_say_what_ready_waits_for_in_one_statement() {
    let statement = prose(READY_STATEMENT);
    let mut missing = Vec::new();
    for file in [
        "systemd/ingestd.service",
        "systemd/ingestd@.service",
        "README.md",
        "docs/OPERATING.md",
        "src/notify.rs",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        if !prose(&text).contains(&statement) {
            missing.push(file);
        }
    }
    assert!(
        missing.is_empty(),
        "{missing:?} do not say what READY=1 waits for as the others do:\n{READY_STATEMENT}"
    );
    // And nothing says the old, spool-less story unconditionally.
    for unit in UNITS {
        let text = prose(&unit_text(unit));
        assert!(
            !text.contains("READY=1 waits for it")
                && !text.contains("READY=1 is sent once every executor listens and the broker's metadata is known"),
            "{unit}: a comment says READY=1 always waits for the broker"
        );
    }
}

/// Offsets of `CPUAffinity=` assignments in `text` that reset the set (empty value).
fn resets(text: &str) -> usize {
    text.match_indices("CPUAffinity=")
        .filter(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace())
        })
        .count()
}

/// Every example that narrows CPUAffinity= (in the units' comments and docs/OPERATING.md)
/// resets it first: systemd merges CPUAffinity= lines, so a drop-in with only
/// `CPUAffinity=2-3` adds to the unit's 0-1023 and narrows nothing.
#[test]
fn cpu_affinity_examples_reset_the_units_set_first() {
    let mut bad = Vec::new();
    let mut files: Vec<(String, String, bool)> = UNITS
        .iter()
        .map(|u| (format!("systemd/{u}"), unit_text(u), true))
        .collect();
    files.push((
        "docs/OPERATING.md".into(),
        std::fs::read_to_string(repo().join("docs/OPERATING.md")).unwrap(),
        false,
    ));
    let mut examples = 0;
    for (name, text, comments_only) in &files {
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if *comments_only && !line.starts_with('#') {
                continue;
            }
            for (at, m) in line.match_indices("CPUAffinity=") {
                if !line[at + m.len()..].starts_with(|c: char| c.is_ascii_digit()) {
                    continue;
                }
                examples += 1;
                let before = format!(
                    "{}\n{}",
                    lines[n.saturating_sub(3)..n].join("\n"),
                    &line[..at]
                );
                if resets(&before) == 0 {
                    bad.push(format!("{name}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(examples >= 3, "found only {examples} CPUAffinity= examples");
    assert!(
        bad.is_empty(),
        "CPUAffinity= examples without an empty `CPUAffinity=` line before them (systemd \
         merges the lines, so these narrow nothing):\n{}",
        bad.join("\n")
    );
}

#[test]
fn operating_md_says_reload_loads_the_tls_files() {
    let text = std::fs::read_to_string(repo().join("docs/OPERATING.md")).unwrap();
    for wrong in [
        "no config reload",
        "no `ExecReload=`",
        "`systemctl reload`\nfails",
    ] {
        assert!(
            !text.contains(wrong),
            "docs/OPERATING.md says {wrong:?}, but both units have ExecReload= (SIGHUP \
             loads the TLS files again) and tests/systemd_boot.rs reloads"
        );
    }
    assert!(
        text.contains("systemctl reload ingestd"),
        "docs/OPERATING.md does not say what `systemctl reload ingestd` does"
    );
}
