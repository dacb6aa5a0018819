//! JWT bearer tokens end to end against tansu: a JWKS file and an issuer in the config,
//! tokens signed with the test keys of tests/data/jwt (RS256, ES256, EdDSA). Valid ones
//! write as their tenant (narrowed by the topics claim); expired, not yet valid, wrong
//! issuer or audience, unknown keys, `alg: none` and HS256 "signed" with the public key
//! are 401; a key rotation in the JWKS file takes effect on SIGHUP, on open connections.

mod common;

use common::http::{post, Client};
use common::jwt::now;
use common::{broker, read_topic, wait_until, Ingestd};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ISSUER: &str = "https://auth.test";

fn data(name: &str) -> PathBuf {
    common::repo().join("tests/data/jwt").join(name)
}

/// A token signed with test key `kid` (`rs256-a`, `es256-a`, `ed25519-a`, `rs256-b`, or
/// a rogue one), claims merged over valid defaults for the tenant `web`.
fn token(kid: &str, extra: serde_json::Value) -> String {
    let mut claims = json!({
        "iss": ISSUER, "aud": "ingestd", "sub": "web",
        "exp": now() + 600, "topics": ["clicks-*"],
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    common::jwt::sign(kid, &claims)
}

/// An unsigned token (`alg: none`) and an HS256 one keyed with the RSA public key (the
/// algorithm confusion), both naming rs256-a.
fn forged() -> Vec<(&'static str, String)> {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let claims =
        json!({"iss": ISSUER, "aud": "ingestd", "sub": "web", "exp": now() + 600, "topics": ["*"]});
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "rs256-a"})),
        b64(&claims)
    );
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rs256-a".into());
    let pem = std::fs::read(data("rs256-a.pub.pem")).unwrap();
    let confused = encode(&h, &claims, &EncodingKey::from_secret(&pem).unwrap()).unwrap();
    vec![("alg none", none), ("HS256 with the public key", confused)]
}

