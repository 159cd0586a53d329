//! The `peermirror certs` subcommands: each reads the CA directory, writes its files, and
//! returns the text to print.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::SectionKind;

use super::ca::parse_serial;
use super::store::{
    self, IssuedRecord, KEY_MODE, PUBLIC_MODE, RevokedRecord, State, load_state, save_state,
    write_file,
};
use super::{
    CA_CERT, CA_KEY, CRL_FILE, Ca, CertRequest, CertsArgs, CertsCommand, CertsError, Reason,
    RevokedSerial, Usage, check_dns_name, check_name, fmt_system, to_pem,
};
use crate::pki::{
    CertSummary, CrlInfo, Object, Serial, cert_summary, check_crl, load_certs, read_crl,
    read_objects, signed_by,
};

/// nextUpdate of the empty CRL `init-ca` writes (the same as `crl`'s default).
const INIT_CRL_VALIDITY: Duration = Duration::from_secs(7 * 86_400);

pub(super) fn run(args: &CertsArgs, now: SystemTime) -> Result<String, CertsError> {
    let dir = args.dir.as_path();
    match &args.command {
        CertsCommand::InitCa { cn, days, force } => init_ca(dir, cn, *days, *force, now),
        CertsCommand::Issue {
            name,
            ip,
            dns,
            no_loopback,
            days,
            force,
        } => issue(dir, name, &sans(ip, dns, *no_loopback), *days, *force, now),
        CertsCommand::Revoke {
            name,
            serial,
            reason,
            next_update,
        } => revoke(
            dir,
            name.as_deref(),
            serial.as_deref(),
            *reason,
            *next_update,
            now,
        ),
        CertsCommand::Crl { next_update } => {
            let ca = Ca::load(dir)?;
            let mut state = load_state(dir)?;
            let line = publish_crl(dir, &ca, &mut state, *next_update, now)?;
            Ok(format!(
                "{line}\nCopy it to every node; run `peermirror certs crl` again before the next update.\n"
            ))
        }
        CertsCommand::Inspect { file } => inspect(dir, file, now),
    }
}

fn init_ca(
    dir: &Path,
    cn: &str,
    days: u32,
    force: bool,
    now: SystemTime,
) -> Result<String, CertsError> {
    if cn.trim().is_empty() {
        return Err(CertsError::Invalid {
            what: "--cn",
            detail: "it is empty; give the CA a name".into(),
        });
    }
    store::create_dir(dir)?;
    let key_path = dir.join(CA_KEY);
    let cert_path = dir.join(CA_CERT);
    store::ensure_absent(&key_path, force)?;
    store::ensure_absent(&cert_path, force)?;
    // The state described the old CA's certificates; only the CRL number carries over, so CRL
    // numbers never go back.
    let old = load_state(dir)?;
    let mut state = State {
        crl_number: old.crl_number,
        ..State::default()
    };

    let ca = Ca::generate_with(cn, days, now)?;
    write_file(&key_path, ca.key_pem().as_bytes(), KEY_MODE, force)?;
    write_file(&cert_path, ca.cert_pem().as_bytes(), PUBLIC_MODE, force)?;
    let crl_line = publish_crl(dir, &ca, &mut state, INIT_CRL_VALIDITY, now)?;

    let mut out = format!(
        "created CA {:?}, valid until {}\n  {}  give to every node (the trust root)\n  {}  mode 0600; keep it off the nodes\n  {crl_line}\n",
        ca.subject(),
        fmt_system(ca.not_after()),
        cert_path.display(),
        key_path.display(),
    );
    if force && !old.issued.is_empty() {
        let _ = writeln!(
            out,
            "The {} certificate(s) issued by the previous CA no longer verify: re-issue them with `issue --force`.",
            old.issued.len()
        );
    }
    Ok(out)
}

/// What `issue` puts in a certificate: its addresses and names, and what it may be used for.
struct Sans {
    ips: Vec<IpAddr>,
    dns: Vec<String>,
    usage: Usage,
}

