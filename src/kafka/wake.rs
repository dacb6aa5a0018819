//! librdkafka's side of waking the Kafka thread: a callback on the producer's main queue
//! (delivery reports, errors) that unparks the thread when the queue goes from empty to
//! non-empty, so the thread can sleep until there is work.

/// Wakes the Kafka thread from librdkafka's own threads whenever the producer's main
/// queue (delivery reports, errors) goes from empty to non-empty, so that thread can
/// sleep until there is work instead of napping in short intervals.
pub struct QueueWake {
    queue: *mut rdkafka::bindings::rd_kafka_queue_t,
    /// Kept alive while librdkafka may call back with a pointer to it.
    _wake: std::sync::Arc<super::lane::KafkaWake>,
}

// SAFETY: librdkafka queue handles are thread-safe; the pointer is only used to disable
// the callback and release the handle on drop.
unsafe impl Send for QueueWake {}

unsafe extern "C" fn queue_event(
    _rk: *mut rdkafka::bindings::rd_kafka_t,
    opaque: *mut std::ffi::c_void,
) {
    // SAFETY: `opaque` is the KafkaWake that `QueueWake` keeps alive until the callback
    // is disabled in its drop.
    let wake = unsafe { &*(opaque as *const super::lane::KafkaWake) };
    wake.report();
}

impl QueueWake {
    pub fn enable(
        producer: &super::thread::KafkaProducer,
        wake: std::sync::Arc<super::lane::KafkaWake>,
    ) -> QueueWake {
        let rk = rdkafka::producer::Producer::client(producer).native_ptr();
        // SAFETY: `rk` is a live producer handle; the returned queue reference is released
        // in drop, before the producer is (the Kafka thread drops this first).
        let queue = unsafe { rdkafka::bindings::rd_kafka_queue_get_main(rk) };
        let opaque = std::sync::Arc::as_ptr(&wake) as *mut std::ffi::c_void;
        // SAFETY: the callback only reads `opaque`, which outlives the registration.
        unsafe {
            rdkafka::bindings::rd_kafka_queue_cb_event_enable(queue, Some(queue_event), opaque)
        };
        QueueWake { queue, _wake: wake }
    }

    /// Events waiting in the queue (the callback fires only on empty -> non-empty).
    pub fn pending(&self) -> bool {
        // SAFETY: `queue` is a live queue reference owned by self.
        unsafe { rdkafka::bindings::rd_kafka_queue_length(self.queue) > 0 }
    }
}

impl Drop for QueueWake {
    fn drop(&mut self) {
        // SAFETY: disables the callback before the KafkaWake may go away, then releases
        // our queue reference.
        unsafe {
            rdkafka::bindings::rd_kafka_queue_cb_event_enable(
                self.queue,
                None,
                std::ptr::null_mut(),
            );
            rdkafka::bindings::rd_kafka_queue_destroy(self.queue);
        }
    }
}
