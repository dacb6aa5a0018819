//! What the Kafka thread keeps for each record librdkafka holds, and the header objects
//! it lends librdkafka.
//!
//! librdkafka takes a record's headers as a heap object (`rd_kafka_headers_t`: three
//! allocations, filled by copying) and frees it with the record after its delivery report.
//! One per record was most of what the tenant header cost (issue 33: ~+0.3 us per record
//! in this thread and +0.1 us in librdkafka's broker thread, in the allocator and in cache
//! misses on objects that each thread touched once and the other thread had written).
//! librdkafka only ever reads a record's headers (their size when the record is produced,
//! their bytes when its batch is serialized), so records with the same headers can point
//! at one object: nearly every record carries one of a few sets (its tenant's name), and
//! that object stays in every core's cache.
//!
//! What makes the sharing safe is that librdkafka never frees a shared object:
//! - every record in flight is in `Flights`, and its delivery report detaches the object
//!   from the message before librdkafka destroys it (`release`);
//! - a producer is only dropped once every record it held has had its report
//!   (`in_flight() == 0`), else leaked (`thread::retire`); `delivery.report.only.error` is
//!   refused by the configuration (records without a report would be destroyed by
//!   librdkafka with their headers);
//! - a failed `producev` leaves the object with us (librdkafka's contract);
//! - a panic in the delivery report aborts (`thread::Ctx::delivery`): unwinding out of
//!   librdkafka's report loop would destroy the event's other messages with their headers;
//! - nothing is shared when librdkafka plugins are loaded (`set_sharing`): an interceptor
//!   may add to a record's headers.
//!
//! A set is shared from its second sighting on; one unique to its record (a spooled
//! record's `ingestd-id`) gets a private object, freed after it, as before.
//!
//! An object is freed here when it is both forgotten by the content index and no record
//! in flight points at it (`loans == 0`).
//!
//! The opaque librdkafka carries for a record is a key into `Flights`, which holds the
//! record's own opaque (`lane::Opaque`), its queue cost and its header object: the
//! delivery report reads none of the record's headers.
//!
//! Only the Kafka thread uses any of it (delivery reports run on the thread that polls,
//! which is the Kafka thread): a thread-local, no lock.

use rdkafka::bindings as rd;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::ptr::NonNull;

/// Header sets larger than this (name and value bytes, with their lengths) get an object
/// of their own, freed after their record: the shared objects are for the few sets most
/// records carry, not for a client's large REST headers.
const MAX_KEY: usize = 512;
/// Distinct header sets indexed; past it the index starts over (a client-address header
/// gives every client its own set, so the index must not grow with the clients).
const MAX_SETS: usize = 1024;

/// A record in librdkafka's hands.
#[derive(Debug, Clone, Copy)]
pub struct Flight {
    /// The record's `lane::Opaque`, encoded.
    pub opaque: usize,
    /// Its queue cost (`lane::record_cost`), released when its fate is known.
    pub cost: usize,
    /// Its header object in `HeaderSets::objects` (`NO_HEADERS`: none).
    object: u32,
}

const NO_HEADERS: u32 = u32::MAX;

/// A record ready to be handed to librdkafka: the opaque to give it (a key into
/// `Flights`), and its header object (null: none).
#[derive(Debug)]
pub struct Boarding {
    pub key: usize,
    pub headers: *mut rd::rd_kafka_headers_t,
}

/// A header object of ours.
#[derive(Clone, Copy)]
struct Hdrs(NonNull<rd::rd_kafka_headers_t>);

impl Hdrs {
    /// A new header object holding `pairs`.
    fn build<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>, n: usize) -> Hdrs {
        // SAFETY: `rd_kafka_headers_new` returns a fresh object (it aborts on OOM, like
        // every librdkafka allocation); `rd_kafka_header_add` copies `name_size` and
        // `value_size` bytes from the slices, which outlive the call.
        unsafe {
            let h = NonNull::new(rd::rd_kafka_headers_new(n)).expect("rd_kafka_headers_new");
            for (name, value) in pairs {
                let err = rd::rd_kafka_header_add(
                    h.as_ptr(),
                    name.as_ptr().cast(),
                    name.len() as isize,
                    value.as_ptr().cast(),
                    value.len() as isize,
                );
                // Only a read-only (consumed) header list refuses an add.
                debug_assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
            }
            Hdrs(h)
        }
    }

    /// # Safety
    /// No record in flight points at it, and it is not used after this.
    unsafe fn destroy(self) {
        // SAFETY: the caller's promise.
        unsafe { rd::rd_kafka_headers_destroy(self.0.as_ptr()) }
    }
}

