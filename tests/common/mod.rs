//! End-to-end test harness: real docker-registry, real containerd, real skopeo,
//! and the `peermirror` binary, all on 127.0.0.1.
//!
//! Every process started here is owned by a guard that kills it by PID on
//! Drop (also while unwinding from a failed assertion). Every wait is bounded
//! by a deadline. Temp dirs live under `std::env::temp_dir()` and are removed
//! on Drop; only the fixture cache in `target/e2e-fixtures` is kept on purpose.
//!
//! Used by integration test files with `mod common;`; each file uses a subset.
#![allow(dead_code)]
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The containerd namespace the CRI plugin (and so kubelet) uses.
pub const NAMESPACE: &str = "k8s.io";
/// Fixture images built by `tests/fixtures/build-images.sh`, each tagged `v1`.
pub const FIXTURE_IMAGES: [&str; 3] = ["big", "multi", "multiarch"];

const POLL: Duration = Duration::from_millis(50);
/// Upper bound for one short-lived helper command (skopeo, ctr, ...).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// A TCP port that was free a moment ago on 127.0.0.1, never one this process handed out
/// before: the kernel may give a just-released port again, and two daemons of one test must
/// not be told to bind the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if given.insert(port) {
            return port;
        }
    }
    panic!("no fresh free port after 1000 tries");
}

/// Polls `f` every 50 ms until it returns true or `timeout` has passed.
/// Returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Async flavour of [`wait_until`] for conditions that need `.await`.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Streams a file through SHA-256 (blobs can be large).
pub fn sha256_file(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read blob");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Last `n` lines of a log file, for failure reports.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    match text {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Runs a command to completion with a time limit, capturing its output.
/// On timeout the process is killed and the returned status is a failure.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Drain both pipes in threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break (status, false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().expect("wait after kill"), true);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let mut stderr = err_reader.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n[harness: killed after {timeout:?}]\n").as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends SIGTERM to a PID (std only offers SIGKILL; `kill(1)` is in procps).
fn send_sigterm(pid: u32) {
    let out = run_with_timeout(
        Command::new("kill").args(["-TERM", &pid.to_string()]),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "kill -TERM {pid}: {}",
        output_text(&out)
    );
}

/// SIGKILL and reap; fine to call on an already exited child.
fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits at most `timeout` for a child to exit.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
    let clone = file.try_clone().expect("clone log fd");
    (Stdio::from(file), Stdio::from(clone))
}

fn new_temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .expect("create temp dir")
}

/// The OCI architecture name of this host (what `ctr pull` picks by default).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// The cargo target dir: the test binary lives in `<target>/<profile>/deps/`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .filter(|p| p.join("CACHEDIR.TAG").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Builds the fixture OCI layouts once per process into `target/e2e-fixtures`.
/// The script itself is cached (hash stamp) and serialises concurrent builds
/// from several test binaries with a lock file.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = target_dir().join("e2e-fixtures");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build-images.sh");
        let res = run_with_timeout(
            Command::new("bash").arg(&script).arg(&out),
            Duration::from_secs(900),
        );
        assert!(
            res.status.success(),
            "{} failed:\n{}",
            script.display(),
            output_text(&res)
        );
        out
    })
}

/// An OCI descriptor (the fields the tests care about).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn from_json(v: &serde_json::Value) -> Descriptor {
        Descriptor {
            media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
            digest: v["digest"].as_str().expect("descriptor digest").to_string(),
            size: v["size"].as_u64().expect("descriptor size"),
        }
    }

    /// Hex part of the digest (the blob's file name).
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").expect("sha256 digest")
    }
}

/// One fixture image: an OCI layout whose `v1` tag is the root descriptor.
#[derive(Clone, Debug)]
pub struct FixtureImage {
    pub name: String,
    pub layout: PathBuf,
    /// The `v1` manifest or index.
    pub root: Descriptor,
}

/// A single-platform image manifest of a fixture.
#[derive(Clone, Debug)]
pub struct FixtureManifest {
    pub descriptor: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

pub fn fixture(name: &str) -> FixtureImage {
    let layout = fixtures().join(name);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("read index.json"))
            .expect("parse index.json");
    let root = index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v1")
        .map(Descriptor::from_json)
        .unwrap_or_else(|| panic!("{name}: no v1 tag in index.json"));
    FixtureImage {
        name: name.to_string(),
        layout,
        root,
    }
}

impl FixtureImage {
    /// Repository name as pushed: `test/<name>`.
    pub fn repo(&self) -> String {
        format!("test/{}", self.name)
    }

