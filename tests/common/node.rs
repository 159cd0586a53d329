//! One node of a test cluster: its own containerd, `peermirror run` on it, and a directory for
//! the hosts.toml tree `peermirror configure` writes and the admin socket.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::containerd::{Containerd, CtdOptions, CtdVersion};
use super::fixtures::FixtureImage;
use super::http::head;
use super::peermirror::{Audit, Peermirror, audit_lines, peermirror_configure_ok};
use super::process::{grep, last_lines_of, new_temp_dir, read_log, strip_ansi_codes};
use super::registry::Registry;

/// How long a node's peermirror may take to answer `/readyz` with 200.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// containerd + peermirror + the node's directory.
/// Fields drop in order: peermirror (its log is printed on failure), containerd, the directory.
pub struct Node {
    pub name: &'static str,
    pub pm: Peermirror,
    pub ctd: Containerd,
    dir: TempDir,
}

/// Options for [`Node::builder`].
pub struct NodeBuilder {
    name: &'static str,
    args: Vec<String>,
    peers: Vec<String>,
    admin_sock: bool,
    version: CtdVersion,
    cri: bool,
    cri_extra_dir: Option<PathBuf>,
    fetch_buffer: Option<u64>,
    check_config: bool,
    netns: Option<(String, IpAddr)>,
}

impl NodeBuilder {
    /// Runs containerd, peermirror and `ctr` inside network namespace `netns`, whose address is
    /// `ip` (see [`super::peermirror::PeermirrorBuilder::netns`]).
    pub fn netns(mut self, netns: &str, ip: IpAddr) -> Self {
        self.netns = Some((netns.to_string(), ip));
        self
    }

    /// More `peermirror run` arguments.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Bootstraps statically to `peer`, when given.
    pub fn bootstrap(mut self, peer: Option<&Peermirror>) -> Self {
        self.peers.extend(peer.map(Peermirror::bootstrap_spec));
        self
    }

    /// Bootstraps statically to `spec` (`static:<multiaddr>`), e.g. a test's own libp2p node.
    pub fn bootstrap_spec(mut self, spec: String) -> Self {
        self.peers.push(spec);
        self
    }

    /// `--admin-sock` at [`Node::admin_sock`] (otherwise the daemon's default, in its data dir).
    pub fn admin_sock(mut self) -> Self {
        self.admin_sock = true;
        self
    }

    /// Which containerd (1.6 unless set).
    pub fn containerd(mut self, version: CtdVersion) -> Self {
        self.version = version;
        self
    }

    /// Enable containerd's CRI plugin with [`Node::hosts_dir`] as its registry `config_path`,
    /// so [`Node::cri_pull`] goes through the hosts.toml `configure` writes there.
    pub fn cri(mut self) -> Self {
        self.cri = true;
        self
    }

    /// With [`NodeBuilder::cri`]: containerd's `config_path` becomes the colon-separated list
    /// `<hosts_dir>:<dir>` (containerd 2.2's default has this shape).
    pub fn cri_extra_dir(mut self, dir: PathBuf) -> Self {
        self.cri_extra_dir = Some(dir);
        self
    }

    /// containerd's `concurrent_layer_fetch_buffer` (2.1+; transfer service and CRI).
    pub fn fetch_buffer(mut self, bytes: u64) -> Self {
        self.fetch_buffer = Some(bytes);
        self
    }

    /// `peermirror run --containerd-config <containerd's config file>`.
    pub fn check_containerd_config(mut self) -> Self {
        self.check_config = true;
        self
    }

    /// Starts containerd and peermirror and waits for `/readyz`.
    pub fn start(self) -> Node {
        let mut node = self.start_unready();
        node.pm.wait_ready(READY_WITHIN);
        node
    }

