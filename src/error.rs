//! The one place where failures become HTTP status codes. Parser, router, admission and
//! Kafka delivery all report an `HttpError`; `status()` decides what the client sees and
//! `closes()` whether the connection can carry another request afterwards.

/// Why a record could not be delivered; also the `reason` label of
/// `ingestd_records_failed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FailReason {
    /// Not used for records any more: a record librdkafka gives up on for a passing
    /// reason (a timeout among them) is produced again (`transient`). Kept so the
    /// `reason` label set of `ingestd_records_failed_total` stays stable.
    Timeout = 0,
    UnknownTopic = 1,
    UnknownPartition = 2,
    TooLarge = 3,
    /// Broker down, not enough replicas, authorization, any other broker error.
    Broker = 4,
    /// Left in the queue when the shutdown deadline expired.
    Shutdown = 5,
}

impl FailReason {
    pub const ALL: [FailReason; 6] = [
        FailReason::Timeout,
        FailReason::UnknownTopic,
        FailReason::UnknownPartition,
        FailReason::TooLarge,
        FailReason::Broker,
        FailReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailReason::Timeout => "timeout",
            FailReason::UnknownTopic => "unknown_topic",
            FailReason::UnknownPartition => "unknown_partition",
            FailReason::TooLarge => "too_large",
            FailReason::Broker => "broker",
            FailReason::Shutdown => "shutdown",
        }
    }

    /// Whether librdkafka gave up on a record for a reason that passes: a timeout, an
    /// outage, a leader election, the idempotent producer's state, or ingestd's own purge
    /// when it rebuilds the producer. Such a record is produced again, not failed, so a
    /// `202` outlives any outage while the process lives. Everything else (too large, no
    /// such topic or partition, not authorized, invalid) is Kafka's verdict on the record
    /// and final.
    pub fn transient(code: rdkafka::types::RDKafkaErrorCode) -> bool {
        use rdkafka::types::RDKafkaErrorCode as E;
        matches!(
            code,
            E::MessageTimedOut
                | E::RequestTimedOut
                | E::OperationTimedOut
                | E::TimedOutQueue
                | E::PurgeQueue
                | E::PurgeInflight
                | E::Fatal
                | E::Retry
                | E::QueueFull
                | E::BrokerTransportFailure
                | E::AllBrokersDown
                | E::Resolve
                | E::BrokerNotAvailable
                | E::NetworkException
                | E::LeaderNotAvailable
                | E::NotLeaderForPartition
                | E::PreferredLeaderNotAvailable
                | E::EligibleLeadersNotAvailable
                | E::FencedLeaderEpoch
                | E::UnknownLeaderEpoch
                | E::ReplicaNotAvailable
                | E::NotEnoughReplicas
                | E::NotEnoughReplicasAfterAppend
                | E::ISRInsufficient
                | E::KafkaStorageError
                | E::ThrottlingQuotaExceeded
                | E::OutOfOrderSequenceNumber
                | E::InvalidProducerEpoch
                | E::UnknownProducerId
                | E::InvalidProducerIdMapping
                | E::ProducerFenced
                | E::Fenced
                | E::Inconsistent
                | E::GaplessGuarantee
        )
    }

    pub fn from_code(code: rdkafka::types::RDKafkaErrorCode) -> FailReason {
        use rdkafka::types::RDKafkaErrorCode as E;
        match code {
            E::MessageTimedOut | E::RequestTimedOut => FailReason::Timeout,
            E::UnknownTopic | E::UnknownTopicOrPartition => FailReason::UnknownTopic,
            E::UnknownPartition => FailReason::UnknownPartition,
            E::MessageSizeTooLarge | E::InvalidMessageSize => FailReason::TooLarge,
            _ => FailReason::Broker,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed request; the reason is sent as the body.
    BadRequest(&'static str),
    /// Malformed framing (lengths, chunks, smuggling shapes): the connection is closed.
    BadFraming(&'static str),
    NotFound(&'static str),
    MethodNotAllowed {
        allow: &'static str,
    },
    /// No valid credential (401): the reason, safe to tell the client.
    Unauthorized(&'static str),
    /// A JWT that does not verify (401, then close): each try costs a signature check,
    /// so a client gets a new connection (and its handshake) per try, not a loop.
    BadToken(&'static str),
    /// The tenant may not do this (403): write this topic, ask for this contract. The
    /// answer's JSON names the tenant and the topic (`response::error_detail`).
    Forbidden(&'static str),
    /// Over a budget (429; the connection stays): which one, and the real wait until it
    /// allows the request (`Retry-After`, rounded up to seconds; `retry_after_ms` in the
    /// body).
    TooManyRequests {
        what: &'static str,
        retry_ms: u32,
    },
    /// This client address holds `max_connections_per_address` connections already
    /// (429, then close).
    TooManyConnections,
    /// The tenants were reloaded while this request's body arrived (503, retry: it is
    /// judged again under the new policy).
    PolicyReloaded,
    RequestTimeout,
    LengthRequired,
    PayloadTooLarge,
    UriTooLong,
    ExpectationFailed,
    HeadersTooLarge,
    NotImplemented(&'static str),
    VersionNotSupported,
    /// The executor's bounded queue cannot take the records now.
    QueueFull,
    /// The executor's memory budget (`memory_max_bytes`: queued records and bodies being
    /// received) cannot take this request now.
    MemoryFull,
    /// The request's records could never fit an executor's queue (NDJSON with more
    /// lines than `queue_max_records`, or more bytes than `queue_max_bytes`): retrying
    /// cannot help, so not 503.
    NeverFits,
    /// The broker rejected or failed the record(s).
    Delivery(FailReason),
    /// No delivery report within ack_timeout.
    AckTimeout,
    /// The server is shutting down.
    ShuttingDown,
    /// The executor's spool is at its quota (`spool_max_bytes`) with records Kafka has
    /// not acknowledged.
    SpoolFull,
    /// Writing or syncing the spool failed (ENOSPC, EIO): the request's records were
    /// not accepted.
    SpoolFailed,
    /// A Content-Encoding or Content-Type we do not take (415).
    UnsupportedMediaType(&'static str),
    /// Well-formed but unusable content, such as a REST v2 body whose records lack a
    /// value (422).
    Unprocessable(&'static str),
    /// A compressed body that decodes to more than `max_body_bytes` (413; the body was
    /// read whole, so the connection stays).
    DecodedTooLarge,
    /// A plain HTTP request on the HTTPS port (400, unencrypted, then close).
    PlainHttpOnTls,
    /// Records its topic's schema refuses (422); the answer's JSON lists them
    /// (`schema::report`, kept in `Exec::schema_report` until the answer is written).
    SchemaRefused,
    /// A body that is not JSON for a topic with a schema (400, listed likewise).
    NotJson,
    /// A REST v3 `records:batch` with more entries than `rest_v3_batch_max_entries`
    /// (413; the body was read whole, so the connection stays).
    BatchTooLarge,
    /// A REST v3 path whose cluster id is not Kafka's (404).
    NoSuchCluster,
    /// A REST v3 path before the broker's metadata named its cluster (503, retry).
    ClusterUnknown,
}

impl HttpError {
    /// Status code and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        use HttpError::*;
        match self {
            BadRequest(_) | BadFraming(_) | PlainHttpOnTls | NotJson => (400, "Bad Request"),
            Unauthorized(_) | BadToken(_) => (401, "Unauthorized"),
            Forbidden(_) => (403, "Forbidden"),
            TooManyRequests { .. } | TooManyConnections => (429, "Too Many Requests"),
            NotFound(_) | NoSuchCluster => (404, "Not Found"),
            MethodNotAllowed { .. } => (405, "Method Not Allowed"),
            RequestTimeout => (408, "Request Timeout"),
            LengthRequired => (411, "Length Required"),
            PayloadTooLarge | NeverFits | DecodedTooLarge | BatchTooLarge => {
                (413, "Content Too Large")
            }
            UriTooLong => (414, "URI Too Long"),
            ExpectationFailed => (417, "Expectation Failed"),
            UnsupportedMediaType(_) => (415, "Unsupported Media Type"),
            Unprocessable(_) | SchemaRefused => (422, "Unprocessable Content"),
            HeadersTooLarge => (431, "Request Header Fields Too Large"),
            NotImplemented(_) => (501, "Not Implemented"),
            VersionNotSupported => (505, "HTTP Version Not Supported"),
            QueueFull | MemoryFull | ShuttingDown | PolicyReloaded | ClusterUnknown => {
                (503, "Service Unavailable")
            }
            SpoolFull | SpoolFailed => (507, "Insufficient Storage"),
            Delivery(FailReason::UnknownTopic) => (404, "Not Found"),
            Delivery(FailReason::UnknownPartition) => (400, "Bad Request"),
            Delivery(FailReason::TooLarge) => (413, "Content Too Large"),
            Delivery(FailReason::Timeout) | AckTimeout => (504, "Gateway Timeout"),
            Delivery(FailReason::Broker) | Delivery(FailReason::Shutdown) => {
                (503, "Service Unavailable")
            }
        }
    }

    /// Short plain-text reason sent as the body.
    pub fn message(&self) -> &'static str {
        use HttpError::*;
        match self {
            BadRequest(m)
            | BadFraming(m)
            | NotFound(m)
            | NotImplemented(m)
            | UnsupportedMediaType(m)
            | Unprocessable(m)
            | Unauthorized(m)
            | BadToken(m)
            | Forbidden(m) => m,
            TooManyRequests { what, .. } => what,
            TooManyConnections => "too many connections from this address (max_connections_per_address)",
            PolicyReloaded => "credentials reloaded while the request arrived, retry",
            MethodNotAllowed { .. } => "method not allowed",
            RequestTimeout => "request not received in time",
            LengthRequired => "Content-Length or chunked Transfer-Encoding required",
            PayloadTooLarge => "request body too large",
            DecodedTooLarge => "decoded request body larger than max_body_bytes",
            PlainHttpOnTls => "plain HTTP sent to the HTTPS port: use https://",
            SchemaRefused => "records do not match the topic's schema; nothing was produced",
            NotJson => "the body is not JSON, and its topic has a schema",
            BatchTooLarge => "more batch entries than rest_v3_batch_max_entries",
            NoSuchCluster => "no such cluster: this is not the Kafka cluster's id (GET /v3/clusters names it)",
            ClusterUnknown => "the Kafka cluster's id is not known yet (no metadata from the broker), retry later",
            UriTooLong => "request target too long",
            ExpectationFailed => "only 100-continue is supported",
            HeadersTooLarge => "request headers too large",
            VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported",
            QueueFull => "ingest queue full, retry later",
            MemoryFull => "memory budget in use (memory_max_bytes), retry later",
            NeverFits => "more records or bytes than an executor's queue holds (queue_max_records, queue_max_bytes): split the body",
            ShuttingDown => "shutting down",
            SpoolFull => "spool full (spool_max_bytes) until kafka acknowledges its records, retry later",
            SpoolFailed => "spool write failed (disk full or failing), records not accepted, retry later",
            AckTimeout => "kafka did not acknowledge in time",
            Delivery(FailReason::Timeout) => "kafka delivery timed out",
            Delivery(FailReason::UnknownTopic) => "topic does not exist in kafka",
            Delivery(FailReason::UnknownPartition) => "partition does not exist",
            Delivery(FailReason::TooLarge) => "record too large for kafka",
            Delivery(FailReason::Broker) => "kafka delivery failed",
            Delivery(FailReason::Shutdown) => "not delivered before shutdown",
        }
    }

    /// Whether the connection must be closed after this answer: framing is lost, or the
    /// client is too slow or too big to keep.
    pub fn closes(&self) -> bool {
        use HttpError::*;
        matches!(
            self,
            BadFraming(_)
                | RequestTimeout
                | LengthRequired
                | PayloadTooLarge
                | UriTooLong
                | HeadersTooLarge
                | NotImplemented(_)
                | VersionNotSupported
                | ExpectationFailed
                | ShuttingDown
                | PlainHttpOnTls
                | TooManyConnections
                | BadToken(_)
        )
    }

    /// Extra header line (with CRLF) this answer needs.
    pub fn extra_header(&self, retry_after: &'static str) -> &'static str {
        match self {
            HttpError::QueueFull
            | HttpError::MemoryFull
            | HttpError::ShuttingDown
            | HttpError::SpoolFull
            | HttpError::SpoolFailed
            | HttpError::ClusterUnknown
            | HttpError::Delivery(FailReason::Broker) => retry_after,
            HttpError::MethodNotAllowed { allow } => allow,
            HttpError::Unauthorized(_) | HttpError::BadToken(_) => "www-authenticate: Bearer\r\n",
            HttpError::TooManyConnections | HttpError::PolicyReloaded => retry_after,
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_on_the_record_are_final_outages_are_not() {
        use rdkafka::types::RDKafkaErrorCode as E;
        for c in [
            E::MessageTimedOut,
            E::PurgeQueue,
            E::PurgeInflight,
            E::NotEnoughReplicas,
        ] {
            assert!(FailReason::transient(c), "{c:?}");
        }
        for c in [
            E::MessageSizeTooLarge,
            E::UnknownPartition,
            E::UnknownTopicOrPartition,
            E::TopicAuthorizationFailed,
            E::InvalidRecord,
        ] {
            assert!(!FailReason::transient(c), "{c:?}");
        }
    }

    #[test]
    fn client_faults_are_never_5xx() {
        for e in [
            HttpError::BadRequest("x"),
            HttpError::BadFraming("x"),
            HttpError::PayloadTooLarge,
            HttpError::HeadersTooLarge,
            HttpError::UriTooLong,
            HttpError::LengthRequired,
            HttpError::RequestTimeout,
            HttpError::Delivery(FailReason::UnknownPartition),
            HttpError::Delivery(FailReason::TooLarge),
        ] {
            assert!(e.status().0 < 500, "{e:?}");
        }
        assert_eq!(HttpError::QueueFull.status().0, 503);
        assert_eq!(HttpError::AckTimeout.status().0, 504);
        assert_eq!(HttpError::SpoolFull.status().0, 507);
        assert_eq!(HttpError::SpoolFailed.extra_header("r"), "r");
        assert!(HttpError::BadFraming("x").closes());
        assert!(!HttpError::BadRequest("x").closes());
    }
}