/// One header object and the records in flight that point at it.
struct Shared {
    hdrs: Hdrs,
    loans: u32,
    /// Findable by content (false: forgotten, or never shared; freed with its last loan).
    indexed: bool,
}

/// Header objects by content.
#[derive(Default)]
struct HeaderSets {
    index: HashMap<Box<[u8]>, u32, foldhash::fast::FixedState>,
    objects: slab::Slab<Shared>,
    /// The content key being looked up (reused: no allocation per record).
    scratch: Vec<u8>,
    /// Hashes of sets seen once, direct-mapped: a set is indexed on its second sighting,
    /// so sets unique to their record (a spooled record's `ingestd-id`) get a private
    /// object, as before, instead of churning the index.
    seen: Vec<u64>,
    /// Off when librdkafka plugins are loaded: an interceptor may edit a record's
    /// headers, which must then be its own.
    no_sharing: bool,
}

const SEEN_SLOTS: usize = 4096;

impl HeaderSets {
    /// The object for a record with `pairs` (one more loan of it).
    fn lend<'a>(
        &mut self,
        pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    ) -> (Hdrs, u32) {
        let k = &mut self.scratch;
        k.clear();
        let mut n = 0;
        for (name, value) in pairs.clone() {
            // Lengths first: ("ab", "c") and ("a", "bc") are different sets.
            k.extend_from_slice(&(name.len() as u32).to_le_bytes());
            k.extend_from_slice(&(value.len() as u32).to_le_bytes());
            k.extend_from_slice(name);
            k.extend_from_slice(value);
            n += 1;
            if k.len() > MAX_KEY {
                return self.add(Hdrs::build(pairs, n), false);
            }
        }
        if self.no_sharing {
            return self.add(Hdrs::build(pairs, n), false);
        }
        if let Some(&id) = self.index.get(&k[..]) {
            let o = &mut self.objects[id as usize];
            o.loans += 1;
            return (o.hdrs, id);
        }
        let h = self.index.hasher().hash_one(&k[..]) | 1;
        if self.seen.is_empty() {
            self.seen = vec![0; SEEN_SLOTS];
        }
        let slot = &mut self.seen[(h % SEEN_SLOTS as u64) as usize];
        if *slot != h {
            *slot = h;
            return self.add(Hdrs::build(pairs, n), false);
        }
        if self.index.len() >= MAX_SETS {
            self.forget_all();
        }
        let (h, id) = self.add(Hdrs::build(pairs, n), true);
        self.index.insert(self.scratch.as_slice().into(), id);
        (h, id)
    }

    fn add(&mut self, hdrs: Hdrs, indexed: bool) -> (Hdrs, u32) {
        let id = self.objects.insert(Shared {
            hdrs,
            loans: 1,
            indexed,
        });
        // Far more objects than records librdkafka can hold would be a leak, not a load.
        (hdrs, u32::try_from(id).expect("header objects"))
    }

    /// A record that pointed at object `id` is done (librdkafka no longer reads it).
    fn give_back(&mut self, id: u32) {
        let Some(o) = self.objects.get_mut(id as usize) else {
            return;
        };
        o.loans -= 1;
        if o.loans == 0 && !o.indexed {
            let o = self.objects.remove(id as usize);
            // SAFETY: its last loan just ended and the index no longer finds it.
            unsafe { o.hdrs.destroy() };
        }
    }

    /// Empties the index: idle objects are freed, lent ones when their last loan ends.
    fn forget_all(&mut self) {
        self.index.clear();
        self.objects.retain(|_, o| {
            o.indexed = false;
            if o.loans == 0 {
                // SAFETY: no record points at it, and it leaves the table now.
                unsafe { o.hdrs.destroy() };
            }
            o.loans > 0
        });
    }
}

impl Drop for HeaderSets {
    fn drop(&mut self) {
        // Objects still lent belong to records of a producer that was leaked (`retire`):
        // they stay allocated with it.
        for (_, o) in self.objects.iter().filter(|(_, o)| o.loans == 0) {
            // SAFETY: no record points at it, and the table goes away.
            unsafe { o.hdrs.destroy() };
        }
    }
}

#[derive(Default)]
struct Air {
    flights: slab::Slab<Flight>,
    sets: HeaderSets,
}

thread_local! {
    static AIR: RefCell<Air> = RefCell::new(Air::default());
}

/// Registers a record about to be handed to librdkafka, with the header object for
/// `pairs` (none if `pairs` is empty).
pub fn board<'a>(
    opaque: usize,
    cost: usize,
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Boarding {
    AIR.with(|a| {
        let mut a = a.borrow_mut();
        let (headers, object) = match pairs.clone().next() {
            None => (std::ptr::null_mut(), NO_HEADERS),
            Some(_) => {
                let (h, id) = a.sets.lend(pairs);
                (h.0.as_ptr(), id)
            }
        };
        let key = a.flights.insert(Flight {
            opaque,
            cost,
            object,
        });
        Boarding { key, headers }
    })
}

