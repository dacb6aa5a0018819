//! Who may write what, how fast: the tenants of the configuration compiled into a
//! `Policy` (token digests to tenants, topic scopes, budgets, the JWT verifier), shared by
//! every executor read-only and swapped whole on SIGHUP (`Policies`). A request is
//! authenticated once, from its head: `Policy::authenticate`; its tenant then decides
//! scope, contract, body size and budget in `admit` (exec/admit.rs).

pub mod addrs;
pub mod budget;
pub mod jwt;
pub mod metrics;

use crate::config::{AckMode, Config, TenantConfig};
use budget::Bucket;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// SHA-256 of a bearer token: how static tokens are kept and looked up (the config may
/// hold the digest only, `sha256:<hex>`).
pub fn token_digest(t: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, t);
    d.as_ref().try_into().expect("32 bytes")
}

/// Constant-time equality (for tokens and digests): no early exit on the first byte that
/// differs. Eight bytes at a time, as every request of a connection compares its token
/// with the one cached for it (byte by byte, that was a third of admission's cost).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    let (mut wa, mut wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut diff = (&mut wa)
        .zip(&mut wb)
        .fold(0u64, |acc, (x, y)| acc | (word(x) ^ word(y)));
    for (x, y) in wa.remainder().iter().zip(wb.remainder()) {
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Topics a tenant (or a JWT) may write: `*`, prefixes (`logs.*`), exact names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    any: bool,
    exact: Vec<Box<[u8]>>,
    prefixes: Vec<Box<[u8]>>,
}

impl Scope {
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a str>) -> Scope {
        let mut s = Scope::default();
        for e in entries {
            match e.strip_suffix('*') {
                Some("") => s.any = true,
                Some(p) => s.prefixes.push(p.as_bytes().into()),
                None => s.exact.push(e.as_bytes().into()),
            }
        }
        s
    }

    pub fn allows(&self, topic: &[u8]) -> bool {
        self.any
            || self.exact.iter().any(|t| **t == *topic)
            || self.prefixes.iter().any(|p| topic.starts_with(p))
    }
}

/// Per-tenant counters, one padded block per executor (no cache line shared on the hot
/// path); kept across reloads by tenant name.
pub struct TenantStats {
    pub per_exec: Box<[TenantCounters]>,
}

#[repr(align(64))]
#[derive(Default)]
pub struct TenantCounters {
    /// Requests admitted (produced or answered by the produce path).
    pub requests: AtomicU64,
    /// Body bytes of admitted requests.
    pub bytes: AtomicU64,
    /// 403: topic or contract outside its scope.
    pub forbidden: AtomicU64,
    /// 429: over a budget.
    pub limited: AtomicU64,
    /// 413 from its smaller max_body_bytes.
    pub too_large: AtomicU64,
}

impl TenantStats {
    fn new(executors: usize) -> Arc<TenantStats> {
        Arc::new(TenantStats {
            per_exec: (0..executors).map(|_| TenantCounters::default()).collect(),
        })
    }

    pub fn sum(&self, f: impl Fn(&TenantCounters) -> &AtomicU64) -> u64 {
        self.per_exec.iter().map(|c| f(c).load(Relaxed)).sum()
    }
}

/// One tenant, compiled.
pub struct Tenant {
    pub name: Box<str>,
    pub scope: Scope,
    /// Leaked: an answer's topic may borrow it for as long as it likes. A reload leaks
    /// the names again, a few bytes per tenant per reload.
    pub default_topic: Option<&'static str>,
    /// Contracts it may ask for, by `AckMode as usize`.
    acks: [bool; 3],
    /// Its body limit, or 0 for the global one.
    pub max_body: usize,
    pub requests: Option<Bucket>,
    pub bytes: Option<Bucket>,
    pub anonymous: bool,
    pub stats: Arc<TenantStats>,
}

impl Tenant {
    pub fn may_ack(&self, a: AckMode) -> bool {
        self.acks[a as usize]
    }
}

/// Why a request is not authenticated (401): a short reason for the answer and the
/// `ingestd_auth_refused_total{reason}` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Malformed,
    UnknownToken,
    Jwt(jwt::JwtError),
    /// A valid JWT naming a tenant the configuration does not have.
    UnknownTenant,
}

