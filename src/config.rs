//! Configuration: one serde struct with defaults, merged from a TOML file, `INGESTD_*`
//! environment variables and CLI flags (in that order of precedence), then validated.

use crate::http::parse::is_token_byte;
use crate::kafka::topics::valid_topic;
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

mod secrets;
pub mod tenants;
pub mod topic;
use secrets::{credentials, kafka_env_property, Credential};
pub use tenants::{JwtConfig, JwtIssuer, TenantConfig};
pub use topic::{OnInvalid, TopicConfig};

/// When a request is answered: once queued in ingestd (202), once synced to the
/// executor's spool (201, needs `spool_dir`), or once Kafka acknowledged it (200).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    #[default]
    Queued,
    Durable,
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole configuration. Every field has a default so an empty file is valid.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address every executor binds with SO_REUSEPORT (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Start even though another process already listens on `listen`, sharing the port
    /// through SO_REUSEPORT: the hand-over of a rolling upgrade. Off: refuse to start.
    pub takeover: bool,
    /// Kafka bootstrap servers, or `embedded` for an in-process mock cluster.
    pub brokers: String,
    /// Topic for `POST /`; unset disables that route.
    pub default_topic: Option<String>,
    /// Topics allowed in `POST /topics/{topic}`; `*` allows any valid topic name.
    pub topics: Vec<String>,
    /// Per-topic checks at the edge (`[topic.NAME]`: a JSON Schema for values and keys,
    /// what an invalid record gets). Reloaded on SIGHUP.
    pub topic: BTreeMap<String, TopicConfig>,
    /// Default delivery contract, overridable per request with `Kafka-Ack`.
    pub ack: AckMode,
    /// The delivery contract of Kafka REST v3 requests (`/v3/...`) that send no
    /// `Kafka-Ack`: `kafka` by default, since v3 clients expect each record's offset.
    pub rest_v3_ack: AckMode,
    /// Most entries in one REST v3 `records:batch` request (more: 413, nothing produced).
    pub rest_v3_batch_max_entries: usize,
    /// Records of one REST v3 stream waiting for their reports before ingestd stops
    /// reading it (back-pressure: a stream's memory stays bounded).
    pub rest_v3_stream_window: usize,
    /// Number of Glommio executors (0 = one per allowed CPU but one: `default_executors`).
    pub executors: usize,
    /// CPUs to pin executors to, in order (empty = the process's allowed CPUs, in order).
    pub cpus: Vec<usize>,
    /// Request headers copied as Kafka record headers (case-insensitive names).
    pub forward_headers: Vec<String>,
    /// Web origins (`https://shop.example`, or `*`) whose pages may post here and read
    /// the answers (CORS); empty: CORS off, `OPTIONS` gets 405.
    pub cors_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    pub cors_max_age_secs: u64,
    /// Partitions for topics created by the embedded mock cluster.
    pub embedded_partitions: i32,

    /// Serve plain HTTP on `listen`; false: HTTPS only (needs `tls_listen`).
    pub plain_http: bool,
    /// Address of a second set of listeners (SO_REUSEPORT, one per executor) that speak
    /// HTTPS (TLS 1.2 and 1.3), beside `listen`; unset: no TLS.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for `tls_listen`, leaf first.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: every client must present a certificate one of them signed
    /// (mutual TLS); unset: no client certificate is asked for.
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes, which are loaded without a
    /// restart (SIGHUP loads them at once); 0: only on SIGHUP.
    pub tls_watch_ms: u64,

    /// Largest accepted request body after de-chunking (413 above it).
    pub max_body_bytes: usize,
    /// Largest request head: request line plus headers (431 above it).
    pub max_header_bytes: usize,
    /// Most headers in one request (431 above it).
    pub max_headers: usize,
    /// Longest request target (414 above it).
    pub max_uri_bytes: usize,
    /// Time allowed to receive a complete request head once its first byte arrived (408).
    /// A deadline for the whole head, so a client dripping bytes cannot extend it.
    pub header_timeout_ms: u64,
    /// Time allowed to receive the whole body once the head is complete (408); also
    /// bounds how long a response write may block on a client that does not read.
    pub body_timeout_ms: u64,
    /// Keep-alive connections idle this long are closed.
    pub idle_timeout_ms: u64,
    /// Connections per executor; more are closed at once.
    pub max_connections: usize,
    /// listen(2) backlog of each executor's socket.
    pub listen_backlog: i32,
    /// Bytes of records per executor queued or in flight to Kafka (503 above it).
    pub queue_max_bytes: usize,
    /// Records per executor queued or in flight to Kafka (503 above it).
    pub queue_max_records: usize,
    /// One memory budget per executor for queued records (their `queue_bytes`) and
    /// connection buffers above their first 4 KiB (request bodies being received): a body
    /// that would exceed it is answered 503 before it is read, a request whose records
    /// would, 503 too. With it RAM is bounded by configuration (docs/OPERATING.md).
    pub memory_max_bytes: usize,
    /// How long an ack=kafka request waits for the broker before 504.
    pub ack_timeout_ms: u64,
    /// While records are in flight, the Kafka thread takes new records and delivery
    /// reports every this many ms instead of waking for each (records someone waits
    /// for, ack=kafka, still go at once): the longest a 202 record waits before
    /// librdkafka has it. 20 by default: at a moderate rate each round costs the Kafka
    /// thread and librdkafka's broker thread a wake or two, however few records it
    /// carries; under load the executors' `WAKE_RECORDS` rule ends a nap sooner anyway.
    pub handoff_ms: u64,
    /// When an executor runs out of ready sockets it blocks in epoll_wait until its next
    /// timer is due, for at most this many ms, before it sleeps in its io_uring (0:
    /// always the ring). One syscall per wait instead of the ring's several. Not while
    /// the spool has I/O in flight (it completes in the ring).
    pub direct_wait_ms: u64,
    /// Seconds sent in `Retry-After` with 503.
    pub retry_after_secs: u32,
    /// Deadline for finishing requests and flushing the producer at shutdown.
    pub shutdown_timeout_ms: u64,
    /// After SIGTERM, keep serving this long with /readyz answering 503 (so a load
    /// balancer's health check takes the instance out), then stop accepting and flush.
    pub drain_ms: u64,

    /// Directory of the durable spool (one subdirectory per executor); unset = no spool,
    /// records live in RAM only until Kafka has them.
    pub spool_dir: Option<PathBuf>,
    /// Disk the spool may take, all executors together (each gets an equal share, in
    /// whole segments); 507 once a share is full of records Kafka has not acknowledged.
    pub spool_max_bytes: u64,
    /// Size of one spool segment file (preallocated; trimmed once Kafka acknowledged
    /// all of its records). A multiple of 4096.
    pub spool_segment_bytes: u64,
    /// A sync that 201s wait on runs on the executor's own thread (cheaper than
    /// io_uring's workers) while such syncs take at most this many us; when 4 of the last
    /// 16 took longer, syncs go through io_uring for a back-off (`spool::inline`). 0:
    /// always io_uring.
    pub spool_inline_sync_us: u64,

    /// Bearer tokens accepted in `Authorization` (a tenant of their own, `default`, with
    /// the global topics and no budgets); empty (and no file, no tenants) = auth off.
    pub auth_tokens: Vec<String>,
    /// File with one bearer token per line.
    pub auth_token_file: Option<PathBuf>,
    /// Tenants: credentials, topic scopes, budgets (`[tenants.NAME]`, `tenants.rs`).
    /// Reloaded on SIGHUP.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Bearer tokens that are JWTs (`[jwt]`). Reloaded on SIGHUP, with the key set.
    pub jwt: JwtConfig,
    /// Record header naming the request's tenant; a client-sent header of that name is
    /// never forwarded, so consumers can trust it. Empty: no such header (it costs
    /// librdkafka a header allocation per record, about 3% of a request's CPU).
    pub tenant_header: String,
    /// Record header holding the client's address (`ip:port`, from the PROXY header or
    /// the socket); unset: none.
    pub client_address_header: Option<String>,

    /// Serves `/metrics`, `/healthz` and `/readyz` (and nothing else) on this address;
    /// the public listeners then answer 404 for them. Unset: they are on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Every connection of the public listeners starts with a PROXY protocol header (v1
    /// or v2) naming the client, sent by the load balancer; one without it is closed.
    pub proxy_protocol: bool,
    /// Connections one client address may hold at once (0: no limit); the answer past it
    /// is 429, then close.
    pub max_connections_per_address: u32,
    /// Requests per second one client address may send as the anonymous tenant (0: no
    /// limit), with `address_burst` at once; 429 past it.
    pub address_requests_per_sec: f64,
    pub address_burst: u32,
    /// Addresses the per-address table tracks at once (memory bound, whatever the number
    /// of distinct clients: a full table shares slots, which only makes it stricter).
    pub address_table_entries: usize,
    /// After this long (jittered down by up to 10%), a connection's next answer carries
    /// `Connection: close`, so load balancers can spread long-lived clients (0: never).
    pub max_connection_age_ms: u64,
    /// After this many requests the answer carries `Connection: close` (0: no limit).
    pub max_requests_per_connection: u64,

    pub log_format: LogFormat,
    /// tracing filter, e.g. `info` or `ingestd=debug`.
    pub log_level: String,

    /// librdkafka properties, passed through verbatim.
    pub kafka: BTreeMap<String, toml::Value>,

    /// Where each explicitly set value came from (`key` or `kafka.key`), for error
    /// messages and `--check-config`.
    #[serde(skip)]
    pub sources: BTreeMap<String, Source>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The configuration file, and the line the key is on.
    File(PathBuf, usize),
    /// An `INGESTD_*` environment variable.
    Env(String),
    /// A command-line flag.
    Flag(&'static str),
    /// A systemd credential (`LoadCredential=`), the file in `$CREDENTIALS_DIRECTORY`.
    Credential(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p, line) => write!(f, "{}:{line}", p.display()),
            Source::Env(v) => write!(f, "environment {v}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Credential(p) => write!(f, "credential {}", p.display()),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".parse().unwrap(),
            takeover: false,
            brokers: "127.0.0.1:9092".into(),
            default_topic: Some("events".into()),
            topics: vec!["*".into()],
            topic: BTreeMap::new(),
            ack: AckMode::Queued,
            rest_v3_ack: AckMode::Kafka,
            rest_v3_batch_max_entries: 100,
            rest_v3_stream_window: 1024,
            executors: 0,
            cpus: vec![],
            forward_headers: vec![],
            cors_origins: vec![],
            cors_max_age_secs: 600,
            embedded_partitions: 4,
            plain_http: true,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_watch_ms: 1000,
            max_body_bytes: 1 << 20,
            max_header_bytes: 16 << 10,
            max_headers: 64,
            max_uri_bytes: 4096,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 16_384,
            listen_backlog: 4096,
            queue_max_bytes: 64 << 20,
            queue_max_records: 200_000,
            memory_max_bytes: 128 << 20,
            ack_timeout_ms: 10_000,
            handoff_ms: 20,
            direct_wait_ms: 100,
            retry_after_secs: 1,
            shutdown_timeout_ms: 10_000,
            drain_ms: 0,
            spool_dir: None,
            spool_max_bytes: 4 << 30,
            spool_segment_bytes: 16 << 20,
            spool_inline_sync_us: 2000,
            auth_tokens: vec![],
            auth_token_file: None,
            tenants: BTreeMap::new(),
            jwt: JwtConfig::default(),
            tenant_header: "ingestd-tenant".into(),
            client_address_header: None,
            admin_listen: None,
            proxy_protocol: false,
            max_connections_per_address: 0,
            address_requests_per_sec: 0.0,
            address_burst: 20,
            address_table_entries: 65_536,
            max_connection_age_ms: 0,
            max_requests_per_connection: 0,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            kafka: BTreeMap::new(),
            sources: BTreeMap::new(),
        }
    }
}

