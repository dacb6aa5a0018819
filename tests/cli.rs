//! What the binary tells its operator before it serves: `--check-config` output (secrets
//! redacted, every value's source), errors that name the key and where it was set, and
//! the refusal to share a port with another running instance.

mod common;

use common::Ingestd;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn ingestd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingestd"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ingestd")
}

/// A file in the temp dir, removed when the test is done with it.
struct Temp(String);

impl std::ops::Deref for Temp {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl std::fmt::Display for Temp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn file(name: &str, text: &str) -> Temp {
    let p = std::env::temp_dir().join(format!("ingestd-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    Temp(p.to_string_lossy().into_owned())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_prints_toml_with_sources_and_no_secrets() {
    let tokens = file("tokens", "# ops team\nfile-token-7f3a\n");
    let cfg = file(
        "sasl.toml",
        &format!(
            r#"listen = "127.0.0.1:18080"
auth_tokens = ["inline-token-91c2"]
auth_token_file = "{tokens}"

[kafka]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "ingestd"
"sasl.password" = "hunter2-pw"
"#
        ),
    );
    let o = ingestd(
        &["--check-config", "--config", &cfg, "--executors", "1"],
        &[("INGESTD_ACK_TIMEOUT_MS", "2500")],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{out}", stderr(&o));
    for secret in ["hunter2-pw", "inline-token-91c2", "file-token-7f3a"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(out.contains(r#""sasl.password" = "<redacted>""#), "{out}");
    assert!(
        out.contains(r#"auth_tokens = ["<redacted>", "<redacted>"]"#),
        "{out}"
    );
    // Each value says where it came from: file and line, variable, flag, default.
    assert!(
        out.contains(&format!(r#"listen = "127.0.0.1:18080"  # {cfg}:1"#)),
        "{out}"
    );
    assert!(
        out.contains(&format!(r#""sasl.username" = "ingestd"  # {cfg}:8"#)),
        "{out}"
    );
    assert!(
        out.contains("ack_timeout_ms = 2500  # environment INGESTD_ACK_TIMEOUT_MS"),
        "{out}"
    );
    assert!(out.contains("executors = 1  # flag --executors"), "{out}");
    assert!(out.contains("max_body_bytes = 1048576  # default"), "{out}");
    // And it is TOML: the output parses (comments and all).
    out.parse::<toml::Table>().expect("valid TOML");
}

/// Flags, environment, and what the error must say.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn errors_name_the_key_and_where_it_was_set() {
    let bad = file("bad.toml", "ack = \"kafka\"\nmax_body_bytes = \"big\"\n");
    let o = ingestd(&["--check-config", "--config", &bad], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains(bad.as_str()) && e.contains("line 2") && e.contains("max_body_bytes"),
        "{e}"
    );

    let o = ingestd(&["--check-config"], &[("INGESTD_LISTN", "x")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("INGESTD_LISTN"), "{}", stderr(&o));

    let o = ingestd(&["--check-config"], &[("INGESTD_MAX_BODY_BYTES", "big")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("INGESTD_MAX_BODY_BYTES"),
        "{}",
        stderr(&o)
    );

    let o = ingestd(&["--check-config", "--executors", "many"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--executors"), "{}", stderr(&o));

    // Values that used to pass the check and then fail or misbehave at start.
    let cases: [Case; 5] = [
        (
            &["--executors", "64"],
            &[],
            &["executors", "flag --executors"],
        ),
        (
            &[],
            &[("INGESTD_CPUS", "0,4096"), ("INGESTD_EXECUTORS", "2")],
            &["cpus", "4096", "INGESTD_CPUS"],
        ),
        (
            &[],
            &[("INGESTD_LOG_LEVEL", "[[[")],
            &["log_level", "INGESTD_LOG_LEVEL"],
        ),
        (
            &[],
            &[("INGESTD_KAFKA", r#"{ "lingr.ms" = 5 }"#)],
            &[
                "kafka.lingr.ms",
                "No such configuration property",
                "INGESTD_KAFKA",
            ],
        ),
        (
            &[],
            &[("INGESTD_KAFKA", r#"{ "acks" = "sometimes" }"#)],
            &["kafka.acks", "INGESTD_KAFKA"],
        ),
    ];
    for (args, env, want) in cases {
        let mut a = vec!["--check-config"];
        a.extend_from_slice(args);
        let o = ingestd(&a, env);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {e}");
        for w in want {
            assert!(e.contains(w), "{args:?} {env:?}: {w:?} not in {e}");
        }
    }
}

#[test]
fn a_second_instance_on_a_busy_address_refuses_to_start() {
    let first = Ingestd::start(&["--brokers", "embedded", "--executors", "1"]);
    let addr = first.addr.to_string();
    let args = [
        "--brokers",
        "embedded",
        "--executors",
        "1",
        "--listen",
        &addr,
    ];
    let o = ingestd(&args, &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("already listens on") && e.contains(&addr), "{e}");
    // A rolling upgrade asks for the hand-over explicitly.
    let mut second = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .args(args)
        .arg("--takeover")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(second.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), format!("ingestd listening on {addr}"));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    let t0 = std::time::Instant::now();
    while second.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "second did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
