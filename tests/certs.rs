//! `peermirror certs` against temp directories: the files it writes, their modes, refusal to
//! overwrite, revocation and CRLs, the load/check helpers, and that rustls 0.23 accepts the
//! result (client and server verifiers built with the CA and the CRL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use peermirror::certs::{
    self, Ca, CertRequest, CertsArgs, CertsError, RevokedSerial, Usage, issue_for_test,
};
use peermirror::pki::{
    self, CrlError, LoadError, cert_summary, check_crl, load_certs, load_crls, load_key,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use tempfile::TempDir;

/// The command tree as main wires it: `peermirror certs ...`.
#[derive(Parser, Debug)]
enum Top {
    Certs(CertsArgs),
}

fn parse(dir: &Path, argv: &[&str]) -> Result<CertsArgs, clap::Error> {
    let mut full = vec!["peermirror", "certs", "--dir", dir.to_str().unwrap()];
    full.extend_from_slice(argv);
    Top::try_parse_from(full).map(|Top::Certs(args)| args)
}

fn try_run(dir: &Path, argv: &[&str]) -> Result<String, CertsError> {
    certs::run(&parse(dir, argv).unwrap())
}

fn run(dir: &Path, argv: &[&str]) -> String {
    try_run(dir, argv).unwrap_or_else(|e| panic!("certs {argv:?}: {e}"))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A directory with a CA and node-a (IP and DNS SANs) issued.
fn pki() -> TempDir {
    let tmp = TempDir::new().unwrap();
    run(tmp.path(), &["init-ca", "--cn", "test cluster CA"]);
    run(
        tmp.path(),
        &[
            "issue",
            "--name",
            "node-a",
            "--ip",
            "10.0.0.1",
            "--dns",
            "node-a.example",
        ],
    );
    tmp
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    load_certs(path).unwrap().remove(0)
}

fn crl_info(dir: &Path) -> pki::CrlInfo {
    let crl = load_crls(dir.join("crl.pem")).unwrap().remove(0);
    check_crl(&crl, &first_cert(&dir.join("ca.crt")), SystemTime::now()).unwrap()
}

#[test]
fn init_ca_then_issue_then_inspect_shows_sans_and_ekus() {
    let tmp = pki();
    let dir = tmp.path();
    for f in [
        "ca.crt",
        "ca.key",
        "crl.pem",
        "state.json",
        "node-a.crt",
        "node-a.key",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    // A bare name is looked up in --dir.
    let out = run(dir, &["inspect", "node-a.crt"]);
    for want in [
        "subject:        CN=node-a",
        "issuer:         CN=test cluster CA",
        "DNS:node-a.example",
        "IP:10.0.0.1",
        // Loopback too: where the node's own containerd reaches its mirror.
        "IP:127.0.0.1",
        "IP:::1",
        "ext. key usage: serverAuth, clientAuth",
        "key usage:      digitalSignature",
        "CA:             no",
        "(valid, expires in 36",
        "ca.crt: yes",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }

    let out = run(dir, &["inspect", dir.join("ca.crt").to_str().unwrap()]);
    assert!(out.contains("CA:             yes"), "{out}");
    assert!(
        out.contains("keyCertSign, cRLSign"),
        "CA key usages:\n{out}"
    );
    assert!(out.contains("digitalSignature"), "{out}");
    assert!(out.contains("this is the CA"), "{out}");

    // init-ca wrote an empty CRL, number 1, signed by the CA.
    let info = crl_info(dir);
    assert_eq!(info.number, Some(1));
    assert!(info.revoked.is_empty());
    assert!(!info.expired);
    let out = run(dir, &["inspect", "crl.pem"]);
    assert!(out.contains("CRL number:     1"), "{out}");
    assert!(out.contains("(current, 6 days left)"), "{out}");
}

#[test]
fn issued_cert_without_sans_is_fine_and_says_client_only() {
    let tmp = pki();
    let out = run(tmp.path(), &["issue", "--name", "client-1", "--days", "30"]);
    assert!(out.contains("good as a client certificate only"), "{out}");
    let s = cert_summary(&first_cert(&tmp.path().join("client-1.crt"))).unwrap();
    assert!(s.sans.is_empty());
    // containerd's: a client certificate, and it says so.
    assert_eq!(s.ext_key_usage, ["clientAuth"]);
    assert!(out.contains("usage:    clientAuth\n"), "{out}");
    let days = s
        .not_after
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs()
        / 86_400;
    assert_eq!(days, 29, "30 days minus the seconds the test took");
}

#[test]
fn keys_are_0600_and_public_files_0644() {
    let tmp = pki();
    let dir = tmp.path();
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert_eq!(mode(&dir.join("node-a.key")), 0o600);
    // Public files: 0644 minus whatever the umask takes away, never more.
    for f in ["ca.crt", "node-a.crt", "crl.pem", "state.json"] {
        let m = mode(&dir.join(f));
        assert_eq!(m & !0o644, 0, "{f}: {m:o}");
        assert_ne!(m & 0o600, 0, "{f}: {m:o}");
    }
    // --force replacement keeps the key private.
    run(dir, &["issue", "--name", "node-a", "--force"]);
    assert_eq!(mode(&dir.join("node-a.key")), 0o600);
    // Nothing but our files: no temp files left behind.
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca.crt",
            "ca.key",
            "crl.pem",
            "node-a.crt",
            "node-a.key",
            "state.json"
        ]
    );
}

#[test]
fn existing_files_are_not_overwritten_without_force() {
    let tmp = pki();
    let dir = tmp.path();
    let ca_before = fs::read(dir.join("ca.crt")).unwrap();
    let key_before = fs::read(dir.join("ca.key")).unwrap();

    let err = try_run(dir, &["init-ca"]).unwrap_err();
    assert!(matches!(err, CertsError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("use --force"), "{err}");
    assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), ca_before);
    assert_eq!(fs::read(dir.join("ca.key")).unwrap(), key_before);

    let node_before = fs::read(dir.join("node-a.crt")).unwrap();
    let err = try_run(dir, &["issue", "--name", "node-a"]).unwrap_err();
    assert!(err.to_string().contains("use --force"), "{err}");
    assert_eq!(fs::read(dir.join("node-a.crt")).unwrap(), node_before);

    // With --force: replaced, and told how to revoke the old one.
    let old_serial = cert_summary(&first_cert(&dir.join("node-a.crt")))
        .unwrap()
        .serial
        .to_string();
    let out = run(dir, &["issue", "--name", "node-a", "--force"]);
    assert!(
        out.contains(&format!("revoke --serial {old_serial}")),
        "{out}"
    );
    assert_ne!(fs::read(dir.join("node-a.crt")).unwrap(), node_before);

    // Replacing a revoked one: it says the old one is already revoked, not "revoke it".
    let replaced = cert_summary(&first_cert(&dir.join("node-a.crt")))
        .unwrap()
        .serial
        .to_string();
    run(dir, &["revoke", "--name", "node-a"]);
    let out = run(
        dir,
        &["issue", "--name", "node-a", "--ip", "10.0.0.1", "--force"],
    );
    assert!(
        out.contains(&format!("(serial {replaced}) was revoked at"))
            && !out.contains("stays valid")
            && !out.contains("revoke --serial"),
        "{out}"
    );

    let out = run(dir, &["init-ca", "--force"]);
    assert!(out.contains("no longer verify"), "{out}");
    assert_ne!(fs::read(dir.join("ca.crt")).unwrap(), ca_before);
    // The new CA's CRL continues the numbering (1 from init-ca, 2 from the revoke above).
    assert_eq!(crl_info(dir).number, Some(3));
}

