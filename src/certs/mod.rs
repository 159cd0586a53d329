//! `peermirror certs`: a small cluster CA for the mirror's mTLS, built on rcgen. Reading PEM/DER
//! files and checking CRLs, which the daemon needs too, is in [`crate::pki`].
//!
//! # The directory (`--dir`, default `./pki`)
//! - `ca.crt` (0644), `ca.key` (0600): the CA, ECDSA P-256, made by `init-ca`.
//! - `NAME.crt` (0644), `NAME.key` (0600): node certificates made by `issue`, each usable as
//!   server and client (nodes are both).
//! - `crl.pem` (0644): the CRL, PEM `X509 CRL`, rewritten by `init-ca`, `revoke` and `crl`.
//! - `state.json` (0644): the last CRL number, the serials issued, the serials revoked (with time
//!   and reason). It describes the current CA: `init-ca --force` starts it afresh, keeping only the
//!   CRL number so numbers never go back.
//!
//! Every file is written atomically (temp file in the same directory, then rename), keys are
//! created with mode 0600 from the start, and nothing that exists is replaced without `--force`
//! (except `crl.pem` and `state.json`, which only ever move forward).
//!
//! `revoke` records the serial *and* rewrites `crl.pem` at once, so there is no window where a
//! revocation is recorded but not published; `crl` re-signs it (run it before the CRL's next
//! update, e.g. from a CronJob). Two commands run at the same moment on one directory may lose
//! one's state update: this is an operator's tool, run one at a time.

mod ca;
mod commands;
mod pem;
mod store;

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pki;

use time::{OffsetDateTime, UtcOffset};

/// Revocation reasons live with the rest of the X.509 reading in [`crate::pki`].
pub use crate::pki::Reason;
#[cfg(any(test, feature = "test-issuer"))]
pub use ca::issue_for_test;
pub use ca::{Ca, CertRequest, DEFAULT_CA_DAYS, IssuedCert, RevokedSerial, Usage};
pub use pem::to_pem;
pub use store::{CA_CERT, CA_KEY, CRL_FILE, IssuedRecord, RevokedRecord, STATE_FILE, State};

/// Longest lifetime `--days` accepts: a century is already far beyond any sane CA.
const MAX_DAYS: i64 = 36_500;

