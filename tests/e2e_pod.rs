//! The chart's own pod, run for real: the image `scripts/build-image.sh` builds, and the
//! DaemonSet pod template the chart renders (tests/chart/pod_from_chart.py turns it into a Pod
//! the way the kubelet would run it), started with `podman kube play` on two "nodes".
//!
//! Each node is a network namespace of its own (tests/common/netns.rs) with its own containerd;
//! the pods use `hostNetwork: true`, and `podman kube play` runs inside the node's namespace,
//! so each pod has its node's address. The upstream registry is a third namespace. The chart
//! is rendered once per auth mode (token, and mTLS with the chart's generated certificates)
//! with hostPaths pointed at the node's containerd; the containers, args, probes, hooks and
//! security contexts are exactly what the chart renders.
//!
//! Asserted: the `configure` init container wrote hosts.toml (keeping a backup of the one that
//! was there); the pod turns ready (its readiness probe's URL answers 200); with the upstream
//! stopped, `ctr images pull` on node 2 is served by node 1 through the two pods; replacing node
//! 2's pod with one of a new image tag in the middle of a pull (a rolling update: preStop,
//! SIGTERM, drain, new pod) does not fail the pull; deleting the pods (preStop hooks, SIGTERM
//! with the grace period, `podman kube down`) restores the hosts.toml that was there before.
//!
//! Needs root, podman, catatonit and the chart tests' venv (target/chart-venv, made by
//! scripts/test.sh; `PEERMIRROR_CHART_PYTHON` names another Python with tests/chart's
//! requirements). Pods, containers, the test's image tags and the namespaces are removed on
//! Drop, also when an assertion fails.
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The pods of one test run at a time: each builds the image and loads two containerds.
static SERIAL: Mutex<()> = Mutex::new(());

const READY_WITHIN: Duration = Duration::from_secs(120);
const PULL_WITHIN: Duration = Duration::from_secs(180);
/// What `hosts.toml` held before the chart's pod: the preStop hook must put it back.
const PREVIOUS_HOSTS_TOML: &str =
    "# before peermirror (e2e_pod)\nserver = \"http://upstream:5000\"\n";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn containers_conf() -> PathBuf {
    target_dir().join("image/containers.conf")
}

/// `podman ARGS...` with the containers.conf build-image.sh wrote (ulimits this machine
/// allows); inside network namespace `ns` when given. `nsenter --net`, not `ip netns exec`:
/// the latter remounts /sys, hiding the cgroup tree podman needs ("creating cgroup for cpu").
fn podman(ns: Option<&str>, args: &[&str], timeout: Duration) -> Output {
    podman_conf(&containers_conf(), ns, args, timeout)
}

fn podman_conf(conf: &Path, ns: Option<&str>, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("podman");
            c
        }
        None => Command::new("podman"),
    };
    cmd.env("CONTAINERS_CONF", conf).args(args);
    run_with_timeout(&mut cmd, timeout)
}

