//! Certificate and CRL loading as the daemon does it (`tls`): the same bytes read as a
//! certificate file (`pki::load_certs`) and as a CRL file (`pki::load_crls`), each certificate
//! summarised (`pki::cert_summary`) and added to a rustls root store, each CRL read
//! (`pki::read_crl`) and checked against each certificate as its CA (`pki::check_crl`), then a
//! client-certificate verifier built with the CRLs (webpki parses them again there).
//! Properties: no panic; what loads re-loads unchanged from its PEM form.
#![no_main]

use std::sync::Arc;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use peermirror::pki::{cert_summary, certs_from_bytes, check_crl, crls_from_bytes, read_crl};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;

fn pem(kind: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            body.push(if i <= chunk.len() {
                B64[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    format!("-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n")
}

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::now();
    let certs = certs_from_bytes(data).unwrap_or_default();
    let crls = crls_from_bytes(data).unwrap_or_default();

    let mut roots = RootCertStore::empty();
    for cert in &certs {
        let _ = cert_summary(cert);
        let _ = roots.add(cert.clone());
    }
    for crl in &crls {
        let _ = read_crl(crl, now);
        for ca in &certs {
            let _ = check_crl(crl, ca, now);
        }
    }
    if !roots.is_empty() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let _ = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls.clone())
            .enforce_revocation_expiration()
            .build();
    }

    if !certs.is_empty() {
        let text: String = certs.iter().map(|c| pem("CERTIFICATE", c)).collect();
        let back = certs_from_bytes(text.as_bytes()).expect("loaded certificates re-load");
        assert_eq!(back, certs);
    }
    if !crls.is_empty() {
        let text: String = crls.iter().map(|c| pem("X509 CRL", c)).collect();
        let back = crls_from_bytes(text.as_bytes()).expect("loaded CRLs re-load");
        assert_eq!(back, crls);
    }
});
