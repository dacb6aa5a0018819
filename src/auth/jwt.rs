//! JWT bearer tokens: verified against the public keys of a JWKS file (`[jwt]`).
//!
//! The JOSE part (base64url, the header, the signature) is `jsonwebtoken` with its
//! RustCrypto backend; the claims are checked here against the caller's clock, so a test
//! or a cache can say what "now" is.
//!
//! What is accepted, and why:
//! - Algorithms RS256, ES256 (P-256) and EdDSA (Ed25519) only, and each key verifies only
//!   its own: an RSA key RS256, a P-256 key ES256, an Ed25519 key EdDSA. The header's
//!   `alg` is checked against that before any cryptography, and the `Validation` given to
//!   `jsonwebtoken::decode` is pinned to the key's algorithm too, so `alg: none`, HS256
//!   signed with a public key's bytes as the HMAC secret (the classic confusion), or an
//!   ES256 token naming an RSA key all fail twice over.
//! - The key is the one whose `kid` the header names. A header without `kid` is tried
//!   against the one key of the token's algorithm when the set has exactly one such key
//!   (with or without a `kid` of its own), and refused otherwise: never against each key
//!   in turn, which would multiply the cost of a forged token and blur which key signed.
//!   Keys a header carries (`jwk`, `jku`, `x5c`, `x5u`) are never used.
//! - `exp` is required; `nbf` is honoured when present; both with the configured leeway
//!   (valid while `now < exp + leeway` and `nbf <= now + leeway`). `iss` must equal one
//!   configured issuer; when that issuer lists audiences, `aud` (a string or an array of
//!   strings) must hold one of them. Claims are read only after the signature verified.
//! - The tenant is the issuer's fixed `tenant`, else the string claim named by
//!   `tenant_claim` (default `sub`). When the issuer sets `topics_claim`, the token must
//!   carry that claim as an array of topic names or patterns (`["*"]` for the tenant's
//!   whole scope): a token without it is refused rather than given the whole scope.
//!   The tenant named by a claim may not exist in the configuration: the caller checks.
//!
//! Loading a JWKS file: keys marked for another use (`use` not `sig`, `key_ops` without
//! `verify`), of an algorithm or curve not accepted here (RS384, PS256, P-384, RSA-OAEP,
//! ...), or that the crate cannot read are skipped with a warning (identity providers
//! publish such keys beside the signing ones). A symmetric (`oct`) key, a private key
//! (`d`), an RSA key under 2048 bits, a point not on its curve, a repeated `kid` or a set
//! with no usable key fail the load, naming the file and the key.
//!
//! Nothing here logs or returns any part of a token; `JwtError::reason` is a fixed text.

use crate::config::tenants::valid_scope;
use crate::config::{JwtConfig, JwtIssuer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// Tokens longer than this are refused unread (a request head is at most 16 KiB anyway).
pub const MAX_TOKEN_BYTES: usize = 16 << 10;
/// A JWKS file larger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: u64 = 1 << 20;
/// RSA moduli accepted, in bits (the `rsa` crate verifies up to 8192).
const RSA_BITS: std::ops::RangeInclusive<u32> = 2048..=8192;

/// The algorithms accepted, one per key type.
const ALGS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

fn alg_index(alg: Algorithm) -> usize {
    ALGS.iter()
        .position(|a| *a == alg)
        .expect("an accepted algorithm")
}

/// A verified token: whose it is, what it may write, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The issuer's fixed tenant, or the tenant claim's value (which the caller must find
    /// in the configuration).
    pub tenant: String,
    /// The issuer's `topics_claim`: topic names or patterns (`logs.*`, `*`) that narrow
    /// the tenant's scope for this token (possibly empty). None: no narrowing.
    pub topics: Option<Vec<String>>,
    /// The token's `exp` (Unix seconds). It is accepted until `exp + leeway`
    /// (`Verifier::leeway_secs`): a cache of verified tokens must not keep one past that.
    pub expires_unix: u64,
}

/// Why a token was refused. `reason` is safe to send to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or longer than `MAX_TOKEN_BYTES`.
    Malformed,
    /// `alg` is not RS256, ES256 or EdDSA, or not the algorithm of the key it names.
    Algorithm,
    /// No key with the header's `kid`; or no `kid` and not exactly one key of its type.
    UnknownKey,
    /// The signature does not verify with the key.
    Signature,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// `iss` missing, not a string, or not a configured issuer.
    Issuer,
    /// The issuer lists audiences and `aud` holds none of them.
    Audience,
    /// A claim missing or of the wrong type (`exp`, `nbf`, the tenant's, the topics'):
    /// the text says which.
    Claim(&'static str),
}