/// librdkafka did not take the record (it owns nothing of it): forget it.
pub fn unboard(b: Boarding) {
    AIR.with(|a| {
        let mut a = a.borrow_mut();
        let f = a.flights.remove(b.key);
        if f.object != NO_HEADERS {
            a.sets.give_back(f.object);
        }
    })
}

/// The record a delivery report is about (`key`: the opaque librdkafka gave back), no
/// longer in flight; None for a key `board` never gave (a bug: reported by the caller).
/// `release` must follow, in every case.
pub fn land(key: usize) -> Option<Flight> {
    AIR.with(|a| a.borrow_mut().flights.try_remove(key))
}

/// Takes a reported record's header object back from its message (librdkafka would free
/// it when the report has been served) and ends the record's loan of it. Call it last: the
/// message has no headers afterwards.
///
/// # Safety
/// `msg` is the message of a delivery report being served on this thread.
pub unsafe fn release(msg: *mut rd::rd_kafka_message_t, f: Option<&Flight>) {
    let mut h = std::ptr::null_mut();
    // SAFETY: the caller's promise; detaching only moves the pointer out of the message.
    // Done even for an unknown record: an object librdkafka does not free leaks at worst,
    // one it frees while shared would be used after the free.
    unsafe { rd::rd_kafka_message_detach_headers(msg, &mut h) };
    if let Some(id) = f.map(|f| f.object).filter(|&o| o != NO_HEADERS) {
        AIR.with(|a| a.borrow_mut().sets.give_back(id));
    }
}

/// Records boarded and not landed: those librdkafka still holds (or has not reported).
pub fn in_flight() -> usize {
    AIR.with(|a| a.borrow().flights.len())
}

/// The records of a producer that is leaked with them (`thread::retire`): out of the
/// table, so the next producer's count starts from zero. Their header objects stay lent
/// for good: the leaked producer's messages still point at them.
pub fn abandon() -> Vec<Flight> {
    AIR.with(|a| a.borrow_mut().flights.drain().collect())
}

