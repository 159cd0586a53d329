//! The README's node guide, run as written: the files in `docs/node-guide/` (which the README
//! shows verbatim, `tests/readme_guide.rs`) are sourced by bash with only the settings of
//! `0-settings.sh` given, against two real containerd 1.7 nodes and a docker-registry, all on
//! 127.0.0.1. Each node's ports and directories are its settings plus the `PEERMIRROR_*`
//! variables `run` reads (a real node takes the defaults).
//!
//! - `the_node_guide_works_as_written`: CA, certificates, swarm.key, `configure`, `run` over
//!   mTLS; node 1 pulls from the upstream, the upstream stops, node 2's `ctr --hosts-dir` pull
//!   (the guide's check step) is served by node 1 (`source=peer`, the metric); `status` is
//!   ready with no WARNING. Then node 2's certificate is revoked (the CRL step): its `status`
//!   says so; containerd's certificate on node 1 is revoked: node 1's `status` says its
//!   containerd is being refused.
//! - `token_mode_and_a_rotation_with_requests_in_flight`: the token steps, a peer-served pull,
//!   then the two-step rotation while both nodes keep asking each other (`status lookup`):
//!   zero 401s, and both end on the new token (containerd's hosts.toml too).
//!
//! Run with `cargo test --test e2e_guide -- --include-ignored` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tempfile::TempDir;

/// A node's readiness, peers and the first exchange between nodes take seconds; generous.
const READY_WITHIN: Duration = Duration::from_secs(60);

fn guide(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/node-guide")
        .join(name)
}

/// The machine the guide runs on: the CA's `pki/` in its working directory (the CA machine
/// and the nodes are one machine here), `peermirror` and containerd 1.7's `ctr` on PATH.
struct Machine {
    work: TempDir,
    path: String,
}