impl JwtError {
    /// A short fixed text for the 401 body and logs; never holds any part of the token.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed token",
            JwtError::Algorithm => "token algorithm not accepted",
            JwtError::UnknownKey => "unknown token signing key",
            JwtError::Signature => "invalid token signature",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not yet valid",
            JwtError::Issuer => "token issuer not accepted",
            JwtError::Audience => "token audience not accepted",
            JwtError::Claim(r) => r,
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for JwtError {}

const EXP_CLAIM: &str = "exp claim missing or not a number";
const NBF_CLAIM: &str = "nbf claim not a number";
const TENANT_CLAIM: &str = "tenant claim missing or not a string";
const TENANT_NOT_ALLOWED: &str = "tenant not allowed for this issuer";
const TOPICS_MISSING: &str = "topics claim missing";
const TOPICS_CLAIM: &str = "topics claim not a list of topic names";

/// Whether a bearer token has the shape of a JWT (JWS compact form): a header part that
/// starts as base64url JSON (`eyJ`), a payload part, and a signature part, separated by
/// two dots, all base64url. Cheap (one pass, no decoding), to choose between the JWT and
/// the static-token paths; the signature part may be empty so that an unsigned token
/// (`alg: none`) reaches `verify` and is refused with its own reason.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    if token.len() > MAX_TOKEN_BYTES || !token.starts_with(b"eyJ") {
        return false;
    }
    let mut dots = [0usize; 2];
    let mut n = 0;
    for (i, &b) in token.iter().enumerate() {
        if b == b'.' {
            if n == 2 {
                return false;
            }
            dots[n] = i;
            n += 1;
        } else if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return false;
        }
    }
    n == 2 && dots[1] > dots[0] + 1
}

/// One verification key from the JWKS.
struct Key {
    alg: Algorithm,
    decoding: DecodingKey,
    /// Pinned to `alg`; claims are checked by `check_claims`, not by the crate.
    validation: Validation,
}

/// The keys of a JWKS file and the trusted issuers. Immutable once loaded (a reload builds
/// a new one); `Send + Sync`, so one can be shared by every executor.
pub struct Verifier {
    keys: Vec<Key>,
    by_kid: HashMap<String, usize>,
    /// Per algorithm (`ALGS` order): the key a token without `kid` uses, when the set has
    /// exactly one key of that algorithm.
    sole: [Option<usize>; 3],
    issuers: Vec<JwtIssuer>,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.issuer).collect::<Vec<_>>(),
            )
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// The part of the header read before choosing a key.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
}

impl Verifier {
    /// Reads `cfg.jwks_file` and builds the verifier; None when no issuers are configured
    /// (the file is then not read). Errors name the file and what is wrong with it.
    pub fn load(cfg: &JwtConfig) -> Result<Option<Verifier>, String> {
        if cfg.issuers.is_empty() {
            return Ok(None);
        }
        let Some(path) = &cfg.jwks_file else {
            return Err("jwt.jwks_file: issuers need a key set".into());
        };
        let jwks = read_jwks(path).map_err(|e| format!("jwt.jwks_file {}: {e}", path.display()))?;
        Verifier::from_jwks(&jwks, cfg)
            .map(Some)
            .map_err(|e| format!("jwt.jwks_file {}: {e}", path.display()))
    }

    /// Builds a verifier from the text of a JWK Set and `cfg`'s issuers and leeway
    /// (`cfg.jwks_file` is not read). Errors say what is wrong, without the file's name.
    pub fn from_jwks(jwks: &[u8], cfg: &JwtConfig) -> Result<Verifier, String> {
        let mut seen = std::collections::HashSet::new();
        for (i, iss) in cfg.issuers.iter().enumerate() {
            if !seen.insert(iss.issuer.as_str()) {
                return Err(format!(
                    "jwt.issuers[{i}]: issuer {:?} is listed twice",
                    iss.issuer
                ));
            }
        }
        let doc: Value = serde_json::from_slice(jwks).map_err(|e| format!("not JSON: {e}"))?;
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err("not a JWK Set: no \"keys\" array".into());
        };
        let mut keys = Vec::new();
        let mut by_kid = HashMap::new();
        for (i, raw) in entries.iter().enumerate() {
            let kid = raw.get("kid").and_then(Value::as_str);
            let what = match kid {
                Some(k) => format!("keys[{i}] (kid {k:?})"),
                None => format!("keys[{i}]"),
            };
            let key = match read_key(raw) {
                Ok(k) => k,
                Err(Skip(why)) => {
                    tracing::warn!("jwt: JWKS {what} skipped: {why}");
                    continue;
                }
                Err(Fail(why)) => return Err(format!("{what}: {why}")),
            };
            if let Some(k) = kid {
                if by_kid.insert(k.to_owned(), keys.len()).is_some() {
                    return Err(format!("{what}: another key has the same kid"));
                }
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no RS256, ES256 or EdDSA signature key in the set".into());
        }
        let mut sole = [None; 3];
        for (a, slot) in ALGS.iter().zip(sole.iter_mut()) {
            let mut of_alg = keys.iter().enumerate().filter(|(_, k)| k.alg == *a);
            if let (Some((i, _)), None) = (of_alg.next(), of_alg.next()) {
                *slot = Some(i);
            }
        }
        Ok(Verifier {
            keys,
            by_kid,
            sole,
            issuers: cfg.issuers.clone(),
            leeway: cfg.leeway_secs,
        })
    }