/// A certificate with an address or name serves; a node's serves its own containerd too,
/// which reaches it on loopback (`configure --mirror https://127.0.0.1:5000`), so loopback
/// is added unless refused. One without either can only be a client's.
fn sans(ips: &[IpAddr], dns: &[String], no_loopback: bool) -> Sans {
    if ips.is_empty() && dns.is_empty() {
        return Sans {
            ips: Vec::new(),
            dns: Vec::new(),
            usage: Usage::ClientOnly,
        };
    }
    let mut all = ips.to_vec();
    if !no_loopback {
        for lo in [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ] {
            if !all.contains(&lo) {
                all.push(lo);
            }
        }
    }
    Sans {
        ips: all,
        dns: dns.to_vec(),
        usage: Usage::ServerAndClient,
    }
}

fn issue(
    dir: &Path,
    name: &str,
    sans: &Sans,
    days: u32,
    force: bool,
    now: SystemTime,
) -> Result<String, CertsError> {
    check_name(name)?;
    for d in &sans.dns {
        check_dns_name(d)?;
    }
    let ca = Ca::load(dir)?;
    let key_path = dir.join(format!("{name}.key"));
    let cert_path = dir.join(format!("{name}.crt"));
    store::ensure_absent(&key_path, force)?;
    store::ensure_absent(&cert_path, force)?;
    let mut state = load_state(dir)?;

    let mut req = CertRequest::new(name, now, i64::from(days))?;
    req.ips = sans.ips.clone();
    req.dns = sans.dns.clone();
    req.usage = sans.usage;
    let ca_end = ca.not_after();
    if ca_end <= now {
        return Err(CertsError::CaExpired {
            not_after: fmt_system(ca_end),
        });
    }
    if req.not_after > ca_end {
        let left = ca_end.duration_since(now).unwrap_or_default();
        return Err(CertsError::OutlivesCa {
            ca_not_after: fmt_system(ca_end),
            max_days: i64::try_from(left.as_secs() / 86_400).unwrap_or(i64::MAX),
        });
    }
    // Best effort: the serial of what --force replaces, to say how to revoke it.
    let replaced = if force {
        load_certs(&cert_path)
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|der| cert_summary(&der).ok())
    } else {
        None
    };

    let issued = ca.issue(&req)?;
    write_file(&key_path, issued.key_pem.as_bytes(), KEY_MODE, force)?;
    write_file(&cert_path, issued.cert_pem.as_bytes(), PUBLIC_MODE, force)?;
    state.issued.insert(
        issued.serial_hex.clone(),
        IssuedRecord {
            name: name.to_string(),
            issued_at: fmt_system(now),
            not_after: fmt_system(issued.not_after),
        },
    );
    save_state(dir, &state)?;

    let summary = cert_summary(&issued.cert_der)?;
    let mut out = format!(
        "issued {name}\n  {}\n  {}  mode 0600\n  serial:   {}\n  valid:    {} .. {}\n  SANs:     {}\n  usage:    {}\n",
        cert_path.display(),
        key_path.display(),
        String::from(summary.serial),
        fmt_system(summary.not_before),
        fmt_system(summary.not_after),
        if summary.sans.is_empty() {
            "none (good as a client certificate only)".to_string()
        } else {
            summary.sans.join(", ")
        },
        summary.ext_key_usage.join(", "),
    );
    if let Some(old) = replaced {
        let serial = String::from(old.serial);
        let _ = match state.revoked.get(&serial) {
            Some(r) => writeln!(
                out,
                "The replaced certificate (serial {serial}) was revoked at {}; crl.pem already lists it.",
                r.revoked_at,
            ),
            None => writeln!(
                out,
                "The replaced certificate (serial {serial}) stays valid until {}; revoke it with `peermirror certs revoke --serial {serial}`.",
                fmt_system(old.not_after),
            ),
        };
    }
    Ok(out)
}

