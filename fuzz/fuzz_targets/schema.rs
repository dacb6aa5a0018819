//! Fuzz target for the one-pass schema judge (`ingestd::schema::flat`, behind
//! `Compiled::check`): it may only ever say "surely valid", so whatever it accepts the
//! full path (`check_full`: serde_json on the tape, then jsonschema) must accept too.
//!
//! The first input byte picks one of the schemas below (each in the one-pass form; one
//! of them is `perf/schemas.sh`'s), the rest is the record.
#![no_main]

use ingestd::schema::Compiled;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SCHEMAS: [&str; 4] = [
    r#"{"type":"object","required":["id","customer","price","qty","note"],
        "properties":{"id":{"type":"string","maxLength":64},
        "customer":{"type":"string","minLength":1},"price":{"type":"number","minimum":0},
        "qty":{"type":"integer","minimum":1},"note":{"type":"string"}}}"#,
    r#"{"$schema":"http://json-schema.org/draft-07/schema#","type":"object",
        "additionalProperties":false,"required":["a"],
        "properties":{"a":{"type":["integer","null"],"exclusiveMinimum":-2.5,"maximum":1e3},
        "b":{"type":"object","properties":{"c":{"type":"boolean"}},"required":["c"]},
        "id":{"type":"array"},"note":{"maxLength":3,"minLength":2}}}"#,
    r#"{"type":["string","number","object"],"minLength":2,"exclusiveMaximum":10,
        "exclusiveMinimum":-2}"#,
    r#"{"properties":{"qty":{"type":"integer","maximum":9007199254740992},
        "price":{"type":"number","exclusiveMaximum":0.1,"minimum":-1e15}}}"#,
];

fn compiled() -> &'static [Compiled] {
    static C: OnceLock<Vec<Compiled>> = OnceLock::new();
    C.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|s| {
                let c = Compiled::from_schema(&serde_json::from_str(s).unwrap()).unwrap();
                assert!(c.has_flat(), "{s}");
                c
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, record)) = data.split_first() else {
        return;
    };
    let c = &compiled()[pick as usize % SCHEMAS.len()];
    if c.check(record).is_ok() {
        assert!(
            c.check_full(record).is_ok(),
            "the one-pass judge accepts {:?}, the full path does not",
            String::from_utf8_lossy(record)
        );
    }
});