/// Command line. Each flag also reads `INGESTD_<FLAG>`; flags win over the file.
#[derive(Debug, Parser)]
#[command(name = "ingestd", version, about = "HTTP/1.1 to Kafka ingest daemon")]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "INGESTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Address every executor listens on (SO_REUSEPORT); port 0 picks a free port.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Bootstrap servers, or `embedded` for an in-process mock cluster.
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,
    /// Topic for `POST /` (empty disables that route).
    #[arg(long, value_name = "NAME")]
    pub default_topic: Option<String>,
    /// Allowed topics, comma separated (`*` = any).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub topics: Option<Vec<String>>,
    /// Default delivery contract: 202 once queued, 201 once synced to the spool, or 200
    /// once Kafka acknowledged.
    #[arg(long, value_enum)]
    pub ack: Option<AckMode>,
    /// Glommio executors, one per core (0 = one per allowed CPU but one, at least 1).
    #[arg(long, value_name = "N")]
    pub executors: Option<usize>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Start even if another process listens on the address (rolling-upgrade hand-over).
    #[arg(long)]
    pub takeover: bool,
    /// Directory of the durable spool.
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
}

/// Top-level keys that hold lists: their env values are comma separated.
const LIST_KEYS: &[&str] = &[
    "topics",
    "cpus",
    "forward_headers",
    "auth_tokens",
    "cors_origins",
];
/// Env variables that are not config keys.
const NON_KEY_ENV: &[&str] = &["INGESTD_CONFIG"];

