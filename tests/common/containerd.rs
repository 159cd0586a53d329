//! containerd 1.6 daemons, each with its own root, state and socket in a temp dir, driven by `ctr`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::fixtures::{FixtureImage, sha256_file};
use super::process::{
    COMMAND_TIMEOUT, kill_child, log_file, new_temp_dir, output_text, run_with_timeout, tail,
    wait_until,
};

/// The containerd namespace the CRI plugin (and so kubelet) uses.
pub const NAMESPACE: &str = "k8s.io";

/// A containerd daemon with its own root, state and sockets in a temp dir.
pub struct Containerd {
    name: String,
    child: Option<Child>,
    config: PathBuf,
    socket: PathBuf,
    root: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Containerd {
    pub fn start(name: &str) -> Containerd {
        let dir = new_temp_dir(&format!("pm-e2e-ctd-{name}-"));
        let base = dir.path();
        let root = base.join("root");
        let state = base.join("state");
        // Short names: unix socket paths are limited to 108 bytes.
        let socket = base.join("c.sock");
        let config = base.join("config.toml");
        // CRI off: this is not a kubelet node, and CRI would want CNI etc.
        // The opt plugin would otherwise write to /opt/containerd.
        let toml = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             \n[grpc]\n  address = \"{sock}\"\n\
             \n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             \n[debug]\n  address = \"\"\n  level = \"info\"\n\
             \n[metrics]\n  address = \"\"\n\
             \n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = root.display(),
            state = state.display(),
            sock = socket.display(),
            opt = base.join("opt").display(),
        );
        fs::write(&config, toml).expect("write containerd config");
        let mut containerd = Containerd {
            name: name.to_string(),
            child: None,
            config,
            socket,
            root,
            log: base.join("containerd.log"),
            dir,
        };
        containerd.restart();
        containerd
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where containerd keeps blobs: `<root>/io.containerd.content.v1.content`.
    pub fn content_dir(&self) -> PathBuf {
        self.root.join("io.containerd.content.v1.content")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `ctr --address SOCK -n k8s.io ARGS...`
    pub fn ctr(&self, args: &[&str]) -> Output {
        run_with_timeout(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["--connect-timeout", "5s", "-n", NAMESPACE])
                .args(args),
            COMMAND_TIMEOUT,
        )
    }

    /// Like [`Containerd::ctr`] but panics with the output unless it succeeds.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} on {}: {}",
            self.name,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every digest a default-platform pull of `image` stores is in this containerd.
    pub fn assert_has(&self, image: &FixtureImage) {
        let have = self.content_digests();
        for digest in image.pulled_digests() {
            assert!(
                have.contains(&digest),
                "{} lacks {digest} of {}",
                self.name,
                image.name
            );
        }
    }

    /// `ctr images pull` (the ctr process itself does the HTTP fetching and
    /// honours `--hosts-dir`). Native snapshotter: unpacking needs no mounts.
    /// Returns the stderr/stdout text on failure.
    pub fn pull(
        &self,
        reference: &str,
        hosts_dir: Option<&Path>,
        plain_http: bool,
    ) -> Result<(), String> {
        let mut args = vec!["images", "pull", "--snapshotter", "native"];
        if plain_http {
            args.push("--plain-http");
        }
        let hosts = hosts_dir.map(|d| d.display().to_string());
        if let Some(dir) = &hosts {
            args.extend(["--hosts-dir", dir.as_str()]);
        }
        args.push(reference);
        let out = self.ctr(&args);
        if out.status.success() {
            Ok(())
        } else {
            Err(output_text(&out))
        }
    }

    /// `ctr images pull --hosts-dir` killed after `timeout` (a stalled pull is a failure).
    pub fn pull_within(
        &self,
        reference: &str,
        hosts_dir: &Path,
        timeout: Duration,
    ) -> Result<(), String> {
        let hosts = hosts_dir.display().to_string();
        let out = run_with_timeout(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["--connect-timeout", "5s", "-n", NAMESPACE])
                .args(["images", "pull", "--snapshotter", "native", "--hosts-dir"])
                .args([hosts.as_str(), reference]),
            timeout,
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(output_text(&out))
        }
    }

    /// Pulls, panicking on failure.
    pub fn pull_ok(&self, reference: &str, hosts_dir: Option<&Path>, plain_http: bool) {
        if let Err(e) = self.pull(reference, hosts_dir, plain_http) {
            panic!("pull {reference} on {} failed:\n{e}", self.name);
        }
    }

    /// Image names known to this containerd (`ctr images ls -q`).
    pub fn images(&self) -> BTreeSet<String> {
        self.ctr_ok(&["images", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Digests of the content store (`ctr content ls -q`).
    pub fn content_digests(&self) -> BTreeSet<String> {
        self.ctr_ok(&["content", "ls", "-q"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Checks that every blob file in the content dir hashes to its name;
    /// returns how many were checked. Panics on the first mismatch.
    pub fn verify_content_blobs(&self) -> usize {
        let dir = self.content_dir().join("blobs/sha256");
        let mut checked = 0;
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let actual = sha256_file(&path);
            assert_eq!(
                actual,
                name,
                "{}: blob {} has wrong content",
                self.name,
                path.display()
            );
            checked += 1;
        }
        checked
    }

    /// Whether the daemon answers on its socket.
    pub fn is_up(&self) -> bool {
        run_with_timeout(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["--connect-timeout", "1s", "version"]),
            Duration::from_secs(5),
        )
        .status
        .success()
    }

    /// SIGKILL by PID (a crash, not a shutdown). Dirs and sockets stay.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// (Re)starts with the same config, dirs and sockets; waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let (out, err) = log_file(&self.log);
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn containerd (run scripts/install-deps.sh)");
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(30), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "containerd {} exited early ({status}):\n{}",
                    self.name,
                    tail(&self.log, 30)
                );
            }
            self.is_up()
        });
        assert!(
            up,
            "containerd {} not ready:\n{}",
            self.name,
            tail(&self.log, 30)
        );
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- containerd {} log (last 20 lines) ---\n{}",
                self.name,
                tail(&self.log, 20)
            );
        }
    }
}

/// Writes `<dir>/<upstream>/hosts.toml` sending pulls of `upstream` to each
/// mirror in order, then to the upstream itself over plain http.
/// (The product has its own `peermirror configure`; this is for the harness.)
pub fn write_hosts_toml(dir: &Path, upstream_host_port: &str, mirrors: &[String]) -> PathBuf {
    let host_dir = dir.join(upstream_host_port);
    fs::create_dir_all(&host_dir).expect("mkdir hosts dir");
    let mut toml = format!("server = \"http://{upstream_host_port}\"\n");
    for mirror in mirrors {
        let mirror = mirror.trim_start_matches("http://").trim_end_matches('/');
        toml.push_str(&format!(
            "\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ));
    }
    let path = host_dir.join("hosts.toml");
    fs::write(&path, toml).expect("write hosts.toml");
    path
}
