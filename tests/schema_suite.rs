//! The official JSON Schema Test Suite through ingestd's schema compiler
//! (`schema::Compiled::from_schema`: formats on, patterns on the `regex` engine, no
//! retrieval of remote references), each test judged as a `serde_json::Value`, from its
//! bytes on the tape (`schema::tape`), and as records are judged (`check`: in one pass
//! where the schema allows, `schema::flat`; the test counts those), for the drafts the
//! README documents: 2020-12 and
//! draft-07, every required keyword file plus the formats we name. The suite comes from
//! `tests/schema-suite.sh` (tests/run.sh fetches it; `INGESTD_TEST_SCHEMA_SUITE` points here).
//!
//! What ingestd does not do is listed in `NOT_SUPPORTED` with the reason, and the test
//! fails if any of those starts passing (the list must stay true) or anything else fails.

use ingestd::schema::Compiled;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What ingestd does differently from the suite, by draft (`draft2020-12`; "" for all)
/// and the start of a failure's line (`file` or `file: case`), and why. Each entry must
/// match a failure of its draft (a stale one fails the test), and every failure an entry.
const NOT_SUPPORTED: &[(&str, &str, &str)] = &[
    (
        "",
        "refRemote.json",
        "remote $ref: ingestd retrieves nothing (schemas are self-contained files)",
    ),
    (
        "",
        "dynamicRef.json: strict-tree schema",
        "its $ref is remote (http://localhost:1234): no retrieval",
    ),
    (
        "",
        "dynamicRef.json: tests for implementation dynamic anchor",
        "remote $ref: no retrieval",
    ),
    (
        "",
        "dynamicRef.json: $ref and $dynamicAnchor are independent of order",
        "remote $ref: no retrieval",
    ),
    (
        "",
        "dynamicRef.json: $ref to $dynamicRef finds detached",
        "remote $ref: no retrieval",
    ),
    (
        "",
        "vocabulary.json",
        "custom meta-schemas are remote documents: no retrieval",
    ),
    (
        "draft2020-12",
        "format.json",
        "ingestd asserts formats (the README says so); the suite's default treats them as annotations",
    ),
];

fn suite() -> PathBuf {
    let dir = std::env::var_os("INGESTD_TEST_SCHEMA_SUITE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/ingestd/json-schema-test-suite-4.26.0"))
        })
        .unwrap();
    assert!(
        dir.join(".complete").exists(),
        "the JSON Schema Test Suite is not at {}: run tests/run.sh, or tests/schema-suite.sh",
        dir.display()
    );
    dir.join("tests")
}

/// Runs one suite file: (passed, passed in one pass, failures as "file: case: test").
/// `draft`: the `$schema` a file of that draft would name (the suite leaves it to the
/// runner; ingestd takes the draft from the file, 2020-12 without one).
fn run_file(path: &Path, name: &str, draft: &str) -> (usize, usize, Vec<String>) {
    let groups: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let (mut passed, mut flat, mut failed) = (0, 0, Vec::new());
    for g in groups.as_array().unwrap() {
        let case = g["description"].as_str().unwrap_or("");
        let mut schema = g["schema"].clone();
        if let Some(o) = schema.as_object_mut() {
            o.entry("$schema").or_insert_with(|| draft.into());
        }
        let compiled = Compiled::from_schema(&schema);
        for t in g["tests"].as_array().unwrap() {
            let want = t["valid"].as_bool().unwrap();
            // Every representation: the `Value` (errors), the tape, and `check`.
            let bytes = serde_json::to_vec(&t["data"]).unwrap();
            let got = compiled.as_ref().map(|c| {
                (
                    c.is_valid(&t["data"]),
                    c.check_full(&bytes).is_ok(),
                    c.check(&bytes).is_ok(),
                )
            });
            if got == Ok((want, want, want)) {
                passed += 1;
                flat += usize::from(compiled.as_ref().is_ok_and(|c| c.has_flat()));
            } else {
                let d = t["description"].as_str().unwrap_or("");
                failed.push(format!(
                    "{name}: {case}: {d} (want {want}, got (value, tape, check) {got:?})"
                ));
            }
        }
    }
    (passed, flat, failed)
}

fn run_draft(draft: &str, uri: &str, formats: &[&str]) {
    let root = suite().join(draft);
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            (p, n)
        })
        .collect();
    for f in formats {
        let n = format!("optional/format/{f}.json");
        files.push((root.join(&n), n));
    }
    files.sort();
    let (mut passed, mut flat, mut failed) = (0, 0, Vec::new());
    let ours: Vec<_> = NOT_SUPPORTED
        .iter()
        .filter(|(d, _, _)| d.is_empty() || *d == draft)
        .map(|(_, n, _)| *n)
        .collect();
    let mut matched = vec![false; ours.len()];
    for (path, name) in &files {
        let (p, n, f) = run_file(path, name, uri);
        passed += p;
        flat += n;
        for line in f {
            match ours.iter().position(|n| line.starts_with(n)) {
                Some(i) => matched[i] = true,
                None => failed.push(line),
            }
        }
    }
    let present = |n: &str| files.iter().any(|(_, f)| n.starts_with(f.as_str()));
    let unsupported_ok: Vec<_> = ours
        .iter()
        .zip(&matched)
        .filter(|(n, m)| !**m && present(n))
        .map(|(n, _)| *n)
        .collect();
    eprintln!(
        "{draft}: {passed} tests passed in {} files ({flat} under schemas judged in one pass)",
        files.len()
    );
    assert!(
        failed.is_empty(),
        "{draft}: {} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(
        unsupported_ok.is_empty(),
        "listed as not supported but passing: {unsupported_ok:?}"
    );
    assert!(passed > 500, "{draft}: only {passed} tests ran");
    assert!(
        flat > 100,
        "{draft}: only {flat} tests under one-pass schemas"
    );
}

/// The formats the README names (draft-07 has no `uuid`).
const FORMATS: &[&str] = &[
    "email",
    "date-time",
    "date",
    "time",
    "ipv4",
    "ipv6",
    "hostname",
    "uri",
];

#[test]
fn draft_2020_12() {
    let mut f = FORMATS.to_vec();
    f.push("uuid");
    run_draft(
        "draft2020-12",
        "https://json-schema.org/draft/2020-12/schema",
        &f,
    );
}

#[test]
fn draft_07() {
    run_draft("draft7", "http://json-schema.org/draft-07/schema#", FORMATS);
}
