//! The cluster CA: generating it, loading it from its directory, issuing node certificates
//! and signing CRLs. Pure apart from [`Ca::load`]; the CLI and the tests share it.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData as _, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::parse_x509_certificate;

use super::pem::to_pem;
use super::store::{CA_CERT, CA_KEY};
use super::{CertsError, Reason, fmt_time, to_odt};
use crate::pki::{Serial, load_certs, load_key};

/// Default lifetime of a CA made by `init-ca`.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Certificates start a minute in the past, so a node whose clock is a little behind accepts them.
const BACKDATE: time::Duration = time::Duration::seconds(60);
const DAY: Duration = Duration::from_secs(86_400);

/// A CA certificate with its signing key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    subject: String,
    not_after: OffsetDateTime,
    /// The CA's subject key identifier, repeated as the CRL's authority key identifier.
    key_id: KeyIdMethod,
}

impl std::fmt::Debug for Ca {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.subject)
            .field("not_after", &fmt_time(self.not_after))
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA valid for [`DEFAULT_CA_DAYS`] from now.
    pub fn generate(cn: &str) -> Result<Ca, CertsError> {
        Self::generate_with(cn, DEFAULT_CA_DAYS, SystemTime::now())
    }

    /// A new self-signed CA: ECDSA P-256, unconstrained path length, allowed to sign certificates
    /// and CRLs, valid from `now` (backdated a minute) for `days`.
    pub fn generate_with(cn: &str, days: u32, now: SystemTime) -> Result<Ca, CertsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let (not_before, not_after) = validity(now, i64::from(days))?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        Self::from_parts(cert.der().clone(), key, Path::new("<generated>"))
    }

    /// Loads `ca.crt` and `ca.key` from `dir`, checking that the key belongs to the certificate
    /// and that the certificate is a CA.
    pub fn load(dir: &Path) -> Result<Ca, CertsError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if !cert_path.exists() || !key_path.exists() {
            return Err(CertsError::NoCa {
                dir: dir.to_path_buf(),
            });
        }
        let cert =
            load_certs(&cert_path)?
                .into_iter()
                .next()
                .ok_or_else(|| CertsError::NotFoundIn {
                    path: cert_path.clone(),
                    wanted: "certificate",
                })?;
        let key = load_key(&key_path)?;
        let key = KeyPair::try_from(&key).map_err(|e| CertsError::Unreadable {
            path: key_path,
            detail: format!("unsupported private key: {e}"),
        })?;
        Self::from_parts(cert, key, &cert_path)
    }

    /// A CA from a PEM certificate and PEM key, e.g. ones a test kept from [`Ca::cert_pem`] and
    /// [`Ca::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertsError> {
        use rustls_pki_types::pem::PemObject as _;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            CertsError::Unreadable {
                path: "<CA certificate PEM>".into(),
                detail: e.to_string(),
            }
        })?;
        let key = KeyPair::from_pem(key_pem)?;
        Self::from_parts(cert, key, Path::new("<CA certificate PEM>"))
    }

    fn from_parts(
        cert_der: CertificateDer<'static>,
        key: KeyPair,
        origin: &Path,
    ) -> Result<Ca, CertsError> {
        let (subject, not_after, key_id) = {
            let (_, x509) =
                parse_x509_certificate(&cert_der).map_err(|e| CertsError::Unreadable {
                    path: origin.to_path_buf(),
                    detail: e.to_string(),
                })?;
            if !x509.is_ca() {
                return Err(CertsError::NotCa {
                    path: origin.to_path_buf(),
                });
            }
            if x509.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(CertsError::CaKeyMismatch {
                    path: origin.to_path_buf(),
                });
            }
            let key_id = x509
                .iter_extensions()
                .find_map(|ext| match ext.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(id) => {
                        Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
                    }
                    _ => None,
                })
                .unwrap_or(KeyIdMethod::Sha256);
            (
                x509.subject().to_string(),
                x509.validity().not_after.to_datetime(),
                key_id,
            )
        };
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Ca {
            issuer,
            cert_der,
            subject,
            not_after,
            key_id,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.cert_der)
    }

    /// The CA key as PKCS#8 PEM. Secret: write it with mode 0600.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The subject, as `CN=...`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn not_after(&self) -> SystemTime {
        SystemTime::from(self.not_after)
    }

    /// Signs a certificate for `req` with a fresh ECDSA P-256 key and a random serial.
    pub fn issue(&self, req: &CertRequest) -> Result<IssuedCert, CertsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, req.name.as_str());
        for dns in &req.dns {
            let ia5 = dns.as_str().try_into().map_err(|_| CertsError::BadDns {
                name: dns.clone(),
                problem: "is not ASCII",
            })?;
            push_unique(&mut params.subject_alt_names, SanType::DnsName(ia5));
        }
        for ip in &req.ips {
            push_unique(&mut params.subject_alt_names, SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys only sign; keyEncipherment would be meaningless.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match req.usage {
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::ServerOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::ClientOnly => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.not_before = to_odt(req.not_before)?;
        params.not_after = to_odt(req.not_after)?;
        if params.not_after <= params.not_before {
            return Err(CertsError::BadTime {
                detail: "the certificate's not-after must be later than its not-before".into(),
            });
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            serial_hex: Serial::from_be_bytes(&serial.to_bytes()).into(),
            not_after: req.not_after,
        })
    }

    /// A PEM CRL listing `revoked`, numbered `crl_number`, valid until `next_update`.
    /// thisUpdate is now; when `next_update` is not in the future (tests making an expired CRL)
    /// it is a day before `next_update` instead, since a CRL must end after it starts.
    pub fn crl(
        &self,
        revoked: &[RevokedSerial],
        crl_number: u64,
        next_update: SystemTime,
    ) -> Result<String, CertsError> {
        let now = SystemTime::now();
        let this_update = if next_update > now {
            now
        } else {
            next_update.checked_sub(DAY).unwrap_or(next_update)
        };
        let der = self.crl_der(revoked, crl_number, this_update, next_update)?;
        Ok(to_pem("X509 CRL", &der))
    }

    /// The DER CRL with explicit thisUpdate and nextUpdate.
    pub fn crl_der(
        &self,
        revoked: &[RevokedSerial],
        crl_number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<CertificateRevocationListDer<'static>, CertsError> {
        let this_update = whole_seconds(to_odt(this_update)?);
        let next_update = whole_seconds(to_odt(next_update)?);
        if next_update <= this_update {
            return Err(CertsError::BadTime {
                detail: "a CRL's next update must be later than its this update".into(),
            });
        }
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&parse_serial(&r.serial_hex)?),
                    revocation_time: whole_seconds(to_odt(r.revoked_at)?),
                    reason_code: r.reason.map(Reason::to_rcgen),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CertsError>>()?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: self.key_id.clone(),
        };
        Ok(params.signed_by(&self.issuer)?.der().clone())
    }
}