fn revoke(
    dir: &Path,
    name: Option<&str>,
    serial: Option<&str>,
    reason: Option<Reason>,
    next_update: Duration,
    now: SystemTime,
) -> Result<String, CertsError> {
    let ca = Ca::load(dir)?;
    let mut state = load_state(dir)?;
    let (serial, name) = match (name, serial) {
        (Some(name), _) => {
            check_name(name)?;
            let path = dir.join(format!("{name}.crt"));
            if !path.exists() {
                return Err(CertsError::MissingCert {
                    name: name.to_string(),
                    path,
                });
            }
            let der = load_certs(&path)?
                .into_iter()
                .next()
                .ok_or(CertsError::NotFoundIn {
                    path: path.clone(),
                    wanted: "certificate",
                })?;
            let summary = cert_summary(&der)?;
            if !signed_by(&der, ca.cert_der()) {
                return Err(CertsError::NotIssuedByCa {
                    path,
                    issuer: summary.issuer,
                    ca_subject: ca.subject().to_string(),
                });
            }
            (summary.serial.into(), Some(name.to_string()))
        }
        (None, Some(text)) => {
            let serial = String::from(Serial::from_be_bytes(&parse_serial(text)?));
            let name = state.issued.get(&serial).map(|r| r.name.clone());
            (serial, name)
        }
        (None, None) => return Err(CertsError::RevokeTarget),
    };

    let who = match &name {
        Some(n) => format!("{n} (serial {serial})"),
        None => format!("serial {serial}"),
    };
    let mut out = match state.revoked.get_mut(&serial) {
        Some(record) => {
            // Keep the first revocation time; a later, more precise reason may replace the first.
            if reason.is_some() {
                record.reason = reason;
            }
            format!("{who} was already revoked at {}\n", record.revoked_at)
        }
        None => {
            state.revoked.insert(
                serial.clone(),
                RevokedRecord {
                    revoked_at: fmt_system(now),
                    reason,
                    name: name.clone(),
                },
            );
            let reason = reason.map(|r| format!(", reason {}", r.as_str()));
            format!("revoked {who}{}\n", reason.unwrap_or_default())
        }
    };
    if name.is_none() {
        let _ = writeln!(
            out,
            "(no certificate with this serial was issued from {}; listed in the CRL anyway)",
            dir.display()
        );
    }
    let line = publish_crl(dir, &ca, &mut state, next_update, now)?;
    let _ = writeln!(out, "{line}\nCopy it to every node.");
    Ok(out)
}

/// Signs a CRL of everything in `state.revoked` with the next CRL number and writes `crl.pem`.
/// The number is saved before the CRL is written: a crash may skip a number, never reuse one.
fn publish_crl(
    dir: &Path,
    ca: &Ca,
    state: &mut State,
    next_update: Duration,
    now: SystemTime,
) -> Result<String, CertsError> {
    let next = now
        .checked_add(next_update)
        .ok_or_else(|| CertsError::BadTime {
            detail: "--next-update is too far in the future".into(),
        })?;
    let revoked = state
        .revoked
        .iter()
        .map(|(serial, record)| {
            let revoked_at = humantime::parse_rfc3339(&record.revoked_at).map_err(|e| {
                CertsError::CorruptState {
                    path: dir.join(super::STATE_FILE),
                    detail: format!("revoked_at of {serial}: {e}"),
                }
            })?;
            Ok(RevokedSerial {
                serial_hex: serial.clone(),
                revoked_at,
                reason: record.reason,
            })
        })
        .collect::<Result<Vec<_>, CertsError>>()?;
    state.crl_number = state
        .crl_number
        .checked_add(1)
        .ok_or_else(|| CertsError::CorruptState {
            path: dir.join(super::STATE_FILE),
            detail: "crl_number is at its maximum".into(),
        })?;
    save_state(dir, state)?;
    let der = ca.crl_der(&revoked, state.crl_number, now, next)?;
    let path = dir.join(CRL_FILE);
    write_file(
        &path,
        to_pem("X509 CRL", &der).as_bytes(),
        PUBLIC_MODE,
        true,
    )?;
    Ok(format!(
        "{}: CRL number {}, {} revoked serial(s), next update {}",
        path.display(),
        state.crl_number,
        revoked.len(),
        fmt_system(next),
    ))
}

