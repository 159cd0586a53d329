//! End-to-end security tests with real processes: containerd 1.6 pulling with
//! `ctr images pull --hosts-dir`, docker-registry as the upstream, the
//! `peermirror run` binary, certificates made by the real `peermirror certs`
//! CLI and hosts.toml written by the real `peermirror configure`. Everything on
//! 127.0.0.1; every process is stopped by PID (guards in `tests/common`).
//!
//! - `mtls`: containerd pulls over mTLS; its certificate is revoked; its next pull is
//!   refused in the handshake and falls back to the upstream. Two nodes fetch from each
//!   other over mTLS; a revoked node can then neither fetch from nor serve the other.
//! - `token`: bearer tokens: containerd pulls with the static header configure wrote;
//!   strangers get 401; the token stays out of the log; loopback is never throttled.
//! - `hostile`: hostile input on the TLS listener while good clients are served.
//! - `psk`: the libp2p private network (`--p2p-psk-file`).
//!
//! Run with `cargo test --test e2e_security -- --include-ignored` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod hostile;
mod mtls;
mod psk;
mod token;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Files are polled every second; a changed CRL must be in force well within this.
const RELOAD_WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Peermirror and the mirror configuration
// ---------------------------------------------------------------------------

/// `peermirror run` on `ctd` with `args` (bootstrapping to `peer`, if given), ready.
fn start_pm(ctd: &Containerd, args: &[String], peer: Option<&Peermirror>) -> Peermirror {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut builder = Peermirror::builder(ctd).args(&args);
    if let Some(peer) = peer {
        builder = builder.bootstrap(peer);
    }
    let mut pm = builder.start();
    pm.wait_ready(Duration::from_secs(30));
    pm
}

fn mirror_url(pm: &Peermirror, tls: bool) -> String {
    if tls {
        format!("https://{}", pm.registry_host())
    } else {
        pm.registry_url()
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `configure` arguments for mTLS to the mirror with client certificate `name`.
fn configure_mtls(pki: &Pki, name: &str) -> Vec<String> {
    strings(&[
        "--ca-file",
        &pki.ca().display().to_string(),
        "--client-cert",
        &pki.cert(name).display().to_string(),
        "--client-key",
        &pki.key(name).display().to_string(),
    ])
}

fn big_layer() -> Descriptor {
    fixture("big").host_manifest().layers[0].clone()
}

/// `/v2/test/<name>/blobs/<digest>?ns=<registry>` on `base` (scheme://host:port).
fn blob_url(base: &str, image: &FixtureImage, digest: &str, registry_host: &str) -> String {
    format!(
        "{base}/v2/{}/blobs/{digest}?ns={registry_host}",
        image.repo()
    )
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

/// The request audit lines (one per response) of a peermirror log.
fn request_audits(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("audit") && l.contains("duration_ms="))
        .collect()
}

/// `TLS handshake refused` audit lines with `reason="<reason>"`.
fn refusals<'a>(log: &'a str, reason: &str) -> Vec<&'a str> {
    let want = format!("reason=\"{reason}\"");
    log.lines()
        .filter(|l| l.contains("TLS handshake refused") && l.contains(&want))
        .collect()
}

/// How many GETs of a path containing `needle` docker-registry answered
/// ("response completed" lines of its application log).
fn registry_gets(registry: &Registry, needle: &str) -> usize {
    registry
        .log_tail(1_000_000)
        .lines()
        .filter(|l| {
            l.contains("response completed")
                && l.contains("http.request.method=GET")
                && l.contains(needle)
        })
        .count()
}

fn auth_failures(pm: &Peermirror, reason: &str) -> f64 {
    pm.metric("peermirror_auth_failures_total", &[("reason", reason)])
}

/// Waits until `pm`'s log has more "TLS material reloaded" lines than `before`;
/// returns how long that took.
fn wait_tls_reload(pm: &Peermirror, before: usize, since: Instant) -> Duration {
    let count = || lines_with(&read_log(pm.log_path()), &["TLS material reloaded"]).len();
    let reloaded = wait_until(RELOAD_WITHIN, || count() > before);
    assert!(
        reloaded,
        "no TLS reload within {RELOAD_WITHIN:?} of the CRL change:\n{}",
        pm.log_tail(30)
    );
    since.elapsed()
}

fn tls_reloads(pm: &Peermirror) -> usize {
    lines_with(&read_log(pm.log_path()), &["TLS material reloaded"]).len()
}

fn thread_sleep(d: Duration) {
    std::thread::sleep(d);
}

/// A hosts.toml dir, written by `peermirror configure`, sending a containerd to `mirror` over
/// mTLS with the `containerd-client` certificate, `registry` as the upstream.
fn mtls_hosts(pki: &Pki, mirror: &str, registry: &Registry) -> tempfile::TempDir {
    let hosts = tempfile::tempdir().unwrap();
    let mut args = strings(&[
        "--config-path",
        &hosts.path().display().to_string(),
        "--mirror",
        mirror,
        "--registry",
        &registry.url(),
    ]);
    args.extend(configure_mtls(pki, "containerd-client"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    peermirror_configure_ok(&args);
    hosts
}