    /// How many keys were loaded (for the load's log line).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The leeway applied to `exp` and `nbf`, seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway
    }

    /// Verifies the token's algorithm, key and signature, then `exp`/`nbf` (with the
    /// leeway, against `now_unix`), `iss` and `aud`, and reads the tenant and topics.
    /// `token` is the bearer credential as sent (the bytes after `Bearer `).
    pub fn verify(&self, token: &[u8], now_unix: u64) -> Result<Verified, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let key = self.key_for(token)?;
        let claims =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &key.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::Provider(_) => JwtError::Signature,
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::MissingAlgorithm
                    | ErrorKind::UnsupportedAlgorithm
                    | ErrorKind::InvalidAlgorithmName => JwtError::Algorithm,
                    _ => JwtError::Malformed,
                })?
                .claims;
        self.check_claims(&claims, now_unix)
    }

    /// The key the header names, if its algorithm is that key's.
    fn key_for(&self, token: &[u8]) -> Result<&Key, JwtError> {
        let header_b64 = token.split(|b| *b == b'.').next().unwrap_or_default();
        let header = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| JwtError::Malformed)?;
        // A JSON object (serde would take an array for a struct too).
        if header.trim_ascii_start().first() != Some(&b'{') {
            return Err(JwtError::Malformed);
        }
        let header: RawHeader = serde_json::from_slice(&header).map_err(|_| JwtError::Malformed)?;
        let alg = match &*header.alg {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            _ => return Err(JwtError::Algorithm),
        };
        let i = match &header.kid {
            Some(kid) => self.by_kid.get(&**kid).copied(),
            None => self.sole[alg_index(alg)],
        };
        let key = &self.keys[i.ok_or(JwtError::UnknownKey)?];
        if key.alg != alg {
            return Err(JwtError::Algorithm);
        }
        Ok(key)
    }

    /// The claims of a token whose signature verified.
    fn check_claims(&self, c: &Map<String, Value>, now: u64) -> Result<Verified, JwtError> {
        let exp = c
            .get("exp")
            .and_then(|v| numeric_date(v, f64::floor))
            .ok_or(JwtError::Claim(EXP_CLAIM))?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(JwtError::Expired);
        }
        if let Some(v) = c.get("nbf") {
            let nbf = numeric_date(v, f64::ceil).ok_or(JwtError::Claim(NBF_CLAIM))?;
            if nbf > now.saturating_add(self.leeway) {
                return Err(JwtError::NotYetValid);
            }
        }
        let iss = c
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(JwtError::Issuer)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(JwtError::Issuer)?;
        if !issuer.audiences.is_empty() {
            let accepted = |a: &str| issuer.audiences.iter().any(|x| x == a);
            let ok = match c.get("aud") {
                Some(Value::String(a)) => accepted(a),
                Some(Value::Array(v)) => {
                    v.iter().all(Value::is_string)
                        && v.iter().filter_map(Value::as_str).any(accepted)
                }
                _ => false,
            };
            if !ok {
                return Err(JwtError::Audience);
            }
        }
        let tenant = match &issuer.tenant {
            Some(t) => t.clone(),
            None => {
                let name = issuer.tenant_claim.as_deref().unwrap_or("sub");
                match c.get(name).and_then(Value::as_str) {
                    Some(t) if !t.is_empty() => t.to_owned(),
                    _ => return Err(JwtError::Claim(TENANT_CLAIM)),
                }
            }
        };
        // An issuer may be trusted for some tenants only.
        if !issuer.tenants.is_empty() && !issuer.tenants.contains(&tenant) {
            return Err(JwtError::Claim(TENANT_NOT_ALLOWED));
        }
        let topics = match &issuer.topics_claim {
            None => None,
            Some(name) => match c.get(name) {
                None | Some(Value::Null) => return Err(JwtError::Claim(TOPICS_MISSING)),
                Some(Value::Array(v)) => Some(
                    v.iter()
                        .map(|t| match t.as_str() {
                            Some(t) if valid_scope(t) => Ok(t.to_owned()),
                            _ => Err(JwtError::Claim(TOPICS_CLAIM)),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(_) => return Err(JwtError::Claim(TOPICS_CLAIM)),
            },
        };
        Ok(Verified {
            tenant,
            topics,
            expires_unix: exp,
        })
    }
}

/// A NumericDate (RFC 7519: seconds, possibly fractional), rounded with `round`; None if
/// not a non-negative number.
fn numeric_date(v: &Value, round: fn(f64) -> f64) -> Option<u64> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| round(f) as u64)
}

