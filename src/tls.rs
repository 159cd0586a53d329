//! TLS for the registry endpoint and for peer fetches, from the same cluster CA and CRLs.
//!
//! [`TlsFiles`] names the PEM/DER files; [`build`] turns them into a rustls server config
//! (client certificates required when a client CA is given, checked against the CRLs) and a
//! client config for fetching from peers (this node's certificate as client identity; peers'
//! server certificates checked against the same CA and CRLs). The material lives in one
//! `watch` channel ([`MaterialRx`]): [`keep_current`] polls the files and sends new material
//! within seconds, and every user (the accept loop through [`Endpoint`], the peer client, the
//! revocation check) reads the latest; a broken or half-written file keeps the old material.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use clap::ValueEnum;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::{Refusal, RevocationCheck};
use crate::metrics::{Metrics, WhatLabels};
use crate::pki::{self, Serial};
use crate::reload;
use crate::server::{ClientCert, TlsProvider};

/// What to do when a CRL is past its nextUpdate.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlExpired {
    /// Refuse every client (and peer) certificate until a fresh CRL is in place: fail closed.
    Deny,
    /// Keep using the stale CRL, and say so in the log and the metric.
    Warn,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA: client certificates are required and checked against it when set.
    pub client_ca: Option<PathBuf>,
    /// The CA that peers' server certificates are checked against (default: `client_ca`).
    pub peer_ca: Option<PathBuf>,
    pub crls: Vec<PathBuf>,
    pub crl_expired: CrlExpired,
    /// Check peers' certificates for this name instead of their IP address (one certificate
    /// shared by all nodes, e.g. from cert-manager).
    pub peer_server_name: Option<String>,
}

impl TlsFiles {
    fn all_paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.cert.clone(), self.key.clone()];
        v.extend(self.client_ca.clone());
        v.extend(self.peer_ca.clone());
        v.extend(self.crls.iter().cloned());
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Load(#[from] pki::LoadError),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error("client CA {path}: a CRL is not signed by this CA (or does not parse)")]
    CrlNotFromCa { path: String },
    #[error("building the certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("--tls-peer-server-name {0:?} is not a valid DNS name")]
    ServerName(String),
    #[error("peer fetches over TLS need a CA: set --tls-client-ca or --tls-peer-ca")]
    NoPeerCa,
}

/// The configs built from one consistent read of the files.
pub struct TlsMaterial {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// The earliest nextUpdate of the loaded CRLs.
    pub crl_next_update: Option<SystemTime>,
    /// When this node's certificate expires.
    pub cert_not_after: Option<SystemTime>,
    /// This node's certificate's serial: `status` says so when the CRL revokes it.
    pub cert_serial: Option<Serial>,
    /// Serials the loaded CRLs revoke: checked on every request too, because a connection made
    /// before a revocation would otherwise keep being served.
    pub revoked: std::collections::HashSet<Serial>,
    /// `--crl-expired deny`: once `crl_next_update` has passed, every certificate is refused,
    /// on established connections too.
    pub deny_expired_crl: bool,
}

/// The crypto of the registry endpoint: ring, or aws-lc-rs with the `aws-lc` feature (its
/// AES-GCM seals faster on AVX-512 CPUs).
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "aws-lc")]
    return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(not(feature = "aws-lc"))]
    client_provider()
}