/// Which extended key usages a certificate gets. Nodes are both server (their mirror endpoint)
/// and client (fetching from peers): [`Usage::ServerAndClient`]; a certificate with no address
/// or name (containerd's) is [`Usage::ClientOnly`]; [`Usage::ServerOnly`] exists so TLS tests
/// can check that a verifier rejects the wrong usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    ServerAndClient,
    ServerOnly,
    ClientOnly,
}

/// What to put in a node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// The subject CN.
    pub name: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub usage: Usage,
}

impl CertRequest {
    /// A server+client certificate for `name` with no SANs, valid from a minute before `now` for
    /// `days`. Negative `days` give an already expired certificate (valid for one day, ending
    /// `-days` days ago).
    pub fn new(name: impl Into<String>, now: SystemTime, days: i64) -> Result<Self, CertsError> {
        let (not_before, not_after) = validity(now, days)?;
        Ok(CertRequest {
            name: name.into(),
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: SystemTime::from(not_before),
            not_after: SystemTime::from(not_after),
            usage: Usage::ServerAndClient,
        })
    }
}

/// A certificate just issued, with its new key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    /// PKCS#8 PEM. Secret.
    pub key_pem: String,
    /// Lowercase hex, no leading zero bytes: the form `revoke --serial` and CRL listings use.
    pub serial_hex: String,
    pub not_after: SystemTime,
}