fn read_jwks(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut buf = Vec::new();
    f.take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes: not a key set"));
    }
    Ok(buf)
}

/// Why a JWKS entry is not used: skipped (with a warning) or the whole load fails.
enum KeyProblem {
    Skip(String),
    Fail(String),
}
use KeyProblem::{Fail, Skip};

/// One JWKS entry as a verification key; Err(Skip) for a key meant for something else.
fn read_key(raw: &Value) -> Result<Key, KeyProblem> {
    let kty = raw.get("kty").and_then(Value::as_str);
    if kty == Some("oct") {
        return Err(Fail(
            "a symmetric (oct) key: HS* tokens are not accepted, and the key set holds \
             public keys only"
                .into(),
        ));
    }
    if raw.get("d").is_some() {
        return Err(Fail(
            "holds a private key (\"d\"): give ingestd the public keys only".into(),
        ));
    }
    let jwk: Jwk = serde_json::from_value(raw.clone())
        .map_err(|e| Skip(format!("not a key this build reads: {e}")))?;
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return Err(Skip("\"use\" is not \"sig\"".into()));
        }
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err(Skip("\"key_ops\" has no \"verify\"".into()));
        }
    }
    let declared = jwk.common.key_algorithm;
    let (alg, expect) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            if declared.is_some_and(|a| a != KeyAlgorithm::RS256) {
                return Err(Skip(format!(
                    "alg {declared:?}: only RS256 is accepted for RSA keys"
                )));
            }
            check_rsa(&p.n, &p.e).map_err(Fail)?;
            (Algorithm::RS256, KeyAlgorithm::RS256)
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            return Err(Skip(format!(
                "curve {:?}: only P-256 (ES256) is accepted",
                p.curve
            )));
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            if URL_SAFE_NO_PAD.decode(&p.x).map(|x| x.len()) != Ok(32) {
                return Err(Fail(
                    "x is not 32 base64url bytes (an Ed25519 public key)".into(),
                ));
            }
            (Algorithm::EdDSA, KeyAlgorithm::EdDSA)
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            return Err(Skip(format!(
                "curve {:?}: only Ed25519 (EdDSA) is accepted",
                p.curve
            )));
        }
        _ => return Err(Skip(format!("key type {kty:?} is not RSA, EC or OKP"))),
    };
    if declared.is_some_and(|a| a != expect) {
        return Err(Fail(format!(
            "alg {declared:?} does not fit the key's type ({alg:?})"
        )));
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| Fail(format!("unreadable key: {e}")))?;
    if alg != Algorithm::RS256 {
        // The EC and Ed verifiers parse the point when built: a key off its curve fails here,
        // not on every request. (The RSA one does not; `check_rsa` did the same checks.)
        jsonwebtoken::crypto::verify("AAAA", b"probe", &decoding, alg)
            .map_err(|_| Fail(format!("not a valid {alg:?} public key")))?;
    }
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    Ok(Key {
        alg,
        decoding,
        validation,
    })
}

/// The checks `rsa::RsaPublicKey::new` does on every verify, done once at load (and a
/// floor of 2048 bits).
fn check_rsa(n: &str, e: &str) -> Result<(), String> {
    let n = URL_SAFE_NO_PAD
        .decode(n)
        .map_err(|_| "n is not base64url".to_string())?;
    let e = URL_SAFE_NO_PAD
        .decode(e)
        .map_err(|_| "e is not base64url".to_string())?;
    let n: &[u8] = &n[n.iter().position(|b| *b != 0).unwrap_or(n.len())..];
    let bits = match n.first() {
        Some(b) => (n.len() as u32 - 1) * 8 + (8 - b.leading_zeros()),
        None => 0,
    };
    if !RSA_BITS.contains(&bits) {
        return Err(format!(
            "an RSA modulus of {bits} bits ({}..={} accepted)",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    if n.last().is_some_and(|b| b % 2 == 0) {
        return Err("an even RSA modulus".into());
    }
    let e = e
        .iter()
        .try_fold(0u64, |acc, b| acc.checked_mul(256).map(|a| a | *b as u64));
    match e {
        Some(e) if (3..1 << 33).contains(&e) && e % 2 == 1 => Ok(()),
        _ => Err("an RSA exponent that is not odd, at least 3 and below 2^33".into()),
    }
}

#[cfg(test)]
mod tests;
