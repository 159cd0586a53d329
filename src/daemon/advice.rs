//! Start-up advice: settings under which containerd would quietly pull from the upstream
//! (a refused handshake, a 401) are named at start, in the log and in `peermirror status`.

use std::net::IpAddr;
use std::path::Path;

use super::security::OwnMirror;
use super::{Security, TokenSettings};
use crate::auth::AuthMode;
use crate::configure::{OwnHost, host_port, own_hosts};

/// What the advice is drawn from.
pub(super) struct Setup<'a> {
    pub security: &'a Security,
    pub token: &'a TokenSettings,
    pub own: &'a OwnMirror,
    /// containerd's hosts directory: `--hosts-dir`, else the one its config names.
    pub hosts_dir: Option<&'a Path>,
}

/// Every warning that applies, each also logged.
pub(super) fn startup_warnings(s: &Setup) -> Vec<String> {
    let hosts = s
        .hosts_dir
        .map(|d| own_hosts(d, &|url| s.own.owns(url)))
        .unwrap_or_default();
    let mut out = Vec::new();
    out.extend(cert_coverage(s.security, &hosts));
    out.extend(token_delivery(s, &hosts));
    out.extend(client_ca_in_token_mode(s.security, &hosts));
    for w in &out {
        tracing::warn!("{w}");
    }
    out
}

/// The serving certificate must name the address containerd dials, or containerd's TLS check
/// fails (`no alternative certificate subject name matches`) and it goes to the upstream.
fn cert_coverage(security: &Security, hosts: &[OwnHost]) -> Vec<String> {
    let Some(files) = &security.tls else {
        return Vec::new();
    };
    let Some(sans) = crate::pki::load_certs(&files.cert)
        .ok()
        .and_then(|c| c.into_iter().next())
        .and_then(|der| crate::pki::cert_summary(&der).ok())
        .map(|s| s.sans)
    else {
        // An unreadable certificate stops the start anyway, with its own error.
        return Vec::new();
    };
    let mut out = Vec::new();
    for h in hosts {
        let Some((host, _)) = host_port(&h.url) else {
            continue;
        };
        if h.url.starts_with("http://") {
            out.push(format!(
                "{} names this mirror as {}, plain HTTP, but it serves TLS: containerd's requests fail and its pulls go to the upstream. Fix: `peermirror configure --mirror https://...`",
                h.file.display(),
                h.url
            ));
        } else if !covers(&sans, &host) {
            out.push(format!(
                "the serving certificate {} does not cover {host}, the address {} names for this mirror ({}): containerd's TLS check fails and its pulls go to the upstream. Fix: issue it with `--ip {host}` (or `--dns`); `peermirror certs issue` adds 127.0.0.1 and ::1 by default",
                files.cert.display(),
                h.file.display(),
                h.url,
            ));
        }
    }
    out
}

/// Whether SANs (`IP:addr`, `DNS:name`) cover `host`: an address exactly, a name exactly or
/// by a one-label wildcard.
fn covers(sans: &[String], host: &str) -> bool {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return sans.iter().any(|s| {
            s.strip_prefix("IP:")
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(|a| a == ip)
        });
    }
    let host = host.to_ascii_lowercase();
    sans.iter().filter_map(|s| s.strip_prefix("DNS:")).any(|n| {
        let n = n.to_ascii_lowercase();
        match n.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => n == host,
        }
    })
}

/// In token mode containerd needs a token in its hosts.toml: written by `configure
/// --token-file`, or kept there by this daemon (`--hosts-dir`).
fn token_delivery(s: &Setup, hosts: &[OwnHost]) -> Vec<String> {
    if !s.security.mode.needs_token() {
        return Vec::new();
    }
    if let Some(dir) = &s.token.hosts_dir {
        if hosts.is_empty() {
            return vec![format!(
                "--hosts-dir {} holds no hosts.toml naming this mirror: containerd is given no token and this node serves it nothing. Fix: `peermirror configure --config-path {} --mirror ...`",
                dir.display(),
                dir.display()
            )];
        }
        return Vec::new();
    }
    let without: Vec<String> = hosts
        .iter()
        .filter(|h| !h.bearer)
        .map(|h| h.file.display().to_string())
        .collect();
    if hosts.is_empty() || !without.is_empty() {
        let whose = if without.is_empty() {
            "no hosts.toml found naming this mirror holds one".to_string()
        } else {
            format!("{} names this mirror without one", without.join(", "))
        };
        let how = if s.security.token_file.is_none() {
            "pass --hosts-dir (containerd's config_path): this node then writes the token it mints there"
        } else {
            "pass --hosts-dir (containerd's config_path), or run `peermirror configure --token-file`"
        };
        return vec![format!(
            "--auth-mode {} and no --hosts-dir: containerd is handed no token ({whose}), so its requests get 401 and its pulls go to the upstream. Fix: {how}",
            s.security.mode.as_str()
        )];
    }
    Vec::new()
}