fn inspect(dir: &Path, file: &Path, now: SystemTime) -> Result<String, CertsError> {
    let path = resolve(dir, file);
    let objects = read_objects(&path)?;
    // With a CA in --dir, say whether the file was made by it and whether it is revoked.
    let ca = load_certs(dir.join(CA_CERT))
        .ok()
        .and_then(|c| c.into_iter().next());
    let state = load_state(dir).ok();
    let context = Context {
        dir,
        ca: ca.as_deref(),
        state: state.as_ref(),
        now,
    };

    let mut items = Vec::new();
    let mut other = Vec::new();
    for object in &objects {
        match object {
            Object::Pem(SectionKind::Certificate, der) => items.push(cert_text(&context, der)?),
            Object::Pem(SectionKind::Crl, der) => items.push(crl_text(&context, der)?),
            Object::Pem(kind, _) => other.push(describe(*kind)),
            Object::Der(der) => {
                if cert_summary(der).is_ok() {
                    items.push(cert_text(&context, der)?);
                } else if read_crl(der, now).is_ok() {
                    items.push(crl_text(&context, der)?);
                } else {
                    other.push("DER data".to_string());
                }
            }
        }
    }
    if items.is_empty() {
        other.dedup();
        return Err(CertsError::UnknownFileType {
            path,
            found: if other.is_empty() {
                "PEM without certificate or CRL blocks".into()
            } else {
                other.join(", ")
            },
        });
    }
    let mut out = format!("{}\n", path.display());
    let total = items.len();
    for (i, (kind, body)) in items.into_iter().enumerate() {
        if total > 1 {
            let _ = writeln!(out, "{kind} {} of {total}", i + 1);
        } else {
            let _ = writeln!(out, "{kind}");
        }
        out.push_str(&body);
    }
    if !other.is_empty() {
        let _ = writeln!(out, "(also holds: {})", other.join(", "));
    }
    Ok(out)
}

struct Context<'a> {
    dir: &'a Path,
    ca: Option<&'a [u8]>,
    state: Option<&'a State>,
    now: SystemTime,
}

/// A path that does not exist as given but names a file in --dir means that file.
fn resolve(dir: &Path, file: &Path) -> PathBuf {
    if !file.exists() && file.is_relative() {
        let in_dir = dir.join(file);
        if in_dir.exists() {
            return in_dir;
        }
    }
    file.to_path_buf()
}

fn describe(kind: SectionKind) -> String {
    match kind {
        SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey => {
            "a private key".into()
        }
        SectionKind::PublicKey => "a public key".into(),
        SectionKind::Csr => "a certificate signing request".into(),
        other => format!("a PEM {other:?} block"),
    }
}

fn cert_text(ctx: &Context<'_>, der: &[u8]) -> Result<(&'static str, String), CertsError> {
    let s: CertSummary = cert_summary(der)?;
    let validity = if s.is_expired(ctx.now) {
        format!(
            "EXPIRED {} ago",
            approx(ctx.now.duration_since(s.not_after).unwrap_or_default())
        )
    } else if s.is_not_yet_valid(ctx.now) {
        format!(
            "NOT YET VALID, starts in {}",
            approx(s.not_before.duration_since(ctx.now).unwrap_or_default())
        )
    } else {
        format!(
            "valid, expires in {}",
            approx(s.not_after.duration_since(ctx.now).unwrap_or_default())
        )
    };
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "  subject:        {}", s.subject);
    let _ = writeln!(out, "  issuer:         {}", s.issuer);
    let _ = writeln!(out, "  serial:         {}", s.serial);
    let _ = writeln!(out, "  not before:     {}", fmt_system(s.not_before));
    let _ = writeln!(
        out,
        "  not after:      {} ({validity})",
        fmt_system(s.not_after)
    );
    let _ = writeln!(out, "  SANs:           {}", list(&s.sans));
    let _ = writeln!(out, "  key usage:      {}", list(&s.key_usage));
    let _ = writeln!(out, "  ext. key usage: {}", list(&s.ext_key_usage));
    let _ = writeln!(
        out,
        "  CA:             {}",
        if s.is_ca { "yes" } else { "no" }
    );
    if let Some(ca) = ctx.ca {
        let verdict = if der == ca {
            "this is the CA"
        } else if signed_by(der, ca) {
            "yes"
        } else {
            "NO"
        };
        let _ = writeln!(
            out,
            "  signed by {}: {verdict}",
            ctx.dir.join(CA_CERT).display()
        );
    }
    if let Some(record) = ctx.state.and_then(|st| st.revoked.get(s.serial.as_str())) {
        let reason = record.reason.map(|r| format!(", {}", r.as_str()));
        let _ = writeln!(
            out,
            "  REVOKED:        at {}{}",
            record.revoked_at,
            reason.unwrap_or_default()
        );
    }
    Ok(("certificate", out))
}