#[derive(clap::Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory holding the CA and what it issued: ca.crt, ca.key, NAME.crt, NAME.key,
    /// crl.pem, state.json. Keep it (ca.key above all) off the nodes.
    #[arg(
        long,
        env = "PEERMIRROR_CERTS_DIR",
        default_value = "./pki",
        global = true
    )]
    pub dir: PathBuf,

    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum CertsCommand {
    /// Create the cluster CA (ca.crt, ca.key) and an empty CRL (crl.pem).
    InitCa {
        /// Common name of the CA.
        #[arg(
            long,
            env = "PEERMIRROR_CA_CN",
            default_value = "peermirror cluster CA"
        )]
        cn: String,
        /// Lifetime of the CA in days; every node certificate must end before it does.
        #[arg(long, env = "PEERMIRROR_CA_DAYS", default_value_t = DEFAULT_CA_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS))]
        days: u32,
        /// Replace an existing CA. Every certificate it issued stops verifying.
        #[arg(long)]
        force: bool,
    },
    /// Issue NAME.crt and NAME.key. With --ip or --dns: a node certificate for server and
    /// client use, which also names 127.0.0.1 and ::1 (where the node's containerd reaches its
    /// mirror) unless --no-loopback. Without: a client certificate (containerd's, a person's).
    Issue {
        /// Certificate name: its CN and file name. Letters, digits, '.', '_', '-'; not
        /// starting with '.'; at most 64 characters.
        #[arg(long)]
        name: String,
        /// IP address SAN (repeatable): an address peers and containerd connect to.
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// DNS name SAN (repeatable). Without any --ip or --dns the certificate is good for
        /// client use only.
        #[arg(long)]
        dns: Vec<String>,
        /// Do not add 127.0.0.1 and ::1 to a node certificate.
        #[arg(long)]
        no_loopback: bool,
        /// Lifetime in days.
        #[arg(long, env = "PEERMIRROR_CERT_DAYS", default_value_t = 365,
              value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS))]
        days: u32,
        /// Replace an existing NAME.crt/NAME.key (the old certificate stays valid until revoked).
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate and rewrite crl.pem so it lists it.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["name", "serial"])))]
    Revoke {
        /// Name of a certificate in --dir (its serial is read from NAME.crt).
        #[arg(long)]
        name: Option<String>,
        /// Serial number in hex (as `inspect` prints it; colons allowed).
        #[arg(long)]
        serial: Option<String>,
        /// RFC 5280 reason code.
        #[arg(long, value_enum)]
        reason: Option<Reason>,
        /// How long the rewritten CRL is valid.
        #[arg(long, env = "PEERMIRROR_CRL_NEXT_UPDATE", default_value = "7d",
              value_parser = parse_next_update)]
        next_update: Duration,
    },
    /// Write crl.pem: a CRL signed by the CA listing every revoked serial, with the next number.
    Crl {
        /// How long the CRL is valid (its nextUpdate); re-run `crl` before then.
        #[arg(long, env = "PEERMIRROR_CRL_NEXT_UPDATE", default_value = "7d",
              value_parser = parse_next_update)]
        next_update: Duration,
    },
    /// Describe a certificate or CRL file (PEM or DER). A bare file name not found in the
    /// current directory is looked up in --dir.
    Inspect { file: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("cannot {action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path:?} already exists; use --force to overwrite it")]
    Exists { path: PathBuf },
    #[error(
        "no CA in {dir:?} (ca.crt and ca.key): create one with `peermirror certs --dir {dir:?} init-ca`, or point --dir (PEERMIRROR_CERTS_DIR) at the CA's directory"
    )]
    NoCa { dir: PathBuf },
    #[error(
        "{path:?} is not a CA certificate (basicConstraints CA:TRUE missing); use the CA's ca.crt"
    )]
    NotCa { path: PathBuf },
    #[error(
        "the CA key does not belong to the CA certificate {path:?}; restore the matching ca.key, or make a new CA with `init-ca --force`"
    )]
    CaKeyMismatch { path: PathBuf },
    #[error(
        "--name {name:?} {problem}; use 1-64 letters, digits, '.', '_' or '-', not starting with '.'"
    )]
    BadName { name: String, problem: &'static str },
    #[error(
        "--dns {name:?} {problem}; give a host name like node-1.example.com (a leading '*.' is allowed)"
    )]
    BadDns { name: String, problem: &'static str },
    #[error("serial {value:?} {problem}; give it in hex as `inspect` prints it, e.g. 3f0a...")]
    BadSerial {
        value: String,
        problem: &'static str,
    },
    #[error("{detail}")]
    BadTime { detail: String },
    #[error(
        "the certificate would end after the CA does ({ca_not_after}); use --days {max_days} or less, or make a longer-lived CA"
    )]
    OutlivesCa { ca_not_after: String, max_days: i64 },
    #[error("cannot use {path:?}: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error(transparent)]
    Load(#[from] pki::LoadError),
    #[error(transparent)]
    Cert(#[from] pki::CertError),
    #[error(transparent)]
    Crl(#[from] pki::CrlError),
    #[error("{path:?} holds no {wanted}")]
    NotFoundIn { path: PathBuf, wanted: &'static str },
    #[error(
        "{path:?} is {found}, not a certificate or CRL; inspect reads certificates and CRLs, PEM or DER"
    )]
    UnknownFileType { path: PathBuf, found: String },
    #[error(
        "no certificate named {name:?} in this CA's directory ({path:?} is missing); check --name and --dir, or revoke by --serial"
    )]
    MissingCert { name: String, path: PathBuf },
    #[error(
        "{path:?} was issued by {issuer}, not by this CA ({ca_subject}); check --dir, or revoke by --serial"
    )]
    NotIssuedByCa {
        path: PathBuf,
        issuer: String,
        ca_subject: String,
    },
    #[error(
        "the CA expired at {not_after}; make a new one with `init-ca --force` and re-issue every certificate"
    )]
    CaExpired { not_after: String },
    #[error("revoke needs --name NAME or --serial HEX")]
    RevokeTarget,
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("{path:?} is corrupt ({detail}); fix it or restore it from a backup")]
    CorruptState { path: PathBuf, detail: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

impl CertsError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        CertsError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Runs one `peermirror certs` command; returns what to print.
pub fn run(args: &CertsArgs) -> Result<String, CertsError> {
    commands::run(args, SystemTime::now())
}

/// `--next-update`: a humantime duration, more than zero.
fn parse_next_update(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 7d, 36h)"))?;
    if d.is_zero() {
        return Err("must be more than zero (e.g. 7d)".into());
    }
    Ok(d)
}

