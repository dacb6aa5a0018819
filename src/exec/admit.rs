//! Admission at the edge, from a request's head, before its body is read: who it is
//! (401), whether its tenant may write that topic with that contract (403), whether its
//! body fits the tenant's limit (413), and whether the tenant's budgets and the client
//! address's limit allow it now (429, with the real wait). A refused request produces
//! nothing. The policy comes from `auth` (shared, swapped on SIGHUP); what this executor
//! keeps is its own view of it and its budget leases.

use crate::auth::budget::{now_ns, Lease};
use crate::auth::{addrs::SlotId, Authenticated, Edge, Policy, Principal, Refused, Tenant};
use crate::config::Config;
use crate::error::HttpError;
use crate::exec::route::{find_header, Produce, Topic};
use crate::http::parse::{Framing, Head};
use crate::metrics::bump;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Acquire;
use std::sync::Arc;
use std::time::Duration;

/// One executor's side of the edge.
pub struct Guard {
    pub edge: Arc<Edge>,
    policy: RefCell<Arc<Policy>>,
    generation: Cell<u64>,
    /// Budget leases by tenant: (requests, bytes).
    leases: RefCell<Vec<[Lease; 2]>>,
    executor: usize,
}

/// A connection's side: its client address and the verdict on its last credential.
#[derive(Default)]
pub struct ConnAuth {
    /// The client (from the PROXY header, else the socket's peer).
    pub addr: Option<SocketAddr>,
    /// Its slot in the per-address table (counted out when the connection ends).
    pub slot: Option<SlotId>,
    /// `addr` as text, for the `client_address_header` record header.
    pub addr_text: Vec<u8>,
    cached: Option<Cached>,
}

struct Cached {
    generation: u64,
    token: Vec<u8>,
    auth: Authenticated,
    /// Until when (`now_ns` scale) the verdict holds: a JWT's expiry (its leeway
    /// included), converted once, so a cached check reads no wall clock.
    deadline_ns: u64,
}

/// An admitted produce request.
#[derive(Clone, Copy, Default)]
pub struct Admitted {
    /// Its tenant (None: authentication is off): an index into the policy of
    /// `generation`, good only while that policy is in force (`Guard::tenant`).
    pub tenant: Option<u16>,
    pub generation: u64,
}

impl Guard {
    pub fn new(edge: Arc<Edge>, executor: usize) -> Guard {
        let p = edge.policies.current();
        Guard {
            generation: Cell::new(p.generation),
            leases: RefCell::new(vec![[Lease::default(); 2]; p.tenants.len()]),
            policy: RefCell::new(p),
            edge,
            executor,
        }
    }

