//! Tests of `auth::jwt` with the test-only keys in tests/data/jwt (README there).

use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/jwt");
const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://id.example.com/";
/// An issuer whose tokens are all tenant `acme`'s, narrowed by a `topics` claim.
const FIXED_ISS: &str = "https://fixed.example.com/";

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}")).unwrap()
}

fn cfg_with(jwks: &str) -> JwtConfig {
    JwtConfig {
        jwks_file: Some(format!("{DIR}/{jwks}").into()),
        leeway_secs: 60,
        issuers: vec![
            JwtIssuer {
                issuer: ISS.into(),
                audiences: vec!["ingestd".into(), "ingestd-eu".into()],
                ..Default::default()
            },
            JwtIssuer {
                issuer: FIXED_ISS.into(),
                tenant: Some("acme".into()),
                topics_claim: Some("topics".into()),
                ..Default::default()
            },
        ],
    }
}

fn cfg() -> JwtConfig {
    cfg_with("jwks.json")
}

fn verifier() -> Verifier {
    Verifier::load(&cfg()).unwrap().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum K {
    Rs,
    Es,
    Ed,
    RsB,
    RsRogue,
    EsRogue,
    EdRogue,
}

impl K {
    fn alg(self) -> Algorithm {
        match self {
            K::Rs | K::RsB | K::RsRogue => Algorithm::RS256,
            K::Es | K::EsRogue => Algorithm::ES256,
            K::Ed | K::EdRogue => Algorithm::EdDSA,
        }
    }
    fn file(self) -> &'static str {
        match self {
            K::Rs => "rs256-a",
            K::RsB => "rs256-b",
            K::RsRogue => "rs256-rogue",
            K::Es => "es256-a",
            K::EsRogue => "es256-rogue",
            K::Ed => "ed25519-a",
            K::EdRogue => "ed25519-rogue",
        }
    }
    fn encoding(self) -> EncodingKey {
        let der = data(&format!("{}.key.der", self.file()));
        match self.alg() {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
            Algorithm::ES256 => EncodingKey::from_ec_der(&der),
            _ => EncodingKey::from_ed_der(&der),
        }
    }
    /// The kid of this key in jwks.json (rogue keys claim the kid of their type's key).
    fn kid(self) -> &'static str {
        match self {
            K::Rs | K::RsRogue => "rs256-a",
            K::RsB => "rs256-b",
            K::Es | K::EsRogue => "es256-a",
            K::Ed | K::EdRogue => "ed25519-a",
        }
    }
}

fn sign_with(k: K, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(k.alg());
    h.kid = kid.map(Into::into);
    encode(&h, claims, &k.encoding()).unwrap()
}