impl Config {
    /// Builds the configuration from file, environment and flags, then validates it.
    /// Every error names the key and where its value came from (file and line, variable,
    /// or flag).
    pub fn load(cli: &Cli, env: impl Iterator<Item = (String, String)>) -> Result<Config, String> {
        let mut sources = BTreeMap::new();
        let mut table = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                // Typed first: toml's errors carry the line, column and key.
                toml::from_str::<Config>(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                let table = text
                    .parse::<toml::Table>()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                for (key, line) in key_lines(&text, &table) {
                    sources.insert(key, Source::File(path.clone(), line));
                }
                table
            }
            None => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> = env.collect();
        // One-property variables (INGESTD_KAFKA_SASL_PASSWORD) after INGESTD_KAFKA's
        // table, whatever the environment's order: the narrower setting wins.
        env.sort_by_key(|(k, _)| k.starts_with("INGESTD_KAFKA_"));
        // systemd credentials override the file; the environment and flags override them.
        if let Some((_, dir)) = env.iter().find(|(k, _)| k == "CREDENTIALS_DIRECTORY") {
            for c in credentials(std::path::Path::new(dir))? {
                let (key, value, path) = match c {
                    Credential::Path(k, p) => {
                        let v = toml::Value::String(p.to_string_lossy().into_owned());
                        (k.to_string(), v, p)
                    }
                    Credential::Kafka(prop, v, p) => {
                        kafka_table(&mut table).insert(prop.clone(), toml::Value::String(v));
                        sources.insert(format!("kafka.{prop}"), Source::Credential(p));
                        continue;
                    }
                };
                table.insert(key.clone(), value);
                sources.insert(key, Source::Credential(path));
            }
        }
        for (name, raw) in env {
            let Some(key) = name.strip_prefix("INGESTD_") else {
                continue;
            };
            if NON_KEY_ENV.contains(&name.as_str()) || key.starts_with("TEST_") {
                continue;
            }
            let key = key.to_ascii_lowercase();
            if let Some(prop) = kafka_env_property(&key) {
                // One librdkafka property, its value verbatim (a password is never TOML).
                kafka_table(&mut table).insert(prop.clone(), toml::Value::String(raw));
                sources.insert(format!("kafka.{prop}"), Source::Env(name));
                continue;
            }
            let value = env_value(&key, &raw);
            // Each variable on its own, so that an error names it (with its value, unless
            // that may hold secrets).
            toml::Table::from_iter([(key.clone(), value.clone())])
                .try_into::<Config>()
                .map_err(|e| match key.as_str() {
                    // serde's message would quote the value.
                    "kafka" => format!("{name}: must be a TOML inline table, e.g. {{ \"linger.ms\" = 5 }} (value not shown: it may hold secrets)"),
                    "auth_tokens" => format!("{name}: must be a comma-separated list of tokens (value not shown)"),
                    // A mistyped secret's name must not put the secret in the log.
                    k if secret_kafka_key(k) || k.contains("key") => {
                        format!("{name}: {} (value not shown: it may hold secrets)", e.message())
                    }
                    _ => format!("{name}={raw}: {}", e.message()),
                })?;
            if let toml::Value::Table(t) = &value {
                for k in t.keys() {
                    sources.insert(format!("{key}.{k}"), Source::Env(name.clone()));
                }
            }
            sources.insert(key.clone(), Source::Env(name.clone()));
            match (table.get_mut(&key), value) {
                // INGESTD_KAFKA adds to (and overrides keys of) the file's [kafka] table.
                (Some(toml::Value::Table(old)), toml::Value::Table(new)) => old.extend(new),
                (_, value) => {
                    table.insert(key, value);
                }
            }
        }
        let mut cfg: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| format!("configuration: {}", e.message()))?;
        cfg.apply_cli(cli, &mut sources);
        cfg.sources = sources;
        if let Err(e) = cfg.validate() {
            return Err(cfg.with_source(e));
        }
        Ok(cfg)
    }

    /// Appends where the value of the key an error message starts with came from.
    fn with_source(&self, err: String) -> String {
        let key = err.split(':').next().unwrap_or("");
        match self.sources.get(key) {
            Some(src) => format!("{err} (set in {src})"),
            None => format!("{err} (the default)"),
        }
    }

    fn apply_cli(&mut self, cli: &Cli, sources: &mut BTreeMap<String, Source>) {
        let mut set = |key: &str, flag| {
            sources.insert(key.to_string(), Source::Flag(flag));
        };
        if let Some(v) = cli.listen {
            self.listen = v;
            set("listen", "--listen");
        }
        if let Some(v) = &cli.brokers {
            self.brokers = v.clone();
            set("brokers", "--brokers");
        }
        if let Some(v) = &cli.default_topic {
            self.default_topic = Some(v.clone()).filter(|t| !t.is_empty());
            set("default_topic", "--default-topic");
        }
        if let Some(v) = &cli.topics {
            self.topics = v.clone();
            set("topics", "--topics");
        }
        if let Some(v) = cli.ack {
            self.ack = v;
            set("ack", "--ack");
        }
        if let Some(v) = cli.executors {
            self.executors = v;
            set("executors", "--executors");
        }
        if let Some(v) = cli.log_format {
            self.log_format = v;
            set("log_format", "--log-format");
        }
        if cli.takeover {
            self.takeover = true;
            set("takeover", "--takeover");
        }
        if let Some(v) = &cli.spool_dir {
            self.spool_dir = Some(v.clone());
            set("spool_dir", "--spool-dir");
        }
    }

    /// Rejects values that would make the daemon misbehave, with a message naming the key.
    pub fn validate(&mut self) -> Result<(), String> {
        let allowed = crate::sys::allowed_cpus();
        if self.executors == 0 {
            self.executors = default_executors(allowed.len());
        }
        if self.executors > 255 {
            return Err("executors: at most 255".into());
        }
        if !self.cpus.is_empty() && self.cpus.len() < self.executors {
            return Err(format!(
                "cpus: {} listed but executors = {}; list one CPU per executor",
                self.cpus.len(),
                self.executors
            ));
        }
        if self.cpus.is_empty() && self.executors > allowed.len() {
            return Err(format!(
                "executors: {} but this process may run on {} CPUs {allowed:?} (one executor per core; see taskset / CPUAffinity=)",
                self.executors,
                allowed.len()
            ));
        }
        for (i, c) in self.cpus.iter().take(self.executors).enumerate() {
            if !allowed.contains(c) {
                return Err(format!(
                    "cpus: CPU {c} is not one this process may run on {allowed:?} (see taskset / CPUAffinity=)"
                ));
            }
            if self.cpus[..i].contains(c) {
                return Err(format!(
                    "cpus: CPU {c} listed twice (one executor per core)"
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(format!(
                "log_level: {:?} is not a tracing filter: {e}",
                self.log_level
            ));
        }
        if self.default_topic.as_deref() == Some("") {
            self.default_topic = None;
        }
        if let Some(t) = &self.default_topic {
            if !valid_topic(t) {
                return Err(format!("default_topic: invalid topic name {t:?}"));
            }
        }
        for t in &self.topics {
            if t != "*" && !valid_topic(t) {
                return Err(format!("topics: invalid topic name {t:?}"));
            }
        }
        for o in &self.cors_origins {
            if !crate::http::cors::valid_origin(o) {
                return Err(format!(
                    "cors_origins: {o:?} is not an origin: use scheme://host[:port] (no path) or *"
                ));
            }
        }
        for h in &mut self.forward_headers {
            if h.is_empty() || !h.bytes().all(is_token_byte) {
                return Err(format!("forward_headers: invalid header name {h:?}"));
            }
            h.make_ascii_lowercase();
        }
        let positive = [
            ("max_body_bytes", self.max_body_bytes as u64),
            (
                "rest_v3_batch_max_entries",
                self.rest_v3_batch_max_entries as u64,
            ),
            ("rest_v3_stream_window", self.rest_v3_stream_window as u64),
            ("max_header_bytes", self.max_header_bytes as u64),
            ("max_headers", self.max_headers as u64),
            ("max_uri_bytes", self.max_uri_bytes as u64),
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_connections", self.max_connections as u64),
            ("listen_backlog", self.listen_backlog.max(0) as u64),
            ("queue_max_bytes", self.queue_max_bytes as u64),
            ("queue_max_records", self.queue_max_records as u64),
            ("memory_max_bytes", self.memory_max_bytes as u64),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("handoff_ms", self.handoff_ms),
            (
                "embedded_partitions",
                self.embedded_partitions.max(0) as u64,
            ),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{k}: must be greater than 0"));
        }
        if self.max_headers > crate::http::parse::MAX_HEADERS_LIMIT {
            return Err(format!(
                "max_headers: at most {}",
                crate::http::parse::MAX_HEADERS_LIMIT
            ));
        }
        if self.handoff_ms > 1000 {
            return Err("handoff_ms: at most 1000".into());
        }
        // A wait also ends when the executor's next timer is due, and its ticker's is
        // never more than 100 ms away: a larger bound would change nothing.
        if self.direct_wait_ms > 100 {
            return Err("direct_wait_ms: at most 100".into());
        }
        if self.max_body_bytes > 512 << 20 {
            return Err("max_body_bytes: at most 512 MiB".into());
        }
        // The largest request must fit an idle executor: its buffer, and its copy in the
        // queue while it is handed over.
        let largest = 2 * (self.max_body_bytes + self.max_header_bytes);
        if self.memory_max_bytes < largest {
            return Err(format!(
                "memory_max_bytes: at least 2 x (max_body_bytes + max_header_bytes) = {largest}, so that the largest request fits"
            ));
        }
        self.validate_spool()?;
        self.validate_tls()?;
        if let Some(path) = &self.auth_token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth_token_file: cannot read {}: {e}", path.display()))?;
            self.auth_tokens
                .extend(token_file_lines(&text).map(String::from));
        }
        self.validate_edge()?;
        for (k, v) in &self.kafka {
            if v.is_table() || v.is_array() {
                return Err(format!("kafka.{k}: must be a string, number or boolean"));
            }
        }
        // Without a report for every record, queue space would never come back, and
        // librdkafka would free the header objects records share (kafka/flight.rs).
        if self
            .kafka
            .get("delivery.report.only.error")
            .is_some_and(|v| !matches!(v.as_str(), Some("false")) && v.as_bool() != Some(false))
        {
            return Err("kafka.delivery.report.only.error: ingestd needs a delivery report for every record; leave it false".into());
        }
        // librdkafka checks each property's name and value without a broker.
        let mut cc = rdkafka::config::ClientConfig::new();
        for (k, v) in self.kafka_properties() {
            cc.set(k, v);
        }
        if let Err(e) = cc.create_native_config() {
            return Err(match e {
                rdkafka::error::KafkaError::ClientConfig(_, desc, key, _) => {
                    format!("kafka.{key}: {desc}")
                }
                other => format!("kafka: {other}"),
            });
        }
        Ok(())
    }

    /// The effective configuration as TOML for `--check-config`: every key with its
    /// value and, in a comment, where it came from; secrets (bearer tokens, librdkafka
    /// passwords and keys) shown as `<redacted>`.
    pub fn describe(&self) -> String {
        const REDACTED: &str = "\"<redacted>\"";
        let table = toml::Table::try_from(self).expect("config serializes");
        let mut out = String::from(
            "# ingestd: configuration valid. Effective values, each with where it came from;\n# secrets are shown as <redacted>.\n",
        );
        let source = |key: &str| match self.sources.get(key) {
            Some(s) => s.to_string(),
            None => "default".to_string(),
        };
        for (k, v) in &table {
            if k == "kafka" {
                continue;
            }
            let v = match (k.as_str(), v) {
                ("auth_tokens", toml::Value::Array(a)) => {
                    format!("[{}]", vec![REDACTED; a.len()].join(", "))
                }
                ("tenants", toml::Value::Table(t)) => {
                    // Tokens stay secret, even as sha256: (a short token's hash is a
                    // dictionary lookup away).
                    let mut t = t.clone();
                    for (_, tenant) in t.iter_mut() {
                        if let Some(toml::Value::Array(a)) = tenant.get_mut("tokens") {
                            a.iter_mut()
                                .for_each(|x| *x = toml::Value::String("<redacted>".into()));
                        }
                    }
                    toml::Value::Table(t).to_string()
                }
                _ => v.to_string(),
            };
            out.push_str(&format!("{k} = {v}  # {}\n", source(k)));
        }
        out.push_str("\n# librdkafka properties: ingestd's defaults, then [kafka] / INGESTD_KAFKA\n[kafka]\n");
        for (k, v) in self.kafka_properties() {
            let src = match self.sources.get(&format!("kafka.{k}")) {
                Some(s) => s.to_string(),
                None if self.kafka.contains_key(&k) => "[kafka]".into(),
                None => "ingestd default".into(),
            };
            // Whatever came from systemd's credential store is a secret, by its name or not.
            let credential = matches!(
                self.sources.get(&format!("kafka.{k}")),
                Some(Source::Credential(_))
            );
            let v = if secret_kafka_key(&k) || credential {
                REDACTED.to_string()
            } else {
                toml::Value::String(v).to_string()
            };
            out.push_str(&format!("{} = {v}  # {src}\n", toml_key(&k)));
        }
        out
    }

    /// Spool settings: `ack = "durable"` needs a spool; segments hold the largest
    /// request several times over; each executor's share holds at least 4 segments
    /// (one written, one prepared, two being trimmed) and fits the segment tags.
    fn validate_spool(&mut self) -> Result<(), String> {
        if self.spool_dir.as_deref() == Some(std::path::Path::new("")) {
            self.spool_dir = None;
        }
        // An inline sync stalls its executor's connections while it runs: past a second
        // that is an outage, not a latency.
        if self.spool_inline_sync_us > 1_000_000 {
            return Err("spool_inline_sync_us: at most 1000000 (1 s)".into());
        }
        if self.spool_dir.is_none() {
            if self.ack == AckMode::Durable {
                return Err(
                    "ack: \"durable\" needs spool_dir (a directory for the on-disk spool)".into(),
                );
            }
            if self.rest_v3_ack == AckMode::Durable {
                return Err(
                    "rest_v3_ack: \"durable\" needs spool_dir (a directory for the on-disk spool)"
                        .into(),
                );
            }
            return Ok(());
        }
        let seg = self.spool_segment_bytes;
        if !seg.is_multiple_of(4096) || seg < 1 << 20 {
            return Err("spool_segment_bytes: a multiple of 4096, at least 1 MiB".into());
        }
        let need = 4 * (self.max_body_bytes + self.max_header_bytes) as u64;
        if seg < need {
            return Err(format!(
                "spool_segment_bytes: at least 4 x (max_body_bytes + max_header_bytes) = {need}, so that a segment holds the largest request"
            ));
        }
        let per_exec = self.spool_max_bytes / self.executors.max(1) as u64 / seg;
        if per_exec < 4 {
            return Err(format!(
                "spool_max_bytes: at least 4 segments per executor: 4 x spool_segment_bytes x executors = {}",
                4 * seg * self.executors.max(1) as u64
            ));
        }
        if per_exec >= crate::kafka::lane::Opaque::SPOOL_MASK as u64 / 2 {
            return Err(format!(
                "spool_max_bytes: at most {} segments per executor; raise spool_segment_bytes",
                crate::kafka::lane::Opaque::SPOOL_MASK / 2 - 1
            ));
        }
        Ok(())
    }

    /// Tenants, credentials, addresses and connection limits (issue 33's settings).
    fn validate_edge(&mut self) -> Result<(), String> {
        let topics = &self.topics;
        let allowed = |t: &str| topics.iter().any(|x| x == "*" || x == t);
        tenants::validate(
            &self.tenants,
            &self.jwt,
            self.max_body_bytes,
            &self.auth_tokens,
            allowed,
        )?;
        for (name, t) in &self.topic {
            t.validate(name, allowed)?;
        }
        for (k, h) in [
            (
                "tenant_header",
                Some(&mut self.tenant_header).filter(|h| !h.is_empty()),
            ),
            ("client_address_header", self.client_address_header.as_mut()),
        ] {
            let Some(h) = h else { continue };
            if h.is_empty() || !h.bytes().all(is_token_byte) {
                return Err(format!("{k}: invalid header name {h:?}"));
            }
            h.make_ascii_lowercase();
        }
        // The headers ingestd sets itself are never a client's (consumers trust them).
        let own = [
            Some(&self.tenant_header),
            self.client_address_header.as_ref(),
        ];
        for h in own.into_iter().flatten().filter(|h| !h.is_empty()) {
            if self.forward_headers.contains(h) {
                return Err(format!(
                    "forward_headers: {h:?} is a header ingestd sets itself (tenant_header or client_address_header): a client's is dropped"
                ));
            }
        }
        let r = self.address_requests_per_sec;
        if !(r.is_finite() && (r == 0.0 || (0.001..=1e9).contains(&r))) {
            return Err("address_requests_per_sec: 0 (no limit), or from 0.001 to 1e9".into());
        }
        if self.address_burst == 0 {
            return Err("address_burst: at least 1".into());
        }
        if !(64..=1 << 24).contains(&self.address_table_entries) {
            return Err("address_table_entries: from 64 to 16777216".into());
        }
        if let Some(a) = self.admin_listen {
            // Same port, and the same address or either a wildcard: the same socket.
            let clash = |b: SocketAddr| {
                a.port() != 0
                    && a.port() == b.port()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            };
            if clash(self.listen) || self.tls_listen.is_some_and(clash) {
                return Err("admin_listen: an address of its own, not listen or tls_listen".into());
            }
        }
        // The tenants and schemas compile (token digests, the JWT key set readable and
        // usable, every schema file), so that --check-config catches what a start or a
        // reload would refuse.
        crate::auth::Policy::build(self, self.executors.max(1), 1, None)?;
        Ok(())
    }

    /// HTTPS settings: a TLS listener needs its certificate and key, which must load;
    /// TLS files without a listener, or HTTPS-only without one, are mistakes.
    fn validate_tls(&self) -> Result<(), String> {
        let Some(tls) = self.tls_listen else {
            let files = [
                ("tls_cert", &self.tls_cert),
                ("tls_key", &self.tls_key),
                ("tls_client_ca", &self.tls_client_ca),
            ];
            if let Some((k, _)) = files.iter().find(|(_, v)| v.is_some()) {
                return Err(format!(
                    "{k}: set, but tls_listen is not (no HTTPS listener would use it)"
                ));
            }
            if !self.plain_http {
                return Err("plain_http: false needs tls_listen (nothing would listen)".into());
            }
            return Ok(());
        };
        if self.plain_http && tls == self.listen && tls.port() != 0 {
            return Err("tls_listen: the same address as listen; give HTTPS its own port".into());
        }
        crate::tls::server_config(self).map(|_| ())
    }

    /// Whole segments each executor's spool may hold (`spool_max_bytes` share).
    pub fn spool_segments(&self) -> usize {
        (self.spool_max_bytes / self.executors.max(1) as u64 / self.spool_segment_bytes) as usize
    }

    pub fn topic_allowed(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == "*" || t == topic)
            || self.default_topic.as_deref() == Some(topic)
    }

    pub fn embedded(&self) -> bool {
        self.brokers == "embedded"
    }

    /// librdkafka properties as strings, ingestd's defaults first so `[kafka]` wins.
    pub fn kafka_properties(&self) -> Vec<(String, String)> {
        // The batching profile follows the configured contract (BENCHMARKS.md, "ack=kafka
        // without the linger").
        // - queued/durable: librdkafka waits 1 ms for a batch (in whole milliseconds: 0.5
        //   behaves like 1); 1 rather than 2 measured +49% ack=kafka req/s at 64
        //   connections, ack=queued unchanged. The in-flight limit stays librdkafka's (5
        //   with idempotence).
        // - kafka: every request waits for the broker, so no linger, and one produce
        //   request in flight makes the batch instead (what arrives during a round trip
        //   goes in the next request): 1 connection 749 -> 4,386 req/s, 64 connections
        //   29.9k -> 44.6k. ack=queued keeps the linger: with this profile a co-located
        //   broker got more, smaller requests and it lost 12% of its req/s.
        let kafka_profile = self.ack == AckMode::Kafka;
        let linger = if kafka_profile { "0" } else { "1" };
        let mut props: BTreeMap<String, String> = [
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("compression.codec", "lz4"),
            ("linger.ms", linger),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "2000000"),
            ("queue.buffering.max.kbytes", "4194304"),
            ("statistics.interval.ms", "0"),
            // Never give up on a record while the process lives: a 202 must outlive a
            // broker outage of any length (the executor queues bound memory and answer 503
            // when full). ack=kafka clients get 504 at ack_timeout_ms meanwhile; their
            // records are still delivered. Records that do time out (an operator's own
            // finite value) are produced again, see `FailReason::transient`.
            ("message.timeout.ms", "0"),
            // The partition a Java producer picks for the same key (librdkafka's default,
            // crc32, differs): mixed producers keep a key's records on one partition.
            ("partitioner", "murmur2_random"),
            // Idle-connection closes by brokers are normal; do not log each one.
            ("log.connection.close", "false"),
        ]
        .into_iter()
        .chain(kafka_profile.then_some(("max.in.flight.requests.per.connection", "1")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in &self.kafka {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            props.insert(k.clone(), v);
        }
        props.into_iter().collect()
    }
}

/// librdkafka properties that hold secrets, never printed.
fn secret_kafka_key(k: &str) -> bool {
    ["password", "secret", "token", "passphrase", "private", "key.pem"]
        .iter()
        .any(|w| k.contains(w))
        || k == "sasl.oauthbearer.config"
        // PEM values other than certificates may be keys.
        || (k.ends_with(".pem") && !k.ends_with("ca.pem") && !k.ends_with("certificate.pem"))
}

/// A key as TOML writes it: bare when it can be, quoted otherwise (`"linger.ms"`).
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// The line (1-based) each key of a TOML file is set on: top-level keys, and the keys
/// of its tables as `table.key`.
fn key_lines(text: &str, table: &toml::Table) -> Vec<(String, usize)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            section = name.trim().to_string();
            continue;
        }
        let Some((k, _)) = l.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"').trim_matches('\'');
        let key = if section.is_empty() {
            k.to_string()
        } else {
            format!("{section}.{k}")
        };
        let known = match key.split_once('.') {
            Some((t, k)) if !section.is_empty() => table
                .get(t)
                .and_then(|v| v.as_table())
                .is_some_and(|t| t.contains_key(k)),
            _ => table.contains_key(&key),
        };
        if known {
            out.push((key, i + 1));
        }
    }
    out
}

