//! Nodes on hosts of their own: one network namespace per node and one for the upstream
//! registry, each with a veth pair on a bridge the test creates and one address from a private
//! /24; the same ports on every node (as with hostPorts); a hosts file per namespace naming the
//! nodes, the upstream and `peermirror` (every node: the headless Service), so bootstrap and
//! pulls go by name.
//!
//! Network rule: traffic only between the test's own namespaces. Every process (containerd,
//! peermirror, ctr, docker-registry, skopeo, curl) is started inside its namespace with
//! `ip netns exec`; the bridge and the root ends of the veths have no address, so nothing in
//! the root namespace can reach a node. Faults are made with `ip link`, `tc` (tbf, blackhole)
//! and iptables inside the namespaces. netem is not used: this kernel has no `sch_netem`.
//!
//! [`Net`] removes every process left in its namespaces (by PID), the namespaces, veths, the
//! bridge and `/etc/netns/<ns>` on Drop, also while unwinding from a failed assertion. Names
//! carry this process's id (`pm<pid>-`, `pb<pid>.`, `pv<pid>.`), and the first cluster of a
//! process sweeps leftovers with that prefix only.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::containerd::{Containerd, CtdVersion};
use super::fixtures::FixtureImage;
use super::http::http_in_netns;
use super::node::Node;
use super::peermirror::{NETNS_REGISTRY_PORT, NETNS_ROUTER_PORT, peermirror_bin};
use super::pki::Pki;
use super::process::{new_temp_dir, output_text, run_with_timeout, wait_until};
use super::registry::Registry;

/// The upstream registry's name in every hosts file, and its port.
pub const UPSTREAM_NAME: &str = "upstream";
pub const UPSTREAM_PORT: u16 = 5000;
/// The name every node's address is listed under (a headless Service).
pub const SERVICE_NAME: &str = "peermirror";

const READY_WITHIN: Duration = Duration::from_secs(45);

/// Runs `PROGRAM ARGS...` in the root namespace (iproute2, kill: never network traffic);
/// panics with its output unless it succeeds.
fn sh(program: &str, args: &[&str]) -> String {
    let out = run_with_timeout(Command::new(program).args(args), Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`sh`], ignoring failure (cleanup of what may already be gone).
fn sh_quiet(program: &str, args: &[&str]) {
    let _ = run_with_timeout(Command::new(program).args(args), Duration::from_secs(20));
}

/// `PROGRAM ARGS...` inside namespace `ns`; panics unless it succeeds.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    sh("ip", &all)
}

fn run_prefix() -> u32 {
    std::process::id()
}

/// Removes namespaces and links named with this process's prefix (left by a run of a
/// process with the same id that was itself killed before its Drop ran).
fn sweep_leftovers() {
    let pid = run_prefix();
    let ns_prefix = format!("pm{pid}-");
    let listing = sh("ip", &["netns", "list"]);
    for ns in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with(&ns_prefix) {
            eprintln!("[netns] sweeping leftover namespace {ns}");
            remove_namespace(ns);
        }
    }
    let links = sh("ip", &["-o", "link", "show"]);
    for link in links.lines().filter_map(|l| l.split(':').nth(1)) {
        let name = link.trim().split('@').next().unwrap_or_default();
        if name.starts_with(&format!("pb{pid}.")) || name.starts_with(&format!("pv{pid}.")) {
            eprintln!("[netns] sweeping leftover link {name}");
            sh_quiet("ip", &["link", "del", name]);
        }
    }
}

/// Kills every process still in `ns` (by PID: only ours run there), then deletes it and its
/// hosts dir.
fn remove_namespace(ns: &str) {
    let out = run_with_timeout(
        Command::new("ip").args(["netns", "pids", ns]),
        Duration::from_secs(10),
    );
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        sh_quiet("kill", &["-KILL", pid]);
    }
    sh_quiet("ip", &["netns", "del", ns]);
    let _ = fs::remove_dir_all(netns_etc(ns));
}

fn netns_etc(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// A private /24 `10.213.K.0` whose K appears in no root-namespace route or address.
fn pick_subnet(n: u32) -> [u8; 3] {
    let routes = sh("ip", &["-4", "route", "show", "table", "all"]) + &sh("ip", &["-4", "addr"]);
    let start = (run_prefix() + n * 7) % 150;
    (0..150)
        .map(|i| 100 + ((start + i) % 150) as u8)
        .find(|k| !routes.contains(&format!("10.213.{k}.")))
        .map(|k| [10, 213, k])
        .expect("no free 10.213.K.0/24")
}

/// One host: its namespace, the root end of its veth (on the bridge) and its address.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub ns: String,
    pub veth: String,
    pub ip: Ipv4Addr,
}