fn sign(k: K, claims: &Value) -> String {
    sign_with(k, Some(k.kid()), claims)
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": "ingestd", "sub": "acme", "iat": NOW, "exp": NOW + 600})
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

fn without(mut c: Value, key: &str) -> Value {
    c.as_object_mut().unwrap().remove(key);
    c
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn acme(expires: u64) -> Verified {
    Verified {
        tenant: "acme".into(),
        topics: None,
        expires_unix: expires,
    }
}

#[test]
fn valid_rs256_es256_eddsa_tokens_verify() {
    let v = verifier();
    assert_eq!(v.key_count(), 3);
    for k in [K::Rs, K::Es, K::Ed] {
        let t = sign(k, &claims());
        assert!(looks_like_jwt(t.as_bytes()), "{k:?}");
        assert_eq!(v.verify(t.as_bytes(), NOW), Ok(acme(NOW + 600)), "{k:?}");
        // An array aud holding one accepted audience.
        let t = sign(k, &with(claims(), "aud", json!(["other", "ingestd-eu"])));
        assert_eq!(v.verify(t.as_bytes(), NOW), Ok(acme(NOW + 600)), "{k:?}");
    }
}

#[test]
fn committed_jwks_holds_the_public_halves_of_the_private_keys() {
    let set: Value = serde_json::from_slice(&data("jwks.json")).unwrap();
    let rotated: Value = serde_json::from_slice(&data("jwks-rotated.json")).unwrap();
    let find = |set: &Value, kid: &str| {
        set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .cloned()
            .unwrap()
    };
    for (set, k) in [
        (&set, K::Rs),
        (&set, K::Es),
        (&set, K::Ed),
        (&rotated, K::RsB),
    ] {
        let derived =
            serde_json::to_value(Jwk::from_encoding_key(&k.encoding(), k.alg()).unwrap()).unwrap();
        let stored = find(set, k.kid());
        for part in ["n", "e", "x", "y", "crv", "kty"] {
            assert_eq!(derived.get(part), stored.get(part), "{k:?} {part}");
        }
    }
}

#[test]
fn exp_and_nbf_with_leeway() {
    let v = verifier(); // leeway 60 s
    let at = |c: Value| v.verify(sign(K::Es, &c).as_bytes(), NOW);
    // Expired, but within the leeway: accepted; exactly at or past exp + leeway: refused.
    assert_eq!(
        at(with(claims(), "exp", json!(NOW - 30))),
        Ok(acme(NOW - 30))
    );
    assert_eq!(
        at(with(claims(), "exp", json!(NOW - 59))),
        Ok(acme(NOW - 59))
    );
    assert_eq!(
        at(with(claims(), "exp", json!(NOW - 60))),
        Err(JwtError::Expired)
    );
    assert_eq!(
        at(with(claims(), "exp", json!(NOW - 3600))),
        Err(JwtError::Expired)
    );
    // Not yet valid, but within the leeway: accepted; beyond it: refused.
    assert!(at(with(claims(), "nbf", json!(NOW + 60))).is_ok());
    assert_eq!(
        at(with(claims(), "nbf", json!(NOW + 61))),
        Err(JwtError::NotYetValid)
    );
    assert!(at(with(claims(), "nbf", json!(NOW - 10))).is_ok());
    // NumericDate may be fractional: exp rounds down, nbf up.
    assert_eq!(
        at(with(claims(), "exp", json!(NOW as f64 + 99.9))),
        Ok(acme(NOW + 99))
    );
    assert_eq!(
        at(with(claims(), "nbf", json!(NOW as f64 + 60.2))),
        Err(JwtError::NotYetValid)
    );

    // Without leeway.
    let mut c = cfg();
    c.leeway_secs = 0;
    let v0 = Verifier::load(&c).unwrap().unwrap();
    let at0 = |c: Value| v0.verify(sign(K::Ed, &c).as_bytes(), NOW);
    assert_eq!(
        at0(with(claims(), "exp", json!(NOW))),
        Err(JwtError::Expired)
    );
    assert_eq!(
        at0(with(claims(), "exp", json!(NOW + 1))),
        Ok(acme(NOW + 1))
    );
    assert_eq!(
        at0(with(claims(), "nbf", json!(NOW + 1))),
        Err(JwtError::NotYetValid)
    );
    assert!(at0(with(claims(), "nbf", json!(NOW))).is_ok());
}

#[test]
fn exp_is_required_and_numeric() {
    let v = verifier();
    let at = |c: Value| v.verify(sign(K::Rs, &c).as_bytes(), NOW);
    let no_exp = Err(JwtError::Claim(EXP_CLAIM));
    assert_eq!(at(without(claims(), "exp")), no_exp);
    assert_eq!(at(with(claims(), "exp", json!(null))), no_exp);
    assert_eq!(
        at(with(claims(), "exp", json!((NOW + 600).to_string()))),
        no_exp
    );
    assert_eq!(at(with(claims(), "exp", json!(-5))), no_exp);
    // An array or object where the crate's own claim parser wants a scalar (exp, nbf,
    // sub) stops its parse: refused as malformed.
    assert_eq!(
        at(with(claims(), "exp", json!([NOW + 600]))),
        Err(JwtError::Malformed)
    );
    assert_eq!(
        at(with(claims(), "nbf", json!({"t": 1}))),
        Err(JwtError::Malformed)
    );
    assert_eq!(
        at(with(claims(), "nbf", json!("now"))),
        Err(JwtError::Claim(NBF_CLAIM))
    );
}

#[test]
fn wrong_issuer_is_refused() {
    let v = verifier();
    let at = |c: Value| v.verify(sign(K::Rs, &c).as_bytes(), NOW);
    assert_eq!(
        at(with(claims(), "iss", json!("https://evil.example.com/"))),
        Err(JwtError::Issuer)
    );
    // Exactly equal: no trailing-slash or case folding.
    assert_eq!(
        at(with(claims(), "iss", json!("https://id.example.com"))),
        Err(JwtError::Issuer)
    );
    assert_eq!(
        at(with(claims(), "iss", json!("HTTPS://ID.EXAMPLE.COM/"))),
        Err(JwtError::Issuer)
    );
    assert_eq!(at(without(claims(), "iss")), Err(JwtError::Issuer));
    assert_eq!(
        at(with(claims(), "iss", json!([ISS]))),
        Err(JwtError::Issuer)
    );
}

#[test]
fn wrong_audience_is_refused() {
    let v = verifier();
    let at = |c: Value| v.verify(sign(K::Ed, &c).as_bytes(), NOW);
    assert_eq!(
        at(with(claims(), "aud", json!("other"))),
        Err(JwtError::Audience)
    );
    assert_eq!(
        at(with(claims(), "aud", json!(["other", "another"]))),
        Err(JwtError::Audience)
    );
    assert_eq!(
        at(with(claims(), "aud", json!([]))),
        Err(JwtError::Audience)
    );
    assert_eq!(
        at(with(claims(), "aud", json!(["ingestd", 7]))),
        Err(JwtError::Audience)
    );
    assert_eq!(at(without(claims(), "aud")), Err(JwtError::Audience));
    // The fixed issuer lists no audiences: aud is not checked.
    let fixed = json!({"iss": FIXED_ISS, "exp": NOW + 5, "topics": ["*"]});
    assert!(at(fixed.clone()).is_ok());
    assert!(at(with(fixed, "aud", json!("anything"))).is_ok());
}

#[test]
fn token_signed_by_a_key_not_in_the_jwks_is_refused() {
    let v = verifier();
    for k in [K::RsRogue, K::EsRogue, K::EdRogue, K::RsB] {
        // It claims the kid of the set's key of its type.
        let kid = match k.alg() {
            Algorithm::RS256 => "rs256-a",
            Algorithm::ES256 => "es256-a",
            _ => "ed25519-a",
        };
        let t = sign_with(k, Some(kid), &claims());
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::Signature),
            "{k:?}"
        );
        // Without kid: tried against the set's one key of that type only.
        let t = sign_with(k, None, &claims());
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::Signature),
            "{k:?}"
        );
    }
}

