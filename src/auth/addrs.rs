//! Per-client-address limits: connections at once and anonymous requests per second.
//!
//! One table shared by every executor (a client's connections land on any of them), of a
//! fixed size allocated at start: memory is bounded whatever the number of distinct
//! addresses. Each slot holds an address's hash, its open connections and its request
//! bucket (GCRA, as `budget`). An address takes the first free slot among 4 after its
//! hash; a slot is free when it has no connection and its bucket is full again. With all
//! 4 busy (a flood of distinct addresses) the address shares the first one: its counts
//! then include another address's, which only makes the limits stricter for both, never
//! looser, and never costs memory.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const PROBE: usize = 4;

struct Slot {
    /// The address's hash (never 0); 0: empty.
    key: AtomicU64,
    conns: AtomicU32,
    /// GCRA theoretical arrival time of its requests (`budget::now_ns`).
    tat: AtomicU64,
}

pub struct Addrs {
    slots: Box<[Slot]>,
    max_conns: u32,
    /// ns per request, and the burst's ns of credit; 0: no rate limit.
    interval: u64,
    burst_ns: u64,
    /// Keyed SipHash (a random key per process): neither an address's slot nor a key
    /// equal to another address's can be chosen from outside.
    hasher: std::collections::hash_map::RandomState,
}

/// Where an address lives in the table (kept by its connection, to count it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotId(u32);