/// The bridge, namespaces and links of one cluster.
pub struct Net {
    bridge: String,
    members: Vec<Member>,
}

impl Net {
    /// A bridge and one namespace per name, each with `eth0` on the bridge, loopback up and a
    /// hosts file naming them all (the `node*` ones also as [`SERVICE_NAME`]).
    pub fn create(names: &[String]) -> Net {
        static SWEEP: Once = Once::new();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        SWEEP.call_once(sweep_leftovers);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = run_prefix();
        let subnet = pick_subnet(n);
        let mut net = Net {
            bridge: format!("pb{pid}.{n}"),
            members: Vec::new(),
        };
        sh("ip", &["link", "add", &net.bridge, "type", "bridge"]);
        disable_ipv6(&net.bridge);
        sh("ip", &["link", "set", &net.bridge, "up"]);
        for (i, name) in names.iter().enumerate() {
            let member = Member {
                name: name.clone(),
                ns: format!("pm{pid}-{n}-{name}"),
                veth: format!("pv{pid}.{n}.{i}"),
                ip: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 10 + i as u8),
            };
            // Recorded first: Drop removes it even if a step below fails.
            net.members.push(member.clone());
            let (ns, veth) = (member.ns.as_str(), member.veth.as_str());
            sh("ip", &["netns", "add", ns]);
            sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
            sh(
                "ip",
                &[
                    "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            );
            disable_ipv6(veth);
            sh("ip", &["link", "set", veth, "master", &net.bridge, "up"]);
            let cidr = format!("{}/24", member.ip);
            sh("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
            sh("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        }
        let nodes: Vec<String> = names
            .iter()
            .filter(|n| n.starts_with("node"))
            .cloned()
            .collect();
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        for m in &net.members {
            fs::create_dir_all(netns_etc(&m.ns)).expect("mkdir /etc/netns/NS");
            net.set_service(&m.name, &nodes);
        }
        net
    }

    /// Rewrites `name`'s hosts file: every member by name, and [`SERVICE_NAME`] as the members
    /// in `service`. In place (the same inode): `ip netns exec` bind-mounted this file over
    /// /etc/hosts for processes already running, and each lookup reads it again.
    pub fn set_service(&self, name: &str, service: &[&str]) {
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for m in &self.members {
            hosts.push_str(&format!("{} {}\n", m.ip, m.name));
        }
        for s in service {
            hosts.push_str(&format!("{} {SERVICE_NAME}\n", self.member(s).ip));
        }
        let path = netns_etc(&self.member(name).ns).join("hosts");
        fs::write(path, hosts).expect("write netns hosts");
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// Bytes the member has sent onto the bridge (received by the root end of its veth; read
    /// from sysfs, no traffic).
    pub fn sent_bytes(&self, name: &str) -> u64 {
        let path = format!(
            "/sys/class/net/{}/statistics/rx_bytes",
            self.member(name).veth
        );
        fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Net {
    /// Caps member `name`'s link at `mbit` Mbit/s in both directions: tbf on `eth0` inside its
    /// namespace (what it sends) and on the root end of its veth (what the bridge delivers to
    /// it, i.e. what it receives), so a node's download is capped without an ifb device.
    pub fn cap_link(&self, name: &str, mbit: u32) {
        self.cap_link_queue(name, mbit, 200);
    }

    /// [`Net::cap_link`] with tbf's queue bounded at `queue_ms` of the rate (its `latency`)
    /// instead of 200 ms: how deep a saturated link's queue gets, e.g. for the ACKs of a
    /// node's uploads that wait in its saturated download queue.
    pub fn cap_link_queue(&self, name: &str, mbit: u32, queue_ms: u32) {
        let m = self.member(name);
        let tbf = |dev: &str| -> Vec<String> {
            [
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                &format!("{mbit}mbit"),
                "burst",
                "64kb",
                "latency",
                &format!("{queue_ms}ms"),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect()
        };
        let inside = tbf("eth0");
        let inside: Vec<&str> = inside.iter().map(String::as_str).collect();
        in_ns(&m.ns, "tc", &inside);
        // The root end has no address: tc here shapes the link, it sends nothing.
        let outside = tbf(&m.veth);
        let outside: Vec<&str> = outside.iter().map(String::as_str).collect();
        sh("tc", &outside);
    }
}

fn disable_ipv6(link: &str) {
    // No address at all on the root side, not even a link-local one.
    let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "1");
}

impl Drop for Net {
    fn drop(&mut self) {
        for m in &self.members {
            remove_namespace(&m.ns);
            sh_quiet("ip", &["link", "del", &m.veth]);
        }
        sh_quiet("ip", &["link", "del", &self.bridge]);
        // Only if empty: created by the first cluster, shared with nobody else here.
        let _ = fs::remove_dir("/etc/netns");
    }
}

/// How a cluster's nodes guard their endpoints (containerd to its mirror, node to node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterAuth {
    /// `--auth-mode none --insecure-no-auth`, plain HTTP.
    None,
    /// mTLS: a CA made by `peermirror certs`, one certificate per node (its address as IP SAN),
    /// one client certificate for every containerd.
    Mtls,
    /// One static bearer token (a token file) for containerd and the peers.
    Token,
}

impl ClusterAuth {
    /// `none`, `mtls` or `token`.
    pub fn parse(s: &str) -> Result<ClusterAuth, String> {
        match s {
            "none" => Ok(ClusterAuth::None),
            "mtls" => Ok(ClusterAuth::Mtls),
            "token" => Ok(ClusterAuth::Token),
            other => Err(format!("auth {other:?} is not none, mtls or token")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClusterAuth::None => "none",
            ClusterAuth::Mtls => "mtls",
            ClusterAuth::Token => "token",
        }
    }
}

/// What [`Cluster::start_with`] varies: containerd, auth and more `peermirror run` arguments.
#[derive(Clone, Copy, Debug)]
pub struct ClusterOptions<'a> {
    pub version: CtdVersion,
    pub auth: ClusterAuth,
    pub args: &'a [&'a str],
    /// containerd's `concurrent_layer_fetch_buffer` on every node (2.1+; chunked fetch).
    pub fetch_buffer: Option<u64>,
}

impl Default for ClusterOptions<'_> {
    fn default() -> Self {
        ClusterOptions {
            version: CtdVersion::V1_6,
            auth: ClusterAuth::None,
            args: &[],
            fetch_buffer: None,
        }
    }
}

/// The secrets behind a [`ClusterAuth`] (kept until the nodes are gone).
enum Secrets {
    None,
    Mtls(Pki),
    Token(TempDir),
}

impl Secrets {
    fn token_file(dir: &TempDir) -> String {
        dir.path().join("tokens").display().to_string()
    }

    /// `peermirror run` arguments for node `name`.
    fn run_args(&self, name: &str) -> Vec<String> {
        match self {
            Secrets::None => Vec::new(),
            Secrets::Mtls(pki) => pki.mtls_run_args(name),
            Secrets::Token(dir) => vec![
                "--auth-mode".into(),
                "token".into(),
                "--token-file".into(),
                Secrets::token_file(dir),
            ],
        }
    }

    /// `peermirror configure` arguments (containerd's side of the same auth).
    fn configure_args(&self) -> Vec<String> {
        let p = |p: PathBuf| p.display().to_string();
        match self {
            Secrets::None => Vec::new(),
            Secrets::Mtls(pki) => vec![
                "--ca-file".into(),
                p(pki.ca()),
                "--client-cert".into(),
                p(pki.cert("containerd-client")),
                "--client-key".into(),
                p(pki.key("containerd-client")),
            ],
            Secrets::Token(dir) => vec!["--token-file".into(), Secrets::token_file(dir)],
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            Secrets::Mtls(_) => "https",
            _ => "http",
        }
    }
}

/// Nodes (containerd + peermirror, each in its namespace, bootstrapping by
/// `dns:peermirror:5001`) and the upstream registry (in its own namespace, with the fixtures).
/// Fields drop in order: nodes, upstream, the secrets, then the network.
pub struct Cluster {
    pub nodes: Vec<Option<Node>>,
    pub upstream: Registry,
    secrets: Secrets,
    pub net: Net,
}

impl Net {
    /// [`Net::set_service`] for `node<i>`, naming nodes by number.
    pub fn set_node_service(&self, i: usize, nodes: &[usize]) {
        let names: Vec<String> = nodes.iter().map(|j| format!("node{j}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.set_service(&format!("node{i}"), &names);
    }
}

impl Cluster {
    /// `n` nodes `node1..node<n>` with `args` added to `peermirror run`, the upstream with
    /// `images` pushed; returns once every node answers `/readyz` with 200.
    pub fn start(n: usize, args: &[&str], images: &[&FixtureImage]) -> Cluster {
        Cluster::start_with(
            n,
            &ClusterOptions {
                args,
                ..ClusterOptions::default()
            },
            images,
        )
    }

    /// Like [`Cluster::start`] on containerd `opts.version`, with `opts.auth`.
    pub fn start_with(n: usize, opts: &ClusterOptions, images: &[&FixtureImage]) -> Cluster {
        Cluster::start_with_service(n, opts, images, |_| (1..=n).collect())
    }

    /// [`Cluster::start_with`], with [`SERVICE_NAME`] naming `service(i)` on node `i` (nodes a
    /// node's DNS bootstrap does not find at first).
    pub fn start_with_service(
        n: usize,
        opts: &ClusterOptions,
        images: &[&FixtureImage],
        service: impl Fn(usize) -> Vec<usize>,
    ) -> Cluster {
        let mut names: Vec<String> = vec![UPSTREAM_NAME.to_string()];
        names.extend((1..=n).map(|i| format!("node{i}")));
        let net = Net::create(&names);
        for i in 1..=n {
            net.set_node_service(i, &service(i));
        }
        let upstream =
            Registry::start_in_netns(&net.member(UPSTREAM_NAME).ns, UPSTREAM_NAME, UPSTREAM_PORT);
        for image in images {
            upstream.push(image);
        }
        let secrets = match opts.auth {
            ClusterAuth::None => Secrets::None,
            ClusterAuth::Mtls => {
                let pki = Pki::init();
                for i in 1..=n {
                    let name = format!("node{i}");
                    pki.issue(&name, &[&net.member(&name).ip.to_string()]);
                }
                pki.issue("containerd-client", &[]);
                Secrets::Mtls(pki)
            }
            ClusterAuth::Token => {
                let dir = new_temp_dir("pm-e2e-token-");
                let token = format!("cluster-token-{}-{n}", std::process::id());
                fs::write(dir.path().join("tokens"), format!("{token}\n")).expect("token file");
                Secrets::Token(dir)
            }
        };
        let mut cluster = Cluster {
            nodes: Vec::new(),
            upstream,
            secrets,
            net,
        };
        for i in 1..=n {
            let node = cluster.spawn_node(i, opts);
            cluster.nodes.push(Some(node));
        }
        for i in 1..=n {
            cluster.wait_ready(i);
        }
        cluster
    }

    fn spawn_node(&self, i: usize, opts: &ClusterOptions) -> Node {
        let m = self.net.member(&format!("node{i}")).clone();
        let name: &'static str = Box::leak(format!("node{i}").into_boxed_str());
        let bootstrap = format!("dns:{SERVICE_NAME}:{NETNS_ROUTER_PORT}");
        let mut builder = Node::builder(name);
        if let Some(b) = opts.fetch_buffer {
            builder = builder.fetch_buffer(b);
        }
        let node = builder
            .containerd(opts.version)
            .netns(&m.ns, IpAddr::V4(m.ip))
            .args(&["--bootstrap", &bootstrap])
            .args(&self.secrets.run_args(name))
            .args(opts.args)
            .start_unready();
        node.configure(
            &self.upstream,
            &format!("{}://{}:{NETNS_REGISTRY_PORT}", self.secrets.scheme(), m.ip),
            &self.secrets.configure_args(),
        );
        node
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("node{i} is stopped"))
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i - 1]
            .as_mut()
            .unwrap_or_else(|| panic!("node{i} is stopped"))
    }

    pub fn member(&self, i: usize) -> &Member {
        self.net.member(&format!("node{i}"))
    }

    /// Bytes node `i` has sent onto the bridge, see [`Net::sent_bytes`].
    pub fn sent_bytes(&self, i: usize) -> u64 {
        self.net.sent_bytes(&self.member(i).name)
    }

    /// Waits for `/readyz` 200 on node `i` (read from inside its namespace).
    pub fn wait_ready(&mut self, i: usize) {
        self.node_mut(i).pm.wait_ready(READY_WITHIN);
    }

    /// `upstream:5000`, the registry host in image references.
    pub fn reg(&self) -> String {
        self.upstream.host()
    }

    /// Stops node `i` at once: SIGKILL to peermirror and containerd (by PID), link down.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i - 1].take() {
            node.pm.kill();
            node.ctd.kill();
        }
        self.link(i, false);
    }

    /// SIGKILL to node `i`'s peermirror by PID (no `&mut`: usable while a pull runs);
    /// [`super::peermirror::Peermirror::restart`] reaps it and starts it again.
    pub fn sigkill_peermirror(&self, i: usize) {
        self.signal_peermirror(i, "KILL");
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to node `i`'s peermirror by PID.
    pub fn signal_peermirror(&self, i: usize, signal: &str) {
        let pid = self.node(i).pm.pid().expect("peermirror running");
        // `ip netns exec` exec'd: the PID is peermirror's own, not a wrapper's.
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        // The kernel keeps the first 15 bytes of the executable's name.
        let bin = peermirror_bin();
        let name = bin.file_name().unwrap_or_default().to_string_lossy();
        let expected: String = name.chars().take(15).collect();
        assert_eq!(comm.trim(), expected, "PID {pid} is not {}", bin.display());
        sh("kill", &[&format!("-{signal}"), &pid.to_string()]);
    }

    /// The root end of node `i`'s veth up or down (`ip link set down`: a cut cable).
    pub fn link(&self, i: usize, up: bool) {
        let veth = &self.member(i).veth;
        sh("ip", &["link", "set", veth, if up { "up" } else { "down" }]);
    }

    /// Node `i` sends at most `mbit` Mbit/s (tbf on `eth0` inside its namespace).
    pub fn slow_egress(&self, i: usize, mbit: u32) {
        let rate = format!("{mbit}mbit");
        in_ns(
            &self.member(i).ns,
            "tc",
            &[
                "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "64kb",
                "latency", "200ms",
            ],
        );
    }

    /// Everything node `i` sends is dropped silently (a blackhole qdisc on `eth0` inside its
    /// namespace: what `tc netem loss 100%` does, for a kernel without netem).
    pub fn blackhole(&self, i: usize) {
        in_ns(
            &self.member(i).ns,
            "tc",
            &["qdisc", "replace", "dev", "eth0", "root", "blackhole"],
        );
    }

    /// Removes any qdisc set by [`Cluster::slow_egress`] or [`Cluster::blackhole`].
    pub fn clear_egress(&self, i: usize) {
        let _ = run_with_timeout(
            Command::new("ip").args([
                "netns",
                "exec",
                &self.member(i).ns,
                "tc",
                "qdisc",
                "del",
                "dev",
                "eth0",
                "root",
            ]),
            Duration::from_secs(10),
        );
    }

    /// Nodes in `a` and nodes in `b` can no longer reach each other (iptables DROP both ways
    /// inside every node's namespace); the upstream stays reachable from both halves.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for (mine, theirs) in [(a, b), (b, a)] {
            for &i in mine {
                let ns = &self.member(i).ns;
                for &j in theirs {
                    let ip = self.member(j).ip.to_string();
                    in_ns(ns, "iptables", &["-A", "INPUT", "-s", &ip, "-j", "DROP"]);
                    in_ns(ns, "iptables", &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"]);
                }
            }
        }
    }

    /// Undoes [`Cluster::partition`] on every running node.
    pub fn heal(&self) {
        for i in 1..=self.nodes.len() {
            let ns = &self.member(i).ns;
            in_ns(ns, "iptables", &["-F", "INPUT"]);
            in_ns(ns, "iptables", &["-F", "OUTPUT"]);
        }
    }

    /// Status of `HEAD` of `digest` on node `i`'s mirror endpoint, from inside its namespace.
    pub fn head_blob(&self, i: usize, image: &FixtureImage, digest: &str) -> Option<u16> {
        let node = self.node(i);
        let path = format!("/v2/{}/blobs/{digest}?ns={}", image.repo(), self.reg());
        http_in_netns(&self.member(i).ns, "HEAD", &node.pm.registry_host(), &path).map(|r| r.0)
    }

    /// Polls [`Cluster::head_blob`] until 200; whether it came within `timeout`.
    pub fn wait_visible(
        &self,
        i: usize,
        image: &FixtureImage,
        digest: &str,
        timeout: Duration,
    ) -> bool {
        wait_until(timeout, || {
            let seen = self.head_blob(i, image, digest) == Some(200);
            if !seen {
                thread::sleep(Duration::from_millis(200));
            }
            seen
        })
    }

    /// `ctr images pull` on node `i` through its peermirror (falling back to the upstream).
    pub fn pull(&self, i: usize, image: &FixtureImage) -> Result<(), String> {
        self.node(i).pull(image, &self.reg())
    }

    /// `ctr images pull` on node `i` straight from the upstream.
    pub fn pull_direct(&self, i: usize, image: &FixtureImage) {
        self.node(i).pull_direct(image, &self.reg());
    }

    /// Node `i`'s containerd holds every digest of `image` and every blob hashes to its name.
    pub fn assert_pulled(&self, i: usize, image: &FixtureImage) {
        let ctd: &Containerd = &self.node(i).ctd;
        ctd.assert_has(image);
        ctd.verify_content_blobs();
    }

    /// The PeerId node `i` logged when its router started (the last one, after restarts).
    pub fn peer_id(&self, i: usize) -> Option<String> {
        let log = self.node(i).log();
        log.lines()
            .rev()
            .find(|l| l.contains("router started"))
            .and_then(|l| l.split("peer_id=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    }
}
