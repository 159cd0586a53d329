//! The `peermirror` binary: `run` as a guarded process, `configure`, and its metrics.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::containerd::{Containerd, NAMESPACE};
use super::http::http_get_in;
use super::process::{
    command_in, free_port, kill_child, log_file, new_temp_dir, output_text, run_with_timeout,
    send_sigterm, tail, wait_child, wait_until,
};

/// Options for starting `peermirror run`.
pub struct PeermirrorBuilder<'a> {
    containerd: &'a Containerd,
    content_dir: bool,
    extra_args: Vec<String>,
    netns: Option<(String, IpAddr)>,
}

/// Names another `peermirror` binary for `run` (a release build, for benchmarks driven by a
/// test: `bench/rollout.sh`); the one cargo built for this test otherwise.
pub const PEERMIRROR_BIN_ENV: &str = "E2E_PEERMIRROR_BIN";

/// The `peermirror` binary `run` starts, see [`PEERMIRROR_BIN_ENV`].
pub fn peermirror_bin() -> PathBuf {
    std::env::var_os(PEERMIRROR_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_peermirror")))
}

/// The ports every node uses inside its own network namespace, as with hostPorts.
pub const NETNS_REGISTRY_PORT: u16 = 5000;
pub const NETNS_ROUTER_PORT: u16 = 5001;
pub const NETNS_METRICS_PORT: u16 = 9090;

impl PeermirrorBuilder<'_> {
    /// Without `--containerd-content-dir`: blobs are read over containerd's gRPC API.
    pub fn without_content_dir(mut self) -> Self {
        self.content_dir = false;
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `--bootstrap static:/ip4/127.0.0.1/tcp/<router port of peer>` (repeatable:
    /// each call adds one more static peer).
    pub fn bootstrap(self, peer: &Peermirror) -> Self {
        let spec = peer.bootstrap_spec();
        self.args(&["--bootstrap", &spec])
    }

    /// `--mirror-resolve-timeout <timeout>` (how long a miss waits for a provider).
    pub fn resolve_timeout(self, timeout: Duration) -> Self {
        let value = format!("{}ms", timeout.as_millis());
        self.args(&["--mirror-resolve-timeout", &value])
    }

    /// Run inside network namespace `netns` whose address is `ip`: listen on 0.0.0.0 at the
    /// fixed [`NETNS_REGISTRY_PORT`], [`NETNS_ROUTER_PORT`] and [`NETNS_METRICS_PORT`], with
    /// `--advertise-addr ip` (as the Helm chart passes the node IP).
    pub fn netns(mut self, netns: &str, ip: IpAddr) -> Self {
        self.netns = Some((netns.to_string(), ip));
        self
    }

    pub fn start(self) -> Peermirror {
        let dir = new_temp_dir("pm-e2e-peermirror-");
        let (bind, ip, registry_port, metrics_port, router_port) = match &self.netns {
            Some((_, ip)) => (
                "0.0.0.0",
                *ip,
                NETNS_REGISTRY_PORT,
                NETNS_METRICS_PORT,
                NETNS_ROUTER_PORT,
            ),
            // Loopback only, and no fixed port or shared state between tests.
            None => (
                "127.0.0.1",
                IpAddr::from([127, 0, 0, 1]),
                free_port(),
                free_port(),
                free_port(),
            ),
        };
        let log = dir.path().join("peermirror.log");
        let mut cmd = Command::new(peermirror_bin());
        cmd.arg("run")
            .arg("--containerd-sock")
            .arg(self.containerd.socket())
            .args(["--containerd-namespace", NAMESPACE]);
        if self.content_dir {
            cmd.arg("--containerd-content-dir")
                .arg(self.containerd.content_dir());
        }
        cmd.args([
            "--registry-addr",
            &format!("{bind}:{registry_port}"),
            "--metrics-addr",
            &format!("{bind}:{metrics_port}"),
            "--router-addr",
            &format!("{bind}:{router_port}"),
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--log-level",
            // Our debug logs, without the HTTP/2 frame dumps of the gRPC client.
            "debug,h2=info,tower=info,hyper=info,hyper_util=info",
            "--log-format",
            "text",
        ])
        .args(&self.extra_args);
        if self.netns.is_some() {
            cmd.args(["--advertise-addr", &ip.to_string()]);
        }
        // The daemon refuses to run unauthenticated unless told to; tests that exercise auth
        // pass their own --auth-mode.
        if !self.extra_args.iter().any(|a| a == "--auth-mode") {
            cmd.args(["--auth-mode", "none", "--insecure-no-auth"]);
            // Tags through peers are off by default without mTLS; these tests pull tags
            // through peers on purpose, from one provider (the operator's opt-in to a lone
            // unauthenticated answer; e2e_hostile tests the default, which refuses it).
            if !self
                .extra_args
                .iter()
                .any(|a| a.starts_with("--resolve-tags"))
            {
                cmd.args(["--resolve-tags", "true", "--trust-unconfirmed-tags", "true"]);
            }
        }
        // Write the command line first so a failure report shows it.
        fs::write(&log, format!("[harness] {cmd:?}\n")).expect("write log");
        let mut pm = Peermirror {
            child: None,
            args: cmd.get_args().map(|a| a.to_os_string()).collect(),
            netns: self.netns.as_ref().map(|(ns, _)| ns.clone()),
            ip,
            registry_port,
            metrics_port,
            router_port,
            log,
            dir,
        };
        pm.spawn();
        pm
    }
}

/// A running `peermirror run` process.
pub struct Peermirror {
    child: Option<Child>,
    /// `run ...`: what [`Peermirror::restart`] starts again.
    args: Vec<std::ffi::OsString>,
    netns: Option<String>,
    /// The address it is reached at (127.0.0.1 unless in a namespace).
    ip: IpAddr,
    registry_port: u16,
    metrics_port: u16,
    router_port: u16,
    log: PathBuf,
    dir: TempDir,
}

impl Peermirror {
    /// Starts against `containerd` with its content dir, plus `extra_args`.
    pub fn start(containerd: &Containerd, extra_args: &[&str]) -> Peermirror {
        Peermirror::builder(containerd).args(extra_args).start()
    }

    pub fn builder(containerd: &Containerd) -> PeermirrorBuilder<'_> {
        PeermirrorBuilder {
            containerd,
            content_dir: true,
            extra_args: Vec::new(),
            netns: None,
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "peermirror already running");
        let mut cmd = command_in(self.netns.as_deref(), peermirror_bin());
        // Flags only: no PEERMIRROR_* setting leaks in from the environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PEERMIRROR_") {
                cmd.env_remove(key);
            }
        }
        let (out, err) = log_file(&self.log);
        let child = cmd
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn peermirror");
        self.child = Some(child);
    }

    /// Starts it again after [`Peermirror::kill`] (or kills it first): same flags, ports and
    /// data dir (so the same PeerId); the log goes on in the same file.
    pub fn restart(&mut self) {
        self.kill();
        fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"[harness] restart\n"))
            .expect("append to log");
        self.spawn();
    }

    /// The network namespace it runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// `GET path` on its metrics address, from inside its namespace when it has one.
    fn ops_get(&self, path: &str) -> Option<(u16, String)> {
        http_get_in(self.netns.as_deref(), &self.metrics_host(), path)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `127.0.0.1:PORT` of the registry endpoint (what hosts.toml names).
    pub fn registry_host(&self) -> String {
        format!("{}:{}", self.ip, self.registry_port)
    }

    pub fn registry_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.registry_port)
    }

    /// `127.0.0.1:PORT` of the libp2p (DHT) listener.
    pub fn router_addr(&self) -> String {
        format!("{}:{}", self.ip, self.router_port)
    }

    /// Port of the libp2p (DHT) listener.
    pub fn router_port(&self) -> u16 {
        self.router_port
    }

    /// What another node passes to `--bootstrap` to find this one.
    pub fn bootstrap_spec(&self) -> String {
        format!("static:/ip4/{}/tcp/{}", self.ip, self.router_port)
    }

    /// Port of the registry (mirror) endpoint.
    pub fn registry_port(&self) -> u16 {
        self.registry_port
    }

    /// The `/metrics` text (empty when there is no answer).
    pub fn metrics_text(&self) -> String {
        self.ops_get("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// One sample of `/metrics`, see [`metric_value`]; 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics_text(), name, labels).unwrap_or(0.0)
    }

    /// SIGKILL by PID (a crash, not a shutdown), and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn metrics_host(&self) -> String {
        format!("{}:{}", self.ip, self.metrics_port)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.metrics_port)
    }

    /// Status of `GET /readyz` on the metrics address (None: no answer).
    pub fn readyz(&self) -> Option<u16> {
        self.ops_get("/readyz").map(|(status, _)| status)
    }

    /// Waits until `/readyz` answers 200; panics with the log tail otherwise.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let ready = wait_until(timeout, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "peermirror exited before ready ({status}):\n{}",
                    self.log_tail(60)
                );
            }
            self.readyz() == Some(200)
        });
        assert!(
            ready,
            "peermirror not ready within {timeout:?} (readyz: {:?}):\n{}",
            self.ops_get("/readyz"),
            self.log_tail(60)
        );
    }

    /// Sends SIGTERM (graceful shutdown); see [`Peermirror::wait_exit`].
    pub fn sigterm(&self) {
        send_sigterm(self.pid().expect("peermirror not running"));
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("peermirror not running");
        let status = wait_child(child, timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// SIGTERM, then wait at most `timeout` for the exit status.
    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.sigterm();
        self.wait_exit(timeout)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Peermirror {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        if thread::panicking() {
            eprintln!(
                "--- peermirror log {} (last 80 lines) ---\n{}",
                self.log.display(),
                tail(&self.log, 80)
            );
        }
    }
}

/// Runs `peermirror configure ARGS...` (no PEERMIRROR_* from the environment).
pub fn peermirror_configure(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peermirror"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PEERMIRROR_") {
            cmd.env_remove(key);
        }
    }
    run_with_timeout(cmd.arg("configure").args(args), Duration::from_secs(30))
}