    /// Starts containerd and peermirror without waiting for `/readyz` (nodes that bootstrap
    /// from each other by DNS are ready only once a peer is up: start them all, then wait).
    pub fn start_unready(self) -> Node {
        let dir = new_temp_dir(&format!("pm-e2e-node-{}-", self.name));
        let ctd = Containerd::start_with(
            self.name,
            CtdOptions {
                version: self.version,
                cri_config_path: self.cri.then(|| {
                    let hosts = dir.path().join("hosts");
                    match &self.cri_extra_dir {
                        // A PathBuf holds any string: containerd splits it on ':'.
                        Some(extra) => {
                            PathBuf::from(format!("{}:{}", hosts.display(), extra.display()))
                        }
                        None => hosts,
                    }
                }),
                fetch_buffer: self.fetch_buffer,
                netns: self.netns.as_ref().map(|(ns, _)| ns.clone()),
            },
        );
        let mut args = self.args;
        if self.check_config {
            args.push("--containerd-config".into());
            args.push(ctd.config_path().display().to_string());
        }
        if self.admin_sock {
            args.push("--admin-sock".into());
            args.push(dir.path().join("admin.sock").display().to_string());
        }
        for spec in &self.peers {
            args.push("--bootstrap".into());
            args.push(spec.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut builder = Peermirror::builder(&ctd).args(&args);
        if let Some((ns, ip)) = &self.netns {
            builder = builder.netns(ns, *ip);
        }
        let pm = builder.start();
        Node {
            name: self.name,
            pm,
            ctd,
            dir,
        }
    }
}

impl Node {
    pub fn builder(name: &'static str) -> NodeBuilder {
        NodeBuilder {
            name,
            args: Vec::new(),
            peers: Vec::new(),
            admin_sock: false,
            version: CtdVersion::V1_6,
            cri: false,
            cri_extra_dir: None,
            fetch_buffer: None,
            check_config: false,
            netns: None,
        }
    }

    /// A node with the harness's default flags, bootstrapping to `peer` if given.
    pub fn start(name: &'static str, peer: Option<&Peermirror>) -> Node {
        Node::builder(name).bootstrap(peer).start()
    }

    /// Runs `peermirror configure` for `registry` with the mirror `mirror` and `extra` arguments,
    /// writing into [`Node::hosts_dir`]; panics unless it wrote the registry's hosts.toml.
    pub fn configure<S: AsRef<str>>(&self, registry: &Registry, mirror: &str, extra: &[S]) {
        let config_path = self.hosts_dir().display().to_string();
        let reg_url = registry.url();
        let mut args: Vec<&str> = vec![
            "--config-path",
            &config_path,
            "--mirror",
            mirror,
            "--registry",
            &reg_url,
        ];
        args.extend(extra.iter().map(AsRef::as_ref));
        peermirror_configure_ok(&args);
        let toml = self.hosts_toml(registry);
        assert!(
            toml.exists(),
            "{}: configure wrote no {}",
            self.name,
            toml.display()
        );
    }

    /// Like [`Node::configure`] for an upstream given by URL (a proxy in front of the registry,
    /// say); panics unless `configure` succeeds.
    pub fn configure_upstream(&self, upstream_url: &str, mirror: &str) {
        let config_path = self.hosts_dir().display().to_string();
        peermirror_configure_ok(&[
            "--config-path",
            &config_path,
            "--mirror",
            mirror,
            "--registry",
            upstream_url,
        ]);
    }

    /// containerd's `config_path` for this node (`ctr --hosts-dir`).
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    pub fn hosts_toml(&self, registry: &Registry) -> PathBuf {
        self.hosts_dir().join(registry.host()).join("hosts.toml")
    }

    /// Where [`NodeBuilder::admin_sock`] puts the admin socket.
    pub fn admin_sock(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// `ctr images pull --hosts-dir` through this node's peermirror.
    pub fn pull(&self, image: &FixtureImage, registry_host: &str) -> Result<(), String> {
        self.ctd.pull(
            &image.reference(registry_host),
            Some(&self.hosts_dir()),
            false,
        )
    }

    /// Like [`Node::pull`], panicking with peermirror's log on failure; how long it took.
    pub fn pull_ok(&self, image: &FixtureImage, registry_host: &str) -> Duration {
        let started = Instant::now();
        if let Err(e) = self.pull(image, registry_host) {
            panic!(
                "{}: pull of {} through peermirror failed:\n{}\n--- {} peermirror log ---\n{}",
                self.name,
                image.reference(registry_host),
                last_lines_of(&strip_ansi_codes(&e), 6),
                self.name,
                self.pm.log_tail(60)
            );
        }
        started.elapsed()
    }

    /// CRI `PullImage`, as the kubelet pulls: the containerd daemon fetches through the
    /// hosts.toml in [`Node::hosts_dir`] (needs [`NodeBuilder::cri`]). Returns the image ref.
    pub async fn cri_pull(
        &self,
        image: &FixtureImage,
        registry_host: &str,
    ) -> Result<String, String> {
        let reference = image.reference(registry_host);
        let mut cri = peermirror::cri::Cri::connect(self.ctd.socket(), Duration::from_secs(120))
            .await
            .map_err(|e| e.to_string())?;
        cri.pull(&reference).await.map_err(|e| format!("{e:#}"))
    }

    /// Straight from the upstream, bypassing every mirror.
    pub fn pull_direct(&self, image: &FixtureImage, registry_host: &str) {
        self.ctd
            .pull_ok(&image.reference(registry_host), None, true);
    }

    /// `<peermirror>/v2/test/<name>/blobs/<digest>?ns=<registry>`.
    pub fn blob_url(&self, image: &FixtureImage, digest: &str, registry_host: &str) -> String {
        format!(
            "{}/v2/{}/blobs/{digest}?ns={registry_host}",
            self.pm.registry_url(),
            image.repo()
        )
    }

    /// `peermirror_response_bytes_total{source}`.
    pub fn bytes_from(&self, source: &str) -> f64 {
        self.pm
            .metric("peermirror_response_bytes_total", &[("source", source)])
    }

    /// peermirror's log without colour codes.
    pub fn log(&self) -> String {
        read_log(self.pm.log_path())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `asker` pulled `image` (one layer above the 64 MiB a serving node hashes before answering)
/// whose only source was `provider`'s damaged copy (same length; the upstream stopped), so wrong
/// bytes did stream toward its containerd: the pull failed; nothing wrong is in the asker's
/// store and the layer not at all; the asker's first 200 for the layer was cut short (audit
/// `complete=false`); the provider noticed its own damage (it hashes what it streams); and the
/// asker no longer offers the layer.
pub async fn assert_damaged_copy_aborted(
    label: &str,
    provider: &Node,
    asker: &Node,
    image: &FixtureImage,
    reg: &str,
    result: Result<(), String>,
    took: Duration,
) {
    let layer = image.host_manifest().layers[0].clone();
    let checked = asker.ctd.verify_content_blobs();
    let log = asker.log();
    let mismatches = asker.pm.metric("peermirror_digest_mismatches_total", &[]);
    let at_source = provider
        .pm
        .metric("peermirror_local_corruptions_total", &[]);
    let layer_gets: Vec<Audit> = audit_lines(&log)
        .into_iter()
        .filter(|a| a.method == "GET" && a.path.contains(layer.hex()))
        .collect();
    eprintln!(
        "[{label}] {} pull {} in {:.1}s; mismatches on it {mismatches}, caught at {} \
         {at_source}; {checked} blobs verified; its layer GETs:\n{}\n[{label}] {}",
        asker.name,
        if result.is_ok() { "ok" } else { "FAILED" },
        took.as_secs_f64(),
        provider.name,
        layer_gets
            .iter()
            .map(|a| a.line.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        grep(&log, &["mismatch", "shunned", "stream broke"], 6)
    );
    assert!(
        result.is_err(),
        "[{label}] {}'s pull succeeded although the only copy of the layer is damaged and \
         the upstream is down: wrong bytes were committed?",
        asker.name
    );
    assert!(
        !asker.ctd.content_digests().contains(&layer.digest),
        "[{label}] {}'s store has the layer although its only source was damaged",
        asker.name
    );
    // The first answer streamed (a 200 whose body started), and was cut short.
    let streamed = layer_gets
        .iter()
        .find(|a| a.status == 200)
        .unwrap_or_else(|| {
            panic!(
                "[{label}] {} never answered the layer with a 200 (the damaged copy was not \
                 streamed):\n{}",
                asker.name,
                grep(&log, &[layer.hex()], 10)
            )
        });
    assert!(
        streamed.line.contains("complete=false"),
        "[{label}] {}'s answer for the layer completed although its bytes were wrong:\n{}",
        asker.name,
        streamed.line
    );
    assert!(
        at_source >= 1.0,
        "[{label}] {} streamed its damaged copy without noticing (its local corruptions \
         {at_source}, the asker's mismatches {mismatches})",
        provider.name
    );
    // The damaged copy is no longer offered: the asker answers the layer 404 at once.
    let r = head(&asker.blob_url(image, &layer.digest, reg), &[]).await;
    assert_eq!(
        r.status, 404,
        "[{label}] {} still offers the layer from its only, damaged provider",
        asker.name
    );
}
