//! Signed tokens and token rotation into hosts.toml, against in-process nodes (issue 10, item 5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser as _;
use peermirror::auth::AuthMode;
use peermirror::content::MemorySource;
use peermirror::daemon::{Routing, Security, TokenSettings};
use peermirror::mirror::MirrorConfig;
use peermirror::oci::Digest;
use support::{config, start_on, wait_ready};
use tokio::net::TcpListener;

const KEY: &[u8] = b"a cluster signing key, 32+ bytes long";

/// Audit lines of every node in this test binary (one global subscriber).
fn audit_log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    static INIT: OnceLock<()> = OnceLock::new();
    let log = LOG.get_or_init(|| Mutex::new(Vec::new()));
    INIT.get_or_init(|| {
        struct W;
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                audit_log().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter("audit=info,peermirror=info")
            .with_ansi(false)
            .with_writer(|| W)
            .try_init();
    });
    log
}

fn audit_text() -> String {
    String::from_utf8_lossy(&audit_log().lock().unwrap()).into_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token_config(token_file: Option<&Path>, token: TokenSettings) -> peermirror::daemon::Config {
    let mut cfg = config(Routing::Off, MirrorConfig::default());
    cfg.security = Security {
        mode: AuthMode::Token,
        insecure_no_auth: false,
        tls: None,
        token_file: token_file.map(Path::to_path_buf),
    };
    cfg.token = token;
    cfg
}

#[tokio::test]
async fn signed_tokens_expire_and_name_their_subject() {
    audit_log();
    let dir = tempfile::tempdir().unwrap();
    let (key, tokens) = (dir.path().join("key"), dir.path().join("tokens"));
    std::fs::write(&key, [KEY, b"\n"].concat()).unwrap();
    std::fs::write(&tokens, "static-token\n").unwrap();
    let src = MemorySource::new();
    let layer = b"signed token layer".to_vec();
    src.add_image("127.0.0.1:5000/test/app:v1", &[&layer]);
    let digest = Digest::of(&layer);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = token_config(
        Some(&tokens),
        TokenSettings {
            signing_key: Some(key.clone()),
            ..TokenSettings::default()
        },
    );
    let node = start_on(l, src, cfg).await;
    wait_ready(&node, true).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v2/test/app/blobs/{digest}", node.base);
    let get = |t: String| {
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(&url).bearer_auth(t).send().await.unwrap() }
    };

    let fresh = peermirror::token::mint(KEY, "robot-7", Duration::from_secs(60)).unwrap();
    let r = get(fresh).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), layer.as_slice());

    let expired =
        peermirror::token::mint_at(KEY, "robot-7", now() - 3600, Duration::from_secs(60)).unwrap();
    let forged = peermirror::token::mint(
        b"somebody else's key, 32+ bytes long",
        "robot-7",
        Duration::from_secs(60),
    )
    .unwrap();
    for (what, t) in [("expired", expired), ("badly signed", forged)] {
        let r = get(t).await;
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"peermirror\""
        );
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{what}");
    }
    // Static tokens keep working next to signed ones.
    assert_eq!(get("static-token".into()).await.status(), 200);

    // `peermirror token issue` makes tokens the daemon accepts.
    let issued = peermirror::token::run(&match peermirror::cli::Cli::try_parse_from([
        "peermirror",
        "token",
        "issue",
        "--key",
        key.to_str().unwrap(),
        "--ttl",
        "1h",
        "--subject",
        "alice",
    ])
    .unwrap()
    .command
    {
        peermirror::cli::Command::Token(a) => a,
        _ => unreachable!(),
    })
    .unwrap();
    assert_eq!(get(issued.trim().to_owned()).await.status(), 200);

    // The audit line names the subject, never the token.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = audit_text();
        if log.contains("token:sub=robot-7") && log.contains("token:sub=alice") {
            assert!(log.contains("token:line1"), "{log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit line names the subject:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await;
}

/// Writes hosts.toml for `mirror` under `hosts` with `configure --token-file`.
fn configure(hosts: &Path, mirror: &str, token_file: &Path, registry: &str) {
    let cli = peermirror::cli::Cli::try_parse_from([
        "peermirror",
        "configure",
        "--config-path",
        hosts.to_str().unwrap(),
        "--mirror",
        mirror,
        "--registry",
        registry,
        "--token-file",
        token_file.to_str().unwrap(),
    ])
    .unwrap();
    let peermirror::cli::Command::Configure(args) = cli.command else {
        unreachable!()
    };
    peermirror::configure::run(&args).unwrap();
}

fn auth_header(file: &Path, mirror: &str) -> String {
    let doc: toml::Table = std::fs::read_to_string(file).unwrap().parse().unwrap();
    doc["host"][mirror]["header"]["Authorization"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_header(file: &Path, mirror: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = auth_header(file, mirror);
        if want(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "hosts.toml still says {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rotated_token_file_is_written_into_hosts_toml() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, hosts) = (dir.path().join("tokens"), dir.path().join("certs.d"));
    std::fs::write(&tokens, "old-token\n").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mirror = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    configure(&hosts, &mirror, &tokens, "https://registry.example");
    let file = hosts.join("registry.example").join("hosts.toml");
    // A hosts.toml configure did not write is never touched.
    let foreign_dir = hosts.join("other.example");
    std::fs::create_dir_all(&foreign_dir).unwrap();
    let foreign = format!("[host.\"{mirror}\".header]\nAuthorization = \"Bearer old-token\"\n");
    std::fs::write(foreign_dir.join("hosts.toml"), &foreign).unwrap();
    let before: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();

    let cfg = token_config(
        Some(&tokens),
        TokenSettings {
            hosts_dir: Some(hosts.clone()),
            ..TokenSettings::default()
        },
    );
    let node = start_on(l, MemorySource::new(), cfg).await;
    wait_ready(&node, true).await;
    assert_eq!(auth_header(&file, &mirror), "Bearer old-token");

    for new in ["second-token", "third-token"] {
        let mut f = std::fs::File::create(dir.path().join("tokens.tmp")).unwrap();
        writeln!(f, "{new}").unwrap();
        std::fs::rename(dir.path().join("tokens.tmp"), &tokens).unwrap();
        wait_header(&file, &mirror, |h| h == format!("Bearer {new}")).await;
        let c = reqwest::Client::new();
        let r = c
            .get(format!("{}/v2/", node.base))
            .bearer_auth(new)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with(peermirror::configure::MARKER), "{text}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Only the header changed.
    let mut after: toml::Table = text.parse().unwrap();
    after["host"][&mirror]["header"]["Authorization"] = "Bearer old-token".into();
    assert_eq!(after, before);
    assert_eq!(
        std::fs::read_to_string(foreign_dir.join("hosts.toml")).unwrap(),
        foreign
    );
    node.stop().await;
}

#[tokio::test]
async fn with_a_signing_key_the_daemon_mints_containerds_token() {
    let dir = tempfile::tempdir().unwrap();
    let (key, placeholder, hosts) = (
        dir.path().join("key"),
        dir.path().join("placeholder"),
        dir.path().join("certs.d"),
    );
    std::fs::write(&key, KEY).unwrap();
    // configure needs some token to write the header; the daemon replaces it at once.
    std::fs::write(&placeholder, "placeholder\n").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mirror = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    configure(&hosts, &mirror, &placeholder, "https://registry.example");
    let file = hosts.join("registry.example").join("hosts.toml");
    let cfg = token_config(
        None,
        TokenSettings {
            signing_key: Some(key.clone()),
            ttl: Duration::from_secs(10),
            hosts_dir: Some(hosts.clone()),
        },
    );
    let node = start_on(l, MemorySource::new(), cfg).await;
    wait_ready(&node, true).await;
    let first = wait_header(&file, &mirror, |h| h != "Bearer placeholder").await;
    let jwt = first.strip_prefix("Bearer ").unwrap().to_owned();
    let claims = peermirror::token::verify(KEY, jwt.as_bytes()).unwrap();
    assert!(claims.sub.starts_with("containerd@"), "{claims:?}");
    assert_eq!(claims.exp - claims.iat, 10);
    let c = reqwest::Client::new();
    let v2 = format!("{}/v2/", node.base);
    assert_eq!(
        c.get(&v2).bearer_auth(&jwt).send().await.unwrap().status(),
        200
    );
    // The placeholder is no token here: no token file was given.
    assert_eq!(
        c.get(&v2)
            .bearer_auth("placeholder")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // The daemon's own rewrite does not trigger another one: the token stays until half
    // its lifetime (a rewrite loop once re-minted it every poll).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        auth_header(&file, &mirror),
        first,
        "rewritten before half its lifetime"
    );
    // Re-minted at half the lifetime, well before it expires.
    let second = wait_header(&file, &mirror, |h| h != first).await;
    let c2 =
        peermirror::token::verify(KEY, second.strip_prefix("Bearer ").unwrap().as_bytes()).unwrap();
    assert!(c2.exp > claims.exp);
    assert!(c2.iat < claims.exp);
    assert!(c2.iat >= claims.iat + 4, "{claims:?} then {c2:?}");
    node.stop().await;
}