/// One CRL entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    pub serial_hex: String,
    pub revoked_at: SystemTime,
    pub reason: Option<Reason>,
}

impl RevokedSerial {
    /// Revoked now, no reason given.
    pub fn new(serial_hex: impl Into<String>) -> Self {
        RevokedSerial {
            serial_hex: serial_hex.into(),
            revoked_at: SystemTime::now(),
            reason: None,
        }
    }
}

/// **For tests** (unit tests, and integration tests through the `test-issuer` feature): a certificate signed by `ca` for `name`, with
/// SANs `localhost`, `127.0.0.1`, `::1` (and `name` when it is a DNS name), valid for
/// `days_valid_from_now` days (negative: expired that many days ago). `eku_server_and_client`
/// false gives a serverAuth-only certificate, which client verifiers must reject.
/// Returns `(cert_pem, key_pem)`; use [`Ca::issue`] for anything finer.
#[cfg(any(test, feature = "test-issuer"))]
pub fn issue_for_test(
    ca: &Ca,
    name: &str,
    days_valid_from_now: i64,
    eku_server_and_client: bool,
) -> Result<(String, String), CertsError> {
    let mut req = CertRequest::new(name, SystemTime::now(), days_valid_from_now)?;
    req.dns.push("localhost".into());
    if super::check_dns_name(name).is_ok() {
        req.dns.push(name.into());
    }
    req.ips = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !eku_server_and_client {
        req.usage = Usage::ServerOnly;
    }
    let issued = ca.issue(&req)?;
    Ok((issued.cert_pem, issued.key_pem))
}

/// not-before/not-after for a lifetime of `days` from `now`: backdated by [`BACKDATE`]; for a
/// negative lifetime, the one day ending `-days` days ago.
fn validity(now: SystemTime, days: i64) -> Result<(OffsetDateTime, OffsetDateTime), CertsError> {
    let now = whole_seconds(to_odt(now)?);
    let not_after = days
        .checked_mul(86_400)
        .and_then(|secs| now.checked_add(time::Duration::seconds(secs)))
        .filter(|t| (2..=9999).contains(&t.year()))
        .ok_or_else(|| CertsError::BadTime {
            detail: format!("{days} days from now is outside the years 2-9999"),
        })?;
    let backdated = now - BACKDATE;
    let not_before = backdated.min(not_after - time::Duration::days(1));
    Ok((not_before, not_after))
}

fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// 16 random bytes, first byte 0x01..=0x7f: positive (no sign byte needed) and always 16 bytes.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    SerialNumber::from_slice(&bytes)
}

/// Parses a serial given as hex (colons, spaces and a `0x` prefix allowed) into its big-endian
/// bytes without leading zeros (at least one byte).
pub(crate) fn parse_serial(text: &str) -> Result<Vec<u8>, CertsError> {
    let bad = |problem: &'static str| CertsError::BadSerial {
        value: text.to_string(),
        problem,
    };
    let trimmed = text.trim();
    let trimmed = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let mut digits: String = trimmed
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    if digits.is_empty() {
        return Err(bad("is empty"));
    }
    if digits.len() % 2 == 1 {
        digits.insert(0, '0');
    }
    let bytes = hex::decode(&digits).map_err(|_| bad("is not hexadecimal"))?;
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    let bytes = bytes[first..].to_vec();
    if bytes.len() > 20 {
        return Err(bad("is longer than 20 bytes (RFC 5280's limit)"));
    }
    Ok(bytes)
}

