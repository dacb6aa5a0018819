//! TLS for tests: certificates made with the openssl command line, as an operator makes
//! them, and a rustls client to reach ingestd's HTTPS listener with.
//!
//! `Pki` holds a server CA (`ca`) and two server certificates it signed for localhost and
//! 127.0.0.1 (`srv1`, `srv2`: the swap test changes one for the other), a client CA
//! (`clientca`) with a client certificate (`client`), and a rogue CA's client
//! certificate (`rogue`) that mTLS must refuse. Each name has `.pem` and `.key`.

use super::http::{Client, Wire};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ingestd-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        for ca in ["ca", "clientca", "rogueca"] {
            pki.openssl(&format!(
                "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
                 -subj /CN=ingestd-test-{ca} -addext keyUsage=critical,keyCertSign,cRLSign \
                 -keyout {ca}.key -out {ca}.pem"
            ));
        }
        let server = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n";
        let client = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n";
        pki.leaf("srv1", "ca", server);
        pki.leaf("srv2", "ca", server);
        pki.leaf("client", "clientca", client);
        pki.leaf("rogue", "rogueca", client);
        pki
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `path` as a string, for flags and environment variables.
    pub fn arg(&self, file: &str) -> String {
        self.path(file).to_string_lossy().into_owned()
    }

    fn leaf(&self, name: &str, ca: &str, ext: &str) {
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        self.openssl(&format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
             -subj /CN=ingestd-test-{name} -keyout {name}.key -out {name}.csr"
        ));
        self.openssl(&format!(
            "x509 -req -days 2 -in {name}.csr -CA {ca}.pem -CAkey {ca}.key \
             -extfile {name}.ext -out {name}.pem"
        ));
    }

    /// Runs openssl with `args` (split at whitespace) in the directory.
    fn openssl(&self, args: &str) {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl (Debian package openssl) must be installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The DER of a certificate file's first certificate.
    pub fn der(&self, name: &str) -> Vec<u8> {
        cert_chain(&self.path(&format!("{name}.pem")))[0].to_vec()
    }

    /// A client that trusts `ca` and presents `client` (a `Pki` name) if given.
    pub fn client_config(&self, client: Option<&str>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in cert_chain(&self.path("ca.pem")) {
            roots.add(c).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut cfg = match client {
            None => b.with_no_client_auth(),
            Some(name) => {
                let chain = cert_chain(&self.path(&format!("{name}.pem")));
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
                b.with_client_auth_cert(chain, key).unwrap()
            }
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cert_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Wire for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// Connects and completes the handshake (its errors surface here, not at the first
/// request), as `localhost`.
pub fn connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> io::Result<Client<TlsStream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cfg, name).map_err(io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(Client::over(s))
}

/// The certificate the server presented on `c`.
pub fn peer_cert(c: &Client<TlsStream>) -> Vec<u8> {
    c.s.conn.peer_certificates().expect("a server certificate")[0].to_vec()
}
