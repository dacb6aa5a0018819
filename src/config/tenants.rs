//! The `[tenants.NAME]` tables and the `[jwt]` table: who may write what, how fast, with
//! which credentials. Plain data and its checks; `auth` compiles it into the policy the
//! executors use (and compiles it again on SIGHUP).

use super::AckMode;
use crate::kafka::topics::valid_topic;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One tenant: `[tenants.acme]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Bearer tokens, as given or `sha256:<64 hex digits>` (the SHA-256 of the token, so
    /// the file need not hold a usable secret). Several for rotation.
    pub tokens: Vec<String>,
    /// Requests without credentials are this tenant's (at most one tenant): anonymous
    /// traffic such as `navigator.sendBeacon`, limited per client address too
    /// (`address_requests_per_sec`).
    pub anonymous: bool,
    /// Topics it may write: exact names, prefixes such as `logs.*`, or `*` for every
    /// topic the global `topics` allows. Empty: its `default_topic` only.
    pub topics: Vec<String>,
    /// Topic of `POST /` for this tenant (else the global `default_topic`, if in scope).
    pub default_topic: Option<String>,
    /// Budget: requests per second (0: unlimited), held across all executors.
    pub requests_per_sec: f64,
    /// Budget: request body bytes per second (0: unlimited).
    pub bytes_per_sec: f64,
    /// How many seconds of budget may be spent at once (the bucket depth).
    pub burst_secs: f64,
    /// A smaller body limit than the global `max_body_bytes` (0: the global one).
    pub max_body_bytes: usize,
    /// Delivery contracts it may ask for (`Kafka-Ack`); empty: all.
    pub acks: Vec<AckMode>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            tokens: vec![],
            anonymous: false,
            topics: vec![],
            default_topic: None,
            requests_per_sec: 0.0,
            bytes_per_sec: 0.0,
            burst_secs: 1.0,
            max_body_bytes: 0,
            acks: vec![],
        }
    }
}

/// `[jwt]`: bearer tokens that are JWTs, verified against a JWKS file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The JSON Web Key Set (RS256, ES256 and EdDSA keys), read at start and on SIGHUP.
    /// Keys of other algorithms or uses are skipped with a warning; a secret (`oct`) or
    /// private key fails the load (`auth::jwt`).
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The issuers whose tokens are accepted (`[[jwt.issuers]]`).
    pub issuers: Vec<JwtIssuer>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            jwks_file: None,
            leeway_secs: 60,
            issuers: vec![],
        }
    }
}

/// One trusted issuer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct JwtIssuer {
    /// The `iss` claim, exactly.
    pub issuer: String,
    /// Accepted `aud` values (the token's `aud` must hold one); empty: `aud` not checked.
    pub audiences: Vec<String>,
    /// Every token of this issuer is this tenant's.
    pub tenant: Option<String>,
    /// With `tenant_claim`: the tenants its tokens may name (empty: any tenant a JWT may
    /// name, i.e. not `default` nor an anonymous one).
    pub tenants: Vec<String>,
    /// Else the tenant is named by this claim, a string (default `sub`).
    pub tenant_claim: Option<String>,
    /// A claim (a list of topic names or patterns) that narrows the tenant's topics for
    /// this token; unset: the tenant's topics. When set, a token without the claim is
    /// refused (`["*"]` gives a token the tenant's whole scope).
    pub topics_claim: Option<String>,
}

/// A tenant's topic scope entry: `*`, a prefix pattern (`logs.*`: every topic whose name
/// starts with `logs.`), or an exact name.
pub fn valid_scope(t: &str) -> bool {
    match t.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        None => valid_topic(t),
    }
}

/// A `sha256:` token's digest, or None if it is not one.
pub fn sha256_token(t: &str) -> Option<Result<[u8; 32], String>> {
    let hex = t.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(Err("sha256: tokens take 64 hex digits".into()));
    }
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex checked");
    }
    Some(Ok(d))
}

/// Most tenants one configuration may have (label cardinality, and the policy's index).
pub const MAX_TENANTS: usize = 10_000;

/// Checks the tenants and the JWT settings against the rest of the configuration:
/// `max_body` is the global `max_body_bytes`, `auth_tokens` the tokens of the tenant
/// `default`, `allowed(topic)` whether the global `topics` allow a topic.
pub fn validate(
    tenants: &std::collections::BTreeMap<String, TenantConfig>,
    jwt: &JwtConfig,
    max_body: usize,
    auth_tokens: &[String],
    allowed: impl Fn(&str) -> bool,
) -> Result<(), String> {
    if tenants.len() > MAX_TENANTS {
        return Err(format!("tenants: at most {MAX_TENANTS}"));
    }
    let mut anonymous = None;
    let mut seen_tokens = std::collections::BTreeMap::new();
    // The shared tokens are the tenant "default"'s: none may be another tenant's too.
    let default = "default".to_string();
    for tok in auth_tokens {
        let digest = match sha256_token(tok) {
            Some(d) => d.map_err(|e| format!("auth_tokens: {e}"))?,
            None => crate::auth::token_digest(tok.as_bytes()),
        };
        seen_tokens.insert(digest, &default);
    }
    for (name, t) in tenants {
        let key = |k: &str| format!("tenants.{name}.{k}");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            return Err(format!(
                "tenants.{name:?}: a tenant name is printable ASCII without quotes"
            ));
        }
        if t.anonymous {
            if let Some(other) = anonymous.replace(name) {
                return Err(format!(
                    "{}: only one tenant may be anonymous ({other} is)",
                    key("anonymous")
                ));
            }
            if !t.tokens.is_empty() {
                return Err(format!(
                    "{}: an anonymous tenant has no tokens",
                    key("tokens")
                ));
            }
        }
        for tok in &t.tokens {
            let digest = match sha256_token(tok) {
                Some(d) => d.map_err(|e| format!("{}: {e}", key("tokens")))?,
                None if tok.trim().is_empty() || tok.trim() != tok => {
                    return Err(format!(
                        "{}: a token is not empty and has no surrounding blanks",
                        key("tokens")
                    ));
                }
                None => crate::auth::token_digest(tok.as_bytes()),
            };
            if let Some(other) = seen_tokens.insert(digest, name) {
                return Err(format!(
                    "{}: a token of this tenant is also {other}'s (value not shown)",
                    key("tokens")
                ));
            }
        }
        for s in &t.topics {
            if !valid_scope(s) {
                return Err(format!(
                    "{}: {s:?} is not a topic name, a prefix pattern (logs.*) or *",
                    key("topics")
                ));
            }
            // The global topics bound every tenant.
            if !s.ends_with('*') && !allowed(s) {
                return Err(format!(
                    "{}: {s:?} is not allowed by the global topics",
                    key("topics")
                ));
            }
        }
        if let Some(d) = &t.default_topic {
            if !valid_topic(d) {
                return Err(format!(
                    "{}: invalid topic name {d:?}",
                    key("default_topic")
                ));
            }
            if !allowed(d) {
                return Err(format!(
                    "{}: {d:?} is not allowed by the global topics",
                    key("default_topic")
                ));
            }
        }
        for (k, v) in [
            ("requests_per_sec", t.requests_per_sec),
            ("bytes_per_sec", t.bytes_per_sec),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{}: a rate of 0 (unlimited) or more", key(k)));
            }
        }
        if !(t.burst_secs.is_finite() && t.burst_secs > 0.0 && t.burst_secs <= 3600.0) {
            return Err(format!(
                "{}: more than 0 and at most 3600",
                key("burst_secs")
            ));
        }
        if t.max_body_bytes > max_body {
            return Err(format!(
                "{}: at most the global max_body_bytes ({max_body})",
                key("max_body_bytes")
            ));
        }
        // Every body the tenant may send must fit its byte bucket, else it could never
        // be admitted.
        let largest = if t.max_body_bytes > 0 {
            t.max_body_bytes
        } else {
            max_body
        };
        if t.bytes_per_sec > 0.0 && t.bytes_per_sec * t.burst_secs < largest as f64 {
            return Err(format!(
                "{}: bytes_per_sec x burst_secs = {} is less than the largest body it may send ({largest}): raise burst_secs, or set a smaller max_body_bytes",
                key("bytes_per_sec"),
                t.bytes_per_sec * t.burst_secs
            ));
        }
    }
    if !jwt.issuers.is_empty() && jwt.jwks_file.is_none() {
        return Err("jwt.jwks_file: issuers need a key set".into());
    }
    if jwt.leeway_secs > 3600 {
        return Err("jwt.leeway_secs: at most 3600".into());
    }
    // A JWT may not speak for the shared-token tenant (every topic) or an anonymous one
    // (limited per address, not per token).
    let jwt_may = |t: &String| {
        tenants.get(t).is_some_and(|c| !c.anonymous) && (t != "default" || auth_tokens.is_empty())
    };
    for (i, iss) in jwt.issuers.iter().enumerate() {
        if iss.issuer.is_empty() {
            return Err(format!("jwt.issuers[{i}].issuer: the iss claim to accept"));
        }
        if iss.tenant.is_some() && iss.tenant_claim.is_some() {
            return Err(format!(
                "jwt.issuers[{i}]: tenant or tenant_claim, not both"
            ));
        }
        for t in iss.tenant.iter().chain(&iss.tenants) {
            if !jwt_may(t) {
                return Err(format!(
                    "jwt.issuers[{i}]: {t:?} is not a tenant a JWT may name (one of [tenants], not anonymous, not the \"default\" of auth_tokens)"
                ));
            }
        }
    }
    Ok(())
}