#[test]
fn revoke_and_crl_list_the_serial_with_increasing_numbers() {
    let tmp = pki();
    let dir = tmp.path();
    run(dir, &["issue", "--name", "node-b", "--ip", "10.0.0.2"]);
    let serial_a = cert_summary(&first_cert(&dir.join("node-a.crt")))
        .unwrap()
        .serial
        .to_string();
    let serial_b = cert_summary(&first_cert(&dir.join("node-b.crt")))
        .unwrap()
        .serial
        .to_string();

    let out = run(
        dir,
        &["revoke", "--name", "node-a", "--reason", "keyCompromise"],
    );
    assert!(
        out.contains(&format!(
            "revoked node-a (serial {serial_a}), reason keyCompromise"
        )),
        "{out}"
    );
    let info = crl_info(dir);
    assert_eq!(info.revoked, std::slice::from_ref(&serial_a));
    assert_eq!(info.number, Some(2));
    assert_eq!(info.reasons, [Some(certs::Reason::KeyCompromise)]);

    // By serial, spelled with colons and upper case as other tools print it; the name is found.
    let colons: Vec<String> = serial_b
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    let out = run(dir, &["revoke", "--serial", &colons.join(":")]);
    assert!(
        out.contains(&format!("revoked node-b (serial {serial_b})")),
        "{out}"
    );

    // Revoking again is harmless.
    let out = run(dir, &["revoke", "--name", "node-b"]);
    assert!(out.contains("already revoked"), "{out}");

    // A serial this directory never issued is still listed, with a note.
    let out = run(dir, &["revoke", "--serial", "0x01:02"]);
    assert!(out.contains("listed in the CRL anyway"), "{out}");

    let out = run(dir, &["crl", "--next-update", "36h"]);
    assert!(out.contains("3 revoked serial(s)"), "{out}");
    let info = crl_info(dir);
    assert_eq!(info.number, Some(6));
    let mut want = vec![serial_a.clone(), serial_b.clone(), "0102".to_string()];
    want.sort();
    let mut got = info.revoked.clone();
    got.sort();
    assert_eq!(got, want);
    let left = info
        .next_update
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(35 * 3600) && left <= Duration::from_secs(36 * 3600));

    let out = run(dir, &["inspect", "crl.pem"]);
    assert!(out.contains(&format!("{serial_a}  keyCompromise")), "{out}");
    assert!(out.contains("ca.crt: yes"), "{out}");
    let out = run(dir, &["inspect", "node-a.crt"]);
    assert!(out.contains("REVOKED:"), "{out}");
}

