//! End-to-end: credentials that rotate themselves (issue 10, item 5), with containerd 1.6
//! pulling through `ctr images pull --hosts-dir`, two peermirror nodes in token mode and
//! docker-registry as the upstream (for tag resolution; every layer comes from the peer).
//!
//! - the token file is rotated twice while containerd keeps pulling: the daemon rewrites the
//!   `Authorization` header of the hosts.toml `configure` wrote, nothing is restarted;
//! - with `--token-signing-key` and no static token at all, the daemon mints containerd's
//!   token (and its own for peer requests) and pulls go through the mirror.
//!
//! Run with `cargo test --test e2e_token -- --include-ignored` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Files are polled every second; a rotation must reach hosts.toml well within this.
const ROTATE_WITHIN: Duration = Duration::from_secs(15);

/// The request audit lines (one per response) of a peermirror log.
fn request_audits(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("audit") && l.contains("duration_ms="))
        .collect()
}

fn auth_header(hosts_toml: &Path, mirror: &str) -> String {
    let doc: toml::Table = fs::read_to_string(hosts_toml).unwrap().parse().unwrap();
    doc["host"][mirror]["header"]["Authorization"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Replaces a file the way a Secret update does: a new inode, renamed into place.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Pulls `image` on `node` through `hosts`; then every layer must have been answered 200
/// from the peer by `node`'s mirror, to `client` (an identity prefix), never refused.
fn pull_through_peer(node: &Node, hosts: &Path, image: &FixtureImage, reg: &str, client: &str) {
    if let Err(e) = node.ctd.pull(&image.reference(reg), Some(hosts), false) {
        panic!(
            "pull of {} failed: {e}\n--- peermirror log ---\n{}",
            image.name,
            node.pm.log_tail(80)
        );
    }
    let log = node.log();
    let audits = request_audits(&log);
    for layer in image.host_manifest().layers {
        let hex = layer.digest.trim_start_matches("sha256:");
        assert!(
            audits.iter().any(|l| l.contains(hex)
                && l.contains("method=GET")
                && l.contains("status=200")
                && l.contains("source=\"peer\"")
                && l.contains(&format!("client={client}"))),
            "{}: layer {hex} was not served from the peer to {client}:\n{}",
            image.name,
            audits.join("\n")
        );
    }
    let refused: Vec<&&str> = audits.iter().filter(|l| l.contains("status=401")).collect();
    assert!(refused.is_empty(), "refused requests: {refused:?}");
}

#[test]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
fn token_rotates_twice_while_containerd_pulls() {
    let registry = Registry::start();
    let images = [fixture("big"), fixture("multi"), fixture("multiarch")];
    for i in &images {
        registry.push(i);
    }
    let reg = registry.host();
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("tokens");
    replace(&token_file, "rotation-token-1\n");
    let tf = token_file.display().to_string();
    let hosts = tempfile::tempdir().unwrap();
    let hd = hosts.path().display().to_string();
    let auth = ["--auth-mode", "token", "--token-file", &tf];

    let a = Node::builder("a").args(&auth).start();
    for i in &images {
        a.pull_direct(i, &reg);
    }
    let b = Node::builder("b")
        .args(&auth)
        .args(&["--hosts-dir", &hd])
        .bootstrap(Some(&a.pm))
        .start();
    let mirror = b.pm.registry_url();
    peermirror_configure_ok(&[
        "--config-path",
        &hd,
        "--mirror",
        &mirror,
        "--registry",
        &registry.url(),
        "--token-file",
        &tf,
    ]);
    let hosts_toml = hosts.path().join(&reg).join("hosts.toml");
    pull_through_peer(&b, hosts.path(), &images[0], &reg, "token:line1");

    for (n, image) in images.iter().enumerate().skip(1) {
        let token = format!("rotation-token-{}", n + 1);
        replace(&token_file, &format!("{token}\n"));
        assert!(
            wait_until(ROTATE_WITHIN, || auth_header(&hosts_toml, &mirror)
                == format!("Bearer {token}")),
            "hosts.toml still says {:?}\n--- b log ---\n{}",
            auth_header(&hosts_toml, &mirror),
            b.pm.log_tail(40)
        );
        // Node a (the peer) has read the new file too before b fetches from it.
        let bearer = format!("Bearer {token}");
        let v2 = format!("{}/v2/", a.pm.registry_url());
        assert!(wait_until(ROTATE_WITHIN, || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(Http::new().get(&v2, &[("authorization", &bearer)]))
                .status
                == 200
        }));
        let mode = {
            use std::os::unix::fs::PermissionsExt as _;
            fs::metadata(&hosts_toml).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode, 0o600);
        pull_through_peer(&b, hosts.path(), image, &reg, "token:line1");
        eprintln!(
            "[token] rotation {n}: {} pulled through the peer",
            image.name
        );
    }
    // The old tokens are gone, from the log as from the files.
    let log = b.log();
    assert!(
        !log.contains("rotation-token-"),
        "a token appears in the log"
    );
}

#[test]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
fn signed_key_mints_containerds_token() {
    let registry = Registry::start();
    let big = fixture("big");
    registry.push(&big);
    let reg = registry.host();
    let secrets = tempfile::tempdir().unwrap();
    let key = secrets.path().join("signing-key");
    fs::write(&key, sha256_hex(b"e2e signing key").as_bytes()).unwrap();
    let kf = key.display().to_string();
    let hosts = tempfile::tempdir().unwrap();
    let hd = hosts.path().display().to_string();
    let auth = [
        "--auth-mode",
        "token",
        "--token-signing-key",
        &kf,
        "--token-ttl",
        "1m",
    ];

    let a = Node::builder("a").args(&auth).start();
    a.pull_direct(&big, &reg);
    let b = Node::builder("b")
        .args(&auth)
        .args(&["--hosts-dir", &hd])
        .bootstrap(Some(&a.pm))
        .start();
    let mirror = b.pm.registry_url();
    // configure writes the header from a token file; the daemon replaces it with its own.
    let placeholder = secrets.path().join("placeholder");
    fs::write(&placeholder, "not-a-valid-token\n").unwrap();
    peermirror_configure_ok(&[
        "--config-path",
        &hd,
        "--mirror",
        &mirror,
        "--registry",
        &registry.url(),
        "--token-file",
        &placeholder.display().to_string(),
    ]);
    let hosts_toml = hosts.path().join(&reg).join("hosts.toml");
    assert!(
        wait_until(ROTATE_WITHIN, || {
            auth_header(&hosts_toml, &mirror).starts_with("Bearer ey")
        }),
        "the daemon did not write a minted token: {:?}",
        auth_header(&hosts_toml, &mirror)
    );
    pull_through_peer(&b, hosts.path(), &big, &reg, "token:sub=containerd@");
    // Node a was asked with b's own minted token.
    let a_log = a.log();
    assert!(
        request_audits(&a_log)
            .iter()
            .any(|l| l.contains("client=token:sub=peer@") && l.contains("status=200")),
        "node a has no request from b's minted peer token:\n{}",
        request_audits(&a_log).join("\n")
    );

    // `peermirror token issue` for a person: accepted; one signed with another key is not.
    let out = peermirror_cli(&[
        "token",
        "issue",
        "--key",
        &kf,
        "--ttl",
        "1h",
        "--subject",
        "alice",
    ]);
    assert!(out.status.success(), "{}", describe_output(&out));
    let issued = String::from_utf8(out.stdout).unwrap();
    let http = Http::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let v2 = format!("{mirror}/v2/");
    let bearer = format!("Bearer {}", issued.trim());
    assert_eq!(
        rt.block_on(http.get(&v2, &[("authorization", &bearer)]))
            .status,
        200
    );
    let other = secrets.path().join("other-key");
    fs::write(&other, sha256_hex(b"another key").as_bytes()).unwrap();
    let out = peermirror_cli(&[
        "token",
        "issue",
        "--key",
        &other.display().to_string(),
        "--subject",
        "mallory",
    ]);
    let forged = format!("Bearer {}", String::from_utf8(out.stdout).unwrap().trim());
    let r = rt.block_on(http.get(&v2, &[("authorization", &forged)]));
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code().as_deref(), Some("UNAUTHORIZED"));
}
