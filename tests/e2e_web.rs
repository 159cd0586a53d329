//! End-to-end test of `peermirror status web` in a browser: headless Chromium (Debian's
//! `chromium`) drives the page of a live two-node run (two containerd daemons, two
//! `peermirror run`, docker-registry upstream; node 2 bootstraps to node 1 and pulls through
//! its own peermirror). Chromium runs with `--dump-dom` (the DOM after the page's script ran)
//! and `--screenshot`, each time with a fresh `--user-data-dir`; the screenshots of each state
//! are kept in `target/e2e-web/`.
//!
//! Run with `cargo test --test e2e_web -- --include-ignored` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// How long a node may take to learn, through the DHT, what another one holds.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);
/// The nodes' bearer token: a marker that must never appear on the page or in its API.
const MARKER_TOKEN: &str = "marker-token-7f3a9c1e-must-not-leak";
/// Virtual time the page gets to fetch and render before the DOM is dumped.
const BUDGET_MS: u32 = 6_000;
/// The flags the issue names, for a browser that touches nothing but the page.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// `peermirror status web` for one node; killed by PID on drop.
struct WebUi {
    child: Child,
    url: String,
    log: PathBuf,
}

impl WebUi {
    fn start(node: &Node) -> WebUi {
        let port = free_port();
        let log = node.dir().join("status-web.log");
        let (out, err) = log_pair(&log);
        let sock = node.admin_sock().display().to_string();
        let listen = format!("127.0.0.1:{port}");
        let mut child =
            peermirror_command(&["status", "web", "--admin-sock", &sock, "--listen", &listen])
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn peermirror status web");
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(&listen).is_ok()
        });
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            panic!("status web did not listen: {}", read_log(&log));
        }
        WebUi {
            child,
            url: format!("http://{listen}/"),
            log,
        }
    }
}