fn config(dir: &Path, topics: &[&str], jwks: &Path) -> PathBuf {
    let p = dir.join("ingestd.toml");
    let list = topics
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &p,
        format!(
            r#"
            [tenants.web]
            topics = [{list}]
            [tenants.partner]
            tokens = ["partner-token"]
            topics = [{list}]
            [jwt]
            jwks_file = "{}"
            leeway_secs = 5
            [[jwt.issuers]]
            issuer = "{ISSUER}"
            audiences = ["ingestd"]
            topics_claim = "topics"
            "#,
            jwks.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn jwts_write_as_their_tenant_and_every_forgery_is_401() {
    let b = broker();
    let clicks = b.topic("clicks", 1);
    let orders = b.topic("orders", 1);
    let dir = std::env::temp_dir().join(format!("ingestd-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::copy(data("jwks.json"), &jwks).unwrap();
    let cfg = config(&dir, &[&clicks, &orders], &jwks);
    let ing = Ingestd::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--brokers",
        &b.addr,
        "--executors",
        "2",
    ]);
    let mut c = Client::connect(ing.addr).unwrap();
    // A JWT that does not verify is 401 and closes the connection (each try costs a
    // signature check): the next request goes on a new one.
    let addr = ing.addr;
    let mut send = |topic: &str, body: &str, tok: &str| {
        let r = c
            .request(&post(
                &format!("/topics/{topic}"),
                body.as_bytes(),
                &[("Authorization", &format!("Bearer {tok}"))],
            ))
            .unwrap();
        if r.header("connection") == Some("close") {
            assert_eq!(r.status, 401, "only a bad token closes: {}", r.text());
            c = Client::connect(addr).unwrap();
        }
        (r.status, r.text())
    };
    // Each algorithm, on a topic its topics claim allows.
    for kid in ["rs256-a", "es256-a", "ed25519-a"] {
        let (s, t) = send(&clicks, kid, &token(kid, json!({})));
        assert_eq!(s, 202, "{kid}: {t}");
    }
    // The tenant may write orders, this token may not (its claim narrows to clicks-*).
    let (s, t) = send(&orders, "narrowed", &token("rs256-a", json!({})));
    assert_eq!(s, 403, "{t}");
    let (s, t) = send(&orders, "wide", &token("rs256-a", json!({"topics": ["*"]})));
    assert_eq!(s, 202, "{t}");
    // Static tokens still work beside JWTs.
    assert_eq!(send(&orders, "partner", "partner-token").0, 202);
    // Every refusal, with its reason.
    let t = now();
    let cases = [
        (
            "expired",
            token("rs256-a", json!({"exp": t - 60})),
            "expired",
        ),
        (
            "within the leeway",
            token("rs256-a", json!({"exp": t - 2})),
            "",
        ),
        (
            "not yet valid",
            token("es256-a", json!({"nbf": t + 60})),
            "not yet valid",
        ),
        (
            "wrong issuer",
            token("rs256-a", json!({"iss": "https://evil.test"})),
            "issuer",
        ),
        (
            "wrong audience",
            token("ed25519-a", json!({"aud": "other"})),
            "audience",
        ),
        (
            "unknown tenant",
            token("rs256-a", json!({"sub": "ghost"})),
            "tenant",
        ),
        (
            "a rogue RSA key",
            token("rs256-rogue", json!({})),
            "signature",
        ),
        (
            "a rogue EC key",
            token("es256-rogue", json!({})),
            "signature",
        ),
        (
            "a rogue Ed25519 key",
            token("ed25519-rogue", json!({})),
            "signature",
        ),
    ];
    for (what, tok, reason) in &cases {
        let (s, t) = send(&clicks, what, tok);
        if reason.is_empty() {
            assert_eq!(s, 202, "{what}: {t}");
        } else {
            assert_eq!(s, 401, "{what}: {t}");
            assert!(t.contains(reason), "{what}: {t}");
        }
    }
    for (what, tok) in forged() {
        let (s, t) = send(&clicks, what, &tok);
        assert_eq!(s, 401, "{what}: {t}");
    }
    // Kafka has exactly the accepted ones, as tenant web (and partner).
    let recs = read_topic(&b.addr, &clicks, 1, 4, Duration::from_secs(2));
    let mut values: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    values.sort();
    assert_eq!(
        values,
        ["ed25519-a", "es256-a", "rs256-a", "within the leeway"]
    );
    assert!(recs.iter().all(|r| r
        .headers
        .iter()
        .any(|(k, v)| k == "ingestd-tenant" && v == b"web")));
    let m = ing.metrics_text();
    assert!(
        common::metric_sum(&m, "ingestd_auth_refused_total", "reason=\"jwt\"") == 9.0,
        "{m}"
    );
    assert_eq!(
        common::metric_sum(
            &m,
            "ingestd_auth_refused_total",
            "reason=\"unknown_tenant\""
        ),
        1.0
    );

    // A verified token is cached per connection only until it expires: the same token
    // on the same connection is 401 once past exp + leeway (5 s here).
    let exp = now() - 4;
    let short = token("ed25519-a", json!({"exp": exp}));
    assert_eq!(send(&clicks, "short-lived", &short).0, 202);
    wait_until(
        "the token is past its leeway",
        Duration::from_secs(10),
        || now() > exp + 5,
    );
    let (s, t) = send(&clicks, "expired on the connection", &short);
    assert_eq!(s, 401, "{t}");
    // Rotation: the set now has rs256-b instead of rs256-a. After SIGHUP the old key's
    // token is refused on this same open connection (its cached verdict is dropped).
    let old = token("rs256-a", json!({}));
    assert_eq!(send(&clicks, "before rotation", &old).0, 202);
    std::fs::copy(data("jwks-rotated.json"), &jwks).unwrap();
    ing.signal(libc::SIGHUP);
    wait_until("reloaded", Duration::from_secs(10), || {
        ing.metric("ingestd_auth_reloads_total", "") >= 1.0
    });
    let (s, t) = send(&clicks, "old key after rotation", &old);
    assert_eq!(s, 401, "{t}");
    assert_eq!(
        send(&clicks, "new key", &token("rs256-b", json!({}))).0,
        202
    );
    let _ = std::fs::remove_dir_all(&dir);
}