    /// `HOST:PORT/test/<name>:v1`, also the containerd image name after a pull.
    pub fn reference(&self, registry_host: &str) -> String {
        format!("{registry_host}/test/{}:v1", self.name)
    }

    pub fn is_index(&self) -> bool {
        self.root.media_type.contains("image.index") || self.root.media_type.contains("list")
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.layout.join("blobs/sha256").join(hex)
    }

    pub fn read_blob(&self, digest: &str) -> Vec<u8> {
        let path = self.blob_path(digest);
        fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Platform manifests of an index (empty for a plain manifest), with arch.
    pub fn platforms(&self) -> Vec<(String, Descriptor)> {
        if !self.is_index() {
            return Vec::new();
        }
        let index: serde_json::Value =
            serde_json::from_slice(&self.read_blob(&self.root.digest)).expect("parse index");
        index["manifests"]
            .as_array()
            .expect("index manifests")
            .iter()
            .map(|m| {
                let arch = m["platform"]["architecture"].as_str().unwrap_or_default();
                (arch.to_string(), Descriptor::from_json(m))
            })
            .collect()
    }

    /// The image manifest for `arch` (the root itself when it is not an index).
    pub fn manifest_for(&self, arch: &str) -> FixtureManifest {
        let descriptor = if self.is_index() {
            self.platforms()
                .into_iter()
                .find(|(a, _)| a == arch)
                .map(|(_, d)| d)
                .unwrap_or_else(|| panic!("{}: no {arch} manifest", self.name))
        } else {
            self.root.clone()
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&self.read_blob(&descriptor.digest)).expect("parse manifest");
        FixtureManifest {
            descriptor,
            config: Descriptor::from_json(&manifest["config"]),
            layers: manifest["layers"]
                .as_array()
                .expect("manifest layers")
                .iter()
                .map(Descriptor::from_json)
                .collect(),
        }
    }

    /// The manifest `ctr images pull` would pick on this host.
    pub fn host_manifest(&self) -> FixtureManifest {
        self.manifest_for(host_arch())
    }

    /// Every digest a default-platform pull stores: root, (platform manifest,)
    /// config and layers.
    pub fn pulled_digests(&self) -> BTreeSet<String> {
        let m = self.host_manifest();
        let mut set = BTreeSet::from([self.root.digest.clone(), m.descriptor.digest.clone()]);
        set.insert(m.config.digest);
        set.extend(m.layers.into_iter().map(|l| l.digest));
        set
    }
}

// ---------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------

pub fn skopeo(args: &[&str]) -> Output {
    run_with_timeout(Command::new("skopeo").args(args), COMMAND_TIMEOUT)
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

// ---------------------------------------------------------------------------
// docker-registry (CNCF distribution 2.8)
// ---------------------------------------------------------------------------

/// A docker-registry on 127.0.0.1 with filesystem storage in a temp dir.
pub struct Registry {
    port: u16,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = new_temp_dir("pm-e2e-registry-");
        let port = free_port();
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("mkdir storage");
        // No redis, no notifications, no proxy, no debug server: nothing
        // listens anywhere but the one loopback port, nothing reaches out.
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: peermirror-e2e-secret\n\
             health:\n  storagedriver:\n    enabled: false\n",
            storage = storage.display()
        );
        fs::write(&config, yaml).expect("write registry config");
        let log = dir.path().join("registry.log");
        let mut registry = Registry {
            port,
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

    /// `127.0.0.1:PORT`, the registry host as containerd names it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// (Re)starts the registry on the same port with the same storage.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "registry already running");
        let (out, err) = log_file(&self.log);
        let mut cmd = Command::new("docker-registry");
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
        let addr = self.host();
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
            http_status_sync(&addr, "/v2/") == Some(200)
        });
        assert!(up, "docker-registry not ready:\n{}", tail(&self.log, 30));
    }

    /// Stops the registry (SIGKILL by PID); storage and port are kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
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
        let out = skopeo(&args);
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

// ---------------------------------------------------------------------------
// containerd 1.6
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// peermirror
// ---------------------------------------------------------------------------

