//! HTTPS for the `tls_listen` listeners: the rustls server configuration built from the
//! PEM files, and loading it again without a restart, on SIGHUP or when a file changes.
//! A connection keeps the configuration it was accepted with; each new one takes the
//! current one, so a certificate swap never breaks an open connection.

use crate::config::Config;
use crate::metrics::Metrics;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tracing::{error, info};

/// Builds the rustls configuration from `tls_cert`, `tls_key` and `tls_client_ca`. Every
/// error names the key and the file.
pub fn server_config(cfg: &Config) -> Result<Arc<ServerConfig>, String> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Err("tls_cert: tls_listen needs tls_cert and tls_key".into());
    };
    // ring: the provider that builds quickly from source (no cmake or NASM).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("tls_cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls_key: no private key read from {}: {e}", key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls_listen: {e}"))?;
    let builder = match &cfg.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates("tls_client_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls_client_ca: {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls_client_ca: {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut sc = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "tls_key: {} does not go with tls_cert {}: {e}",
            cfg.tls_key.as_deref().unwrap_or(Path::new("")).display(),
            cert.display()
        )
    })?;
    // HTTP/1.1 is all ingestd speaks: a client offering h2 and http/1.1 picks http/1.1.
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key}: no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The configuration in use, shared by every executor's TLS listener.
pub struct Certs {
    cfg: Arc<Config>,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files looked like at the last load, to notice changes.
    seen: Mutex<Vec<Option<Stamp>>>,
    metrics: Arc<Metrics>,
}

/// Device, inode, mtime and size: a file replaced (renamed over, or a symlink swapped as
/// Kubernetes and cert-manager do) or rewritten in place changes one of them.
type Stamp = (u64, u64, i64, i64, u64);

impl Certs {
    pub fn new(cfg: Arc<Config>, metrics: Arc<Metrics>) -> Result<Arc<Certs>, String> {
        let seen = Mutex::new(stamps(&cfg));
        let current = RwLock::new(server_config(&cfg)?);
        Ok(Arc::new(Certs {
            cfg,
            current,
            seen,
            metrics,
        }))
    }

    /// The configuration for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().expect("not poisoned").clone()
    }

    /// Loads the files again. On failure (a half-written file, a key that does not fit
    /// the certificate) the configuration in use stays, and the next change or SIGHUP
    /// tries again.
    pub fn reload(&self, why: &str) -> bool {
        // One reload at a time (SIGHUP and the watcher may race): the stamps and the
        // configuration stored are then of the same files.
        let mut seen = self.seen.lock().expect("not poisoned");
        *seen = stamps(&self.cfg);
        match server_config(&self.cfg) {
            Ok(sc) => {
                *self.current.write().expect("not poisoned") = sc;
                self.metrics.tls_reloads.fetch_add(1, Relaxed);
                info!(why, "TLS certificate loaded again");
                true
            }
            Err(e) => {
                self.metrics.tls_reload_failures.fetch_add(1, Relaxed);
                error!(why, error = %e, "TLS reload failed: keeping the certificate in use");
                false
            }
        }
    }

    /// Checks the files every `tls_watch_ms` and reloads when one changed (none: SIGHUP
    /// only). The thread lives as long as the process.
    pub fn watch(self: &Arc<Self>) -> std::io::Result<()> {
        let every = Duration::from_millis(self.cfg.tls_watch_ms);
        if every.is_zero() {
            return Ok(());
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("ingestd-tls".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let changed = *me.seen.lock().expect("not poisoned") != stamps(&me.cfg);
                if changed {
                    me.reload("file changed");
                }
            })
            .map(|_| ())
    }
}

fn stamps(cfg: &Config) -> Vec<Option<Stamp>> {
    let files: [&Option<PathBuf>; 3] = [&cfg.tls_cert, &cfg.tls_key, &cfg.tls_client_ca];
    files
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p.as_ref()?).ok()?;
            Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
        })
        .collect()
}