/// The tokens of an `auth_token_file`: one per line, surrounding blanks trimmed; blank
/// lines and lines starting with `#` are skipped (a token never contains a space, so a
/// comment can never be mistaken for one).
fn token_file_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The `[kafka]` table of the merged settings, created when missing.
fn kafka_table(table: &mut toml::Table) -> &mut toml::Table {
    let v = table
        .entry("kafka")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !v.is_table() {
        *v = toml::Value::Table(toml::Table::new());
    }
    v.as_table_mut().expect("a table")
}

fn env_value(key: &str, raw: &str) -> toml::Value {
    if LIST_KEYS.contains(&key) {
        let items = raw.split(',').map(str::trim).filter(|s| !s.is_empty());
        // Lists of names and tokens hold strings, whatever they look like ("123").
        return toml::Value::Array(match key {
            "cpus" => items.map(scalar).collect(),
            _ => items.map(|s| toml::Value::String(s.into())).collect(),
        });
    }
    scalar(raw)
}

/// Parses an env value as a TOML scalar (number, bool) and falls back to a string.
fn scalar(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| raw.into()),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Executors when none are configured: one per allowed CPU but one, at least one. The CPU
/// left over is for the Kafka thread and librdkafka's broker threads, which need about 1.1
/// us per record besides the executors' work: on this project's 2-core benchmark machine
/// one executor served 102k req/s at 64 connections where two served 74k (BENCHMARKS.md).
pub fn default_executors(allowed_cpus: usize) -> usize {
    allowed_cpus.saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("ingestd").chain(args.iter().copied()))
    }

    #[test]
    fn precedence_file_env_flag() {
        let dir = std::env::temp_dir().join(format!("ingestd-cfg-{}", std::process::id()));
        std::fs::write(
            &dir,
            "ack = \"kafka\"\nexecutors = 3\nmax_body_bytes = 10\n",
        )
        .unwrap();
        let c = cli(&["--config", dir.to_str().unwrap(), "--executors", "2"]);
        let env = vec![("INGESTD_MAX_BODY_BYTES".to_string(), "20".to_string())];
        let cfg = Config::load(&c, env.into_iter()).unwrap();
        assert_eq!(cfg.ack, AckMode::Kafka);
        assert_eq!(cfg.executors, 2);
        assert_eq!(cfg.max_body_bytes, 20);
        std::fs::remove_file(dir).ok();
    }

    #[test]
    fn default_executors_leave_a_cpu_for_the_kafka_side() {
        assert_eq!(default_executors(0), 1);
        assert_eq!(default_executors(1), 1);
        assert_eq!(default_executors(2), 1);
        assert_eq!(default_executors(16), 15);
        let mut cfg = Config::default();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.executors,
            default_executors(crate::sys::allowed_cpus().len())
        );
    }

    #[test]
    fn spool_settings_are_checked_at_their_edges() {
        let load = |env: &[(&str, &str)]| {
            let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            Config::load(
                &cli(&["--executors", "1"]),
                env.collect::<Vec<_>>().into_iter(),
            )
        };
        let err = load(&[("INGESTD_ACK", "durable")]).unwrap_err();
        assert!(err.contains("needs spool_dir"), "{err}");
        let dir = ("INGESTD_SPOOL_DIR", "/tmp/x");
        let cfg = load(&[("INGESTD_ACK", "durable"), dir]).unwrap();
        assert_eq!(cfg.ack, AckMode::Durable);
        assert_eq!(cfg.spool_segments(), 256, "4 GiB of 16 MiB segments");
        let seg = |v| load(&[dir, ("INGESTD_SPOOL_SEGMENT_BYTES", v)]);
        assert!(seg("1048575").unwrap_err().contains("multiple of 4096"));
        // The default 1 MiB body needs 4 x (1 MiB + 16 KiB) per segment.
        assert!(seg("2097152").unwrap_err().contains("largest request"));
        assert!(seg("4259840").is_ok());
        let quota = |v| load(&[dir, ("INGESTD_SPOOL_MAX_BYTES", v)]);
        assert!(quota("67108863")
            .unwrap_err()
            .contains("at least 4 segments"));
        assert_eq!(quota("67108864").unwrap().spool_segments(), 4);
        assert!(quota("1099511627776").unwrap_err().contains("at most"));
        let inline = |v| load(&[dir, ("INGESTD_SPOOL_INLINE_SYNC_US", v)]);
        assert_eq!(Config::default().spool_inline_sync_us, 2000);
        assert_eq!(inline("0").unwrap().spool_inline_sync_us, 0);
        assert_eq!(inline("1000000").unwrap().spool_inline_sync_us, 1_000_000);
        assert!(inline("1000001")
            .unwrap_err()
            .contains("spool_inline_sync_us: at most 1000000"));
    }

    #[test]
    fn handoff_is_checked_at_its_edges() {
        let load = |v: &str| {
            let env = [("INGESTD_HANDOFF_MS".to_string(), v.to_string())];
            Config::load(&cli(&["--executors", "1"]), env.into_iter())
        };
        assert_eq!(Config::default().handoff_ms, 20);
        assert!(load("0")
            .unwrap_err()
            .contains("handoff_ms: must be greater than 0"));
        assert_eq!(load("1").unwrap().handoff_ms, 1);
        assert_eq!(load("1000").unwrap().handoff_ms, 1000);
        assert!(load("1001")
            .unwrap_err()
            .contains("handoff_ms: at most 1000"));
    }

    #[test]
    fn direct_wait_is_checked_at_its_edges() {
        let load = |v: &str| {
            let env = [("INGESTD_DIRECT_WAIT_MS".to_string(), v.to_string())];
            Config::load(&cli(&["--executors", "1"]), env.into_iter())
        };
        assert_eq!(Config::default().direct_wait_ms, 100);
        assert_eq!(load("0").unwrap().direct_wait_ms, 0);
        assert_eq!(load("100").unwrap().direct_wait_ms, 100);
        assert!(load("101")
            .unwrap_err()
            .contains("direct_wait_ms: at most 100"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = std::env::temp_dir().join(format!("ingestd-cfg-u-{}", std::process::id()));
        std::fs::write(&dir, "listen = \"127.0.0.1:1\"\nmax_bodyy = 3\n").unwrap();
        let err = Config::load(
            &cli(&["--config", dir.to_str().unwrap()]),
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(err.contains("max_bodyy"), "{err}");
        let env = vec![("INGESTD_NOPE".to_string(), "1".to_string())];
        let err = Config::load(&cli(&[]), env.into_iter()).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        std::fs::remove_file(dir).ok();
    }

    #[test]
    fn env_lists_and_validation() {
        let env = vec![
            ("INGESTD_TOPICS".to_string(), "a,b".to_string()),
            (
                "INGESTD_FORWARD_HEADERS".to_string(),
                "X-Request-Id".to_string(),
            ),
        ];
        let cfg = Config::load(&cli(&[]), env.into_iter()).unwrap();
        assert_eq!(cfg.topics, vec!["a", "b"]);
        assert_eq!(cfg.forward_headers, vec!["x-request-id"]);
        assert!(cfg.topic_allowed("a") && cfg.topic_allowed("events") && !cfg.topic_allowed("c"));
        let env = vec![("INGESTD_MAX_HEADERS".to_string(), "0".to_string())];
        assert!(Config::load(&cli(&[]), env.into_iter())
            .unwrap_err()
            .contains("max_headers"));
        assert!(Config::load(&cli(&["--topics", "bad topic"]), std::iter::empty()).is_err());
    }

    #[test]
    fn tls_settings_go_together() {
        let err = |pairs: &[(&str, &str)]| {
            let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            Config::load(&cli(&[]), env).unwrap_err()
        };
        let e = err(&[("INGESTD_TLS_CERT", "/c.pem")]);
        assert!(e.starts_with("tls_cert: set, but tls_listen is not"), "{e}");
        let e = err(&[("INGESTD_PLAIN_HTTP", "false")]);
        assert!(e.starts_with("plain_http: false needs tls_listen"), "{e}");
        let e = err(&[("INGESTD_TLS_LISTEN", "127.0.0.1:8443")]);
        assert!(
            e.starts_with("tls_cert: tls_listen needs tls_cert and tls_key"),
            "{e}"
        );
        let e = err(&[
            ("INGESTD_TLS_LISTEN", "0.0.0.0:8080"),
            ("INGESTD_TLS_CERT", "/c.pem"),
            ("INGESTD_TLS_KEY", "/k.pem"),
        ]);
        assert!(
            e.starts_with("tls_listen: the same address as listen"),
            "{e}"
        );
        let e = err(&[
            ("INGESTD_TLS_LISTEN", "127.0.0.1:8443"),
            ("INGESTD_TLS_CERT", "/nonexistent/c.pem"),
            ("INGESTD_TLS_KEY", "/k.pem"),
        ]);
        assert!(
            e.starts_with("tls_cert: cannot read /nonexistent/c.pem"),
            "{e}"
        );
    }

    #[test]
    fn secrets_stay_out_of_describe_and_errors() {
        let env = vec![
            ("INGESTD_AUTH_TOKENS".to_string(), "123,true".to_string()),
            (
                "INGESTD_KAFKA".to_string(),
                r#"{ "ssl.key.pem" = "KEYDATA", "ssl.key.password" = "PW", "ssl.ca.pem" = "CA" }"#
                    .to_string(),
            ),
        ];
        let cfg = Config::load(&cli(&[]), env.into_iter()).unwrap();
        assert_eq!(cfg.auth_tokens, vec!["123", "true"], "tokens are strings");
        let out = cfg.describe();
        for secret in ["123", "KEYDATA", "PW"] {
            assert!(
                !out.contains(&format!("\"{secret}\"")),
                "{secret} in\n{out}"
            );
        }
        assert!(
            out.contains(r#""ssl.ca.pem" = "CA""#),
            "a CA is no secret:\n{out}"
        );
        let env = vec![(
            "INGESTD_KAFKA".to_string(),
            "sasl.password=hunter2".to_string(),
        )];
        let err = Config::load(&cli(&[]), env.into_iter()).unwrap_err();
        assert!(
            err.contains("INGESTD_KAFKA") && !err.contains("hunter2"),
            "{err}"
        );
        // A mistyped secret's variable is an error that does not show its value.
        let env = vec![(
            "INGESTD_KAFK_SASL_PASSWORD".to_string(),
            "hunter2".to_string(),
        )];
        let err = Config::load(&cli(&[]), env.into_iter()).unwrap_err();
        assert!(
            err.contains("INGESTD_KAFK_SASL_PASSWORD") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn one_property_variables_win_over_the_kafka_table_in_any_order() {
        let table = (
            "INGESTD_KAFKA".to_string(),
            r#"{ "linger.ms" = 5 }"#.to_string(),
        );
        let one = ("INGESTD_KAFKA_LINGER_MS".to_string(), "7".to_string());
        for env in [vec![table.clone(), one.clone()], vec![one, table]] {
            let cfg = Config::load(&cli(&[]), env.into_iter()).unwrap();
            let props: BTreeMap<_, _> = cfg.kafka_properties().into_iter().collect();
            assert_eq!(props["linger.ms"], "7");
        }
    }

    #[test]
    fn delivery_reports_for_errors_only_are_refused() {
        for (v, ok) in [
            (toml::Value::Boolean(true), false),
            (toml::Value::String("true".into()), false),
            (toml::Value::Boolean(false), true),
            (toml::Value::String("false".into()), true),
        ] {
            let mut cfg = Config::default();
            cfg.kafka
                .insert("delivery.report.only.error".into(), v.clone());
            match cfg.validate() {
                Ok(()) => assert!(ok, "{v} accepted"),
                Err(e) => {
                    assert!(!ok, "{v}: {e}");
                    assert!(e.contains("delivery.report.only.error"), "{e}");
                }
            }
        }
    }

    #[test]
    fn kafka_passthrough_overrides_defaults() {
        let mut cfg = Config::default();
        cfg.kafka
            .insert("linger.ms".into(), toml::Value::Integer(7));
        cfg.kafka.insert("acks".into(), "1".into());
        let props: BTreeMap<_, _> = cfg.kafka_properties().into_iter().collect();
        assert_eq!(props["linger.ms"], "7");
        assert_eq!(props["acks"], "1");
        assert_eq!(props["enable.idempotence"], "true");
    }

    #[test]
    fn the_batching_profile_follows_the_default_ack_and_the_kafka_table_wins() {
        let props =
            |cfg: &Config| -> BTreeMap<_, _> { cfg.kafka_properties().into_iter().collect() };
        // (linger.ms, max.in.flight.requests.per.connection), None: librdkafka's default.
        let linger = |p: &BTreeMap<String, String>| {
            (
                p["linger.ms"].clone(),
                p.get("max.in.flight.requests.per.connection").cloned(),
            )
        };
        let mut cfg = Config::default();
        assert_eq!(linger(&props(&cfg)), ("1".into(), None));
        cfg.ack = AckMode::Durable;
        assert_eq!(linger(&props(&cfg)), ("1".into(), None));
        cfg.ack = AckMode::Kafka;
        assert_eq!(linger(&props(&cfg)), ("0".into(), Some("1".into())));
        cfg.kafka.insert("linger.ms".into(), "2".into());
        cfg.kafka.insert(
            "max.in.flight.requests.per.connection".into(),
            toml::Value::Integer(3),
        );
        assert_eq!(linger(&props(&cfg)), ("2".into(), Some("3".into())));
        // From the command line, as an operator starts it.
        let cfg = Config::load(&cli(&["--ack", "kafka"]), std::iter::empty()).unwrap();
        assert_eq!(linger(&props(&cfg)), ("0".into(), Some("1".into())));
    }
}
