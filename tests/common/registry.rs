//! The upstream: docker-registry (CNCF distribution 2.8) on 127.0.0.1, filled with skopeo.

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::fixtures::{FIXTURE_IMAGES, FixtureImage, fixture};
use super::http::http_get_in;
use super::process::{
    COMMAND_TIMEOUT, command_in, free_port, kill_child, log_file, new_temp_dir, output_text,
    run_with_timeout, tail, wait_until,
};

pub fn skopeo(args: &[&str]) -> Output {
    skopeo_in(None, args)
}

/// `skopeo ARGS...`, inside network namespace `netns` when given.
pub fn skopeo_in(netns: Option<&str>, args: &[&str]) -> Output {
    run_with_timeout(command_in(netns, "skopeo").args(args), COMMAND_TIMEOUT)
}

/// `skopeo inspect --raw` over plain http; panics with skopeo's output on failure.
pub fn skopeo_inspect_raw(docker_ref: &str) -> Vec<u8> {
    let out = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{docker_ref}"),
    ]);
    assert!(
        out.status.success(),
        "skopeo inspect {docker_ref}: {}",
        output_text(&out)
    );
    out.stdout
}

/// A docker-registry on 127.0.0.1 with filesystem storage in a temp dir (or on every address
/// of a network namespace, see [`Registry::start_in_netns`]).
pub struct Registry {
    port: u16,
    /// `HOST:PORT` clients name it by.
    host: String,
    netns: Option<String>,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let port = free_port();
        Registry::start_at(
            None,
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{port}"),
            false,
        )
    }

    /// Like [`Registry::start`], with distribution's access log (combined log format, one line
    /// per request with the bytes written) in the registry's log: see [`Registry::blob_gets`].
    pub fn start_with_access_log() -> Registry {
        let port = free_port();
        Registry::start_at(
            None,
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{port}"),
            true,
        )
    }

    /// A registry listening on `0.0.0.0:port` inside network namespace `netns` (which has only
    /// its loopback and the test's own link), named `name:port` by clients (a hosts-file name).
    pub fn start_in_netns(netns: &str, name: &str, port: u16) -> Registry {
        Registry::start_at(
            Some(netns.to_string()),
            format!("0.0.0.0:{port}"),
            format!("{name}:{port}"),
            false,
        )
    }

    fn start_at(
        netns: Option<String>,
        listen: String,
        host: String,
        access_log: bool,
    ) -> Registry {
        let dir = new_temp_dir("pm-e2e-registry-");
        let port = listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("listen port");
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("mkdir storage");
        // No redis, no notifications, no proxy, no debug server: nothing
        // listens anywhere but the one loopback port, nothing reaches out.
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: {no_access_log}\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {listen}\n  secret: peermirror-e2e-secret\n\
             health:\n  storagedriver:\n    enabled: false\n",
            storage = storage.display(),
            no_access_log = !access_log
        );
        fs::write(&config, yaml).expect("write registry config");
        let log = dir.path().join("registry.log");
        let mut registry = Registry {
            port,
            host,
            netns,
            child: None,
            config,
            log,
            dir,
        };
        registry.start_again();
        registry
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` (or `NAME:PORT` in a namespace), the registry host as containerd names it.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// (Re)starts the registry on the same port with the same storage.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "registry already running");
        let (out, err) = log_file(&self.log);
        let mut cmd = command_in(self.netns.as_deref(), "docker-registry");
        // REGISTRY_* variables would override the config file.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn docker-registry (run scripts/install-deps.sh)");
        self.child = Some(child);
        // Its own loopback (inside its namespace, if any).
        let addr = format!("127.0.0.1:{}", self.port);
        let up = wait_until(Duration::from_secs(15), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "docker-registry exited early ({status}):\n{}",
                    tail(&self.log, 30)
                );
            }
            http_get_in(self.netns.as_deref(), &addr, "/v2/").map(|r| r.0) == Some(200)
        });
        assert!(up, "docker-registry not ready:\n{}", tail(&self.log, 30));
    }

    /// Stops the registry (SIGKILL by PID); storage and port are kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        if self.netns.is_some() {
            // Reaped above; its port is not reachable from here to check.
            return;
        }
        let addr = self.host();
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(&addr)
                .is_err()),
            "registry port still open after stop"
        );
    }

    /// Pushes one fixture image (`--all` for an index) as `test/<name>:v1`.
    pub fn push(&self, image: &FixtureImage) {
        let src = format!("oci:{}:v1", image.layout.display());
        let dst = format!("docker://{}", image.reference(&self.host()));
        let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
        if image.is_index() {
            args.push("--all");
        }
        args.extend([src.as_str(), dst.as_str()]);
        let out = skopeo_in(self.netns.as_deref(), &args);
        assert!(
            out.status.success(),
            "skopeo push {dst}: {}",
            output_text(&out)
        );
    }

    /// Pushes every fixture image.
    pub fn push_fixtures(&self) {
        for name in FIXTURE_IMAGES {
            self.push(&fixture(name));
        }
    }

    /// GETs of the blob `digest` in the access log ([`Registry::start_with_access_log`]):
    /// how many, and the response bytes they wrote in total.
    pub fn blob_gets(&self, digest: &str) -> (usize, u64) {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let path = format!("/blobs/{digest} ");
        text.lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&path))
            .filter_map(|l| {
                // ... "GET /v2/... HTTP/1.1" STATUS BYTES "referer" "agent"
                let after = l.split_once(" HTTP/1.1\" ")?.1;
                let mut f = after.split_whitespace();
                let _status = f.next()?;
                f.next()?.parse::<u64>().ok()
            })
            .fold((0, 0), |(n, b), bytes| (n + 1, b + bytes))
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        if thread::panicking() {
            eprintln!(
                "--- docker-registry log (last 20 lines) ---\n{}",
                tail(&self.log, 20)
            );
        }
    }
}
