//! The topics the broker's metadata lists, published by the metadata probe and read by
//! the executors without a lock per request: a request for a topic Kafka does not have
//! gets 404 at once, instead of librdkafka waiting out `topic.metadata.propagation.max.ms`
//! (30 s) with the record (a 504 for ack=kafka, a 202 then a failure for ack=queued).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Kafka's legal topic names: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

type Names = Arc<HashSet<Box<[u8]>>>;

/// What one metadata answer says: the topics, and the cluster's id (REST v3's
/// `cluster_id`; None from a broker too old to send one).
#[derive(Default, PartialEq)]
struct Snapshot {
    names: Names,
    cluster: Option<Arc<str>>,
}

/// Shared by the probe (writer, once a second) and every executor (readers).
#[derive(Default)]
pub struct KnownTopics {
    /// Bumped whenever the list changes; 0 until a metadata request succeeded, and while
    /// it is 0 every topic may exist.
    version: AtomicU64,
    names: Mutex<Snapshot>,
}

impl KnownTopics {
    /// Probe: the topics and the cluster id of a successful metadata request.
    pub fn publish(&self, names: HashSet<Box<[u8]>>, cluster: Option<&str>) {
        let mut cur = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *cur.names != names || cur.cluster.as_deref() != cluster;
        if changed || self.version.load(Ordering::Relaxed) == 0 {
            *cur = Snapshot {
                names: Arc::new(names),
                cluster: cluster.map(Arc::from),
            };
            self.version.fetch_add(1, Ordering::Release);
        }
    }
}

/// An executor's copy, refreshed only when the probe published a change.
pub struct TopicView {
    version: Cell<u64>,
    names: RefCell<Names>,
    cluster: RefCell<Option<Arc<str>>>,
}

impl TopicView {
    pub fn new() -> TopicView {
        TopicView {
            version: Cell::new(0),
            names: RefCell::new(Names::default()),
            cluster: RefCell::new(None),
        }
    }

    /// Takes the probe's latest answer when it changed (one atomic load otherwise);
    /// false while there is none.
    fn refresh(&self, shared: &KnownTopics) -> bool {
        let v = shared.version.load(Ordering::Acquire);
        if v == 0 {
            return false;
        }
        if v != self.version.get() {
            let cur = shared.names.lock().unwrap_or_else(|e| e.into_inner());
            *self.names.borrow_mut() = cur.names.clone();
            *self.cluster.borrow_mut() = cur.cluster.clone();
            self.version.set(v);
        }
        true
    }

    /// False only when the broker's metadata is known and does not list `topic`.
    pub fn may_exist(&self, shared: &KnownTopics, topic: &[u8]) -> bool {
        !self.refresh(shared) || self.names.borrow().contains(topic)
    }

    /// The cluster's id, once metadata named it.
    pub fn cluster_id(&self, shared: &KnownTopics) -> Option<Arc<str>> {
        self.refresh(shared);
        self.cluster.borrow().clone()
    }
}

impl Default for TopicView {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<Box<[u8]>> {
        names.iter().map(|n| n.as_bytes().into()).collect()
    }

    #[test]
    fn unknown_until_published_then_exact() {
        let shared = KnownTopics::default();
        let view = TopicView::new();
        assert!(view.may_exist(&shared, b"anything"), "no metadata yet");
        assert_eq!(view.cluster_id(&shared), None);
        shared.publish(set(&[]), None);
        assert!(!view.may_exist(&shared, b"anything"), "an empty cluster");
        shared.publish(set(&["a", "b"]), None);
        assert!(view.may_exist(&shared, b"a") && !view.may_exist(&shared, b"c"));
        shared.publish(set(&["a", "b", "c"]), None);
        assert!(view.may_exist(&shared, b"c"), "refreshed on change");
        shared.publish(set(&["a", "b", "c"]), Some("k1"));
        assert_eq!(view.cluster_id(&shared).as_deref(), Some("k1"));
    }
}
