//! Reading certificates and CRLs: summaries for `inspect`, the audit log and status, and
//! [`check_crl`], which the TLS layer runs before trusting a CRL.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{parse_x509_certificate, parse_x509_crl};
use x509_parser::revocation_list::CertificateRevocationList;

use super::{CertError, CrlError, Reason, Serial};

/// What a certificate says, in printable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// RFC 4514-ish, e.g. `CN=node-a`.
    pub subject: String,
    pub issuer: String,
    pub serial: Serial,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `DNS:name`, `IP:addr`, `URI:...`, `email:...`.
    pub sans: Vec<String>,
    /// RFC 5280 names: `digitalSignature`, `keyCertSign`, `cRLSign`, ...
    pub key_usage: Vec<String>,
    /// `serverAuth`, `clientAuth`, ... (other OIDs in dotted form).
    pub ext_key_usage: Vec<String>,
    pub is_ca: bool,
}

impl CertSummary {
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    pub fn is_not_yet_valid(&self, now: SystemTime) -> bool {
        now < self.not_before
    }
}

/// Summarises a DER certificate.
pub fn cert_summary(der: &[u8]) -> Result<CertSummary, CertError> {
    let (rest, cert) = parse_x509_certificate(der).map_err(|e| CertError {
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CertError {
            detail: "trailing bytes after the certificate".into(),
        });
    }
    summarise(&cert)
}

fn summarise(cert: &X509Certificate<'_>) -> Result<CertSummary, CertError> {
    let invalid = |e: x509_parser::error::X509Error| CertError {
        detail: format!("bad extension: {e}"),
    };
    let sans = match cert.subject_alternative_name().map_err(invalid)? {
        Some(ext) => ext.value.general_names.iter().map(general_name).collect(),
        None => Vec::new(),
    };
    let key_usage = match cert.key_usage().map_err(invalid)? {
        Some(ext) => {
            let ku = ext.value;
            [
                (ku.digital_signature(), "digitalSignature"),
                (ku.non_repudiation(), "nonRepudiation"),
                (ku.key_encipherment(), "keyEncipherment"),
                (ku.data_encipherment(), "dataEncipherment"),
                (ku.key_agreement(), "keyAgreement"),
                (ku.key_cert_sign(), "keyCertSign"),
                (ku.crl_sign(), "cRLSign"),
                (ku.encipher_only(), "encipherOnly"),
                (ku.decipher_only(), "decipherOnly"),
            ]
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_string())
            .collect()
        }
        None => Vec::new(),
    };
    let ext_key_usage = match cert.extended_key_usage().map_err(invalid)? {
        Some(ext) => {
            let eku = ext.value;
            let mut names: Vec<String> = [
                (eku.any, "any"),
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
            ]
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_string())
            .collect();
            names.extend(eku.other.iter().map(|oid| oid.to_id_string()));
            names
        }
        None => Vec::new(),
    };
    let validity = cert.validity();
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: Serial::from_be_bytes(&cert.tbs_certificate.serial.to_bytes_be()),
        not_before: SystemTime::from(validity.not_before.to_datetime()),
        not_after: SystemTime::from(validity.not_after.to_datetime()),
        sans,
        key_usage,
        ext_key_usage,
        is_ca: cert.is_ca(),
    })
}

fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(n) => format!("DNS:{n}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => format!("IP:{}", Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(b);
                format!("IP:{}", Ipv6Addr::from(octets))
            }
            _ => format!("IP:<{} bytes>", b.len()),
        },
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::RFC822Name(m) => format!("email:{m}"),
        GeneralName::DirectoryName(n) => format!("DirName:{n}"),
        other => format!("{other:?}"),
    }
}

/// What a CRL says, after [`check_crl`] verified it (or, from `inspect`, as read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    pub issuer: String,
    /// The CRL number; a newer CRL from the same CA has a larger one.
    pub number: Option<u64>,
    pub this_update: SystemTime,
    pub next_update: Option<SystemTime>,
    /// Revoked serials, in CRL order.
    pub revoked: Vec<Serial>,
    /// Reasons, parallel to `revoked` (None: no reason code).
    pub reasons: Vec<Option<Reason>>,
    /// `next_update` is before `now`. rustls ignores expiry unless told to enforce it, so a
    /// caller decides what to do; reloaders should at least warn.
    pub expired: bool,
}

/// Parses a DER CRL and checks it was made by `ca_cert_der`: its issuer must equal the CA's
/// subject (byte for byte, as rustls compares them) and its signature must verify with the
/// CA's public key. Expiry is reported in [`CrlInfo::expired`], not an error.
pub fn check_crl(crl_der: &[u8], ca_cert_der: &[u8], now: SystemTime) -> Result<CrlInfo, CrlError> {
    let crl = parse_crl(crl_der)?;
    let (_, ca) = parse_x509_certificate(ca_cert_der).map_err(|e| CrlError::Invalid {
        what: "CA certificate",
        detail: e.to_string(),
    })?;
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err(CrlError::Issuer {
            crl_issuer: crl.issuer().to_string(),
            ca_subject: ca.subject().to_string(),
        });
    }
    crl.verify_signature(ca.public_key())
        .map_err(|e| CrlError::Signature {
            ca_subject: ca.subject().to_string(),
            detail: e.to_string(),
        })?;
    crl_info(&crl, now)
}

/// Whether `cert_der` names `ca_der`'s subject as issuer and carries its signature.
pub(crate) fn signed_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        parse_x509_certificate(cert_der),
        parse_x509_certificate(ca_der),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Reads a DER CRL without verifying it (for `inspect`).
pub fn read_crl(crl_der: &[u8], now: SystemTime) -> Result<CrlInfo, CrlError> {
    crl_info(&parse_crl(crl_der)?, now)
}

fn parse_crl(der: &[u8]) -> Result<CertificateRevocationList<'_>, CrlError> {
    let (rest, crl) = parse_x509_crl(der).map_err(|e| CrlError::Invalid {
        what: "CRL",
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CrlError::Invalid {
            what: "CRL",
            detail: "trailing bytes after the CRL".into(),
        });
    }
    Ok(crl)
}

fn crl_info(crl: &CertificateRevocationList<'_>, now: SystemTime) -> Result<CrlInfo, CrlError> {
    let number = match crl.crl_number() {
        None => None,
        Some(n) => match n.to_u64_digits().as_slice() {
            [] => Some(0),
            [one] => Some(*one),
            _ => {
                return Err(CrlError::Invalid {
                    what: "CRL",
                    detail: "its CRL number does not fit in 64 bits".into(),
                });
            }
        },
    };
    let next_update = crl.next_update().map(|t| SystemTime::from(t.to_datetime()));
    let (revoked, reasons) = crl
        .iter_revoked_certificates()
        .map(|r| {
            let reason = r
                .reason_code()
                .and_then(|(_, code)| Reason::from_code(code.0));
            (Serial::from_be_bytes(&r.serial().to_bytes_be()), reason)
        })
        .unzip();
    Ok(CrlInfo {
        issuer: crl.issuer().to_string(),
        number,
        this_update: SystemTime::from(crl.last_update().to_datetime()),
        next_update,
        revoked,
        reasons,
        expired: next_update.is_some_and(|t| t < now),
    })
}
