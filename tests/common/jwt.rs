//! Signing JWTs with the test keys of tests/data/jwt (test-only keys; see its README).

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `claims` signed with test key `kid` (`rs256-a`, `es256-a`, `ed25519-a`, `rs256-b`, or
/// a rogue one, `*-rogue`, which is in no key set and claims the kid of `*-a`).
pub fn sign(kid: &str, claims: &serde_json::Value) -> String {
    let path = super::repo().join(format!("tests/data/jwt/{kid}.key.der"));
    let der = std::fs::read(path).unwrap();
    let (alg, key) = match &kid[..2] {
        "rs" => (Algorithm::RS256, EncodingKey::from_rsa_der(&der)),
        "es" => (Algorithm::ES256, EncodingKey::from_ec_der(&der)),
        _ => (Algorithm::EdDSA, EncodingKey::from_ed_der(&der)),
    };
    let mut h = Header::new(alg);
    h.kid = Some(match kid.strip_suffix("-rogue") {
        Some(p) => format!("{p}-a"),
        None => kid.to_string(),
    });
    encode(&h, claims, &key).unwrap()
}
