//! Reading certificates, keys and CRLs at run time: what the TLS layer loads on start and on
//! every reload, kept apart from the `certs` CLI that makes them. Each operation has its own
//! error: [`LoadError`] for reading files, [`CertError`] for describing a certificate,
//! [`CrlError`] for trusting a CRL.

mod load;
mod x509;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub(crate) use load::{Object, read_objects};
#[doc(hidden)]
pub use load::{certs_from_bytes, crls_from_bytes};
pub use load::{load_certs, load_crls, load_key};
pub(crate) use x509::signed_by;
pub use x509::{CertSummary, CrlInfo, cert_summary, check_crl, read_crl};

/// Why a PEM or DER file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use {path:?}: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error("{path:?} holds no {wanted}")]
    NotFoundIn { path: PathBuf, wanted: &'static str },
}

/// A certificate that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid certificate: {detail}")]
pub struct CertError {
    detail: String,
}

/// Why a CRL cannot be trusted (or read).
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error(
        "the CRL was issued by {crl_issuer}, not by the CA {ca_subject}; use the crl.pem made by this CA (`peermirror certs crl`)"
    )]
    Issuer {
        crl_issuer: String,
        ca_subject: String,
    },
    #[error(
        "the CRL's signature does not verify with the key of {ca_subject} ({detail}): it was signed by another CA of the same name or altered; re-create it with `peermirror certs crl`"
    )]
    Signature { ca_subject: String, detail: String },
}

/// A certificate serial number in its one canonical text form: lowercase hex of the big-endian
/// bytes, leading zero bytes dropped (as CRL listings and `certs revoke --serial` use it), so
/// a serial from a handshake and one from a CRL compare equal exactly when they are the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(String);

impl Serial {
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        Serial(match bytes.iter().position(|b| *b != 0) {
            Some(i) => hex::encode(&bytes[i..]),
            None => "00".into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Serial> for String {
    fn from(s: Serial) -> String {
        s.0
    }
}

impl PartialEq<str> for Serial {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Serial {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Serial {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

/// RFC 5280 revocation reasons, spelled as in the RFC. (No `removeFromCRL`: that is for delta
/// CRLs, which this CA does not make.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
#[value(rename_all = "camelCase")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl Reason {
    pub(crate) fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CaCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
            Reason::CertificateHold => R::CertificateHold,
            Reason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            Reason::AaCompromise => R::AaCompromise,
        }
    }

    fn from_code(code: u8) -> Option<Reason> {
        Some(match code {
            0 => Reason::Unspecified,
            1 => Reason::KeyCompromise,
            2 => Reason::CaCompromise,
            3 => Reason::AffiliationChanged,
            4 => Reason::Superseded,
            5 => Reason::CessationOfOperation,
            6 => Reason::CertificateHold,
            9 => Reason::PrivilegeWithdrawn,
            10 => Reason::AaCompromise,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::CaCompromise => "caCompromise",
            Reason::AffiliationChanged => "affiliationChanged",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
            Reason::CertificateHold => "certificateHold",
            Reason::PrivilegeWithdrawn => "privilegeWithdrawn",
            Reason::AaCompromise => "aaCompromise",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_canonical() {
        assert_eq!(Serial::from_be_bytes(&[0, 0, 0x0a, 0xff]), "0aff");
        assert_eq!(Serial::from_be_bytes(&[0]), "00");
        assert_eq!(Serial::from_be_bytes(&[]), "00");
        assert_eq!(Serial::from_be_bytes(&[0x0a]).to_string(), "0a");
    }
}