#[test]
fn unknown_kid_is_refused() {
    let v = verifier();
    for k in [K::Rs, K::Es, K::Ed] {
        let t = sign_with(k, Some("no-such-key"), &claims());
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::UnknownKey),
            "{k:?}"
        );
    }
    // rs256-b is in the rotated set only.
    let t = sign(K::RsB, &claims());
    assert_eq!(v.verify(t.as_bytes(), NOW), Err(JwtError::UnknownKey));
}

#[test]
fn token_without_kid_uses_the_only_key_of_its_type() {
    let v = verifier();
    for k in [K::Rs, K::Es, K::Ed] {
        let t = sign_with(k, None, &claims());
        assert_eq!(v.verify(t.as_bytes(), NOW), Ok(acme(NOW + 600)), "{k:?}");
    }
    // Two RSA keys: a kid-less RS256 token is refused (never tried against each);
    // ES256 still has one key.
    let mut set: Value = serde_json::from_slice(&data("jwks.json")).unwrap();
    let rotated: Value = serde_json::from_slice(&data("jwks-rotated.json")).unwrap();
    set["keys"]
        .as_array_mut()
        .unwrap()
        .push(rotated["keys"][0].clone());
    let v2 = Verifier::from_jwks(set.to_string().as_bytes(), &cfg()).unwrap();
    assert_eq!(v2.key_count(), 4);
    for k in [K::Rs, K::RsB] {
        let t = sign_with(k, None, &claims());
        assert_eq!(
            v2.verify(t.as_bytes(), NOW),
            Err(JwtError::UnknownKey),
            "{k:?}"
        );
        assert!(
            v2.verify(sign(k, &claims()).as_bytes(), NOW).is_ok(),
            "{k:?}"
        );
    }
    let t = sign_with(K::Es, None, &claims());
    assert!(v2.verify(t.as_bytes(), NOW).is_ok());
    // A key without kid in the set is reachable by kid-less tokens only.
    let mut set: Value = serde_json::from_slice(&data("jwks.json")).unwrap();
    set["keys"][0].as_object_mut().unwrap().remove("kid");
    let v3 = Verifier::from_jwks(set.to_string().as_bytes(), &cfg()).unwrap();
    assert!(v3
        .verify(sign_with(K::Rs, None, &claims()).as_bytes(), NOW)
        .is_ok());
    assert_eq!(
        v3.verify(sign(K::Rs, &claims()).as_bytes(), NOW),
        Err(JwtError::UnknownKey)
    );
}