/// The crypto of peer fetches: always ring. As a TLS client, rustls with aws-lc-rs spent
/// 1.3-1.5 CPU-s per GB decrypting where ring spent 0.5-0.6 (docs/benchmarks.md, issue 13),
/// and a relay decrypts every byte it fetches.
fn client_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(
    path: &std::path::Path,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsError> {
    let certs = pki::load_certs(path)?;
    let mut store = RootCertStore::empty();
    for c in &certs {
        store.add(c.clone()).map_err(|source| TlsError::Ca {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok((store, certs))
}

/// Read every file and build both configs. Fails as a whole: nothing half-loaded is used.
pub fn build(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
    let chain = pki::load_certs(&files.cert)?;
    let own = chain.first().and_then(|c| pki::cert_summary(c).ok());
    let cert_not_after = own.as_ref().map(|s| s.not_after);
    let cert_serial = own.map(|s| s.serial);
    let key = pki::load_key(&files.key)?;
    let mut crls = Vec::new();
    for p in &files.crls {
        crls.extend(pki::load_crls(p)?);
    }
    let enforce = files.crl_expired == CrlExpired::Deny;
    let now = SystemTime::now();

    // Every CRL must be signed by one of the configured CAs, and is used only with the CA that
    // issued it: the client CA's for client certificates, the peer CA's for peers' servers.
    // Its nextUpdate feeds the metric.
    let mut crl_next_update: Option<SystemTime> = None;
    let mut revoked = std::collections::HashSet::new();
    let client_ca_certs = files
        .client_ca
        .as_ref()
        .map(|p| roots(p).map(|r| r.1))
        .transpose()?
        .unwrap_or_default();
    let peer_ca_certs = match &files.peer_ca {
        Some(p) => roots(p)?.1,
        None => client_ca_certs.clone(),
    };
    let (mut client_crls, mut peer_crls) = (Vec::new(), Vec::new());
    let ca_for_crls = files.client_ca.as_ref().or(files.peer_ca.as_ref());
    if let Some(ca_path) = ca_for_crls {
        for crl in &crls {
            let by = |cas: &[CertificateDer<'static>]| {
                cas.iter().find_map(|ca| pki::check_crl(crl, ca, now).ok())
            };
            let (for_clients, for_peers) = (by(&client_ca_certs), by(&peer_ca_certs));
            let Some(info) = for_clients.as_ref().or(for_peers.as_ref()) else {
                return Err(TlsError::CrlNotFromCa {
                    path: ca_path.display().to_string(),
                });
            };
            if let Some(n) = info.next_update {
                crl_next_update = Some(crl_next_update.map_or(n, |c| c.min(n)));
            }
            if info.expired {
                tracing::warn!(issuer = %info.issuer, policy = ?files.crl_expired, "CRL is past its nextUpdate");
            }
            if let Some(i) = &for_clients {
                revoked.extend(i.revoked.iter().cloned());
                client_crls.push(crl.clone());
            }
            if for_peers.is_some() {
                peer_crls.push(crl.clone());
            }
        }
    }

    let server_builder = ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()?;
    let mut server = match &files.client_ca {
        Some(ca) => {
            let (store, _) = roots(ca)?;
            let mut vb =
                WebPkiClientVerifier::builder_with_provider(Arc::new(store), server_provider())
                    .with_crls(client_crls);
            if enforce {
                vb = vb.enforce_revocation_expiration();
            }
            let verifier = vb.build().map_err(TlsError::Verifier)?;
            server_builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())?
        }
        None => server_builder
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())?,
    };
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let peer_ca = files
        .peer_ca
        .as_ref()
        .or(files.client_ca.as_ref())
        .ok_or(TlsError::NoPeerCa)?;
    let (store, _) = roots(peer_ca)?;
    let mut vb = WebPkiServerVerifier::builder_with_provider(Arc::new(store), client_provider())
        .with_crls(peer_crls);
    if enforce {
        vb = vb.enforce_revocation_expiration();
    }
    let webpki = vb.build().map_err(TlsError::Verifier)?;
    let verifier: Arc<dyn ServerCertVerifier> = match &files.peer_server_name {
        Some(name) => Arc::new(FixedNameVerifier {
            inner: webpki,
            name: ServerName::try_from(name.clone())
                .map_err(|_| TlsError::ServerName(name.clone()))?,
        }),
        None => webpki,
    };
    let mut client = ClientConfig::builder_with_provider(client_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![b"http/1.1".to_vec()];

    if let Some(serial) = cert_serial.as_ref().filter(|s| revoked.contains(*s)) {
        tracing::error!(%serial, cert = %files.cert.display(), "this node's own certificate is revoked by the CRL: peers refuse to serve it and to fetch from it; issue a new one (`peermirror certs issue --force`)");
    }
    Ok(TlsMaterial {
        server: Arc::new(server),
        client: Arc::new(client),
        crl_next_update,
        cert_not_after,
        cert_serial,
        revoked,
        deny_expired_crl: enforce,
    })
}

/// Verifies a peer's certificate fully (chain, CRLs, expiry) but for a configured name
/// instead of the address dialled.
#[derive(Debug)]
struct FixedNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a handshake failed, as a short label for the audit log and metrics.
pub fn handshake_reason(err: Option<&std::io::Error>) -> &'static str {
    let Some(err) = err else {
        return "handshake_timeout";
    };
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return "not_tls";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Revoked => "revoked",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "expired_crl",
            CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
            _ => "bad_certificate",
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
            "bad_handshake"
        }
        _ => "tls_error",
    }
}