/// Whether records with the same headers share one object (see the module doc): not
/// when librdkafka plugins are loaded. Set on the Kafka thread before it produces.
pub fn set_sharing(on: bool) {
    AIR.with(|a| a.borrow_mut().sets.no_sharing = !on);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs<'a>(
        p: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone {
        p.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }

    /// The content of a header object, read back through librdkafka.
    fn content(h: Hdrs) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 0.. {
            let (mut n, mut v, mut len) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: `h` is a live header object owned by the test.
            let err =
                unsafe { rd::rd_kafka_header_get_all(h.0.as_ptr(), i, &mut n, &mut v, &mut len) };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            // SAFETY: librdkafka keeps names NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr(n) }.to_bytes().to_vec();
            let value = match v.is_null() {
                true => Vec::new(),
                // SAFETY: a value is `len` bytes long.
                false => unsafe { std::slice::from_raw_parts(v.cast::<u8>(), len) }.to_vec(),
            };
            out.push((name, value));
        }
        out
    }

    fn kv(n: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn records_with_the_same_headers_share_one_object_until_the_last_is_done() {
        let mut s = HeaderSets::default();
        let a = [("ingestd-tenant", "t1")];
        let b = [("ingestd-tenant", "t2")];
        // First sightings: private objects, freed with their record.
        for set in [&a, &b] {
            let (_, i) = s.lend(pairs(set));
            assert!(!s.objects[i as usize].indexed);
            s.give_back(i);
            assert!(s.objects.get(i as usize).is_none());
        }
        let (h1, i1) = s.lend(pairs(&a));
        let (h2, i2) = s.lend(pairs(&a));
        let (h3, i3) = s.lend(pairs(&b));
        assert_eq!((h1.0, i1), (h2.0, i2));
        assert_ne!(i1, i3);
        assert_eq!(content(h1), vec![kv("ingestd-tenant", "t1")]);
        assert_eq!(content(h3), vec![kv("ingestd-tenant", "t2")]);
        assert_eq!(s.objects[i1 as usize].loans, 2);
        s.give_back(i1);
        s.give_back(i2);
        // Idle but indexed: kept for the next record, content intact.
        assert_eq!(s.objects[i1 as usize].loans, 0);
        let (h4, i4) = s.lend(pairs(&a));
        assert_eq!((h4.0, i4), (h1.0, i1));
        assert_eq!(content(h4), vec![kv("ingestd-tenant", "t1")]);
        s.give_back(i4);
        s.give_back(i3);
    }

    #[test]
    fn sets_are_told_apart_by_their_lengths_and_order() {
        let mut s = HeaderSets::default();
        let (_, a) = s.lend(pairs(&[("ab", "c")]));
        let (_, b) = s.lend(pairs(&[("a", "bc")]));
        let (_, c) = s.lend(pairs(&[("a", "b"), ("c", "d")]));
        let (_, d) = s.lend(pairs(&[("c", "d"), ("a", "b")]));
        let (h, e) = s.lend(pairs(&[("a", ""), ("", "b")]));
        assert_eq!(content(h), vec![kv("a", ""), kv("", "b")]);
        let ids = [a, b, c, d, e];
        for (i, x) in ids.iter().enumerate() {
            assert!(!ids[i + 1..].contains(x), "{ids:?}");
        }
    }

    #[test]
    fn large_sets_get_their_own_object_freed_after_their_record() {
        let mut s = HeaderSets::default();
        let big = "v".repeat(MAX_KEY);
        let (h1, i1) = s.lend(pairs(&[("n", &big)]));
        let (h2, i2) = s.lend(pairs(&[("n", &big)]));
        assert_ne!(h1.0, h2.0);
        assert_eq!(content(h1)[0].1.len(), MAX_KEY);
        s.give_back(i1);
        assert!(
            s.objects.get(i1 as usize).is_none(),
            "freed with its record"
        );
        assert!(s.index.is_empty());
        s.give_back(i2);
        assert!(s.objects.is_empty());
    }

    #[test]
    fn the_index_starts_over_and_lent_objects_outlive_it() {
        let mut s = HeaderSets::default();
        let (_, first) = s.lend(pairs(&[("a", "lent")]));
        s.give_back(first);
        let (old, id) = s.lend(pairs(&[("a", "lent")]));
        assert!(s.objects[id as usize].indexed);
        for i in 0..MAX_SETS {
            let v = i.to_string();
            for _ in 0..2 {
                let (_, j) = s.lend(pairs(&[("a", &v)]));
                s.give_back(j);
            }
        }
        // The index started over: the idle objects were freed, the lent one kept.
        assert!(s.index.len() < MAX_SETS);
        assert!(s.objects.len() <= s.index.len() + 1);
        assert_eq!(content(old), vec![kv("a", "lent")]);
        // A record with the same content now gets a new object; the old one is freed
        // with its last loan.
        let (new, id2) = s.lend(pairs(&[("a", "lent")]));
        assert_ne!(id, id2);
        s.give_back(id);
        assert!(s.objects.get(id as usize).is_none_or(|o| o.hdrs.0 != old.0));
        assert_eq!(content(new), vec![kv("a", "lent")]);
        s.give_back(id2);
    }

    #[test]
    fn sets_seen_once_or_with_plugins_loaded_are_never_shared() {
        let mut s = HeaderSets::default();
        // Unique sets (a spooled record's id) never reach the index.
        for i in 0..3 * SEEN_SLOTS {
            let id = i.to_string();
            let (_, j) = s.lend(pairs(&[("ingestd-id", &id)]));
            s.give_back(j);
        }
        assert!(s.index.is_empty() && s.objects.is_empty());
        s.no_sharing = true;
        let t = [("ingestd-tenant", "t1")];
        let lent: Vec<_> = (0..3).map(|_| s.lend(pairs(&t))).collect();
        assert!(lent.windows(2).all(|w| w[0].0 .0 != w[1].0 .0));
        for (_, j) in lent {
            s.give_back(j);
        }
        assert!(s.objects.is_empty());
    }

    #[test]
    fn flights_hand_back_their_opaque_cost_and_object() {
        let h = [("ingestd-tenant", "t9")];
        let warm = board(10, 1, pairs(&h));
        let f = land(warm.key).unwrap();
        AIR.with(|a| a.borrow_mut().sets.give_back(f.object));
        let b1 = board(11, 300, pairs(&h));
        let b2 = board(12, 301, pairs(&h));
        let b3 = board(13, 5, pairs(&[]));
        assert!(b3.headers.is_null());
        assert_eq!(b1.headers, b2.headers);
        assert_eq!(in_flight(), 3);
        let f = land(b1.key).unwrap();
        assert_eq!((f.opaque, f.cost), (11, 300));
        assert!(land(b1.key).is_none(), "landed once");
        AIR.with(|a| a.borrow_mut().sets.give_back(f.object));
        unboard(b2);
        let f = land(b3.key).unwrap();
        assert_eq!((f.opaque, f.cost, f.object), (13, 5, NO_HEADERS));
        assert_eq!(in_flight(), 0);
        AIR.with(|a| {
            let a = a.borrow();
            assert!(a.sets.objects.iter().all(|(_, o)| o.loans == 0));
        });
    }
}