/// `header.payload.` with the given header, signed by nothing.
fn unsigned(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

#[test]
fn alg_none_is_refused() {
    let v = verifier();
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "none", "kid": "rs256-a"}),
        json!({"alg": "None"}),
        json!({"alg": "NONE", "kid": "ed25519-a"}),
        json!({"alg": ""}),
    ] {
        let t = unsigned(header.clone(), &claims());
        assert!(looks_like_jwt(t.as_bytes()), "{header}");
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::Algorithm),
            "{header}"
        );
        // With a signature part copied from a valid token: still refused.
        let valid = sign(K::Rs, &claims());
        let t = format!("{t}{}", valid.rsplit('.').next().unwrap());
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::Algorithm),
            "{header}"
        );
    }
    // alg missing, or not a string.
    for header in [
        json!({"kid": "rs256-a"}),
        json!({"alg": null}),
        json!({"alg": 256}),
    ] {
        let t = unsigned(header.clone(), &claims());
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::Malformed),
            "{header}"
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let v = verifier();
    let jwk: Value = serde_json::from_slice(&data("jwks.json")).unwrap();
    let n = URL_SAFE_NO_PAD
        .decode(jwk["keys"][0]["n"].as_str().unwrap())
        .unwrap();
    let secrets = [
        ("PEM", data("rs256-a.pub.pem")),
        ("DER", data("rs256-a.pub.der")),
        ("JWK", serde_json::to_vec(&jwk["keys"][0]).unwrap()),
        ("n", n),
    ];
    for (what, secret) in &secrets {
        let key = EncodingKey::from_secret(secret).unwrap();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            for kid in [Some("rs256-a"), None] {
                let mut h = Header::new(alg);
                h.kid = kid.map(Into::into);
                let t = encode(&h, &claims(), &key).unwrap();
                assert_eq!(
                    v.verify(t.as_bytes(), NOW),
                    Err(JwtError::Algorithm),
                    "{what} {alg:?} {kid:?}"
                );
            }
        }
        // Below the header check, the key itself is pinned to RS256: the crate refuses an
        // HS256 token with the RSA key as it stands in the verifier.
        let t = encode(&Header::new(Algorithm::HS256), &claims(), &key).unwrap();
        let k = &v.keys[v.by_kid["rs256-a"]];
        let e =
            jsonwebtoken::decode::<Map<String, Value>>(&t, &k.decoding, &k.validation).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidAlgorithm, "{what}");
    }
}

#[test]
fn a_key_verifies_only_its_own_algorithm() {
    let v = verifier();
    // An ES256 token naming the RSA key, an RS256 token naming the EC key, ...
    for (signer, kid) in [
        (K::Es, "rs256-a"),
        (K::Rs, "es256-a"),
        (K::Ed, "es256-a"),
        (K::Rs, "ed25519-a"),
    ] {
        let t = sign_with(signer, Some(kid), &claims());
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::Algorithm),
            "{signer:?} as {kid}"
        );
    }
    // Algorithms of the right family that are not accepted: RS384/RS512/PS256 by the RSA
    // key, ES384 is another curve.
    for alg in [
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS512,
    ] {
        let mut h = Header::new(alg);
        h.kid = Some("rs256-a".into());
        let t = encode(&h, &claims(), &K::Rs.encoding()).unwrap();
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::Algorithm),
            "{alg:?}"
        );
    }
}

#[test]
fn keys_carried_in_the_header_are_ignored() {
    let v = verifier();
    for (rogue, kid) in [
        (K::RsRogue, Some("rs256-a")),
        (K::EsRogue, None),
        (K::EdRogue, Some("ed25519-a")),
    ] {
        let mut h = Header::new(rogue.alg());
        h.kid = kid.map(Into::into);
        h.jwk = Some(Jwk::from_encoding_key(&rogue.encoding(), rogue.alg()).unwrap());
        h.jku = Some("https://evil.example.com/jwks.json".into());
        let t = encode(&h, &claims(), &rogue.encoding()).unwrap();
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::Signature),
            "{rogue:?}"
        );
    }
}