fn podman_ok(ns: Option<&str>, args: &[&str], timeout: Duration) -> String {
    let out = podman(ns, args, timeout);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image built from this test's binary (the debug build: a release build would add
/// minutes to the test command; the Containerfile and the root are the same), tagged
/// `e2e-pod-<pid>-<mode>` and `...-next` (the rolling update's "new version"). Removed on Drop.
struct Image {
    tags: Vec<String>,
    size: u64,
}

impl Image {
    fn build(mode: &str) -> Image {
        let tag = format!("e2e-pod-{}-{mode}", std::process::id());
        let out = run_with_timeout(
            Command::new("bash")
                .arg(repo().join("scripts/build-image.sh"))
                .args(["--binary", env!("CARGO_BIN_EXE_peermirror")])
                .args(["--tag", &tag, "--no-archive"]),
            Duration::from_secs(600),
        );
        assert!(
            out.status.success(),
            "scripts/build-image.sh: {}",
            describe_output(&out)
        );
        // Owned from here: Drop removes both tags, whichever exist.
        let mut image = Image {
            tags: vec![
                format!("localhost/peermirror:{tag}"),
                format!("localhost/peermirror:{tag}-next"),
            ],
            size: 0,
        };
        podman_ok(
            None,
            &["tag", &image.tags[0], &image.tags[1]],
            Duration::from_secs(60),
        );
        let size = podman_ok(
            None,
            &["image", "inspect", "--format", "{{.Size}}", &image.tags[0]],
            Duration::from_secs(60),
        );
        image.size = size.trim().parse().unwrap_or(0);
        // The image runs on its own: `podman run IMAGE version` (as the README says).
        let version = podman_ok(
            None,
            &[
                "run",
                "--rm",
                "--network",
                "none",
                &image.tags[0],
                "version",
            ],
            Duration::from_secs(60),
        );
        assert!(
            version.contains(env!("CARGO_PKG_VERSION")),
            "`podman run {} version` printed {version:?}",
            image.tags[0]
        );
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        for tag in &self.tags {
            let _ = podman(None, &["rmi", "--force", tag], Duration::from_secs(60));
        }
    }
}

/// Pods this test started (by name); `podman pod rm --force` on Drop.
#[derive(Default)]
struct Pods {
    names: Vec<String>,
}

impl Pods {
    /// `podman kube play FILE` inside the node's namespace, with its containers.conf.
    fn play(&mut self, node: &PodNode, file: &Path, name: &str) {
        self.names.push(name.to_string());
        let path = file.display().to_string();
        let out = podman_conf(
            &node.containers_conf(),
            Some(&node.ns),
            &["kube", "play", &path],
            Duration::from_secs(180),
        );
        assert!(
            out.status.success(),
            "podman kube play {path}: {}",
            describe_output(&out)
        );
    }

    /// Deletes the pod the way the kubelet does, then `podman kube down FILE`. podman 4.3's
    /// `kube down` neither runs preStop hooks nor waits terminationGracePeriodSeconds (it
    /// SIGKILLs after 10 s), so first: every container's preStop command (`podman exec`, all at
    /// once, as the kubelet starts them), then SIGTERM with the pod's grace period
    /// (`podman pod stop --time`). Returns the preStop outputs.
    fn down(&mut self, ns: &str, file: &Path, summary: &Value) -> String {
        let name = summary["pod"].as_str().expect("pod name").to_string();
        let hooks = summary["pre_stop"].as_object().cloned().unwrap_or_default();
        let outputs: Vec<String> = thread::scope(|s| {
            let running: Vec<_> = hooks
                .iter()
                .map(|(ctr, cmd)| {
                    let ctr = format!("{name}-{ctr}");
                    let cmd: Vec<String> = serde_json::from_value(cmd.clone()).expect("command");
                    s.spawn(move || {
                        let mut args = vec!["exec", ctr.as_str()];
                        args.extend(cmd.iter().map(String::as_str));
                        let out = podman(None, &args, Duration::from_secs(120));
                        assert!(
                            out.status.success(),
                            "preStop of {ctr}: {}",
                            describe_output(&out)
                        );
                        format!("{ctr}: {}", describe_output(&out))
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|h| h.join().expect("preStop thread"))
                .collect()
        });
        let grace = summary["grace_seconds"].as_u64().unwrap_or(30).to_string();
        podman_ok(
            None,
            &["pod", "stop", "--time", &grace, &name],
            Duration::from_secs(180),
        );
        let path = file.display().to_string();
        podman_ok(Some(ns), &["kube", "down", &path], Duration::from_secs(180));
        self.names.retain(|n| *n != name);
        outputs.join("\n")
    }

    /// What went wrong with pod `name`: its containers' states, each one's log tail, and the
    /// hosts file the main container resolves the bootstrap name with.
    fn logs(name: &str) -> String {
        let ps = podman(
            None,
            &[
                "ps",
                "-a",
                "--filter",
                &format!("pod={name}"),
                "--format",
                "{{.Names}} {{.Status}}",
            ],
            Duration::from_secs(30),
        );
        let mut text = String::from_utf8_lossy(&ps.stdout).into_owned();
        for ctr in text
            .clone()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
        {
            let out = podman(
                None,
                &["logs", "--tail", "30", ctr],
                Duration::from_secs(30),
            );
            text.push_str(&format!("--- {ctr}:\n{}\n", describe_output(&out)));
        }
        let hosts = podman(
            None,
            &[
                "exec",
                &format!("{name}-peermirror"),
                "/bin/cat",
                "/etc/hosts",
            ],
            Duration::from_secs(30),
        );
        text.push_str(&format!("--- /etc/hosts:\n{}", describe_output(&hosts)));
        text
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for name in &self.names {
            if thread::panicking() {
                eprintln!("---- pod {name} logs:\n{}", Pods::logs(name));
            }
            let _ = podman(
                None,
                &["pod", "rm", "--force", "--time", "0", name],
                Duration::from_secs(120),
            );
        }
    }
}

/// One node: its containerd (in its namespace, CRI on so its config names the hosts dir the
/// chart's `configure` writes) and the dirs the pod's hostPaths point at.
struct PodNode {
    ns: String,
    ip: String,
    ctd: Containerd,
    dir: tempfile::TempDir,
}

impl PodNode {
    fn start(net: &Net, name: &str) -> PodNode {
        let m = net.member(name).clone();
        let dir = tempfile::Builder::new()
            .prefix(&format!("pm-e2e-pod-{name}-"))
            .tempdir()
            .expect("tempdir");
        let hosts = dir.path().join("certs.d");
        fs::create_dir_all(hosts.join("upstream:5000")).expect("mkdir hosts dir");
        fs::write(hosts.join("upstream:5000/hosts.toml"), PREVIOUS_HOSTS_TOML)
            .expect("write hosts.toml");
        let ctd = Containerd::start_with(
            name,
            CtdOptions {
                cri_config_path: Some(hosts.clone()),
                netns: Some(m.ns.clone()),
                ..CtdOptions::default()
            },
        );
        fs::create_dir_all(ctd.content_dir()).expect("mkdir content dir");
        PodNode {
            ns: m.ns,
            ip: m.ip.to_string(),
            ctd,
            dir,
        }
    }

    /// podman's config for this node's pods: build-image.sh's ulimits, and as the hosts file
    /// the pods start from, one naming every node under the chart's bootstrap name (what the
    /// cluster DNS answers for the headless Service; podman ignores hostAliases under
    /// hostNetwork).
    fn write_containers_conf(&self, bootstrap_host: &str, nodes: &[&PodNode]) {
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for n in nodes {
            hosts.push_str(&format!("{} {bootstrap_host}\n", n.ip));
        }
        let hosts_file = self.dir.path().join("etc-hosts");
        fs::write(&hosts_file, hosts).expect("write hosts file");
        let base = fs::read_to_string(containers_conf()).expect("target/image/containers.conf");
        fs::write(
            self.containers_conf(),
            format!("{base}base_hosts_file = \"{}\"\n", hosts_file.display()),
        )
        .expect("write containers.conf");
    }

    fn containers_conf(&self) -> PathBuf {
        self.dir.path().join("containers.conf")
    }

    fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    fn hosts_toml(&self) -> String {
        fs::read_to_string(self.hosts_dir().join("upstream:5000/hosts.toml")).unwrap_or_default()
    }

    /// The chart values that point this node's hostPaths at its own containerd.
    fn values(&self) -> Value {
        let socket = self.ctd.socket().display().to_string();
        json!({
            "containerd": {
                "socket": socket,
                "contentDir": self.ctd.content_dir().display().to_string(),
                "configPath": self.hosts_dir().display().to_string(),
                "configFile": self.ctd.config_path().display().to_string(),
            },
            "dataDir": {"hostPath": self.dir.path().join("data").display().to_string()},
            "hostFiles": {"path": self.dir.path().join("pm-certs").display().to_string()},
        })
    }

    /// `ctr images pull` through the hosts.toml the pod wrote, by tag or by digest.
    fn pull(&self, image: &FixtureImage, by_digest: bool) -> Result<Duration, String> {
        let reference = if by_digest {
            format!("upstream:5000/{}@{}", image.repo(), image.root.digest)
        } else {
            image.reference("upstream:5000")
        };
        let start = Instant::now();
        self.ctd
            .pull_within(&reference, &self.hosts_dir(), PULL_WITHIN)
            .map(|()| start.elapsed())
    }
}

/// The chart's Python renders and converts; `target/chart-venv` is made by scripts/test.sh.
fn chart_python() -> PathBuf {
    if let Ok(p) = std::env::var("PEERMIRROR_CHART_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = target_dir().join("chart-venv/bin/python");
    assert!(
        venv.exists(),
        "{} missing: scripts/test.sh makes it (python3 -m venv target/chart-venv && \
         target/chart-venv/bin/pip install -r tests/chart/requirements.txt), or set \
         PEERMIRROR_CHART_PYTHON",
        venv.display()
    );
    venv
}

/// Renders the chart for `nodes` and writes one Pod file per node into `out`.
fn render_pods(values: Value, prefix: &str, nodes: &[(&str, &PodNode)], out: &Path) -> Value {
    let input = json!({
        "values": values,
        "pod_prefix": prefix,
        "out": out.display().to_string(),
        "nodes": nodes.iter().map(|(name, n)| json!({
            "name": name, "ip": n.ip, "values": n.values(),
        })).collect::<Vec<_>>(),
    });
    let file = out.join("input.json");
    fs::create_dir_all(out).expect("mkdir out");
    fs::write(&file, input.to_string()).expect("write input.json");
    let res = run_with_timeout(
        Command::new(chart_python())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(repo().join("tests/chart/pod_from_chart.py"))
            .arg(&file),
        Duration::from_secs(300),
    );
    assert!(
        res.status.success(),
        "pod_from_chart.py: {}",
        describe_output(&res)
    );
    serde_json::from_str(&fs::read_to_string(out.join("summary.json")).expect("summary.json"))
        .expect("summary.json is JSON")
}

/// The security context the chart renders is the restricted one, for every container.
fn assert_restricted(summary: &Value) {
    for (name, sc) in summary["container_security"]
        .as_object()
        .expect("container_security")
    {
        assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{name}: {sc}");
        assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{name}: {sc}");
        assert_eq!(sc["privileged"], json!(false), "{name}: {sc}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}: {sc}");
        assert!(sc["capabilities"].get("add").is_none(), "{name}: {sc}");
    }
}

/// What the running container got from podman: read-only root, no capability, no new privileges.
fn assert_enforced(pod: &str) {
    let ctr = format!("{pod}-peermirror");
    let caps = podman_ok(
        None,
        &[
            "exec",
            &ctr,
            "/bin/grep",
            "^Cap\\(Eff\\|Prm\\)",
            "/proc/self/status",
        ],
        Duration::from_secs(30),
    );
    for line in caps.lines() {
        assert!(
            line.ends_with("0000000000000000"),
            "{ctr} has capabilities: {caps}"
        );
    }
    let write = podman(
        None,
        &["exec", &ctr, "/bin/sh", "-c", "echo x > /probe"],
        Duration::from_secs(30),
    );
    assert!(
        !write.status.success(),
        "{ctr} could write to its root filesystem"
    );
}

fn wait_ready(node: &PodNode, summary: &Value, pod: &str, since: Instant) -> Duration {
    let path = summary["readiness"]["path"].as_str().expect("probe path");
    let port = summary["readiness"]["port"].as_u64().expect("probe port");
    let addr = format!("127.0.0.1:{port}");
    let ready = wait_until(READY_WITHIN, || {
        let ok = http_in_netns(&node.ns, "GET", &addr, path).is_some_and(|(s, _)| s == 200);
        if !ok {
            thread::sleep(Duration::from_millis(250));
        }
        ok
    });
    assert!(
        ready,
        "pod {pod} not ready within {READY_WITHIN:?}:\n{}",
        Pods::logs(pod)
    );
    since.elapsed()
}

fn pod_run(mode: &str, values: Value) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let multi = fixture("multi");
    let big = fixture("big");

    // Drop order (reverse of declaration): pods, nodes, upstream, network, image.
    let image = Image::build(mode);
    let net = Net::create(&[
        UPSTREAM_NAME.to_string(),
        "node1".to_string(),
        "node2".to_string(),
    ]);
    let mut upstream =
        Registry::start_in_netns(&net.member(UPSTREAM_NAME).ns, UPSTREAM_NAME, UPSTREAM_PORT);
    upstream.push(&multi);
    upstream.push(&big);
    let node1 = PodNode::start(&net, "node1");
    let node2 = PodNode::start(&net, "node2");
    let work = tempfile::Builder::new()
        .prefix("pm-e2e-pod-render-")
        .tempdir()
        .expect("tempdir");
    let mut pods = Pods::default();

    let tag = image.tags[0].rsplit_once(':').expect("tag").1.to_string();
    let mut values = values;
    values["hostNetwork"] = json!(true);
    values["image"] = json!({"repository": "localhost/peermirror", "tag": tag});
    values["containerd"]["registries"] = json!(["http://upstream:5000"]);
    let prefix = format!("pm{}-{mode}", std::process::id());
    let nodes = [("node1", &node1), ("node2", &node2)];
    let summary = render_pods(values.clone(), &prefix, &nodes, work.path());
    for name in ["node1", "node2"] {
        assert_restricted(&summary[name]);
        let inits = summary[name]["init_containers"].to_string();
        assert!(
            inits.contains("\"configure\""),
            "{name}: init containers {inits}"
        );
    }
    let bootstrap = summary["node1"]["bootstrap_host"]
        .as_str()
        .expect("the chart bootstraps by DNS");
    for node in [&node1, &node2] {
        node.write_containers_conf(bootstrap, &[&node1, &node2]);
    }
    let pod_name = |n: &str| summary[n]["pod"].as_str().expect("pod").to_string();
    let pod_file = |n: &str| work.path().join(format!("{n}.yaml"));

    // Both pods; each turns ready once it sees the other (/readyz needs a peer).
    let start = Instant::now();
    pods.play(&node1, &pod_file("node1"), &pod_name("node1"));
    pods.play(&node2, &pod_file("node2"), &pod_name("node2"));
    for (name, node) in nodes {
        // Both modes have TLS (the chart generates the certificates): containerd dials https.
        let wrote = wait_until(READY_WITHIN, || {
            node.hosts_toml().contains("https://127.0.0.1:5000")
                && node
                    .hosts_dir()
                    .join("upstream:5000")
                    .read_dir()
                    .is_ok_and(|d| d.count() > 1)
        });
        assert!(
            wrote,
            "{name}: the configure init container did not write hosts.toml (and its backup): {}\n{}",
            node.hosts_toml(),
            Pods::logs(&pod_name(name))
        );
    }
    let ready1 = wait_ready(&node1, &summary["node1"], &pod_name("node1"), start);
    let ready2 = wait_ready(&node2, &summary["node2"], &pod_name("node2"), start);
    assert_enforced(&pod_name("node1"));

    // Node 1 pulls through its pod (no peer has the images: the upstream serves them).
    node1.pull(&multi, false).expect("node1 pulls multi");
    node1.pull(&big, false).expect("node1 pulls big");
    // Peers resolve tags only under mTLS by default (mirror.resolveTags): in token mode a tag
    // pull with the upstream down fails by design, so node 2 pulls by digest there.
    let by_digest = mode == "token";
    upstream.stop();

    // Node 2, upstream stopped: served by node 1 through the pods. Node 1 may take a moment to
    // advertise what it just pulled, so a failed try is repeated (bounded).
    let mut pull_time = None;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        match node2.pull(&multi, by_digest) {
            Ok(t) => {
                pull_time = Some(t);
                break;
            }
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_secs(1));
    }
    let pull_time = pull_time.unwrap_or_else(|| {
        panic!(
            "node2 could not pull through the pods with the upstream stopped: {last}\n{}",
            Pods::logs(&pod_name("node2"))
        )
    });
    node2.ctd.assert_has(&multi);

    // A rolling update during a pull: node 1 sends at 40 Mbit/s, so the 52 MiB layer takes
    // ~11 s; once node 2's containerd is writing it, node 2's pod is replaced by one with a new
    // image tag (kube down: preStop restore, SIGTERM, drain; kube play: init containers again).
    in_ns(
        &net.member("node1").ns,
        "tc",
        &[
            "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "40mbit", "burst", "64kb",
            "latency", "200ms",
        ],
    );
    let next_file = work.path().join("node2-next.yaml");
    let text = fs::read_to_string(pod_file("node2")).expect("node2.yaml");
    let old_image = format!("image: {}", image.tags[0]);
    assert!(text.contains(&old_image), "node2.yaml has no {old_image}");
    fs::write(
        &next_file,
        text.replace(&old_image, &format!("image: {}", image.tags[1])),
    )
    .expect("write node2-next.yaml");
    let (big_pull, replaced) = thread::scope(|s| {
        let pulling = s.spawn(|| node2.pull(&big, by_digest));
        let writing = wait_until(Duration::from_secs(60), || {
            node2.ctd.ingest_bytes() > 1 << 20
        });
        assert!(writing, "node2's pull of big never started writing");
        let t = Instant::now();
        let hooks = pods.down(&node2.ns, &pod_file("node2"), &summary["node2"]);
        let restored = (node2.hosts_toml(), hooks);
        pods.play(&node2, &next_file, &pod_name("node2"));
        let replaced = (t.elapsed(), restored, node2.ctd.ingest_bytes());
        (pulling.join().expect("pull thread"), replaced)
    });
    let (replace_time, restored_mid_update, _) = replaced;
    big_pull.unwrap_or_else(|e| {
        panic!(
            "the pull of big failed across the rolling update of node2's pod: {e}\n{}",
            Pods::logs(&pod_name("node2"))
        )
    });
    node2.ctd.assert_has(&big);
    assert_eq!(
        restored_mid_update.0, PREVIOUS_HOSTS_TOML,
        "the preStop hook of the replaced pod did not restore the previous hosts.toml: {}",
        restored_mid_update.1
    );
    let ready_next = wait_ready(
        &node2,
        &summary["node2"],
        &pod_name("node2"),
        Instant::now(),
    );
    assert!(node2.hosts_toml().contains("127.0.0.1:5000"));
    let running = podman_ok(
        None,
        &[
            "pod",
            "inspect",
            "--format",
            "{{range .Containers}}{{.Name}} {{end}}",
            &pod_name("node2"),
        ],
        Duration::from_secs(30),
    );
    assert!(!running.is_empty());

    // Uninstall: the preStop hooks put the old hosts.toml back on both nodes.
    let hooks = [
        pods.down(&node1.ns, &pod_file("node1"), &summary["node1"]),
        pods.down(&node2.ns, &next_file, &summary["node2"]),
    ];
    for ((name, node), hooks) in nodes.iter().zip(hooks) {
        assert_eq!(
            node.hosts_toml(),
            PREVIOUS_HOSTS_TOML,
            "{name}: the preStop hooks did not restore the previous hosts.toml: {hooks}"
        );
    }

    eprintln!(
        "[e2e_pod {mode}] image {} MB; ready after kube play: node1 {:.1} s, node2 {:.1} s; \
         pull of multi (4.2 MiB) on node2 through the pods {:.2} s; pod replaced in {:.1} s \
         (ready again {:.1} s later) during the pull of big (52 MiB at 40 Mbit/s)",
        image.size / 1_000_000,
        ready1.as_secs_f64(),
        ready2.as_secs_f64(),
        pull_time.as_secs_f64(),
        replace_time.as_secs_f64(),
        ready_next.as_secs_f64(),
    );
}

#[test]
#[ignore = "needs root, podman, containerd, docker-registry and target/chart-venv"]
fn chart_pod_token_mode() {
    pod_run("token", json!({"auth": {"mode": "token"}}));
}

#[test]
#[ignore = "needs root, podman, containerd, docker-registry and target/chart-venv"]
fn chart_pod_mtls_generated_certs() {
    pod_run("mtls", json!({"auth": {"mode": "mtls"}}));
}