    /// The policy in force (a new one after a reload: the old leases go back first).
    /// Borrowed, not cloned: an `Arc` clone per request would bounce its count's cache
    /// line between the executors.
    pub fn policy(&self) -> std::cell::Ref<'_, Arc<Policy>> {
        let g = self.edge.policies.generation.load(Acquire);
        if g != self.generation.get() {
            let now = now_ns();
            let old = self.policy.borrow().clone();
            for (t, [r, b]) in old.tenants.iter().zip(self.leases.borrow_mut().iter_mut()) {
                if let Some(bk) = &t.requests {
                    r.give_back(bk, now);
                }
                if let Some(bk) = &t.bytes {
                    b.give_back(bk, now);
                }
            }
            let p = self.edge.policies.current();
            *self.leases.borrow_mut() = vec![[Lease::default(); 2]; p.tenants.len()];
            self.generation.set(p.generation);
            *self.policy.borrow_mut() = p;
        }
        self.policy.borrow()
    }

    /// Admits a produce request from its head (see the module doc), or says why not.
    /// `out` gets the request's tenant as soon as it is known, refused or not (the
    /// refusal names it).
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &self,
        c: &mut ConnAuth,
        buf: &[u8],
        head: &Head,
        p: &Produce,
        cfg: &Config,
        now: u64,
        out: &mut Admitted,
    ) -> Result<(), HttpError> {
        let policy = self.policy();
        out.generation = policy.generation;
        let auth = self.authenticate(&policy, c, buf, head, now)?;
        let Principal::Tenant(i) = auth.principal else {
            return self.address_rate(c, now);
        };
        out.tenant = Some(i);
        let t = policy.tenant(i);
        let stats = &t.stats.per_exec[self.executor];
        let topic = topic_name(buf, p, Some(t), cfg);
        if topic.is_empty() {
            return Err(HttpError::NotFound("no default topic configured"));
        }
        let in_scope =
            t.scope.allows(topic) && auth.narrowed.as_ref().is_none_or(|s| s.allows(topic));
        if !in_scope {
            bump(&stats.forbidden, 1);
            return Err(HttpError::Forbidden("topic not in the tenant's scope"));
        }
        if !t.may_ack(p.ack) {
            bump(&stats.forbidden, 1);
            return Err(HttpError::Forbidden(
                "delivery contract (Kafka-Ack) not allowed for the tenant",
            ));
        }
        let length = match head.framing {
            Framing::Length(n) => Some(n),
            Framing::Empty => Some(0),
            Framing::Chunked => None,
        };
        if t.max_body > 0 && length.is_some_and(|n| n > t.max_body) {
            bump(&stats.too_large, 1);
            return Err(HttpError::PayloadTooLarge);
        }
        // The address first: a client over its own limit must not drain the anonymous
        // tenant's budget that every other client shares.
        if t.anonymous {
            self.address_rate(c, now)?;
        }
        self.spend(i, t, 1, length.unwrap_or(0) as u64, now)?;
        bump(&stats.requests, 1);
        bump(&stats.bytes, length.unwrap_or(0) as u64);
        Ok(())
    }

    /// Bytes the head could not announce (a chunked body, or what a compressed one
    /// decoded to beyond its wire size), known once the body is read: the tenant's byte
    /// budget decides now, before anything is produced. A refusal gives the request's
    /// unit back (nothing of a refused request counts).
    pub fn admit_body(&self, a: Admitted, more: usize) -> Result<(), HttpError> {
        let Some(i) = a.tenant else { return Ok(()) };
        let policy = self.tenant_policy(a)?;
        let t = policy.tenant(i);
        if more == 0 {
            return Ok(());
        }
        if let Err(e) = self.spend(i, t, 0, more as u64, now_ns()) {
            if t.requests.is_some() {
                self.leases.borrow_mut()[i as usize][0].refund(1);
            }
            return Err(e);
        }
        bump(&t.stats.per_exec[self.executor].bytes, more as u64);
        Ok(())
    }

    /// The tenant's body limit for an admitted request (0: the global one).
    pub fn body_limit(&self, a: Admitted) -> usize {
        let policy = self.policy.borrow();
        match a.tenant {
            Some(i) if a.generation == policy.generation => policy.tenant(i).max_body,
            _ => 0,
        }
    }

    /// The policy an admitted request's tenant index belongs to, or 503 when a reload
    /// swapped it while the body arrived: the index may name another tenant now, so the
    /// request is refused (the client retries under the new policy), never produced under
    /// the wrong name.
    pub fn tenant_policy(&self, a: Admitted) -> Result<std::cell::Ref<'_, Arc<Policy>>, HttpError> {
        let p = self.policy.borrow();
        match a.tenant {
            Some(_) if a.generation != p.generation => Err(HttpError::PolicyReloaded),
            _ => Ok(p),
        }
    }

    /// Spends `requests` and `bytes` of tenant `i`'s budgets (both or neither).
    fn spend(
        &self,
        i: u16,
        t: &Tenant,
        requests: u64,
        bytes: u64,
        now: u64,
    ) -> Result<(), HttpError> {
        let mut leases = self.leases.borrow_mut();
        let [lr, lb] = &mut leases[i as usize];
        let limited = |what, wait: Duration| {
            bump(&t.stats.per_exec[self.executor].limited, 1);
            HttpError::TooManyRequests {
                what,
                retry_ms: wait.as_millis().clamp(1, u32::MAX as u128) as u32,
            }
        };
        if let (Some(b), true) = (&t.requests, requests > 0) {
            lr.spend(b, requests, now)
                .map_err(|w| limited("over the tenant's requests_per_sec", w))?;
        }
        if let (Some(b), true) = (&t.bytes, bytes > 0) {
            if let Err(w) = lb.spend(b, bytes, now) {
                // Nothing of a refused request counts: its request goes back.
                if let (Some(r), true) = (&t.requests, requests > 0) {
                    r.give_back(requests, now);
                }
                return Err(limited("over the tenant's bytes_per_sec", w));
            }
        }
        Ok(())
    }

    /// The per-address request limit of anonymous traffic.
    fn address_rate(&self, c: &ConnAuth, now: u64) -> Result<(), HttpError> {
        let (Some(a), Some(slot)) = (&self.edge.addrs, c.slot) else {
            return Ok(());
        };
        a.request(slot, now)
            .map_err(|w| HttpError::TooManyRequests {
                what: "over address_requests_per_sec for this client address",
                retry_ms: w.as_millis().clamp(1, u32::MAX as u128) as u32,
            })
    }

    /// The request's principal: the connection's cached verdict when it presents the same
    /// credential under the same policy, else a fresh one (cached for the next request).
    fn authenticate(
        &self,
        policy: &Policy,
        c: &mut ConnAuth,
        buf: &[u8],
        head: &Head,
        now: u64,
    ) -> Result<Authenticated, HttpError> {
        if !policy.required {
            return Ok(Authenticated::open());
        }
        let value = find_header(buf, head, b"authorization").map(|r| &buf[r]);
        let token = value.and_then(crate::auth::bearer);
        if let (Some(t), Some(k)) = (token, &c.cached) {
            if k.generation == policy.generation
                && crate::auth::ct_eq(t, &k.token)
                && now < k.deadline_ns
            {
                return Ok(k.auth.clone());
            }
        }
        match policy.authenticate(value) {
            Ok(a) => {
                if let Some(t) = token {
                    let deadline_ns = match a.expires_unix {
                        u64::MAX => u64::MAX,
                        exp => {
                            let left = exp.saturating_sub(crate::auth::unix_now());
                            now.saturating_add(left.saturating_mul(1_000_000_000))
                        }
                    };
                    c.cached = Some(Cached {
                        generation: policy.generation,
                        token: t.to_vec(),
                        auth: a.clone(),
                        deadline_ns,
                    });
                }
                Ok(a)
            }
            Err(r) => {
                c.cached = None;
                self.refused(r);
                Err(match r {
                    Refused::Jwt(_) | Refused::UnknownTenant => HttpError::BadToken(r.reason()),
                    _ => HttpError::Unauthorized(r.reason()),
                })
            }
        }
    }

    fn refused(&self, r: Refused) {
        // Shared by every executor: a real atomic add, not `bump`.
        self.edge.refused[r.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The topic a produce request writes: the path's, else its tenant's default, else the
/// global default ("" when there is none).
pub fn topic_name<'a>(buf: &'a [u8], p: &Produce, t: Option<&Tenant>, cfg: &'a Config) -> &'a [u8] {
    match &p.topic {
        Topic::Path(r) => buf.get(r.clone()).unwrap_or(b""),
        Topic::Default => t
            .and_then(|t| t.default_topic)
            .or(cfg.default_topic.as_deref())
            .unwrap_or("")
            .as_bytes(),
    }
}