#[test]
fn tampered_payload_is_refused() {
    let v = verifier();
    for k in [K::Rs, K::Es, K::Ed] {
        let t = sign(k, &claims());
        let parts: Vec<&str> = t.split('.').collect();
        for forged in [
            with(claims(), "sub", json!("victim")),
            with(claims(), "exp", json!(NOW + 86400 * 365)),
            with(claims(), "aud", json!(["ingestd"])),
        ] {
            let f = format!(
                "{}.{}.{}",
                parts[0],
                b64(forged.to_string().as_bytes()),
                parts[2]
            );
            assert_eq!(
                v.verify(f.as_bytes(), NOW),
                Err(JwtError::Signature),
                "{k:?}"
            );
        }
        // A header changed (typ added): the signature covers it too.
        let h = b64(
            json!({"alg": format!("{:?}", k.alg()), "kid": k.kid(), "typ": "JWT"})
                .to_string()
                .as_bytes(),
        );
        let f = format!("{h}.{}.{}", parts[1], parts[2]);
        assert_eq!(
            v.verify(f.as_bytes(), NOW),
            Err(JwtError::Signature),
            "{k:?}"
        );
        // One signature bit flipped.
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[7] ^= 1;
        let f = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
        assert_eq!(
            v.verify(f.as_bytes(), NOW),
            Err(JwtError::Signature),
            "{k:?}"
        );
    }
}

#[test]
fn truncated_tokens_are_refused() {
    let v = verifier();
    for k in [K::Rs, K::Es, K::Ed] {
        let t = sign(k, &claims());
        let (msg, sig) = t.rsplit_once('.').unwrap();
        // No signature part at all / an empty one / a short one.
        assert_eq!(
            v.verify(msg.as_bytes(), NOW),
            Err(JwtError::Malformed),
            "{k:?}"
        );
        assert_eq!(
            v.verify(format!("{msg}.").as_bytes(), NOW),
            Err(JwtError::Signature),
            "{k:?}"
        );
        let short = format!("{msg}.{}", &sig[..8]);
        assert_eq!(
            v.verify(short.as_bytes(), NOW),
            Err(JwtError::Signature),
            "{k:?}"
        );
        // Cut inside the header or the payload.
        assert_eq!(
            v.verify(&t.as_bytes()[..10], NOW),
            Err(JwtError::Malformed),
            "{k:?}"
        );
        let cut = t.find('.').unwrap() + 6;
        assert_eq!(
            v.verify(&t.as_bytes()[..cut], NOW),
            Err(JwtError::Malformed),
            "{k:?}"
        );
    }
}

#[test]
fn garbage_is_refused() {
    let v = verifier();
    let huge = format!(
        "{}.{}.{}",
        "eyJ".repeat(4000),
        "a".repeat(4000),
        "b".repeat(1000)
    );
    let not_json = format!("{}.{}.{}", b64(b"not json"), b64(b"{}"), b64(b"sig"));
    let not_object = format!("{}.{}.{}", b64(b"[1,2]"), b64(b"{}"), b64(b"sig"));
    let cases: Vec<&[u8]> = vec![
        b"",
        b".",
        b"..",
        b"garbage",
        b"a.b.c",
        b"eyJhbGciOiJSUzI1NiJ9",
        b"eyJ!!!.eyJ.sig",
        b"\xff\xfe\x00.\x80.\x01",
        b"0123456789abcdef0123456789abcdef",
        huge.as_bytes(),
        not_json.as_bytes(),
        not_object.as_bytes(),
    ];
    for g in cases {
        assert_eq!(
            v.verify(g, NOW),
            Err(JwtError::Malformed),
            "{:?}",
            String::from_utf8_lossy(&g[..g.len().min(40)])
        );
    }
    // Four parts (a JWE has five).
    let t = sign(K::Es, &claims());
    assert_eq!(
        v.verify(format!("{t}.x").as_bytes(), NOW),
        Err(JwtError::Malformed)
    );
    // A validly signed payload that is not a JSON object.
    for payload in [json!("a string"), json!([1, 2]), json!(null)] {
        let t = sign(K::Ed, &payload);
        assert_eq!(
            v.verify(t.as_bytes(), NOW),
            Err(JwtError::Malformed),
            "{payload}"
        );
    }
}

