use super::judge::Judge;
use super::*;
use crate::config::TopicConfig;

fn schema_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ingestd-schema-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn compiled(name: &str, text: &str) -> Result<Arc<Compiled>, String> {
    Compiled::load(&schema_file(name, text), None)
}

const ORDER: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["id", "price"],
  "properties": {
    "id": {"type": "string", "pattern": "^o-[0-9]+$"},
    "price": {"type": "number", "minimum": 0},
    "email": {"type": "string", "format": "email"},
    "items": {"type": "array", "items": {"type": "integer"}}
  }
}"#;

#[test]
fn records_are_judged_with_a_pointer_to_the_field() {
    let c = compiled("order.json", ORDER).unwrap();
    assert_eq!(c.check(br#"{"id":"o-1","price":3}"#), Ok(()));
    let Err(Bad::Invalid { path, reason }) = c.check(br#"{"id":"o-1","price":"3"}"#) else {
        panic!()
    };
    assert_eq!(path, "/price");
    assert!(reason.contains("number"), "{reason}");
    let Err(Bad::Invalid { path, .. }) = c.check(br#"{"id":"o-1","price":1,"items":[1,"x"]}"#)
    else {
        panic!()
    };
    assert_eq!(path, "/items/1");
    // Formats are checked.
    assert!(c
        .check(br#"{"id":"o-1","price":1,"email":"nope"}"#)
        .is_err());
    assert_eq!(
        c.check(br#"{"id":"o-1","price":1,"email":"a@b.example"}"#),
        Ok(())
    );
    // A missing field: the pointer is the object's.
    let Err(Bad::Invalid { path, reason }) = c.check(br#"{"id":"o-1"}"#) else {
        panic!()
    };
    assert_eq!(path, "");
    assert!(reason.contains("price"), "{reason}");
    assert!(matches!(c.check(b"{\"id\":"), Err(Bad::NotJson(_))));
}

#[test]
fn draft_07_is_taken_from_its_schema_keyword() {
    let c = compiled(
        "d7.json",
        r#"{"$schema":"http://json-schema.org/draft-07/schema#","type":"array","items":[{"type":"string"}],"additionalItems":false}"#,
    )
    .unwrap();
    assert_eq!(c.check(br#"["a"]"#), Ok(()));
    assert!(
        c.check(br#"["a", 1]"#).is_err(),
        "additionalItems is draft-07's"
    );
}

#[test]
fn a_bad_schema_file_is_named_with_its_position() {
    let e = compiled("syntax.json", "{\n  \"type\": \"object\",\n  oops\n}")
        .err()
        .unwrap();
    assert!(e.contains("syntax.json") && e.contains("line 3"), "{e}");
    let e = compiled("type.json", r#"{"properties":{"a":{"type":5}}}"#)
        .err()
        .unwrap();
    assert!(
        e.contains("type.json") && e.contains("/properties/a/type"),
        "{e}"
    );
    let e = Compiled::load(Path::new("/nonexistent/s.json"), None)
        .err()
        .unwrap();
    assert!(e.contains("/nonexistent/s.json"), "{e}");
}

#[test]
fn hostile_schemas_and_bodies_take_bounded_time() {
    // A catastrophic pattern on a backtracking engine; linear on `regex`.
    let c = compiled("redos.json", r#"{"type":"string","pattern":"^(a+)+$"}"#).unwrap();
    let evil = format!("\"{}!\"", "a".repeat(100_000));
    let t = std::time::Instant::now();
    assert!(c.check(evil.as_bytes()).is_err());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    // Look-around needs backtracking: refused when the schema loads.
    assert!(compiled("look.json", r#"{"pattern":"(?=a)a"}"#).is_err());
    // A $ref cycle that consumes nothing.
    let c = compiled(
        "cycle.json",
        r##"{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}"##,
    );
    // It compiles, and judging with it returns (a loop here would stall the executor).
    assert_eq!(c.unwrap().check(br#"{"x":1}"#), Ok(()));
    // A recursive schema over a deep body: serde_json stops at 128 levels.
    let c = compiled("tree.json", r##"{"type":"array","items":{"$ref":"#"}}"##).unwrap();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(c.check(deep.as_bytes()), Err(Bad::NotJson(_))));
    let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
    assert_eq!(c.check(ok.as_bytes()), Ok(()));
    // Huge numbers are numbers.
    let c = compiled("num.json", r#"{"type":"number","maximum":10}"#).unwrap();
    // Beyond f64: not JSON serde_json can hold, refused as such (400), never a panic.
    assert!(c.check(b"1e400").is_err());
    assert!(c.check(&[b'9'; 5000]).is_err());
    assert_eq!(c.check(b"1e-400"), Ok(()));
    // A reason quoting a megabyte of value is clipped.
    let c = compiled("short.json", r#"{"type":"number"}"#).unwrap();
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    let Err(Bad::Invalid { reason, .. }) = c.check(big.as_bytes()) else {
        panic!()
    };
    assert!(reason.len() < 300);
}

#[test]
fn an_unchanged_file_keeps_its_validator_over_a_reload() {
    let f = schema_file("same.json", ORDER);
    let a = Compiled::load(&f, None).unwrap();
    let b = Compiled::load(&f, Some(&a)).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    std::fs::write(&f, r#"{"type":"string"}"#).unwrap();
    let c = Compiled::load(&f, Some(&a)).unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    assert_ne!(a.hash, c.hash);
}

#[test]
fn a_request_is_judged_record_by_record_and_reported() {
    let mut cfg = Config::default();
    cfg.topic.insert(
        "orders".into(),
        TopicConfig {
            schema: Some(schema_file("orders.json", ORDER)),
            ..TopicConfig::default()
        },
    );
    let s = Schemas::build(&cfg, 2, None).unwrap();
    let t = s.get(b"orders").unwrap();
    assert!(s.get(b"other").is_none());
    let mut j = Judge::new(t);
    j.record(None, br#"{"id":"o-1","price":1}"#);
    j.record(None, br#"{"id":"x","price":1}"#);
    j.record(None, br#"{"id":"o-3","price":-1}"#);
    assert_eq!(j.valid(), 1);
    let body = report::body(422, 42201, "orders", j.records, &j.problems);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error_code"], 42201);
    assert_eq!(v["invalid_records"], 2);
    assert_eq!(v["records"], 3);
    assert_eq!(v["errors"][0]["record"], 1);
    assert_eq!(v["errors"][0]["path"], "/id");
    assert_eq!(v["errors"][1]["record"], 2);
    assert_eq!(v["errors"][1]["path"], "/price");
    assert!(v["message"].as_str().unwrap().contains("2 of 3"));
    // At most LISTED entries, the total always.
    let many: Vec<_> = (0..50).map(|_| j.problems[0].clone()).collect();
    let v: Value = serde_json::from_slice(&report::body(422, 42201, "orders", 50, &many)).unwrap();
    assert_eq!(v["errors"].as_array().unwrap().len(), report::LISTED);
    assert_eq!(v["invalid_records"], 50);
    // Counters carry over a rebuild.
    t.count(1, VALID, 3);
    let s2 = Schemas::build(&cfg, 2, Some(&s)).unwrap();
    assert_eq!(s2.get(b"orders").unwrap().total(VALID), 3);
}

#[test]
fn keys_are_judged_by_the_key_schema() {
    let mut cfg = Config::default();
    cfg.topic.insert(
        "k".into(),
        TopicConfig {
            key_schema: Some(schema_file("key.json", r#"{"type":"integer"}"#)),
            ..TopicConfig::default()
        },
    );
    let s = Schemas::build(&cfg, 1, None).unwrap();
    let mut j = Judge::new(s.get(b"k").unwrap());
    j.record(Some(b"12"), b"anything");
    j.record(None, b"no key: not judged");
    j.record(Some(b"\"a\""), b"v");
    assert_eq!(j.problems.len(), 1);
    assert_eq!(j.problems[0].record, 2);
    assert!(j.problems[0].key);
}

#[test]
fn the_tape_judges_nested_values_escapes_and_names_like_a_value() {
    let c = compiled(
        "tape.json",
        r#"{"type":"object","required":["b"],"propertyNames":{"maxLength":3},
            "properties":{"a":{"type":"array","items":{"type":"object","required":["x"]}},
                          "b":{"const":"q\"r"},"c":{"uniqueItems":true}}}"#,
    )
    .unwrap();
    // A member after a nested subtree is found; an escaped string (owned on the tape)
    // compares equal; uniqueItems reads values.
    assert_eq!(
        c.check(br#"{"a":[{"x":1},{"x":[1,{"y":2}]}],"b":"q\"r","c":[1,"1",[1]]}"#),
        Ok(())
    );
    let Err(Bad::Invalid { path, .. }) = c.check(br#"{"a":[{"x":1},{"y":2}],"b":"q\"r"}"#) else {
        panic!()
    };
    assert_eq!(path, "/a/1");
    assert!(
        c.check(br#"{"b":"q\"r","abcd":1}"#).is_err(),
        "propertyNames"
    );
    assert!(c.check(br#"{"b":"qr"}"#).is_err(), "const");
    assert!(
        c.check(br#"{"b":"q\"r","c":[{"k":1},{"k":1}]}"#).is_err(),
        "uniqueItems"
    );
    // Trailing bytes after the value are not JSON.
    assert!(matches!(
        c.check(br#"{"b":"q\"r"} x"#),
        Err(Bad::NotJson(_))
    ));
}

/// Schemas the one-pass form (`flat.rs`) takes, each with a record it accepts (records are
/// that one, mutated): it may say "surely valid" only where the full path says valid too.
const FLAT_SCHEMAS: [(&str, &str); 6] = [
    (
        r#"{"type":"object","required":["id","customer","price","qty","note"],
        "properties":{"id":{"type":"string","maxLength":64},
        "customer":{"type":"string","minLength":1},"price":{"type":"number","minimum":0},
        "qty":{"type":"integer","minimum":1},"note":{"type":"string"}}}"#,
        r#"{"id":"o-1","customer":"c","price":1234.5,"qty":3,"note":"nnn"}"#,
    ),
    (
        r#"{"$schema":"http://json-schema.org/draft-07/schema#","type":"object",
        "additionalProperties":false,"required":["a"],
        "properties":{"a":{"type":["integer","null"],"exclusiveMinimum":-2.5,"maximum":1e3},
        "b":{"type":"object","properties":{"c":{"type":"boolean"}},"required":["c"]},
        "id":{"type":"array"},"note":{"maxLength":3,"minLength":2}}}"#,
        r#"{"a":1,"b":{"c":true},"id":[],"note":"xy"}"#,
    ),
    (
        r#"{"type":["string","number","object"],"minLength":2,"exclusiveMaximum":10,
        "exclusiveMinimum":-2}"#,
        r#"{"x":1,"id":"abc"}"#,
    ),
    (
        r#"{"properties":{"price":{"type":"number","exclusiveMaximum":0.1,"minimum":-1e15}},
        "title":"t","description":"d"}"#,
        r#"{"price":0.05,"x":[1,{"y":null}]}"#,
    ),
    (
        r#"{"type":"object","properties":{"qty":{"type":"integer","maximum":9007199254740992},
        "note":true,
        "id":{"type":"string","minLength":0,"maxLength":0}},"required":["zz","qty"]}"#,
        r#"{"zz":{},"qty":-7,"id":""}"#,
    ),
    (
        r#"{"$schema":"https://json-schema.org/draft/2019-09/schema","type":"object",
        "properties":{"a":{"type":"object","additionalProperties":false,
        "properties":{"a":{"type":"number","minimum":0.30000000000000004}}}}}"#,
        r#"{"a":{"a":0.5},"b":"é"}"#,
    ),
];

/// Pieces mutations use: keys the schemas know, values at every edge the fast path
/// decides (escapes, non-ASCII, numbers near limits and beyond exact, bad grammar).
const KEYS: [&str; 12] = [
    "id", "customer", "price", "qty", "note", "a", "b", "c", "zz", "x", "i\\u0064", "é",
];
const VALUES: [&str; 62] = [
    "9007199254740992",
    "9007199254740993",
    "0",
    "-0",
    "1",
    "3",
    "-2",
    "-2.5",
    "-2.4",
    "1000",
    "1000.0",
    "1e3",
    "1E3",
    "1001",
    "0.1",
    "0.10",
    "1e-1",
    "0.30000000000000004",
    "0.3",
    "0.30000000000000003",
    "10",
    "9.999999999999999",
    "123456789012345",
    "1234567890123456",
    "12345678901234567890",
    "1e22",
    "1e23",
    "1e-22",
    "2.0e0",
    "0e999",
    "-1e15",
    "-1000000000000001",
    "1.",
    "01",
    "-",
    ".5",
    "1e",
    "+1",
    "\"\"",
    "\"x\"",
    "\"xy\"",
    "\"xyz\"",
    "\"wxyz\"",
    "\"é\"",
    "\"éé\"",
    "\"a\\\"b\"",
    "\"\\u00e9\"",
    "\"a\tb\"",
    "\"\u{7f}\"",
    "true",
    "false",
    "null",
    "tru",
    "nul",
    "[]",
    "[1,[2,{}]]",
    "[1,]",
    "{}",
    "{\"c\":true}",
    "{\"c\":1}",
    "{\"c\":true,\"c\":false}",
    "{\"c\":true,}",
];
const GLUE: [&str; 7] = [",", " , ", "\n,\t", ",,", ":", "", ", "];

#[test]
fn the_one_pass_form_never_accepts_what_the_full_path_refuses() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for (text, base) in FLAT_SCHEMAS {
        let schema: Value = serde_json::from_str(text).unwrap();
        let c = Compiled::from_schema(&schema).unwrap();
        let flat = c
            .flat
            .as_ref()
            .unwrap_or_else(|| panic!("no one-pass form: {text}"));
        assert!(flat.surely_valid(base.as_bytes()), "{base} under {text}");
        let Value::Object(m) = serde_json::from_str(base).unwrap() else {
            panic!()
        };
        let (mut fast, mut valid) = (0, 0);
        for _ in 0..30_000 {
            let mut members: Vec<(String, String)> = m
                .iter()
                .map(|(k, v)| (format!("\"{k}\""), v.to_string()))
                .collect();
            for _ in 0..rand(3) {
                let i = rand(members.len().max(1));
                let k = format!("\"{}\"", KEYS[rand(KEYS.len())]);
                let v = VALUES[rand(VALUES.len())].to_string();
                match rand(5) {
                    0 if !members.is_empty() => members[i].1 = v,
                    1 if !members.is_empty() => drop(members.remove(i)),
                    2 => members.insert(i.min(members.len()), (k, v)),
                    3 if !members.is_empty() => members.push(members[i].clone()),
                    _ => members.push((k, v)),
                }
            }
            let mut r = [" {", "{", "{\n"][rand(3)].to_string();
            for (n, (k, v)) in members.iter().enumerate() {
                if n > 0 {
                    r.push_str(if rand(4) == 0 {
                        GLUE[rand(GLUE.len())]
                    } else {
                        ","
                    });
                }
                r.push_str(k);
                r.push_str(if rand(20) == 0 {
                    ""
                } else {
                    [":", " : "][rand(2)]
                });
                r.push_str(v);
            }
            r.push_str(if rand(20) == 0 {
                ["", "}}", "]", "} x"][rand(4)]
            } else {
                "}"
            });
            if rand(8) == 0 {
                r = VALUES[rand(VALUES.len())].to_string();
            }
            let full = c.check_full(r.as_bytes()).is_ok();
            assert_eq!(c.check(r.as_bytes()).is_ok(), full, "{r:?} under {text}");
            if let Ok(v) = serde_json::from_str::<Value>(&r) {
                assert_eq!(c.is_valid(&v), full, "{r:?} under {text}");
            }
            if full {
                valid += 1;
                fast += usize::from(flat.surely_valid(r.as_bytes()));
            }
        }
        // It must also be the path valid records take, or it saves nothing.
        assert!(valid > 1_000, "{valid} valid records under {text}");
        assert!(
            fast * 10 > valid * 7,
            "{fast} of {valid} judged in one pass: {text}"
        );
    }
}

#[test]
fn schemas_outside_the_one_pass_form_keep_the_full_path() {
    for text in [
        ORDER, // pattern, format, items
        r#"{"$schema":"http://json-schema.org/draft-04/schema#","type":"integer"}"#,
        r#"{"type":"object","properties":{"a":{"enum":[1,2]}}}"#,
        r#"{"type":"object","additionalProperties":false,"required":["a"]}"#,
        r#"{"type":"object","properties":{"a":{"minimum":1,"exclusiveMinimum":0}}}"#,
        r#"{"minimum":18014398509481984}"#,
        r#"{"$defs":{},"type":"string"}"#,
    ] {
        let c = Compiled::from_schema(&serde_json::from_str(text).unwrap()).unwrap();
        assert!(!c.has_flat(), "{text}");
    }
}
