//! A cluster PKI for in-process mTLS tests: a CA, certificates and CRLs made with rcgen at
//! test time (nothing is checked in), node configs that use them, and clients that present them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use peermirror::auth::AuthMode;
use peermirror::certs::{Ca, CertRequest, RevokedSerial};
use peermirror::content::MemorySource;
use peermirror::daemon::{Config, Routing, Security};
use peermirror::mirror::MirrorConfig;
use peermirror::tls::{CrlExpired, TlsFiles};
use tokio::net::TcpListener;

use super::{Node, config, start_on, wait_ready};

pub const DAY: Duration = Duration::from_secs(86_400);

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test cluster CA").unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        let pki = Pki { dir, ca };
        pki.write_crl(&[], SystemTime::now() + 7 * DAY);
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issue `name` for localhost and 127.0.0.1; returns its serial.
    pub fn issue(&self, name: &str, days: i64) -> String {
        self.issue_for(name, days, &["localhost"], &["127.0.0.1".parse().unwrap()])
    }

    /// Issue `name` with these DNS and IP SANs, as `<name>.crt` and `<name>.key`; returns its
    /// serial.
    pub fn issue_for(&self, name: &str, days: i64, dns: &[&str], ips: &[IpAddr]) -> String {
        let mut req = CertRequest::new(name, SystemTime::now(), days).unwrap();
        req.dns = dns.iter().map(|d| d.to_string()).collect();
        req.ips = ips.to_vec();
        let c = self.ca.issue(&req).unwrap();
        std::fs::write(self.path(&format!("{name}.crt")), &c.cert_pem).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), &c.key_pem).unwrap();
        c.serial_hex
    }

    /// Replace the CRL atomically, as an operator (or a Secret update) would.
    pub fn write_crl(&self, revoked: &[&str], next_update: SystemTime) {
        let list: Vec<RevokedSerial> = revoked.iter().map(|s| RevokedSerial::new(*s)).collect();
        static N: AtomicUsize = AtomicUsize::new(1);
        let pem = self
            .ca
            .crl(&list, N.fetch_add(1, Ordering::SeqCst) as u64, next_update)
            .unwrap();
        let tmp = self.path("crl.pem.tmp");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(tmp, self.path("crl.pem")).unwrap();
    }

    pub fn tls_files(&self, node: &str, policy: CrlExpired) -> TlsFiles {
        TlsFiles {
            cert: self.path(&format!("{node}.crt")),
            key: self.path(&format!("{node}.key")),
            client_ca: Some(self.path("ca.crt")),
            peer_ca: None,
            crls: vec![self.path("crl.pem")],
            crl_expired: policy,
            peer_server_name: None,
        }
    }
}

pub fn mtls_config(pki: &Pki, node: &str, routing: Routing, policy: CrlExpired) -> Config {
    let mut c = config(
        routing,
        MirrorConfig {
            resolve_timeout: Duration::from_millis(500),
            ..MirrorConfig::default()
        },
    );
    c.security = Security {
        mode: AuthMode::Mtls,
        insecure_no_auth: false,
        tls: Some(pki.tls_files(node, policy)),
        token_file: None,
    };
    c
}

pub async fn start_node(source: MemorySource, cfg: Config) -> Node {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let n = start_on(l, source, cfg).await;
    wait_ready(&n, true).await;
    n
}

/// A client that trusts the CA and presents `identity` (cert, key) if given.
pub fn tls_client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in peermirror::pki::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((c, k)) => b
            .with_client_auth_cert(
                peermirror::pki::load_certs(c).unwrap(),
                peermirror::pki::load_key(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .unwrap()
}

pub fn https(node: &Node) -> String {
    format!("https://127.0.0.1:{}", node.addr.port())
}