#[test]
fn tenant_comes_from_the_issuer_or_a_claim() {
    let v = verifier();
    let at = |c: Value| v.verify(sign(K::Rs, &c).as_bytes(), NOW);
    assert_eq!(
        at(with(claims(), "sub", json!("globex"))).unwrap().tenant,
        "globex"
    );
    for bad in [json!(null), json!(42), json!(""), json!(true)] {
        assert_eq!(
            at(with(claims(), "sub", bad.clone())),
            Err(JwtError::Claim(TENANT_CLAIM)),
            "{bad}"
        );
    }
    assert_eq!(
        at(with(claims(), "sub", json!(["acme"]))),
        Err(JwtError::Malformed)
    );
    assert_eq!(
        at(without(claims(), "sub")),
        Err(JwtError::Claim(TENANT_CLAIM))
    );
    // The fixed issuer: its tenant whatever sub says.
    let fixed = json!({"iss": FIXED_ISS, "sub": "globex", "exp": NOW + 5, "topics": []});
    assert_eq!(at(fixed).unwrap().tenant, "acme");
    // A configured tenant claim.
    let mut c = cfg();
    c.issuers[0].tenant_claim = Some("org".into());
    let v2 = Verifier::load(&c).unwrap().unwrap();
    let t = sign(K::Es, &with(claims(), "org", json!("initech")));
    assert_eq!(v2.verify(t.as_bytes(), NOW).unwrap().tenant, "initech");
    let t = sign(K::Es, &claims()); // sub only
    assert_eq!(
        v2.verify(t.as_bytes(), NOW),
        Err(JwtError::Claim(TENANT_CLAIM))
    );
}

#[test]
fn topics_claim_narrows_and_must_be_a_list_of_names() {
    let v = verifier();
    let fixed = || json!({"iss": FIXED_ISS, "exp": NOW + 5});
    let at = |c: Value| v.verify(sign(K::Ed, &c).as_bytes(), NOW);
    let ok = at(with(fixed(), "topics", json!(["logs.*", "orders", "*"]))).unwrap();
    assert_eq!(
        ok.topics,
        Some(vec!["logs.*".into(), "orders".into(), "*".into()])
    );
    assert_eq!(
        at(with(fixed(), "topics", json!([]))).unwrap().topics,
        Some(vec![])
    );
    assert_eq!(at(fixed()), Err(JwtError::Claim(TOPICS_MISSING)));
    assert_eq!(
        at(with(fixed(), "topics", json!(null))),
        Err(JwtError::Claim(TOPICS_MISSING))
    );
    for bad in [
        json!("logs.*"),
        json!({"a": 1}),
        json!([1]),
        json!(["ok", null]),
        json!(["bad topic"]),
        json!([""]),
    ] {
        assert_eq!(
            at(with(fixed(), "topics", bad.clone())),
            Err(JwtError::Claim(TOPICS_CLAIM)),
            "{bad}"
        );
    }
    // An issuer without topics_claim ignores such a claim.
    assert_eq!(
        at(with(claims(), "topics", json!(["x"]))).unwrap().topics,
        None
    );
}

#[test]
fn jwks_rotation_takes_the_new_key_and_drops_the_old() {
    let path =
        std::env::temp_dir().join(format!("ingestd-jwt-rotation-{}.json", std::process::id()));
    std::fs::write(&path, data("jwks.json")).unwrap();
    let mut c = cfg();
    c.jwks_file = Some(path.clone());
    let old = sign(K::Rs, &claims());
    let new = sign(K::RsB, &claims());
    let es = sign(K::Es, &claims());

    let before = Verifier::load(&c).unwrap().unwrap();
    assert!(before.verify(old.as_bytes(), NOW).is_ok());
    assert_eq!(
        before.verify(new.as_bytes(), NOW),
        Err(JwtError::UnknownKey)
    );

    // The file replaced the way an operator would (write aside, rename), then reloaded.
    let aside = path.with_extension("new");
    std::fs::write(&aside, data("jwks-rotated.json")).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    let after = Verifier::load(&c).unwrap().unwrap();
    assert_eq!(after.verify(old.as_bytes(), NOW), Err(JwtError::UnknownKey));
    assert!(after.verify(new.as_bytes(), NOW).is_ok());
    assert!(
        after.verify(es.as_bytes(), NOW).is_ok(),
        "untouched keys stay"
    );
    // Kid-less tokens follow the set's one RSA key.
    assert_eq!(
        after.verify(sign_with(K::Rs, None, &claims()).as_bytes(), NOW),
        Err(JwtError::Signature)
    );
    assert!(after
        .verify(sign_with(K::RsB, None, &claims()).as_bytes(), NOW)
        .is_ok());
    // The verifier loaded before keeps its keys (the caller swaps verifiers whole).
    assert!(before.verify(old.as_bytes(), NOW).is_ok());

    // A broken file fails the reload (the caller keeps the old verifier), naming the file.
    std::fs::write(&path, b"{\"keys\": [").unwrap();
    let e = Verifier::load(&c).unwrap_err();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("not JSON"),
        "{e}"
    );
    std::fs::remove_file(&path).unwrap();
    let e = Verifier::load(&c).unwrap_err();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("cannot read"),
        "{e}"
    );
}