/// `--tls-client-ca` makes the handshake demand a client certificate, in token mode too.
fn client_ca_in_token_mode(security: &Security, hosts: &[OwnHost]) -> Vec<String> {
    let demands_cert = security.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if security.mode != AuthMode::Token || !demands_cert {
        return Vec::new();
    }
    if !hosts.is_empty() && hosts.iter().all(|h| h.client_cert) {
        return Vec::new();
    }
    vec!["--auth-mode token with --tls-client-ca: the endpoint demands a client certificate in the TLS handshake, from containerd too, and its hosts.toml gives none, so its requests are refused (no_certificate) and its pulls go to the upstream. Fix: give peers' CA as --tls-peer-ca instead (servers are still checked), or `peermirror configure --client-cert ...`".into()]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn names_cover_exactly_or_by_one_wildcard_label() {
        let sans = [
            "IP:127.0.0.1".to_string(),
            "IP:::1".into(),
            "DNS:*.svc.local".into(),
            "DNS:node-1".into(),
        ];
        for host in ["127.0.0.1", "::1", "a.svc.local", "NODE-1"] {
            assert!(covers(&sans, host), "{host}");
        }
        for host in [
            "10.0.0.5",
            "svc.local",
            "a.b.svc.local",
            "node-2",
            "localhost",
        ] {
            assert!(!covers(&sans, host), "{host}");
        }
    }

    fn host(url: &str, bearer: bool, client_cert: bool) -> OwnHost {
        OwnHost {
            file: PathBuf::from("/etc/containerd/certs.d/docker.io/hosts.toml"),
            url: url.into(),
            bearer,
            client_cert,
        }
    }

    fn security(mode: AuthMode, token_file: bool, tls: Option<crate::tls::TlsFiles>) -> Security {
        Security {
            mode,
            insecure_no_auth: false,
            tls,
            token_file: token_file.then(|| "/etc/pm/tokens".into()),
        }
    }

    /// TLS files with the cluster CA as the client CA (demanding client certificates) or
    /// only as the peer CA.
    fn tls(cert: PathBuf, client_ca: bool) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            cert,
            key: "/k".into(),
            client_ca: client_ca.then(|| "/ca".into()),
            peer_ca: (!client_ca).then(|| "/ca".into()),
            crls: vec![],
            crl_expired: crate::tls::CrlExpired::Deny,
            peer_server_name: None,
        }
    }

    /// [`token_delivery`] for a node with a signing key, `--token-file` and `--hosts-dir`
    /// as given.
    fn delivery(
        mode: AuthMode,
        token_file: bool,
        hosts_dir: bool,
        hosts: &[OwnHost],
    ) -> Vec<String> {
        let own = OwnMirror::new(
            "127.0.0.1:5000".parse().unwrap(),
            &super::super::Routing::Off,
        );
        let token = TokenSettings {
            signing_key: Some("/etc/pm/key".into()),
            hosts_dir: hosts_dir.then(|| "/etc/containerd/certs.d".into()),
            ..TokenSettings::default()
        };
        let security = security(mode, token_file, None);
        let s = Setup {
            security: &security,
            token: &token,
            own: &own,
            hosts_dir: None,
        };
        token_delivery(&s, hosts)
    }

    #[test]
    fn token_mode_warns_when_containerd_is_handed_no_token() {
        let with = [host("http://127.0.0.1:5000", true, false)];
        let without = [host("http://127.0.0.1:5000", false, false)];
        // A signing key alone and no --hosts-dir: the issue's silent 401.
        let w = delivery(AuthMode::Token, false, false, &without);
        assert!(
            w.len() == 1 && w[0].contains("401") && w[0].contains("--hosts-dir"),
            "{w:?}"
        );
        assert_eq!(delivery(AuthMode::Token, false, false, &[]).len(), 1);
        assert!(delivery(AuthMode::Token, false, false, &with).is_empty());
        // With --hosts-dir the daemon writes the header itself, when there is a file.
        assert!(delivery(AuthMode::Token, true, true, &without).is_empty());
        assert!(delivery(AuthMode::Token, true, true, &[])[0].contains("holds no hosts.toml"));
        // Not token mode: nothing to say.
        assert!(delivery(AuthMode::Mtls, false, false, &without).is_empty());
    }

    #[test]
    fn a_client_ca_in_token_mode_warns_unless_containerd_has_a_certificate() {
        let mut sec = security(AuthMode::Token, true, Some(tls("/c".into(), true)));
        let bare = [host("https://127.0.0.1:5000", true, false)];
        let w = client_ca_in_token_mode(&sec, &bare);
        assert!(w.len() == 1 && w[0].contains("--tls-peer-ca"), "{w:?}");
        assert_eq!(client_ca_in_token_mode(&sec, &[]).len(), 1);
        assert!(
            client_ca_in_token_mode(&sec, &[host("https://127.0.0.1:5000", true, true)]).is_empty()
        );
        sec.tls = Some(tls("/c".into(), false));
        assert!(client_ca_in_token_mode(&sec, &bare).is_empty());
        sec.tls = Some(tls("/c".into(), true));
        sec.mode = AuthMode::MtlsToken;
        assert!(client_ca_in_token_mode(&sec, &bare).is_empty());
    }

    #[test]
    fn a_certificate_that_misses_the_mirror_address_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::certs::Ca::generate_with("t", 30, std::time::SystemTime::now()).unwrap();
        let mut req =
            crate::certs::CertRequest::new("node-1", std::time::SystemTime::now(), 30).unwrap();
        req.ips = vec!["10.0.0.5".parse().unwrap()];
        let issued = ca.issue(&req).unwrap();
        let cert = dir.path().join("node-1.crt");
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        let sec = security(AuthMode::Mtls, false, Some(tls(cert, true)));
        let w = cert_coverage(&sec, &[host("https://127.0.0.1:5000", false, true)]);
        assert!(
            w.len() == 1 && w[0].contains("does not cover 127.0.0.1"),
            "{w:?}"
        );
        assert!(cert_coverage(&sec, &[host("https://10.0.0.5:5000", false, true)]).is_empty());
        let w = cert_coverage(&sec, &[host("http://10.0.0.5:5000", false, true)]);
        assert!(w.len() == 1 && w[0].contains("plain HTTP"), "{w:?}");
    }
}