fn push_unique(sans: &mut Vec<SanType>, san: SanType) {
    if !sans.contains(&san) {
        sans.push(san);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{cert_summary, check_crl};

    #[test]
    fn generated_ca_is_a_crl_signing_ca_and_reloads_from_pem() {
        let ca = Ca::generate("test CA").unwrap();
        let summary = cert_summary(ca.cert_der()).unwrap();
        assert!(summary.is_ca);
        assert_eq!(summary.subject, "CN=test CA");
        assert_eq!(summary.issuer, "CN=test CA");
        for usage in ["keyCertSign", "cRLSign", "digitalSignature"] {
            assert!(summary.key_usage.iter().any(|u| u == usage), "{usage}");
        }
        let again = Ca::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        let other = Ca::generate("other").unwrap();
        let err = Ca::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, CertsError::CaKeyMismatch { .. }), "{err}");
    }

    #[test]
    fn issued_cert_has_cn_sans_ekus_and_16_byte_serial() {
        let ca = Ca::generate("test CA").unwrap();
        let mut req = CertRequest::new("node-a", SystemTime::now(), 30).unwrap();
        req.dns = vec!["node-a.example".into(), "node-a.example".into()];
        req.ips = vec!["10.0.0.1".parse().unwrap()];
        let issued = ca.issue(&req).unwrap();
        let s = cert_summary(&issued.cert_der).unwrap();
        assert_eq!(s.subject, "CN=node-a");
        assert_eq!(s.issuer, "CN=test CA");
        assert_eq!(s.sans, ["DNS:node-a.example", "IP:10.0.0.1"]);
        assert_eq!(s.ext_key_usage, ["serverAuth", "clientAuth"]);
        assert_eq!(s.key_usage, ["digitalSignature"]);
        assert!(!s.is_ca);
        assert_eq!(s.serial, issued.serial_hex);
        assert_eq!(s.serial.as_str().len(), 32);
        assert!(!s.is_expired(SystemTime::now()));
        let lifetime = s.not_after.duration_since(s.not_before).unwrap();
        assert_eq!(lifetime, Duration::from_secs(30 * 86_400 + 60));
    }

    #[test]
    fn negative_days_give_an_expired_cert() {
        let ca = Ca::generate("test CA").unwrap();
        let (pem, _key) = issue_for_test(&ca, "old", -2, true).unwrap();
        let der =
            <CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_slice(pem.as_bytes())
                .unwrap();
        let s = cert_summary(&der).unwrap();
        assert!(s.is_expired(SystemTime::now()));
        assert!(s.not_before < s.not_after);
    }

    #[test]
    fn crl_lists_serials_and_checks_against_its_ca() {
        let ca = Ca::generate("test CA").unwrap();
        let revoked = [
            RevokedSerial::new("0a:0b"),
            RevokedSerial {
                reason: Some(Reason::KeyCompromise),
                ..RevokedSerial::new("00ff")
            },
        ];
        let next = SystemTime::now() + Duration::from_secs(3600);
        let der = ca.crl_der(&revoked, 5, SystemTime::now(), next).unwrap();
        let info = check_crl(&der, ca.cert_der(), SystemTime::now()).unwrap();
        assert_eq!(info.number, Some(5));
        assert_eq!(info.revoked, ["0a0b", "ff"]);
        assert!(!info.expired);
    }

    #[test]
    fn serials_parse_in_common_spellings() {
        assert_eq!(parse_serial("0x00:0A:ff").unwrap(), [0x0a, 0xff]);
        assert_eq!(parse_serial("abc").unwrap(), [0x0a, 0xbc]);
        assert_eq!(parse_serial("00").unwrap(), [0]);
        assert!(parse_serial("xyz").is_err());
        assert!(parse_serial("").is_err());
        assert!(parse_serial(&"11".repeat(21)).is_err());
    }
}