/// Like [`peermirror_configure`], panicking with the output unless it succeeds.
pub fn peermirror_configure_ok(args: &[&str]) -> String {
    let out = peermirror_configure(args);
    assert!(
        out.status.success(),
        "peermirror configure {args:?}: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one sample in Prometheus text format: `name` (exactly, e.g.
/// `peermirror_response_bytes_total`) whose labels include every `labels`
/// pair. Several matching samples are summed. None: no sample matched.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(inner) = rest.strip_prefix('{') {
            match inner.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // a longer metric name with this prefix
        };
        let present: Vec<(&str, &str)> = label_text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if !labels.iter().all(|want| present.contains(want)) {
            continue;
        }
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        total = Some(total.unwrap_or(0.0) + v);
    }
    total
}

/// One `target: "audit"` line of a peermirror log.
#[derive(Debug)]
pub struct Audit {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub source: String,
    pub duration_ms: f64,
    pub line: String,
}

pub fn audit_lines(log: &str) -> Vec<Audit> {
    log.lines()
        .filter(|l| l.contains(" audit:") && l.contains("duration_ms="))
        .map(|line| {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{key}=")))
                    .map(|v| v.trim_matches('"').to_string())
                    .unwrap_or_default()
            };
            Audit {
                method: field("method"),
                path: field("path"),
                status: field("status").parse().unwrap_or(0),
                source: field("source"),
                duration_ms: field("duration_ms").parse().unwrap_or(f64::MAX),
                line: line.to_string(),
            }
        })
        .collect()
}