fn crl_text(ctx: &Context<'_>, der: &[u8]) -> Result<(&'static str, String), CertsError> {
    let (info, verdict): (CrlInfo, Option<String>) = match ctx.ca {
        Some(ca) => match check_crl(der, ca, ctx.now) {
            Ok(info) => (info, Some("yes".into())),
            Err(e) => (read_crl(der, ctx.now)?, Some(format!("NO: {e}"))),
        },
        None => (read_crl(der, ctx.now)?, None),
    };
    let next = match info.next_update {
        Some(t) if info.expired => format!(
            "{} (EXPIRED {} ago; run `peermirror certs crl`)",
            fmt_system(t),
            approx(ctx.now.duration_since(t).unwrap_or_default())
        ),
        Some(t) => format!(
            "{} (current, {} left)",
            fmt_system(t),
            approx(t.duration_since(ctx.now).unwrap_or_default())
        ),
        None => "none".into(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "  issuer:         {}", info.issuer);
    let _ = writeln!(
        out,
        "  CRL number:     {}",
        info.number.map_or("none".into(), |n| n.to_string())
    );
    let _ = writeln!(out, "  this update:    {}", fmt_system(info.this_update));
    let _ = writeln!(out, "  next update:    {next}");
    let _ = writeln!(out, "  revoked:        {} serial(s)", info.revoked.len());
    for (serial, reason) in info.revoked.iter().zip(&info.reasons) {
        let reason = reason.map(|r| format!("  {}", r.as_str()));
        let _ = writeln!(out, "    {serial}{}", reason.unwrap_or_default());
    }
    if let Some(verdict) = verdict {
        let _ = writeln!(
            out,
            "  signed by {}: {verdict}",
            ctx.dir.join(CA_CERT).display()
        );
    }
    Ok(("CRL", out))
}

/// A rough human duration: "3 days", "5 hours", "12 minutes".
fn approx(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approx_picks_a_readable_unit() {
        assert_eq!(approx(Duration::from_secs(5)), "5 seconds");
        assert_eq!(approx(Duration::from_secs(600)), "10 minutes");
        assert_eq!(approx(Duration::from_secs(3 * 3600)), "3 hours");
        assert_eq!(approx(Duration::from_secs(364 * 86_400 + 5)), "364 days");
    }

    #[test]
    fn publish_crl_numbers_increase_and_list_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test CA").unwrap();
        let mut state = State::default();
        state.revoked.insert(
            "0abc".into(),
            RevokedRecord {
                revoked_at: "2025-01-01T00:00:00Z".into(),
                reason: Some(Reason::Superseded),
                name: None,
            },
        );
        let now = SystemTime::now();
        publish_crl(dir.path(), &ca, &mut state, Duration::from_secs(60), now).unwrap();
        publish_crl(dir.path(), &ca, &mut state, Duration::from_secs(60), now).unwrap();
        assert_eq!(load_state(dir.path()).unwrap().crl_number, 2);
        let crls = crate::pki::load_crls(dir.path().join(CRL_FILE)).unwrap();
        let info = check_crl(&crls[0], ca.cert_der(), now).unwrap();
        assert_eq!(info.number, Some(2));
        assert_eq!(info.revoked, ["0abc"]);
        assert_eq!(info.reasons, [Some(Reason::Superseded)]);
    }
}