/// A load of `keys` (JSON values) with the test config; the error, or the key count.
fn load_keys(keys: Vec<Value>) -> Result<usize, String> {
    Verifier::from_jwks(json!({ "keys": keys }).to_string().as_bytes(), &cfg())
        .map(|v| v.key_count())
}

fn jwks_key(i: usize) -> Value {
    let set: Value = serde_json::from_slice(&data("jwks.json")).unwrap();
    set["keys"][i].clone()
}

#[test]
fn load_without_issuers_is_none_and_reads_nothing() {
    let c = JwtConfig {
        jwks_file: Some("/nonexistent/jwks.json".into()),
        ..JwtConfig::default()
    };
    assert!(Verifier::load(&c).unwrap().is_none());
    let mut c = cfg();
    c.jwks_file = None;
    assert!(Verifier::load(&c).unwrap_err().contains("jwks_file"));
}

#[test]
fn load_refuses_bad_sets_naming_the_file_and_key() {
    let err = |keys: Vec<Value>| load_keys(keys).unwrap_err();
    let e = Verifier::load(&cfg_with("missing.json")).unwrap_err();
    assert!(
        e.contains("missing.json") && e.contains("cannot read"),
        "{e}"
    );
    let e = Verifier::load(&cfg_with("README.md")).unwrap_err();
    assert!(e.contains("README.md") && e.contains("not JSON"), "{e}");
    assert!(Verifier::from_jwks(b"{\"kids\": []}", &cfg())
        .unwrap_err()
        .contains("no \"keys\" array"));
    assert!(err(vec![]).contains("no RS256, ES256 or EdDSA"));

    let e = err(vec![
        jwks_key(0),
        json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
    ]);
    assert!(
        e.contains("keys[1] (kid \"hmac\")") && e.contains("symmetric"),
        "{e}"
    );
    let e = err(vec![with(jwks_key(1), "d", json!("AAAA"))]);
    assert!(
        e.contains("keys[0] (kid \"es256-a\")") && e.contains("private key"),
        "{e}"
    );
    let e = err(vec![
        jwks_key(0),
        with(jwks_key(1), "kid", json!("rs256-a")),
    ]);
    assert!(e.contains("keys[1]") && e.contains("same kid"), "{e}");

    // RSA: too small, even, bad exponents, not base64url.
    let small = b64(&[[0xC1u8; 127].as_slice(), &[0x01]].concat()); // 1024 bits
    let e = err(vec![with(jwks_key(0), "n", json!(small))]);
    assert!(e.contains("1024 bits"), "{e}");
    let mut n = URL_SAFE_NO_PAD
        .decode(jwks_key(0)["n"].as_str().unwrap())
        .unwrap();
    *n.last_mut().unwrap() &= 0xFE;
    assert!(err(vec![with(jwks_key(0), "n", json!(b64(&n)))]).contains("even"));
    for e in [
        b64(&[1]),
        b64(&[2]),
        b64(&[1, 0, 0, 0, 0, 1]),
        b64(&[1, 0, 0]),
    ] {
        assert!(
            err(vec![with(jwks_key(0), "e", json!(e))]).contains("exponent"),
            "{e}"
        );
    }
    assert!(err(vec![with(jwks_key(0), "n", json!("not base64!"))]).contains("base64url"));

    // EC: a point off the curve; OKP: not 32 bytes (the crate would panic on fewer).
    let e = err(vec![with(jwks_key(1), "y", json!(b64(&[7u8; 32])))]);
    assert!(
        e.contains("keys[0]") && e.contains("not a valid ES256"),
        "{e}"
    );
    let e = err(vec![with(jwks_key(2), "x", json!(b64(&[7u8; 31])))]);
    assert!(e.contains("32 base64url bytes"), "{e}");
    // A declared alg that does not fit the key's type.
    let e = err(vec![with(jwks_key(1), "alg", json!("RS256"))]);
    assert!(e.contains("does not fit"), "{e}");
    let e = err(vec![with(jwks_key(2), "alg", json!("ES256"))]);
    assert!(e.contains("does not fit"), "{e}");

    // The issuers: one iss listed twice.
    let mut c = cfg();
    c.issuers.push(c.issuers[0].clone());
    let e = Verifier::load(&c).unwrap_err();
    assert!(e.contains("jwt.issuers[2]") && e.contains("twice"), "{e}");
}