#[test]
fn check_crl_accepts_own_ca_and_rejects_others() {
    let ca = Ca::generate("cluster CA").unwrap();
    let next = SystemTime::now() + Duration::from_secs(3600);
    let crl_pem = ca.crl(&[RevokedSerial::new("0abc")], 1, next).unwrap();
    let crl =
        rustls_pki_types::CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).unwrap();
    let info = check_crl(&crl, ca.cert_der(), SystemTime::now()).unwrap();
    assert_eq!(info.issuer, "CN=cluster CA");
    assert_eq!(info.revoked, ["0abc"]);
    assert!(!info.expired);

    // Another CA, another name: the issuer does not match.
    let other = Ca::generate("other CA").unwrap();
    let err = check_crl(&crl, other.cert_der(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, CrlError::Issuer { .. }), "{err}");

    // Same name, different key: only the signature tells them apart.
    let twin = Ca::generate("cluster CA").unwrap();
    let err = check_crl(&crl, twin.cert_der(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, CrlError::Signature { .. }), "{err}");
    assert!(err.to_string().contains("peermirror certs crl"), "{err}");

    // A CRL whose next update has passed is flagged, not rejected.
    let past = SystemTime::now() - Duration::from_secs(3600);
    let old = ca.crl(&[], 2, past).unwrap();
    let old =
        rustls_pki_types::CertificateRevocationListDer::from_pem_slice(old.as_bytes()).unwrap();
    let info = check_crl(&old, ca.cert_der(), SystemTime::now()).unwrap();
    assert!(info.expired);
    assert!(info.this_update < info.next_update.unwrap());

    // Garbage is an error, not a panic.
    let err = check_crl(b"\x30\x03\x02\x01\x00", ca.cert_der(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, CrlError::Invalid { .. }), "{err}");
}