/// A certificate name doubles as a file name in --dir: no path tricks, no hidden files, and
/// not `ca`, which would overwrite the CA.
pub(crate) fn check_name(name: &str) -> Result<(), CertsError> {
    let bad = |problem| CertsError::BadName {
        name: name.to_string(),
        problem,
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.len() > 64 {
        return Err(bad("is longer than 64 characters"));
    }
    if name.starts_with('.') {
        return Err(bad("starts with '.'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(
            "has a character other than letters, digits, '.', '_', '-'",
        ));
    }
    if name == "ca" || name == "state" {
        return Err(bad("is reserved for the CA's own files"));
    }
    Ok(())
}

/// A DNS SAN must be a host name (LDH labels), optionally with a leading wildcard label.
pub(crate) fn check_dns_name(name: &str) -> Result<(), CertsError> {
    let bad = |problem| CertsError::BadDns {
        name: name.to_string(),
        problem,
    };
    let host = name.strip_prefix("*.").unwrap_or(name);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(bad("is empty"));
    }
    if host.len() > 253 {
        return Err(bad("is longer than 253 characters"));
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("has an empty or over-long (63+) label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label starting or ending with '-'"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("has a character other than letters, digits, '-', '.'"));
        }
    }
    if host.parse::<IpAddr>().is_ok() {
        return Err(bad("is an IP address; give it with --ip"));
    }
    Ok(())
}

/// `SystemTime` → `OffsetDateTime` without the panic `From` has for far-off times.
pub(crate) fn to_odt(t: SystemTime) -> Result<OffsetDateTime, CertsError> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok(),
        Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
    };
    secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .filter(|t| (1..=9999).contains(&t.year()))
        .ok_or_else(|| CertsError::BadTime {
            detail: "time out of range for a certificate (years 1-9999)".into(),
        })
}

/// `2025-01-31T12:00:00Z`: RFC 3339, UTC, whole seconds.
pub(crate) fn fmt_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// [`fmt_time`] for a `SystemTime` (`?` when out of range).
pub(crate) fn fmt_system(t: SystemTime) -> String {
    to_odt(t).map(fmt_time).unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_safe_file_names() {
        for ok in ["node-1", "a", "node_1.example", "N0DE", &"x".repeat(64)] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "../x",
            "a b",
            "é",
            "ca",
            "state",
            &"x".repeat(65),
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(matches!(err, CertsError::BadName { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn dns_names_are_host_names() {
        for ok in ["node-1", "a.b.example", "*.nodes.example", "x.example."] {
            check_dns_name(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "a..b", "a_b", "10.0.0.1", "*", "a b"] {
            assert!(check_dns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_format_and_reject_out_of_range() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(fmt_system(t), "2023-11-14T22:13:20Z");
        assert_eq!(
            humantime::parse_rfc3339(&fmt_system(t)).unwrap(),
            t,
            "state timestamps read back"
        );
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert!(to_odt(far).is_err());
    }

    #[test]
    fn next_update_must_be_positive() {
        assert_eq!(
            parse_next_update("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_next_update("0s").is_err());
        assert!(parse_next_update("soon").is_err());
    }
}