impl Addrs {
    /// `entries` slots (rounded up to a power of two); `max_conns` per address (0: no
    /// limit); `rate` requests per second with `burst` at once (rate 0: no limit).
    pub fn new(entries: usize, max_conns: u32, rate: f64, burst: u32) -> Addrs {
        let n = entries.next_power_of_two().max(PROBE);
        let slots = (0..n)
            .map(|_| Slot {
                key: AtomicU64::new(0),
                conns: AtomicU32::new(0),
                tat: AtomicU64::new(0),
            })
            .collect();
        let interval = if rate > 0.0 { (1e9 / rate) as u64 } else { 0 };
        Addrs {
            slots,
            max_conns,
            interval,
            burst_ns: interval.saturating_mul(burst.max(1) as u64),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Slots holding an address now: with a connection open or requests still counted
    /// against its rate (for the gauge; a scrape walks the table).
    pub fn in_use(&self, now: u64) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.key.load(Relaxed) != 0 && (s.conns.load(Relaxed) > 0 || s.tat.load(Relaxed) > now)
            })
            .count()
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The key of `ip`'s client: an IPv4 address, or an IPv6 /64 (one subscriber's
    /// prefix: counting each /128 would give every IPv6 client 2^64 budgets).
    fn hash(&self, ip: &IpAddr) -> u64 {
        let client = match ip {
            IpAddr::V4(a) => (4u8, u32::from(*a) as u128),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => (4, u32::from(v4) as u128),
                None => (6, u128::from(*a) >> 64),
            },
        };
        std::hash::BuildHasher::hash_one(&self.hasher, client) | 1
    }

    /// The slot of `ip`, claiming a free one if it has none.
    fn slot(&self, ip: &IpAddr, now: u64) -> SlotId {
        let key = self.hash(ip);
        let mask = self.slots.len() - 1;
        let first = (key as usize) & mask;
        for i in 0..PROBE {
            let at = (first + i) & mask;
            let s = &self.slots[at];
            let k = s.key.load(Relaxed);
            if k == key {
                return SlotId(at as u32);
            }
            let free = k == 0 || (s.conns.load(Relaxed) == 0 && s.tat.load(Relaxed) <= now);
            if free && s.key.compare_exchange(k, key, Relaxed, Relaxed).is_ok() {
                return SlotId(at as u32);
            }
        }
        SlotId(first as u32)
    }

    /// A new connection from `ip`: its slot, or Err when the address is at its limit
    /// (the connection is answered 429 and closed).
    pub fn connect(&self, ip: &IpAddr, now: u64) -> Result<SlotId, SlotId> {
        let id = self.slot(ip, now);
        let n = self.slots[id.0 as usize].conns.fetch_add(1, Relaxed) + 1;
        if self.max_conns > 0 && n > self.max_conns {
            return Err(id);
        }
        Ok(id)
    }

    /// A connection counted by `connect` (allowed or not) ended.
    pub fn disconnect(&self, id: SlotId) {
        let c = &self.slots[id.0 as usize].conns;
        let _ = c.fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// An anonymous request from the address of `id`: Ok, or the wait until one fits.
    pub fn request(&self, id: SlotId, now: u64) -> Result<(), Duration> {
        if self.interval == 0 {
            return Ok(());
        }
        let tat = &self.slots[id.0 as usize].tat;
        let mut t = tat.load(Relaxed);
        loop {
            let new = t.max(now) + self.interval;
            if new - now > self.burst_ns {
                return Err(Duration::from_nanos(new - now - self.burst_ns));
            }
            match tat.compare_exchange_weak(t, new, Relaxed, Relaxed) {
                Ok(_) => return Ok(()),
                Err(x) => t = x,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn connections_per_address_are_limited_and_counted_out() {
        let a = Addrs::new(64, 2, 0.0, 1);
        let ip = v4(0x0a000001);
        let s1 = a.connect(&ip, 1).unwrap();
        let s2 = a.connect(&ip, 1).unwrap();
        assert_eq!(s1, s2);
        let refused = a.connect(&ip, 1).unwrap_err();
        a.disconnect(refused);
        // Another address is not affected.
        assert!(a.connect(&v4(0x0a000002), 1).is_ok());
        a.disconnect(s1);
        assert!(a.connect(&ip, 1).is_ok(), "room again");
    }

    #[test]
    fn requests_per_address_follow_the_rate_and_burst() {
        let a = Addrs::new(64, 0, 10.0, 5);
        let id = a.connect(&v4(7), 1_000_000_000).unwrap();
        let t = 1_000_000_000;
        let ok = (0..20).filter(|_| a.request(id, t).is_ok()).count();
        assert_eq!(ok, 5, "the burst");
        let w = a.request(id, t).unwrap_err();
        assert_eq!(w, Duration::from_millis(100));
        assert!(a.request(id, t + 100_000_000).is_ok());
    }

    #[test]
    fn an_ipv6_prefix_is_one_client() {
        let a = Addrs::new(64, 1, 0.0, 1);
        let one = IpAddr::V6("2001:db8:1:2::1".parse().unwrap());
        let same_64 = IpAddr::V6("2001:db8:1:2:ffff::9".parse().unwrap());
        let other_64 = IpAddr::V6("2001:db8:1:3::1".parse().unwrap());
        let _held = a.connect(&one, 1).unwrap();
        assert!(a.connect(&same_64, 1).is_err(), "same /64: same client");
        assert!(a.connect(&other_64, 1).is_ok());
        let mapped = IpAddr::V6("::ffff:10.0.0.1".parse().unwrap());
        let _v4 = a.connect(&v4(0x0a000001), 1).unwrap();
        assert!(a.connect(&mapped, 1).is_err(), "a mapped IPv4 is that IPv4");
    }

    #[test]
    fn a_million_distinct_addresses_stay_within_the_table_and_never_loosen_a_limit() {
        let a = Addrs::new(1024, 1, 0.0, 1);
        let cap = a.capacity();
        let mut held = Vec::new();
        for n in 0..1_000_000u32 {
            let ip = if n % 2 == 0 {
                v4(n)
            } else {
                IpAddr::V6(Ipv6Addr::from(((n as u128) << 64) | 0xfe80))
            };
            // Every address keeps one connection open: the table fills and slots are
            // shared, which refuses some (stricter), never lets one hold two.
            match a.connect(&ip, 5) {
                Ok(id) => held.push(id),
                Err(id) => a.disconnect(id),
            }
        }
        assert_eq!(a.capacity(), cap, "no growth");
        assert!(a.in_use(5) <= cap);
        assert!(held.len() <= cap, "{} open with 1 per slot", held.len());
        for id in held {
            a.disconnect(id);
        }
        // All idle and full again: every slot is free to be claimed by a new address.
        let fresh = a.connect(&v4(0xdead_beef), 6).unwrap();
        assert_eq!(a.slots[fresh.0 as usize].conns.load(Relaxed), 1);
    }
}