#[test]
fn load_skips_keys_meant_for_something_else() {
    let rsa = jwks_key(0);
    let others = vec![
        with(with(rsa.clone(), "kid", json!("enc")), "use", json!("enc")),
        with(
            with(rsa.clone(), "kid", json!("oaep")),
            "alg",
            json!("RSA-OAEP"),
        ),
        with(
            with(rsa.clone(), "kid", json!("rs384")),
            "alg",
            json!("RS384"),
        ),
        with(
            with(rsa.clone(), "kid", json!("ps256")),
            "alg",
            json!("PS256"),
        ),
        with(
            with(rsa.clone(), "kid", json!("ops")),
            "key_ops",
            json!(["encrypt"]),
        ),
        json!({"kty": "EC", "kid": "p384", "crv": "P-384", "x": b64(&[1; 48]), "y": b64(&[2; 48])}),
        json!({"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": b64(&[1; 32]), "y": b64(&[2; 32])}),
        json!({"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": b64(&[1; 32])}),
        json!({"kty": "PQ", "kid": "future"}),
    ];
    let mut keys = others.clone();
    keys.push(jwks_key(2));
    assert_eq!(load_keys(keys), Ok(1));
    assert!(load_keys(others)
        .unwrap_err()
        .contains("no RS256, ES256 or EdDSA"));
    // key_ops with verify, and use sig, are kept.
    let kept = with(with(rsa, "key_ops", json!(["verify"])), "use", json!("sig"));
    assert_eq!(load_keys(vec![kept]), Ok(1));
}

#[test]
fn looks_like_jwt_tells_jwts_from_static_tokens() {
    for k in [K::Rs, K::Es, K::Ed] {
        assert!(looks_like_jwt(sign(k, &claims()).as_bytes()));
    }
    for s in [
        &b""[..],
        b"0123456789abcdef0123456789abcdef",
        b"s3cr3t.token.value",
        b"eyJhbGciOiJSUzI1NiJ9",
        b"eyJhbGciOiJSUzI1NiJ9.eyJ",
        b"eyJhbGciOiJSUzI1NiJ9..sig",
        b"eyJhbGciOiJSUzI1NiJ9.eyJ.sig.x",
        b"eyJhbGciOiJSUzI1NiJ9.eyJ+/.sig",
        b"eyJhbGciOiJSUzI1NiJ9.eyJ.sig=",
        b"eyJhbGciOiJSUzI1NiJ9.eyJ.sig ",
        b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJ.sig",
    ] {
        assert!(!looks_like_jwt(s), "{}", String::from_utf8_lossy(s));
    }
    assert!(looks_like_jwt(b"eyJhbGciOiJub25lIn0.eyJ."));
    assert!(!looks_like_jwt(
        format!("eyJ.eyJ.{}", "a".repeat(MAX_TOKEN_BYTES)).as_bytes()
    ));
}

#[test]
fn reasons_are_short_fixed_texts() {
    let all = [
        JwtError::Malformed,
        JwtError::Algorithm,
        JwtError::UnknownKey,
        JwtError::Signature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::Issuer,
        JwtError::Audience,
        JwtError::Claim(EXP_CLAIM),
        JwtError::Claim(NBF_CLAIM),
        JwtError::Claim(TENANT_CLAIM),
        JwtError::Claim(TOPICS_MISSING),
        JwtError::Claim(TOPICS_CLAIM),
    ];
    for e in all {
        let r = e.reason();
        assert!(
            !r.is_empty() && r.len() <= 48 && r.is_ascii() && !r.contains('"'),
            "{r}"
        );
        assert_eq!(e.to_string(), r);
    }
}

#[test]
fn verifier_can_be_shared_by_executors() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Verifier>();
    send_sync::<Verified>();
    send_sync::<JwtError>();
}