/// The TLS material in force: the accept loop, the peer client and the revocation check each
/// read the latest from it; a reload replaces it whole.
pub type MaterialRx = watch::Receiver<Arc<TlsMaterial>>;

/// Loads the files for the first time: any problem fails start-up.
pub fn load(files: &TlsFiles) -> Result<watch::Sender<Arc<TlsMaterial>>, TlsError> {
    Ok(watch::channel(Arc::new(build(files)?)).0)
}

/// Until shutdown: reload the material when any of the files changes, and keep the expiry
/// gauges current. A broken or half-written file keeps the old material, logs an error and
/// counts a reload failure.
pub async fn keep_current(
    files: TlsFiles,
    material: watch::Sender<Arc<TlsMaterial>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let gauges = expiry_gauges(material.subscribe(), metrics.clone(), shutdown.clone());
    let watch = reload::watch(files.all_paths(), shutdown, || {
        let _ = reload(&files, &material, &metrics);
    });
    tokio::join!(watch, gauges);
}

/// Try to load the files again; on failure the old material stays.
fn reload(
    files: &TlsFiles,
    material: &watch::Sender<Arc<TlsMaterial>>,
    metrics: &Metrics,
) -> Result<(), TlsError> {
    match build(files) {
        Ok(m) => {
            material.send_replace(Arc::new(m));
            tracing::info!("TLS material reloaded");
            Ok(())
        }
        Err(e) => {
            metrics
                .security
                .reload_failures
                .get_or_create(&WhatLabels { what: "tls" })
                .inc();
            tracing::error!(error = %e, "TLS files changed but do not load; keeping the previous material");
            Err(e)
        }
    }
}

/// Time left on the CRL and on this node's certificate, for alerts: set on every poll (the
/// time left shrinks) and at once when the material changes.
async fn expiry_gauges(
    mut material: MaterialRx,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let until = |t: SystemTime| match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let mut tick = tokio::time::interval(reload::POLL_INTERVAL);
    loop {
        {
            let m = material.borrow_and_update();
            if let Some(next) = m.crl_next_update {
                metrics.security.crl_expiry_seconds.set(until(next));
            }
            if let Some(end) = m.cert_not_after {
                metrics.security.cert_expiry_seconds.set(until(end));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = material.changed() => if changed.is_err() { return },
        }
    }
}

/// Answers from the CRLs in force now whether a client certificate serial may be served.
pub fn revocation_check(material: MaterialRx) -> RevocationCheck {
    Arc::new(move |serial: &Serial| {
        let m = material.borrow();
        if m.revoked.contains(serial) {
            Some(Refusal::Revoked)
        } else if m.deny_expired_crl && m.crl_next_update.is_some_and(|n| n <= SystemTime::now()) {
            Some(Refusal::CrlExpired)
        } else {
            None
        }
    })
}

/// The registry listener's side of TLS: each new connection uses the latest server config.
pub struct Endpoint {
    material: MaterialRx,
    metrics: Arc<Metrics>,
}

impl Endpoint {
    pub fn new(material: MaterialRx, metrics: Arc<Metrics>) -> Self {
        Endpoint { material, metrics }
    }
}

impl TlsMaterial {
    /// Whether the loaded CRLs revoke this node's own certificate.
    pub fn own_cert_revoked(&self) -> bool {
        self.cert_serial
            .as_ref()
            .is_some_and(|s| self.revoked.contains(s))
    }
}

impl TlsProvider for Endpoint {
    fn server_config(&self) -> Arc<ServerConfig> {
        self.material.borrow().server.clone()
    }

    fn identify(&self, cert: &CertificateDer<'_>) -> ClientCert {
        match pki::cert_summary(cert) {
            Ok(s) => ClientCert {
                subject: s.subject,
                serial: Some(s.serial),
            },
            Err(_) => ClientCert {
                subject: "(unparsable)".into(),
                serial: None,
            },
        }
    }

    fn handshake_failed(&self, remote: SocketAddr, error: Option<&std::io::Error>) {
        let reason = handshake_reason(error);
        // A handshake carries no mark of a peer: from loopback it is taken for containerd's.
        self.metrics.security.refused(reason, remote.ip(), false);
        tracing::warn!(target: "audit", %remote, reason, detail = ?error.map(|e| e.to_string()), "TLS handshake refused");
    }
}