/// Options for starting `peermirror run`.
pub struct PeermirrorBuilder<'a> {
    containerd: &'a Containerd,
    content_dir: bool,
    extra_args: Vec<String>,
}

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

    pub fn start(self) -> Peermirror {
        let dir = new_temp_dir("pm-e2e-peermirror-");
        let registry_port = free_port();
        let metrics_port = free_port();
        let router_port = free_port();
        let log = dir.path().join("peermirror.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peermirror"));
        // Flags only: no PEERMIRROR_* setting leaks in from the environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PEERMIRROR_") {
                cmd.env_remove(key);
            }
        }
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
            &format!("127.0.0.1:{registry_port}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            // Loopback only, and no fixed port or shared state between tests.
            "--router-addr",
            &format!("127.0.0.1:{router_port}"),
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--log-level",
            // Our debug logs, without the HTTP/2 frame dumps of the gRPC client.
            "debug,h2=info,tower=info,hyper=info,hyper_util=info",
            "--log-format",
            "text",
        ])
        .args(&self.extra_args);
        // The daemon refuses to run unauthenticated unless told to; tests that exercise auth
        // pass their own --auth-mode.
        if !self.extra_args.iter().any(|a| a == "--auth-mode") {
            cmd.args(["--auth-mode", "none", "--insecure-no-auth"]);
        }
        let (out, err) = log_file(&log);
        // Write the command line first so a failure report shows it.
        fs::write(&log, format!("[harness] {cmd:?}\n")).expect("write log");
        let child = cmd
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn peermirror");
        Peermirror {
            child: Some(child),
            registry_port,
            metrics_port,
            router_port,
            log,
            dir,
        }
    }
}

/// A running `peermirror run` process.
pub struct Peermirror {
    child: Option<Child>,
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
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `127.0.0.1:PORT` of the registry endpoint (what hosts.toml names).
    pub fn registry_host(&self) -> String {
        format!("127.0.0.1:{}", self.registry_port)
    }

    pub fn registry_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.registry_port)
    }

    /// `127.0.0.1:PORT` of the libp2p (DHT) listener.
    pub fn router_addr(&self) -> String {
        format!("127.0.0.1:{}", self.router_port)
    }

    /// Port of the libp2p (DHT) listener.
    pub fn router_port(&self) -> u16 {
        self.router_port
    }

    /// What another node passes to `--bootstrap` to find this one.
    pub fn bootstrap_spec(&self) -> String {
        format!("static:/ip4/127.0.0.1/tcp/{}", self.router_port)
    }

    /// Port of the registry (mirror) endpoint.
    pub fn registry_port(&self) -> u16 {
        self.registry_port
    }

    /// The `/metrics` text (empty when there is no answer).
    pub fn metrics_text(&self) -> String {
        http_get_sync(&self.metrics_host(), "/metrics")
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
        format!("127.0.0.1:{}", self.metrics_port)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    /// Status of `GET /readyz` on the metrics address (None: no answer).
    pub fn readyz(&self) -> Option<u16> {
        http_status_sync(&self.metrics_host(), "/readyz")
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
            http_get_sync(&self.metrics_host(), "/readyz"),
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

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A response with its body read in full.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `errors[0].code` of an OCI error body.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_string)
    }
}

/// HTTP/1.1 (as containerd speaks to a plain-http mirror), no proxy from the
/// environment, no automatic decompression, keep-alive on.
pub fn http_client() -> reqwest::Client {
    // reqwest is built with rustls but no default crypto provider; it panics
    // at build() unless one is installed, even for plain http.
    static PROVIDER: OnceLock<()> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build reqwest client")
}

/// A reusable client (warm connections) with request helpers.
#[derive(Clone)]
pub struct Http {
    pub client: reqwest::Client,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: http_client(),
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let mut req = self.client.request(method.clone(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: body: {e}"))
            .to_vec();
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.request(reqwest::Method::GET, url, headers).await
    }

    pub async fn head(&self, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.request(reqwest::Method::HEAD, url, headers).await
    }
}

/// One-off GET with a fresh client.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    Http::new().get(url, headers).await
}

/// One-off HEAD with a fresh client.
pub async fn head(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    Http::new().head(url, headers).await
}

/// Sends raw bytes on a new TCP connection and reads until the peer closes,
/// `timeout` passes, or 1 MiB arrived. For requests a normal client would
/// refuse to send (`..` segments, huge headers, half a request line).
/// An error means the connection failed or was reset before any byte came back.
pub fn raw_request(addr: &str, request: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // A server may answer and close before it read everything (e.g. 431):
    // a write error is not the end, the answer may still be readable.
    let write_result = stream.write_all(request);
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while Instant::now() < deadline && buf.len() < (1 << 20) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    if buf.is_empty() {
        write_result?;
    }
    Ok(buf)
}