impl Machine {
    fn new() -> Machine {
        let work = tempfile::Builder::new()
            .prefix("pm-e2e-guide-")
            .tempdir()
            .unwrap();
        let bin = Path::new(env!("CARGO_BIN_EXE_peermirror"))
            .parent()
            .unwrap();
        let ctr = CtdVersion::V1_7.ctr_bin();
        let path = format!(
            "{}:{}:{}",
            bin.display(),
            ctr.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Machine { work, path }
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    /// `bash` sourcing the settings, then `steps`, with `env`; `set -eu`: any failing
    /// command fails the step.
    fn bash(&self, env: &[(String, String)], steps: &[&str], prelude: &str) -> Command {
        let mut script = format!("set -eu\n{prelude}. {}\n", guide("0-settings.sh").display());
        for s in steps {
            script.push_str(&format!(". {}\n", guide(s).display()));
        }
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .current_dir(self.dir())
            .env("PATH", &self.path)
            .env_remove("PEERMIRROR_CERTS_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs guide steps to completion; their output, or a panic saying which step failed.
    fn run(&self, env: &[(String, String)], steps: &[&str]) -> String {
        let out = run_with_timeout(
            self.bash(env, steps, "").stdin(Stdio::null()),
            Duration::from_secs(180),
        );
        assert!(
            out.status.success(),
            "guide steps {steps:?} failed: {}",
            describe_output(&out)
        );
        format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr))
    }

    fn try_run(&self, env: &[(String, String)], steps: &[&str]) -> Output {
        run_with_timeout(
            self.bash(env, steps, "").stdin(Stdio::null()),
            Duration::from_secs(60),
        )
    }
}

/// One node: containerd 1.7 (CRI on, so its config names the registry `config_path`), the
/// guide's settings for it, and its daemon once started.
struct GuideNode {
    name: String,
    ctd: Containerd,
    _certs_d: TempDir,
    certs_d: PathBuf,
    data: TempDir,
    registry_port: u16,
    metrics_port: u16,
    router_port: u16,
    bootstrap: String,
    image: String,
    daemon: Option<Child>,
    log: PathBuf,
}

impl GuideNode {
    fn new(name: &str, image: &str, bootstrap: String) -> GuideNode {
        let certs_d_dir = tempfile::Builder::new()
            .prefix("pm-e2e-guide-certs.d-")
            .tempdir()
            .unwrap();
        let certs_d = certs_d_dir.path().to_path_buf();
        let ctd = Containerd::start_with(
            name,
            CtdOptions {
                version: CtdVersion::V1_7,
                cri_config_path: Some(certs_d.clone()),
                ..CtdOptions::default()
            },
        );
        let data = tempfile::Builder::new()
            .prefix("pm-e2e-guide-data-")
            .tempdir()
            .unwrap();
        let log = data.path().join("peermirror.log");
        GuideNode {
            name: name.into(),
            ctd,
            _certs_d: certs_d_dir,
            certs_d,
            data,
            registry_port: free_port(),
            metrics_port: free_port(),
            router_port: free_port(),
            bootstrap,
            image: image.into(),
            daemon: None,
            log,
        }
    }

    /// The guide's settings for this node, and what `run`, `status` and `ctr` read from the
    /// environment where a real node takes the defaults.
    fn env(&self, m: &Machine, upstream: &str) -> Vec<(String, String)> {
        let s = |k: &str, v: String| (k.to_string(), v);
        vec![
            s("NODE", self.name.clone()),
            s("NODE_IP", "127.0.0.1".into()),
            s(
                "ETC",
                m.dir()
                    .join(format!("etc-{}", self.name))
                    .display()
                    .to_string(),
            ),
            s("CTD_CONFIG", self.ctd.config_path().display().to_string()),
            s("CTD_CONTENT", self.ctd.content_dir().display().to_string()),
            s("CERTS_D", self.certs_d.display().to_string()),
            s(
                "MIRROR",
                format!("https://127.0.0.1:{}", self.registry_port),
            ),
            s("UPSTREAM", format!("http://{upstream}")),
            s("BOOTSTRAP", self.bootstrap.clone()),
            s("METRICS", format!("127.0.0.1:{}", self.metrics_port)),
            s("IMAGE", self.image.clone()),
            s(
                "PEERMIRROR_REGISTRY_ADDR",
                format!("127.0.0.1:{}", self.registry_port),
            ),
            s(
                "PEERMIRROR_METRICS_ADDR",
                format!("127.0.0.1:{}", self.metrics_port),
            ),
            s(
                "PEERMIRROR_ROUTER_ADDR",
                format!("127.0.0.1:{}", self.router_port),
            ),
            s(
                "PEERMIRROR_DATA_DIR",
                self.data.path().display().to_string(),
            ),
            s(
                "PEERMIRROR_CONTAINERD_SOCK",
                self.ctd.socket().display().to_string(),
            ),
            s(
                "CONTAINERD_ADDRESS",
                self.ctd.socket().display().to_string(),
            ),
            // The test containerd has no overlayfs snapshots; ctr reads this for --snapshotter.
            s("CONTAINERD_SNAPSHOTTER", "native".into()),
        ]
    }

    fn bootstrap_spec(&self) -> String {
        format!("static:/ip4/127.0.0.1/tcp/{}", self.router_port)
    }

    /// Starts the daemon from a guide step whose last command is `peermirror run ...`: a
    /// shell function puts `exec` in front, so the child is the daemon itself (stopped by PID).
    fn start(&mut self, m: &Machine, upstream: &str, step: &str) {
        let bin = env!("CARGO_BIN_EXE_peermirror");
        let prelude = format!("peermirror() {{ exec {bin} \"$@\"; }}\n");
        let log = fs::File::create(&self.log).unwrap();
        let child = m
            .bash(&self.env(m, upstream), &[step], &prelude)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// `peermirror status` (finding the socket from PEERMIRROR_DATA_DIR) until it exits 0.
    fn wait_ready(&self, m: &Machine, upstream: &str) {
        let env = self.env(m, upstream);
        let ready = wait_until(READY_WITHIN, || {
            m.bash(&env, &[], "peermirror status >/dev/null\n")
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(
            ready,
            "{} not ready within {READY_WITHIN:?}:\n{}",
            self.name,
            last_lines_of(&self.log_text(), 40)
        );
    }

    fn status(&self, m: &Machine, upstream: &str, args: &str) -> Output {
        m.bash(
            &self.env(m, upstream),
            &[],
            &format!("peermirror status {args}\n"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap()
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = http_get_in(
            None,
            &format!("127.0.0.1:{}", self.metrics_port),
            "/metrics",
        )
        .map(|(_, body)| body)
        .unwrap_or_default();
        metric_value(&text, name, labels).unwrap_or(0.0)
    }
}

impl Drop for GuideNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two nodes of the guide with their CA, node 1 holding `image` (pulled from the upstream
/// through its own mirror by the guide's check step), node 2 ready and connected to it.
struct Cluster {
    m: Machine,
    registry: Registry,
    upstream: String,
    n1: GuideNode,
    n2: GuideNode,
    image: FixtureImage,
}

fn cluster(run_step: &str, node_steps: &[&str], env_extra: &[(String, String)]) -> Cluster {
    let registry = Registry::start();
    let image = fixture("small");
    registry.push(&image);
    let upstream = registry.host();
    let reference = image.reference(&upstream);
    let m = Machine::new();
    let mut n1 = GuideNode::new("node-1", &reference, "none".into());
    let mut n2 = GuideNode::new("node-2", &reference, n1.bootstrap_spec());
    let env = |n: &GuideNode| {
        let mut e = n.env(&m, &upstream);
        e.extend_from_slice(env_extra);
        e
    };
    m.run(&env(&n1), &["1-ca.sh"]);
    for n in [&n1, &n2] {
        m.run(&env(n), &["1-certs.sh", "2-node.sh"]);
        m.run(&env(n), node_steps);
    }
    n1.start(&m, &upstream, run_step);
    n1.wait_ready(&m, &upstream);
    // Node 1's check step: its mirror has nothing yet, containerd gets the image upstream.
    m.run(&env(&n1), &["4-check.sh"]);
    n2.start(&m, &upstream, run_step);
    n2.wait_ready(&m, &upstream);
    Cluster {
        m,
        registry,
        upstream,
        n1,
        n2,
        image,
    }
}

impl Cluster {
    /// Node 2 sees node 1 as a provider of the image's layer, and node 1 answers its HEAD.
    fn wait_visible(&self) -> String {
        let layer = self.image.host_manifest().layers[0].digest.clone();
        let seen = wait_until(READY_WITHIN, || {
            self.n2
                .status(&self.m, &self.upstream, &format!("lookup {layer}"))
                .status
                .success()
        });
        assert!(
            seen,
            "node 2 never saw node 1 answer for {layer}: {}\nnode 1:\n{}",
            stdout(
                &self
                    .n2
                    .status(&self.m, &self.upstream, &format!("lookup {layer}"))
            ),
            last_lines_of(&self.n1.log_text(), 30)
        );
        layer
    }

    /// The upstream stops; node 2's check step pulls the image: only node 1 can serve it.
    fn peer_pull(&mut self) -> String {
        self.wait_visible();
        self.registry.stop();
        let env = self.n2.env(&self.m, &self.upstream);
        let out = self.m.run(&env, &["4-check.sh"]);
        let log2 = self.n2.log_text();
        let peer_lines = lines_with(&log2, &["audit", "source=\"peer\"", "status=200"]);
        assert!(
            !peer_lines.is_empty(),
            "node 2 served nothing from a peer:\n{}",
            last_lines_of(&log2, 40)
        );
        assert!(
            out.contains("peermirror_response_bytes_total{source=\"peer\"}"),
            "the check step's metrics show no peer bytes:\n{out}"
        );
        assert!(
            self.n2
                .metric("peermirror_response_bytes_total", &[("source", "peer")])
                > 0.0
        );
        eprintln!("[guide] node 2 pulled through node 1 with the upstream down:\n{out}");
        out
    }
}

#[test]
#[ignore = "e2e: needs root + containerd 1.7 + docker-registry; run by scripts/test.sh"]
fn the_node_guide_works_as_written() {
    let mut c = cluster("3-run.sh", &[], &[]);
    let out = c.peer_pull();
    assert!(!out.contains("WARNING"), "status warns:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ready ") && l.trim_end().ends_with(" yes")),
        "{out}"
    );

    let env1 = c.n1.env(&c.m, &c.upstream);
    let env2 = c.n2.env(&c.m, &c.upstream);
    let revoke = |name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_peermirror"))
            .args(["certs", "revoke", "--name", name])
            .current_dir(c.m.dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe_output(&out));
    };

    // containerd's certificate on node 1 revoked, the CRL step run: its pulls are refused in
    // the handshake (and would go upstream); node 1's status says so.
    revoke("containerd-node-1");
    c.m.run(&env1, &["5-crl.sh"]);
    c.m.run(&env2, &["5-crl.sh"]);
    let status1 = || stdout(&c.n1.status(&c.m, &c.upstream, ""));
    let refused = wait_until(READY_WITHIN, || {
        // Each try is one more refused handshake (the pull fails: the upstream is down).
        let _ = c.m.try_run(&env1, &["4-check.sh"]);
        status1().contains("containerd's requests are being refused")
    });
    assert!(
        refused,
        "node 1's status does not say containerd is refused:\n{}\n{}",
        status1(),
        last_lines_of(&c.n1.log_text(), 20)
    );
    eprintln!(
        "[guide] node 1 after its containerd's certificate was revoked:\n{}",
        status1()
    );

    // Node 2 revoked: its own status says so, and its lookups say why node 1 answers nothing.
    revoke("node-2");
    c.m.run(&env1, &["5-crl.sh"]);
    c.m.run(&env2, &["5-crl.sh"]);
    let status2 = || stdout(&c.n2.status(&c.m, &c.upstream, ""));
    let revoked = wait_until(READY_WITHIN, || status2().contains("is REVOKED by the CRL"));
    assert!(
        revoked,
        "node 2's status does not say it is revoked:\n{}",
        status2()
    );
    let layer = c.image.host_manifest().layers[0].digest.clone();
    // Node 1 reloads the CRL on its own poll, maybe a moment after node 2 did.
    let lookup = || {
        stdout(
            &c.n2
                .status(&c.m, &c.upstream, &format!("lookup {layer} -o json")),
        )
    };
    let refused = wait_until(READY_WITHIN, || {
        let l = lookup();
        l.contains("\"providers\":[{") && !l.contains("\"answered\":true")
    });
    let last = lookup();
    eprintln!("[guide] node 2 (revoked) looks up {layer}:\n{last}");
    assert!(refused, "node 1 still answers the revoked node 2: {last}");
}

#[test]
#[ignore = "e2e: needs root + containerd 1.7 + docker-registry; run by scripts/test.sh"]
fn token_mode_and_a_rotation_with_requests_in_flight() {
    let token = ("TOKEN".to_string(), "0ld-t0ken-".repeat(4));
    let new = ("NEW_TOKEN".to_string(), "n3w-t0ken-".repeat(4));
    let mut c = cluster(
        "6-token-run.sh",
        &["6-token.sh"],
        std::slice::from_ref(&token),
    );
    let out = c.peer_pull();
    assert!(!out.contains("WARNING"), "status warns:\n{out}");
    // Tags resolve through peers in token mode over TLS: node 2 never pulled this tag from
    // the upstream, which is down, yet the check step's pull of it succeeded (above).

    let refusals = |n: &GuideNode| {
        n.metric(
            "peermirror_auth_failures_total",
            &[("reason", "wrong_token")],
        ) + n.metric(
            "peermirror_auth_failures_total",
            &[("reason", "missing_token")],
        )
    };
    let before = (refusals(&c.n1), refusals(&c.n2));
    // Both nodes keep asking each other (HEADs with the token) while the token rotates.
    let layer = c.image.host_manifest().layers[0].digest.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (asked, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut askers = Vec::new();
    for n in [&c.n1, &c.n2] {
        let env = n.env(&c.m, &c.upstream);
        let (m_dir, path) = (c.m.dir().to_path_buf(), c.m.path.clone());
        let (stop, asked, refused, layer) =
            (stop.clone(), asked.clone(), refused.clone(), layer.clone());
        askers.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 10_000 {
                n += 1;
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_peermirror"));
                cmd.args(["status", "lookup", &layer, "-o", "json"])
                    .current_dir(&m_dir)
                    .env("PATH", &path);
                for (k, v) in &env {
                    cmd.env(k, v);
                }
                if let Ok(o) = cmd.output() {
                    asked.fetch_add(1, Ordering::Relaxed);
                    let text = String::from_utf8_lossy(&o.stdout);
                    if text.contains("\"status\":401") {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    let settle = || std::thread::sleep(Duration::from_secs(4));
    let with_new = |n: &GuideNode| {
        let mut e = n.env(&c.m, &c.upstream);
        e.push(new.clone());
        e
    };
    settle();
    // Step 1 on node 1 only for a while: it must keep sending node 2 the old token.
    c.m.run(&with_new(&c.n1), &["7-rotate-1.sh"]);
    settle();
    c.m.run(&with_new(&c.n2), &["7-rotate-1.sh"]);
    settle();
    c.m.run(&with_new(&c.n1), &["7-rotate-2.sh"]);
    settle();
    c.m.run(&with_new(&c.n2), &["7-rotate-2.sh"]);
    settle();
    stop.store(true, Ordering::Relaxed);
    for a in askers {
        a.join().unwrap();
    }
    let (asked, refused) = (
        asked.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let (w1, w2) = (refusals(&c.n1) - before.0, refusals(&c.n2) - before.1);
    eprintln!(
        "[guide] rotation: {asked} lookups during it, {refused} answered 401; auth failures node 1 {w1}, node 2 {w2}"
    );
    assert!(asked >= 20, "too few lookups ran: {asked}");
    assert_eq!(
        (refused, w1, w2),
        (0, 0.0, 0.0),
        "a peer was refused during the rotation"
    );
    // Both ended on the new token: a lookup still succeeds, and containerd holds it.
    for n in [&c.n1, &c.n2] {
        let l = n.status(&c.m, &c.upstream, &format!("lookup {layer}"));
        assert!(l.status.success(), "{}", stdout(&l));
        let hosts = fs::read_dir(&n.certs_d)
            .unwrap()
            .map(|e| fs::read_to_string(e.unwrap().path().join("hosts.toml")).unwrap_or_default())
            .collect::<String>();
        let want = format!("Bearer {}", new.1);
        let has = wait_until(Duration::from_secs(10), || {
            fs::read_dir(&n.certs_d).unwrap().any(|e| {
                fs::read_to_string(e.unwrap().path().join("hosts.toml"))
                    .is_ok_and(|t| t.contains(&want))
            })
        });
        assert!(has, "{}'s hosts.toml lacks the new token:\n{hosts}", n.name);
    }
}