impl Drop for WebUi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_pair(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::File::create(path).unwrap();
    (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
}

/// `peermirror ARGS...` without PEERMIRROR_* from the environment.
fn peermirror_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peermirror"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PEERMIRROR_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Where the screenshots go: `target/e2e-web/`, kept after the run.
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-web");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium with a fresh profile, `extra` flags, then `url`; its stdout.
fn chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::Builder::new()
        .prefix("pm-chromium-")
        .tempdir()
        .unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={BUDGET_MS}"))
        .arg("--window-size=1280,1500")
        .args(extra)
        .arg(url);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "chromium {extra:?} {url}: {}",
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page at `url` after its script ran, as HTML; a screenshot of it saved as `name`.
fn look(url: &str, name: &str) -> String {
    let dom = chromium(url, &["--dump-dom".to_string()]);
    let png = output_dir().join(name);
    let _ = std::fs::remove_file(&png);
    chromium(url, &[format!("--screenshot={}", png.display())]);
    assert!(
        std::fs::metadata(&png).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        png.display()
    );
    eprintln!("[e2e_web] screenshot: {}", png.display());
    dom
}

/// The value of attribute `attr` on the element with `id`, in serialized HTML.
fn attr_of(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag_end = at + dom[at..].find('>')?;
    let tag = &dom[tag_start..tag_end];
    let key = format!("{attr}=\"");
    let v = tag.find(&key)? + key.len();
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

/// The text inside the element with `id` (tags stripped), in serialized HTML.
fn text_of(dom: &str, id: &str) -> String {
    let Some(at) = dom.find(&format!("id=\"{id}\"")) else {
        return String::new();
    };
    let start = at + dom[at..].find('>').unwrap_or(0) + 1;
    let mut depth = 1;
    let mut out = String::new();
    let mut rest = &dom[start..];
    while depth > 0 && !rest.is_empty() {
        match rest.find('<') {
            Some(0) => {
                let end = rest.find('>').unwrap_or(rest.len() - 1);
                let tag = &rest[..=end];
                if tag.starts_with("</") {
                    depth -= 1;
                } else if !tag.ends_with("/>") && !tag.starts_with("<br") {
                    depth += 1;
                }
                out.push(' ');
                rest = &rest[end + 1..];
            }
            Some(n) => {
                out.push_str(&rest[..n]);
                rest = &rest[n..];
            }
            None => break,
        }
    }
    out
}

fn peer_bytes(dom: &str) -> u64 {
    attr_of(dom, "total-peer", "data-bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no #total-peer with data-bytes in the page:\n{dom}"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry + chromium; run by scripts/test.sh"]
async fn the_status_page_shows_peers_peer_bytes_and_lookups() {
    let registry = Registry::start();
    let big = fixture("big");
    registry.push(&big);
    let reg = registry.host();
    // Token mode with a marker token, so "nothing secret on the page" has a secret to leak.
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("tokens");
    std::fs::write(&token_file, format!("{MARKER_TOKEN}\n")).unwrap();
    let tf = token_file.display().to_string();
    let auth = ["--auth-mode", "token", "--token-file", &tf];
    let node1 = Node::builder("node1").args(&auth).admin_sock().start();
    node1.ctd.pull_ok(&big.reference(&reg), None, true);
    let node2 = Node::builder("node2")
        .args(&auth)
        .bootstrap(Some(&node1.pm))
        .admin_sock()
        .start();
    node2.configure(&registry, &node2.pm.registry_url(), &["--token-file", &tf]);
    let layer = big.host_manifest().layers[0].clone();

    // A non-loopback address is refused without the explicit flag, before anything else.
    let sock = node2.admin_sock().display().to_string();
    let refused = peermirror_cli(&[
        "status",
        "web",
        "--admin-sock",
        &sock,
        "--listen",
        "0.0.0.0:1",
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{}", describe_output(&refused));
    assert!(err.contains("--allow-remote"), "{err}");

    let web = WebUi::start(&node2);
    // A page asked for under another name (DNS rebinding) is refused.
    let rebound = Http::new()
        .get(
            &format!("{}api/overview", web.url),
            &[("host", "evil.example")],
        )
        .await;
    assert_eq!(rebound.status, 403);
    let page = Http::new().get(&web.url, &[]).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("script-src 'sha256-")),
        "{:?}",
        page.headers
    );

    // --- the peer is listed ----------------------------------------------
    let id1 = {
        let o = Http::new()
            .get(&format!("{}api/overview", web.url), &[])
            .await;
        assert_eq!(o.status, 200, "{}", String::from_utf8_lossy(&o.body));
        let listed = wait_until_async(VISIBLE_WITHIN, || async {
            let o = Http::new()
                .get(&format!("{}api/overview", web.url), &[])
                .await;
            o.json()["peers"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
        assert!(listed, "node2 never listed a peer: {}", read_log(&web.log));
        let o = Http::new()
            .get(&format!("{}api/overview", web.url), &[])
            .await;
        o.json()["peers"][0]["peer_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let dom = look(&web.url, "1-peer-listed.png");
    let peers = text_of(&dom, "peers");
    assert!(
        peers.contains(&id1),
        "node1 {id1} not in the peers table: {peers}"
    );
    assert!(
        peers.contains(&node1.pm.registry_host()),
        "node1's registry endpoint not shown: {peers}"
    );
    assert_eq!(text_of(&dom, "peer-count").trim(), "1");
    assert!(
        text_of(&dom, "ready").contains("ready"),
        "{}",
        text_of(&dom, "ready")
    );
    assert!(
        text_of(&dom, "readiness").contains("1.6"),
        "containerd version missing: {}",
        text_of(&dom, "readiness")
    );
    let before = peer_bytes(&dom);

    // --- a pull through the peer moves the "peer" bytes -------------------
    let visible = wait_until(VISIBLE_WITHIN, || {
        peermirror_cli(&["status", "--admin-sock", &sock, "lookup", &layer.digest])
            .status
            .code()
            == Some(0)
    });
    assert!(visible, "node2 never found node1's layer");
    let took = node2.pull_ok(&big, &reg);
    eprintln!(
        "[e2e_web] node2 pulled through its peermirror in {:.1}s",
        took.as_secs_f64()
    );
    let dom = look(&web.url, "2-after-pull.png");
    let after = peer_bytes(&dom);
    eprintln!("[e2e_web] peer bytes on the page: {before} -> {after}");
    assert!(
        after >= before + layer.size,
        "peer bytes moved {before} -> {after}, less than the layer ({})",
        layer.size
    );
    let requests = text_of(&dom, "requests");
    assert!(
        requests.contains(&layer.digest) && requests.contains("peer"),
        "the layer's request from the peer is not in the last requests: {requests}"
    );
    assert_eq!(
        text_of(&dom, "error").trim(),
        "",
        "the page could not reach the daemon"
    );
    assert!(
        dom.contains("class=\"bar-peer\""),
        "no peer bar in the chart: {}",
        text_of(&dom, "legend")
    );

    // --- the lookup box finds the provider --------------------------------
    let url = format!("{}?lookup={}", web.url, layer.digest);
    let dom = look(&url, "3-lookup.png");
    let found = text_of(&dom, "lookup-result");
    eprintln!(
        "[e2e_web] lookup box: {}",
        found.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let providers = text_of(&dom, "providers");
    assert!(
        providers.contains(&id1),
        "lookup does not name node1: {found}"
    );
    assert!(
        providers.contains("answered 200"),
        "node1 did not answer: {found}"
    );
    assert!(
        text_of(&dom, "lookup-key").contains(&layer.digest),
        "{found}"
    );

    // A small copy for the README (`docs/status-web.png` is this, copied by hand).
    let small = output_dir().join("status-web-small.png");
    chromium(
        &url,
        &[
            format!("--screenshot={}", small.display()),
            "--force-device-scale-factor=0.6".to_string(),
        ],
    );
    eprintln!("[e2e_web] screenshot: {}", small.display());

    // Nothing secret on the page nor in the JSON behind it: not the token the nodes and
    // containerd used for every request above, no key or certificate material.
    let api = [
        "api/overview".to_string(),
        format!("api/content?filter={}", layer.digest),
        format!("api/lookup?key={}", layer.digest),
    ];
    let mut shown = vec![("page".to_string(), dom)];
    for path in api {
        let r = Http::new().get(&format!("{}{path}", web.url), &[]).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        shown.push((path, String::from_utf8_lossy(&r.body).into_owned()));
    }
    for (what, text) in &shown {
        for needle in [MARKER_TOKEN, "BEGIN ", "PRIVATE", "Bearer "] {
            assert!(!text.contains(needle), "{what} shows {needle:?}:\n{text}");
        }
    }
}