/// The `reason` labels of `ingestd_auth_refused_total`, by `Refused::index`.
pub const REFUSED_LABELS: [&str; 5] = [
    "missing",
    "malformed",
    "unknown_token",
    "jwt",
    "unknown_tenant",
];

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Missing => "missing bearer token",
            Refused::Malformed => "malformed Authorization header",
            Refused::UnknownToken => "unknown bearer token",
            Refused::Jwt(e) => e.reason(),
            Refused::UnknownTenant => "the token's tenant is not configured",
        }
    }

    pub fn index(&self) -> usize {
        match self {
            Refused::Missing => 0,
            Refused::Malformed => 1,
            Refused::UnknownToken => 2,
            Refused::Jwt(_) => 3,
            Refused::UnknownTenant => 4,
        }
    }
}

/// A request's verdict: its principal, the narrower scope its JWT gives (if any), and
/// until when the verdict holds (Unix seconds; `u64::MAX` for static tokens).
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    pub narrowed: Option<Arc<Scope>>,
    pub expires_unix: u64,
}

impl Authenticated {
    pub fn open() -> Authenticated {
        Authenticated {
            principal: Principal::Open,
            narrowed: None,
            expires_unix: u64::MAX,
        }
    }

    fn tenant(i: u16) -> Authenticated {
        Authenticated {
            principal: Principal::Tenant(i),
            narrowed: None,
            expires_unix: u64::MAX,
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The configuration's tenants, compiled. Read-only once built.
pub struct Policy {
    /// Counts reloads: a connection's cached verdict is only good for its generation.
    pub generation: u64,
    pub tenants: Vec<Tenant>,
    tokens: HashMap<[u8; 32], u16>,
    anonymous: Option<u16>,
    jwt: Option<jwt::Verifier>,
    /// Which tenants a JWT may name (by index).
    jwt_tenants: Vec<bool>,
    /// Whether a request must present a credential (tokens, tenants or JWT issuers are
    /// configured); if not, every request is `Open` (no tenant, no budget).
    pub required: bool,
    /// The topics' schemas (`[topic.NAME]`), swapped with the rest on SIGHUP.
    pub schemas: crate::schema::Schemas,
}

/// Who a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off.
    Open,
    Tenant(u16),
}

impl Policy {
    /// Compiles the tenants of `cfg` (`auth_tokens` become the tenant `default`, with the
    /// global topics and no budget). `old`: the policy this one replaces, whose counters
    /// and bucket states carry over by tenant name.
    /// `executors`: how many run (the counters are per executor; a reloaded file may say
    /// another number, which takes a restart).
    pub fn build(
        cfg: &Config,
        executors: usize,
        generation: u64,
        old: Option<&Policy>,
    ) -> Result<Policy, String> {
        let mut tenants = Vec::new();
        let mut tokens = HashMap::new();
        let mut anonymous = None;
        let mut all: Vec<(String, TenantConfig)> = cfg
            .tenants
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        if !cfg.auth_tokens.is_empty() {
            if cfg.tenants.contains_key("default") {
                return Err("auth_tokens: they form the tenant \"default\", which [tenants] defines too: move them into its tokens".into());
            }
            all.push((
                "default".into(),
                TenantConfig {
                    tokens: cfg.auth_tokens.clone(),
                    topics: vec!["*".into()],
                    ..TenantConfig::default()
                },
            ));
        }
        for (name, t) in all {
            let idx = tenants.len() as u16;
            for tok in &t.tokens {
                let d = match crate::config::tenants::sha256_token(tok) {
                    Some(d) => d?,
                    None => token_digest(tok.as_bytes()),
                };
                tokens.insert(d, idx);
            }
            if t.anonymous {
                anonymous = Some(idx);
            }
            let prev = old.and_then(|o| o.tenants.iter().find(|x| *x.name == *name));
            let bucket = |rate: f64, prev: Option<&Bucket>| {
                (rate > 0.0).then(|| {
                    let b = Bucket::new(rate, t.burst_secs);
                    if let Some(p) = prev {
                        b.carry_over(p);
                    }
                    b
                })
            };
            let acks = if t.acks.is_empty() {
                [true; 3]
            } else {
                let mut a = [false; 3];
                for m in &t.acks {
                    a[*m as usize] = true;
                }
                a
            };
            // The global topics bound every tenant; `*` means "whatever they allow".
            let mut scope = Scope::new(t.topics.iter().map(String::as_str));
            if let Some(d) = &t.default_topic {
                scope.exact.push(d.as_bytes().into());
            }
            tenants.push(Tenant {
                scope,
                default_topic: t
                    .default_topic
                    .clone()
                    .map(|d| &*Box::leak(d.into_boxed_str())),
                acks,
                max_body: t.max_body_bytes,
                requests: bucket(t.requests_per_sec, prev.and_then(|p| p.requests.as_ref())),
                bytes: bucket(t.bytes_per_sec, prev.and_then(|p| p.bytes.as_ref())),
                anonymous: t.anonymous,
                stats: prev.map_or_else(|| TenantStats::new(executors), |p| p.stats.clone()),
                name: name.into(),
            });
        }
        let jwt = jwt::Verifier::load(&cfg.jwt)?;
        let schemas = crate::schema::Schemas::build(cfg, executors, old.map(|o| &o.schemas))?;
        let jwt_tenants = tenants
            .iter()
            .map(|t| !t.anonymous && (*t.name != *"default" || cfg.auth_tokens.is_empty()))
            .collect();
        Ok(Policy {
            jwt_tenants,
            generation,
            required: !tenants.is_empty() || jwt.is_some(),
            tenants,
            tokens,
            anonymous,
            jwt,
            schemas,
        })
    }

    /// The verdict on a request with this `Authorization` value (None: no header).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Authenticated, Refused> {
        if !self.required {
            return Ok(Authenticated::open());
        }
        let Some(v) = authorization else {
            return self
                .anonymous
                .map(Authenticated::tenant)
                .ok_or(Refused::Missing);
        };
        let token = bearer(v).ok_or(Refused::Malformed)?;
        // A static token first (a hash lookup): one that happens to look like a JWT still
        // works, and only what no static token matches pays for a signature check.
        let d = token_digest(token);
        // The map is keyed by digest: a lookup's timing depends on the digest of what the
        // client sent, never on a stored secret; the final comparison is constant-time.
        if let Some((k, &i)) = self.tokens.get_key_value(&d) {
            if ct_eq(k, &d) {
                return Ok(Authenticated::tenant(i));
            }
        }
        if let Some(j) = self.jwt.as_ref().filter(|_| jwt::looks_like_jwt(token)) {
            let v = j.verify(token, unix_now()).map_err(Refused::Jwt)?;
            // A JWT's tenant must be one a JWT may name: not the `auth_tokens` one (every
            // topic) nor an anonymous one (per-address limits); the issuer's own `tenants`
            // list is checked in `verify`.
            let i = self
                .by_name(&v.tenant)
                .filter(|&i| self.jwt_tenants[i as usize])
                .ok_or(Refused::UnknownTenant)?;
            return Ok(Authenticated {
                principal: Principal::Tenant(i),
                narrowed: v
                    .topics
                    .map(|t| Arc::new(Scope::new(t.iter().map(String::as_str)))),
                expires_unix: v.expires_unix.saturating_add(j.leeway_secs()),
            });
        }
        Err(Refused::UnknownToken)
    }

    pub fn tenant(&self, i: u16) -> &Tenant {
        &self.tenants[i as usize]
    }

    pub fn by_name(&self, name: &str) -> Option<u16> {
        self.tenants
            .iter()
            .position(|t| *t.name == *name)
            .map(|i| i as u16)
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, blanks trimmed).
pub fn bearer(v: &[u8]) -> Option<&[u8]> {
    let v = crate::http::parse::trim(v);
    if v.len() < 8 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(crate::http::parse::trim(&v[7..])).filter(|t| !t.is_empty())
}

/// The policy in force, shared by every executor: swapped whole on SIGHUP. Executors
/// hold their own `Arc` and look at `generation` (one relaxed load per request, a line
/// that is only written at a reload) to notice a new one.
pub struct Policies {
    current: Mutex<Arc<Policy>>,
    /// The executors running (tenant counters are per executor).
    executors: usize,
    pub generation: AtomicU64,
    /// Reloads refused because the new configuration was invalid (the old policy stays).
    pub reload_failures: AtomicU64,
    /// Those of them refused for a schema (`[topic.NAME]`).
    pub schema_reload_failures: AtomicU64,
    pub reloads: AtomicU64,
}

impl Policies {
    pub fn new(p: Policy, executors: usize) -> Arc<Policies> {
        Arc::new(Policies {
            executors,
            generation: AtomicU64::new(p.generation),
            current: Mutex::new(Arc::new(p)),
            reload_failures: AtomicU64::new(0),
            schema_reload_failures: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        })
    }

    pub fn current(&self) -> Arc<Policy> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Builds the policy of `cfg` and puts it in force; on error the old one stays.
    pub fn reload(&self, cfg: &Config) -> Result<(), String> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let next = Policy::build(cfg, self.executors, cur.generation + 1, Some(&cur))?;
        *cur = Arc::new(next);
        self.generation
            .store(cur.generation, std::sync::atomic::Ordering::Release);
        self.reloads.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// What every executor shares at the edge: the policy in force and the per-address table.
pub struct Edge {
    pub policies: Arc<Policies>,
    /// Present when a per-address limit is configured.
    pub addrs: Option<addrs::Addrs>,
    /// 401s by `Refused::index` (rare: shared counters are fine).
    pub refused: [AtomicU64; 5],
    /// Connections closed for a missing or bad PROXY header, by `PROXY_LABELS` index.
    pub proxy_refused: [AtomicU64; PROXY_LABELS.len()],
}

/// The `reason` labels of `ingestd_proxy_refused_total`: `ProxyError::reason`s, then the
/// reader's own (`exec::proxy::HeaderError::reason`).
pub const PROXY_LABELS: [&str; 16] = [
    "not_proxy",
    "v1_protocol",
    "v1_address",
    "v1_port",
    "v1_syntax",
    "v1_too_long",
    "v2_version",
    "v2_command",
    "v2_family",
    "v2_too_long",
    "v2_address",
    "v2_tlv",
    "v2_checksum",
    "timeout",
    "closed",
    "io",
];

impl Edge {
    /// Counts a connection closed for its PROXY header (`reason` from `HeaderError`).
    pub fn proxy_refused(&self, reason: &str) {
        let i = PROXY_LABELS
            .iter()
            .position(|l| *l == reason)
            .unwrap_or(PROXY_LABELS.len() - 1);
        self.proxy_refused[i].fetch_add(1, Relaxed);
    }
}

impl Edge {
    pub fn new(cfg: &Config) -> Result<Arc<Edge>, String> {
        let limits = cfg.max_connections_per_address > 0 || cfg.address_requests_per_sec > 0.0;
        Ok(Arc::new(Edge {
            policies: Policies::new(Policy::build(cfg, cfg.executors, 1, None)?, cfg.executors),
            addrs: limits.then(|| {
                addrs::Addrs::new(
                    cfg.address_table_entries,
                    cfg.max_connections_per_address,
                    cfg.address_requests_per_sec,
                    cfg.address_burst,
                )
            }),
            refused: Default::default(),
            proxy_refused: Default::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> Policy {
        let mut cfg: Config = toml::from_str(toml_text).unwrap();
        cfg.validate().unwrap();
        Policy::build(&cfg, 1, 1, None).unwrap()
    }

    fn who(p: &Policy, auth: Option<&str>) -> Result<Principal, Refused> {
        p.authenticate(auth.map(str::as_bytes)).map(|a| a.principal)
    }

    fn invalid(toml_text: &str) -> String {
        let mut cfg: Config = toml::from_str(toml_text).unwrap();
        cfg.validate().unwrap_err()
    }

    #[test]
    fn ct_eq_tells_every_difference_at_every_length() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert!(ct_eq(&a, &a.clone()), "{n}");
            for i in 0..n {
                for bit in [0x01, 0x80] {
                    let mut b = a.clone();
                    b[i] ^= bit;
                    assert!(!ct_eq(&a, &b), "length {n}, byte {i}");
                }
            }
            assert!(!ct_eq(&a, &[a.as_slice(), b"x"].concat()), "{n}");
        }
    }

    #[test]
    fn configurations_that_would_loosen_a_scope_are_refused() {
        // A token both shared (every topic) and a tenant's.
        let e = invalid("auth_tokens = [\"t\"]\n[tenants.a]\ntokens = [\"t\"]\ntopics = [\"x\"]\n");
        assert!(e.contains("also default's"), "{e}");
        // Tenants stay within the global topics.
        let e = invalid("topics = [\"a\"]\n[tenants.t]\ntokens = [\"k\"]\ntopics = [\"b\"]\n");
        assert!(e.contains("not allowed by the global topics"), "{e}");
        let e = invalid("topics = [\"a\"]\ndefault_topic = \"a\"\n[tenants.t]\ntokens = [\"k\"]\ndefault_topic = \"b\"\n");
        assert!(e.contains("default_topic"), "{e}");
        // A byte budget whose burst is smaller than the largest body could never admit it.
        let e = invalid("[tenants.t]\ntokens = [\"k\"]\nbytes_per_sec = 1000\n");
        assert!(e.contains("less than the largest body"), "{e}");
        // A JWT may not name the anonymous tenant.
        let e = invalid(
            "[tenants.web]\nanonymous = true\n[jwt]\njwks_file = \"/x\"\n[[jwt.issuers]]\nissuer = \"i\"\ntenant = \"web\"\n",
        );
        assert!(e.contains("not a tenant a JWT may name"), "{e}");
        // The headers ingestd sets may not be forwarded from a client.
        let e =
            invalid("client_address_header = \"x-real-ip\"\nforward_headers = [\"X-Real-IP\"]\n");
        assert!(e.contains("sets itself"), "{e}");
        let e = invalid("forward_headers = [\"ingestd-tenant\"]\n");
        assert!(e.contains("sets itself"), "{e}");
    }

    #[test]
    fn a_static_token_shaped_like_a_jwt_still_works_beside_jwt_issuers() {
        let dir = std::env::temp_dir().join(format!("ingestd-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let set = dir.join("jwks.json");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/jwt/jwks.json"),
            &set,
        )
        .unwrap();
        let p = policy(&format!(
            "[tenants.a]\ntokens = [\"eyJhbGciOi.static.token\"]\ntopics = [\"*\"]\n[jwt]\njwks_file = \"{}\"\n[[jwt.issuers]]\nissuer = \"i\"\ntenant = \"a\"\n",
            set.display()
        ));
        assert_eq!(
            who(&p, Some("Bearer eyJhbGciOi.static.token")).ok(),
            p.by_name("a").map(Principal::Tenant)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bearer_tokens_plain_and_sha256_name_their_tenant() {
        let digest: String = token_digest(b"hashed-secret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let p = policy(&format!(
            r#"
            auth_tokens = ["s3cret"]
            [tenants.acme]
            tokens = ["acme-1", "acme-2", "sha256:{digest}"]
            topics = ["orders", "logs.*"]
            [tenants.web]
            anonymous = true
            topics = ["beacons"]
            "#
        ));
        let acme = p.by_name("acme").map(Principal::Tenant);
        assert_eq!(who(&p, Some("Bearer acme-1")).ok(), acme);
        assert_eq!(
            who(&p, Some("bearer  acme-2 ")).ok(),
            acme,
            "scheme case, blanks"
        );
        assert_eq!(
            who(&p, Some("Bearer hashed-secret")).ok(),
            acme,
            "sha256: form"
        );
        assert_eq!(
            who(&p, Some("Bearer s3cret")).ok(),
            p.by_name("default").map(Principal::Tenant)
        );
        assert_eq!(who(&p, Some("Bearer acme-")), Err(Refused::UnknownToken));
        assert_eq!(who(&p, Some("Basic acme-1")), Err(Refused::Malformed));
        assert_eq!(who(&p, Some("Bearer ")), Err(Refused::Malformed));
        // No header: the anonymous tenant.
        assert_eq!(who(&p, None).ok(), p.by_name("web").map(Principal::Tenant));
        let t = p.tenant(p.by_name("acme").unwrap());
        assert!(t.scope.allows(b"orders") && t.scope.allows(b"logs.app"));
        assert!(!t.scope.allows(b"order") && !t.scope.allows(b"logs"));
        // Without an anonymous tenant a missing header is refused.
        let p = policy(r#"auth_tokens = ["x"]"#);
        assert_eq!(who(&p, None), Err(Refused::Missing));
        // No credentials configured: open.
        assert_eq!(who(&policy(""), None), Ok(Principal::Open));
    }
}