/// Status code from a raw HTTP/1.x response.
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Body of a raw HTTP/1.x response (after the blank line), as text.
pub fn raw_body(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Minimal blocking `GET path`: status and body text (None: no answer).
pub fn http_get_sync(addr: &str, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = raw_request(addr, req.as_bytes(), Duration::from_secs(2)).ok()?;
    Some((raw_status(&resp)?, raw_body(&resp)))
}

/// Minimal blocking `GET path` returning only the status: readiness polling
/// from sync code, no async runtime needed.
pub fn http_status_sync(addr: &str, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = raw_request(addr, req.as_bytes(), Duration::from_secs(2)).ok()?;
    raw_status(&resp)
}

// ---------------------------------------------------------------------------
// peermirror CLI (certs, status), TLS clients, log reading
// (used by e2e_security.rs and e2e_status.rs)
// ---------------------------------------------------------------------------

/// Runs `peermirror ARGS...` (no PEERMIRROR_* from the environment).
pub fn peermirror_cli(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peermirror"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PEERMIRROR_") {
            cmd.env_remove(key);
        }
    }
    run_with_timeout(cmd.args(args), Duration::from_secs(60))
}

/// Status, stdout and stderr of a finished command, for failure reports.
pub fn describe_output(out: &Output) -> String {
    output_text(out)
}

/// A cluster CA made by the real `peermirror certs` CLI in a temp dir
/// (`init-ca` on creation; `issue`, `revoke`, `crl` on demand).
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// `peermirror certs --dir <temp> init-ca`.
    pub fn init() -> Pki {
        let pki = Pki {
            dir: new_temp_dir("pm-e2e-pki-"),
        };
        pki.certs(&["init-ca"]);
        for f in ["ca.crt", "ca.key", "crl.pem"] {
            assert!(pki.path(f).exists(), "init-ca wrote no {f}");
        }
        pki
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `peermirror certs --dir <dir> ARGS...`; panics unless it succeeds; stdout.
    pub fn certs(&self, args: &[&str]) -> String {
        let dir = self.dir.path().display().to_string();
        let mut all = vec!["certs", "--dir", dir.as_str()];
        all.extend_from_slice(args);
        let out = peermirror_cli(&all);
        assert!(
            out.status.success(),
            "peermirror {all:?}: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `certs issue --name NAME [--ip IP]...`: NAME.crt, NAME.key.
    pub fn issue(&self, name: &str, ips: &[&str]) {
        let mut args = vec!["issue", "--name", name];
        for ip in ips {
            args.extend(["--ip", ip]);
        }
        self.certs(&args);
    }

    /// `certs revoke --name NAME` (rewrites crl.pem in place).
    pub fn revoke(&self, name: &str) {
        self.certs(&["revoke", "--name", name]);
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }

    pub fn crl(&self) -> PathBuf {
        self.path("crl.pem")
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.crt"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.key"))
    }

    /// `peermirror run` arguments for mTLS with NAME's certificate as the node
    /// identity, this CA and its CRL.
    pub fn mtls_run_args(&self, name: &str) -> Vec<String> {
        let p = |p: PathBuf| p.display().to_string();
        vec![
            "--auth-mode".into(),
            "mtls".into(),
            "--tls-cert".into(),
            p(self.cert(name)),
            "--tls-key".into(),
            p(self.key(name)),
            "--tls-client-ca".into(),
            p(self.ca()),
            "--tls-crl".into(),
            p(self.crl()),
        ]
    }
}

/// A rustls client config (ring) trusting the CA in `ca` and presenting
/// `identity` (certificate, key) when given.
pub fn tls_client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in peermirror::pki::load_certs(ca).expect("load CA") {
        roots.add(c).expect("add CA root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                peermirror::pki::load_certs(cert).expect("load client cert"),
                peermirror::pki::load_key(key).expect("load client key"),
            )
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    }
}

/// Like [`Http::new`] (HTTP/1.1, no proxy, no decompression) but for https
/// URLs, trusting `ca` and presenting `identity` when given.
pub fn https_http(ca: &Path, identity: Option<(&Path, &Path)>) -> Http {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls_client_config(ca, identity))
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build https client");
    Http { client }
}

/// A log file as text without ANSI colour codes ("" when unreadable).
pub fn read_log(path: &Path) -> String {
    strip_ansi_codes(&String::from_utf8_lossy(
        &fs::read(path).unwrap_or_default(),
    ))
}

/// Removes ANSI escape sequences (`ESC [ params final`): peermirror's text
/// log is coloured even when written to a file.
pub fn strip_ansi_codes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Lines of `text` containing every one of `needles`.
pub fn lines_with<'a>(text: &'a str, needles: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// The last `n` non-empty lines of `text` (ctr prints its error at the end).
pub fn last_lines_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