#[test]
fn loaders_accept_pem_and_der() {
    let tmp = pki();
    let dir = tmp.path();
    let cert = first_cert(&dir.join("node-a.crt"));
    let key = load_key(dir.join("node-a.key")).unwrap();
    let crl = load_crls(dir.join("crl.pem")).unwrap().remove(0);
    assert!(matches!(key, rustls_pki_types::PrivateKeyDer::Pkcs8(_)));

    fs::write(dir.join("node-a.der"), &cert).unwrap();
    fs::write(dir.join("key.der"), key.secret_der()).unwrap();
    fs::write(dir.join("crl.der"), &crl).unwrap();
    assert_eq!(
        load_certs(dir.join("node-a.der")).unwrap(),
        std::slice::from_ref(&cert)
    );
    assert_eq!(
        load_key(dir.join("key.der")).unwrap().secret_der(),
        key.secret_der()
    );
    assert_eq!(
        load_crls(dir.join("crl.der")).unwrap(),
        std::slice::from_ref(&crl)
    );

    // Several: a PEM bundle (chain) and back-to-back DER.
    let ca = first_cert(&dir.join("ca.crt"));
    let bundle = format!(
        "{}{}",
        fs::read_to_string(dir.join("node-a.crt")).unwrap(),
        fs::read_to_string(dir.join("ca.crt")).unwrap()
    );
    fs::write(dir.join("chain.pem"), bundle).unwrap();
    assert_eq!(
        load_certs(dir.join("chain.pem")).unwrap(),
        [cert.clone(), ca.clone()]
    );
    fs::write(dir.join("chain.der"), [&cert[..], &ca[..]].concat()).unwrap();
    assert_eq!(load_certs(dir.join("chain.der")).unwrap(), [cert, ca]);
    let crl_pem = fs::read_to_string(dir.join("crl.pem")).unwrap();
    fs::write(
        dir.join("crls.pem"),
        format!("some text\n{crl_pem}{crl_pem}"),
    )
    .unwrap();
    assert_eq!(load_crls(dir.join("crls.pem")).unwrap().len(), 2);

    // inspect reads DER too.
    let out = run(dir, &["inspect", "crl.der"]);
    assert!(out.contains("CRL number:     1"), "{out}");
    let out = run(dir, &["inspect", "node-a.der"]);
    assert!(out.contains("CN=node-a"), "{out}");

    // Wrong kind of file: a clear error naming what is missing.
    let err = load_certs(dir.join("node-a.key")).unwrap_err();
    assert!(err.to_string().contains("holds no certificate"), "{err}");
    let err = load_key(dir.join("node-a.crt")).unwrap_err();
    assert!(err.to_string().contains("holds no private key"), "{err}");
    let err = load_crls(dir.join("ca.crt")).unwrap_err();
    assert!(err.to_string().contains("holds no CRL"), "{err}");
    let err = load_certs(dir.join("nope.pem")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let empty = TempDir::new().unwrap();
    let err = try_run(empty.path(), &["issue", "--name", "node-a"]).unwrap_err();
    assert!(matches!(err, CertsError::NoCa { .. }), "{err}");
    assert!(err.to_string().contains("init-ca"), "{err}");
    let err = try_run(empty.path(), &["crl"]).unwrap_err();
    assert!(matches!(err, CertsError::NoCa { .. }), "{err}");

    let tmp = pki();
    let dir = tmp.path();
    for name in ["../evil", ".hidden", "a/b", "ca", "", "sp ace"] {
        let err = try_run(dir, &["issue", "--name", name]).unwrap_err();
        assert!(matches!(err, CertsError::BadName { .. }), "{name:?}: {err}");
        assert!(err.to_string().contains("letters, digits"), "{err}");
    }
    let err = try_run(dir, &["issue", "--name", "x", "--dns", "bad_host"]).unwrap_err();
    assert!(matches!(err, CertsError::BadDns { .. }), "{err}");
    let err = try_run(dir, &["issue", "--name", "x", "--dns", "10.1.1.1"]).unwrap_err();
    assert!(err.to_string().contains("--ip"), "{err}");
    let err = try_run(dir, &["issue", "--name", "x", "--days", "36500"]).unwrap_err();
    assert!(matches!(err, CertsError::OutlivesCa { .. }), "{err}");
    assert!(!dir.join("x.crt").exists() && !dir.join("x.key").exists());

    let err = try_run(dir, &["revoke", "--name", "ghost"]).unwrap_err();
    assert!(matches!(err, CertsError::MissingCert { .. }), "{err}");
    let err = try_run(dir, &["revoke", "--serial", "xyz"]).unwrap_err();
    assert!(matches!(err, CertsError::BadSerial { .. }), "{err}");

    // A certificate from another CA is not revoked by name here.
    let other = Ca::generate("other CA").unwrap();
    let (pem, _) = issue_for_test(&other, "stranger", 1, true).unwrap();
    fs::write(dir.join("stranger.crt"), pem).unwrap();
    let err = try_run(dir, &["revoke", "--name", "stranger"]).unwrap_err();
    assert!(matches!(err, CertsError::NotIssuedByCa { .. }), "{err}");
    let out = run(dir, &["inspect", "stranger.crt"]);
    assert!(out.contains("ca.crt: NO"), "{out}");

    // inspect: not a certificate or CRL.
    let err = try_run(dir, &["inspect", "node-a.key"]).unwrap_err();
    assert!(matches!(err, CertsError::UnknownFileType { .. }), "{err}");
    assert!(err.to_string().contains("a private key"), "{err}");
    fs::write(dir.join("junk.bin"), b"\x01\x02\x03").unwrap();
    let err = try_run(dir, &["inspect", "junk.bin"]).unwrap_err();
    assert!(
        err.to_string().contains("not a certificate or CRL"),
        "{err}"
    );
    fs::write(dir.join("empty.pem"), b"").unwrap();
    let err = try_run(dir, &["inspect", "empty.pem"]).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = try_run(dir, &["inspect", "missing.pem"]).unwrap_err();
    assert!(
        matches!(err, CertsError::Load(LoadError::Read { .. })),
        "{err}"
    );

    // Flag-level mistakes are caught by clap.
    assert!(parse(dir, &["issue", "--name", "x", "--days", "0"]).is_err());
    assert!(parse(dir, &["crl", "--next-update", "0s"]).is_err());
    assert!(parse(dir, &["crl", "--next-update", "soon"]).is_err());
    assert!(parse(dir, &["revoke"]).is_err());
    assert!(parse(dir, &["revoke", "--name", "a", "--serial", "01"]).is_err());
    assert!(parse(dir, &["revoke", "--name", "a", "--reason", "because"]).is_err());
    assert!(parse(dir, &["issue", "--name", "x", "--ip", "not-an-ip"]).is_err());
    // --dir is global: it may come after the subcommand too.
    let args = Top::try_parse_from(["peermirror", "certs", "crl", "--dir", "/tmp/x"]).unwrap();
    let Top::Certs(args) = args;
    assert_eq!(args.dir, Path::new("/tmp/x"));
}

/// Builds rustls verifiers from the CA directory the way the TLS layer will.
struct Verifiers {
    client: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    server: Arc<dyn rustls::client::danger::ServerCertVerifier>,
}

fn verifiers(dir: &Path, enforce_expiry: bool) -> Verifiers {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in load_certs(dir.join("ca.crt")).unwrap() {
        roots.add(ca).unwrap();
    }
    let roots = Arc::new(roots);
    let crls = load_crls(dir.join("crl.pem")).unwrap();
    let mut client = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .with_crls(crls.clone());
    let mut server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
        .with_crls(crls);
    if enforce_expiry {
        client = client.enforce_revocation_expiration();
        server = server.enforce_revocation_expiration();
    }
    Verifiers {
        client: client.build().unwrap(),
        server: server.build().unwrap(),
    }
}

fn cert_error(e: rustls::Error) -> CertificateError {
    match e {
        rustls::Error::InvalidCertificate(c) => c,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn rustls_verifiers_accept_issued_certs_and_honour_the_crl() {
    let tmp = pki();
    let dir = tmp.path();
    run(dir, &["issue", "--name", "node-b", "--ip", "10.0.0.2"]);
    let a = first_cert(&dir.join("node-a.crt"));
    let b = first_cert(&dir.join("node-b.crt"));
    let now = UnixTime::now();

    let v = verifiers(dir, false);
    v.client.verify_client_cert(&a, &[], now).unwrap();
    v.client.verify_client_cert(&b, &[], now).unwrap();
    // The same certificate serves: name and IP SANs both match.
    for name in ["node-a.example", "10.0.0.1"] {
        let name = ServerName::try_from(name).unwrap();
        v.server
            .verify_server_cert(&a, &[], &name, &[], now)
            .unwrap();
    }
    let wrong = ServerName::try_from("10.0.0.9").unwrap();
    let err = v
        .server
        .verify_server_cert(&a, &[], &wrong, &[], now)
        .unwrap_err();
    assert!(
        matches!(
            cert_error(err),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "wrong name"
    );

    run(dir, &["revoke", "--name", "node-a"]);
    let v = verifiers(dir, true);
    let err = v.client.verify_client_cert(&a, &[], now).unwrap_err();
    assert_eq!(cert_error(err), CertificateError::Revoked);
    let name = ServerName::try_from("node-a.example").unwrap();
    let err = v
        .server
        .verify_server_cert(&a, &[], &name, &[], now)
        .unwrap_err();
    assert_eq!(cert_error(err), CertificateError::Revoked);
    v.client.verify_client_cert(&b, &[], now).unwrap();
}

#[test]
fn rustls_rejects_test_certs_that_are_expired_foreign_or_server_only() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    run(dir, &["init-ca"]);
    let ca = Ca::load(dir).unwrap();
    let v = verifiers(dir, true);
    let now = UnixTime::now();
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();

    let (good, key) = issue_for_test(&ca, "node-t", 1, true).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    v.client.verify_client_cert(&der(&good), &[], now).unwrap();
    let local = ServerName::try_from("127.0.0.1").unwrap();
    v.server
        .verify_server_cert(&der(&good), &[], &local, &[], now)
        .unwrap();

    let (expired, _) = issue_for_test(&ca, "node-t", -1, true).unwrap();
    let err = v
        .client
        .verify_client_cert(&der(&expired), &[], now)
        .unwrap_err();
    assert!(
        matches!(
            cert_error(err),
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "expired"
    );

    let other = Ca::generate("peermirror cluster CA").unwrap();
    let (foreign, _) = issue_for_test(&other, "node-t", 1, true).unwrap();
    let err = v
        .client
        .verify_client_cert(&der(&foreign), &[], now)
        .unwrap_err();
    assert!(
        matches!(
            cert_error(err),
            CertificateError::BadSignature | CertificateError::UnknownIssuer
        ),
        "foreign CA with the same name"
    );

    let (server_only, _) = issue_for_test(&ca, "node-t", 1, false).unwrap();
    let err = v
        .client
        .verify_client_cert(&der(&server_only), &[], now)
        .unwrap_err();
    assert!(
        matches!(
            cert_error(err),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
        ),
        "server-only cert as a client"
    );

    // A client-only certificate from the builder, for completeness.
    let mut req = CertRequest::new("client-only", SystemTime::now(), 1).unwrap();
    req.usage = Usage::ClientOnly;
    let issued = ca.issue(&req).unwrap();
    v.client
        .verify_client_cert(&issued.cert_der, &[], now)
        .unwrap();
}

#[test]
fn rustls_enforcing_crl_expiry_rejects_an_expired_crl() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    run(dir, &["init-ca"]);
    let ca = Ca::load(dir).unwrap();
    let (pem, _) = issue_for_test(&ca, "node-t", 1, true).unwrap();
    let cert = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let past = SystemTime::now() - Duration::from_secs(60);
    fs::write(dir.join("crl.pem"), ca.crl(&[], 99, past).unwrap()).unwrap();

    let err = verifiers(dir, true)
        .client
        .verify_client_cert(&cert, &[], UnixTime::now())
        .unwrap_err();
    assert!(
        matches!(
            cert_error(err),
            CertificateError::ExpiredRevocationList
                | CertificateError::ExpiredRevocationListContext { .. }
        ),
        "expired CRL enforced"
    );
    // rustls's default ignores CRL expiry (FIELD-NOTES), which is why check_crl reports it.
    verifiers(dir, false)
        .client
        .verify_client_cert(&cert, &[], UnixTime::now())
        .unwrap();
}

#[test]
fn node_certificates_name_loopback_unless_told_not_to() {
    let tmp = pki();
    let dir = tmp.path();
    let sans = |name: &str| {
        cert_summary(&first_cert(&dir.join(format!("{name}.crt"))))
            .unwrap()
            .sans
    };
    assert_eq!(
        sans("node-a"),
        [
            "DNS:node-a.example",
            "IP:10.0.0.1",
            "IP:127.0.0.1",
            "IP:::1"
        ]
    );
    // Loopback given by hand is not repeated.
    run(dir, &["issue", "--name", "n2", "--ip", "127.0.0.1"]);
    assert_eq!(sans("n2"), ["IP:127.0.0.1", "IP:::1"]);
    run(
        dir,
        &[
            "issue",
            "--name",
            "n3",
            "--dns",
            "n3.example",
            "--no-loopback",
        ],
    );
    assert_eq!(sans("n3"), ["DNS:n3.example"]);
}
