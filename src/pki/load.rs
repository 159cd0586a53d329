//! Reading certificates, keys and CRLs from PEM or DER files, for the TLS layer and `inspect`.
//!
//! A file is PEM when it contains a `-----BEGIN ` line (text around the blocks is ignored, as
//! openssl writes it); otherwise it is DER, possibly several objects back to back. Every object is
//! parsed once here, so a bad file fails at load time with its path, not later in a handshake.

use std::fs;
use std::path::Path;

use rustls_pki_types::pem::{PemObject as _, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::{parse_x509_certificate, parse_x509_crl};

use super::LoadError;

/// One object found in a file.
#[derive(Debug)]
pub(crate) enum Object {
    /// A PEM block: its label and DER contents.
    Pem(SectionKind, Vec<u8>),
    /// A whole file without PEM armour.
    Der(Vec<u8>),
}

/// Reads `path` and splits it into PEM blocks, or returns it whole as DER.
pub(crate) fn read_objects(path: &Path) -> Result<Vec<Object>, LoadError> {
    let bytes = fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    split_objects(path, bytes)
}

/// Splits a file's bytes into PEM blocks, or returns them whole as DER.
fn split_objects(path: &Path, bytes: Vec<u8>) -> Result<Vec<Object>, LoadError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(LoadError::Unreadable {
            path: path.to_path_buf(),
            detail: "the file is empty".into(),
        });
    }
    if !is_pem(&bytes) {
        return Ok(vec![Object::Der(bytes)]);
    }
    <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .map(|item| {
            item.map(|(kind, der)| Object::Pem(kind, der))
                .map_err(|e| LoadError::Unreadable {
                    path: path.to_path_buf(),
                    detail: format!("malformed PEM: {e}"),
                })
        })
        .collect()
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Every certificate in a PEM or DER file, in file order (leaf first for a chain).
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let path = path.as_ref();
    certs_in(path, read_objects(path)?)
}

/// [`load_certs`] on a file's bytes, for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn certs_from_bytes(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let path = Path::new("<bytes>");
    certs_in(path, split_objects(path, bytes.to_vec())?)
}

fn certs_in(path: &Path, objects: Vec<Object>) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let mut certs = Vec::new();
    for object in objects {
        match object {
            Object::Pem(SectionKind::Certificate, der) => {
                check_one(path, "certificate", &der, cert_len)?;
                certs.push(CertificateDer::from(der));
            }
            Object::Pem(..) => {}
            Object::Der(bytes) => {
                for der in split_der(path, "certificate", &bytes, cert_len)? {
                    certs.push(CertificateDer::from(der));
                }
            }
        }
    }
    if certs.is_empty() {
        return Err(LoadError::NotFoundIn {
            path: path.to_path_buf(),
            wanted: "certificate (PEM \"CERTIFICATE\" or DER)",
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM or DER file.
pub fn load_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, LoadError> {
    let path = path.as_ref();
    for object in read_objects(path)? {
        match object {
            Object::Pem(kind, der) => {
                if let Some(key) = PrivateKeyDer::from_pem(kind, der) {
                    return Ok(key);
                }
            }
            Object::Der(bytes) => {
                return PrivateKeyDer::try_from(bytes).map_err(|e| LoadError::Unreadable {
                    path: path.to_path_buf(),
                    detail: format!("not a DER private key: {e}"),
                });
            }
        }
    }
    Err(LoadError::NotFoundIn {
        path: path.to_path_buf(),
        wanted: "private key (PEM \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\", or DER)",
    })
}

/// Every CRL in a PEM or DER file.
pub fn load_crls(
    path: impl AsRef<Path>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, LoadError> {
    let path = path.as_ref();
    crls_in(path, read_objects(path)?)
}

/// [`load_crls`] on a file's bytes, for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn crls_from_bytes(
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, LoadError> {
    let path = Path::new("<bytes>");
    crls_in(path, split_objects(path, bytes.to_vec())?)
}

fn crls_in(
    path: &Path,
    objects: Vec<Object>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, LoadError> {
    let mut crls = Vec::new();
    for object in objects {
        match object {
            Object::Pem(SectionKind::Crl, der) => {
                check_one(path, "CRL", &der, crl_len)?;
                crls.push(CertificateRevocationListDer::from(der));
            }
            Object::Pem(..) => {}
            Object::Der(bytes) => {
                for der in split_der(path, "CRL", &bytes, crl_len)? {
                    crls.push(CertificateRevocationListDer::from(der));
                }
            }
        }
    }
    if crls.is_empty() {
        return Err(LoadError::NotFoundIn {
            path: path.to_path_buf(),
            wanted: "CRL (PEM \"X509 CRL\" or DER)",
        });
    }
    Ok(crls)
}

/// Returns how many bytes one object at the start of `der` takes, or why it does not parse.
type Measure = fn(&[u8]) -> Result<usize, String>;

fn cert_len(der: &[u8]) -> Result<usize, String> {
    parse_x509_certificate(der)
        .map(|(rest, _)| der.len() - rest.len())
        .map_err(|e| e.to_string())
}

fn crl_len(der: &[u8]) -> Result<usize, String> {
    parse_x509_crl(der)
        .map(|(rest, _)| der.len() - rest.len())
        .map_err(|e| e.to_string())
}

/// Checks that `der` is exactly one object of the kind `measure` accepts.
fn check_one(
    path: &Path,
    what: &'static str,
    der: &[u8],
    measure: Measure,
) -> Result<(), LoadError> {
    match measure(der) {
        Ok(used) if used == der.len() => Ok(()),
        Ok(_) => Err(LoadError::Unreadable {
            path: path.to_path_buf(),
            detail: format!("a PEM {what} block has trailing bytes"),
        }),
        Err(e) => Err(LoadError::Unreadable {
            path: path.to_path_buf(),
            detail: format!("a PEM {what} block is not a valid {what}: {e}"),
        }),
    }
}

/// Splits concatenated DER objects, each of which `measure` must accept.
fn split_der(
    path: &Path,
    what: &'static str,
    mut bytes: &[u8],
    measure: Measure,
) -> Result<Vec<Vec<u8>>, LoadError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match measure(bytes) {
            Ok(used) if used > 0 => {
                let (one, rest) = bytes.split_at(used);
                out.push(one.to_vec());
                bytes = rest;
            }
            Ok(_) => break,
            Err(e) => {
                return Err(LoadError::Unreadable {
                    path: path.to_path_buf(),
                    detail: format!("neither PEM nor a DER {what}: {e}"),
                });
            }
        }
    }
    Ok(out)
}
