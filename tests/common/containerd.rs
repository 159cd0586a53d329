//! containerd daemons (1.6 from the system, 1.7 and 2.1 from `scripts/fetch-containerd.sh`), each
//! with its own root, state and socket in a temp dir, driven by the `ctr` of the same version.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::fixtures::{FixtureImage, sha256_file, sha256_file_if_exists};
use super::process::{
    COMMAND_TIMEOUT, command_in, kill_child, log_file, new_temp_dir, output_text, run_with_timeout,
    tail, wait_until,
};

/// The containerd namespace the CRI plugin (and so kubelet) uses.
pub const NAMESPACE: &str = "k8s.io";

/// Which containerd: 1.6 is the system's (Debian bookworm), 1.7 and 2.1 are Debian trixie's and
/// sid's packages extracted into `target/containerd/<series>/` by `scripts/fetch-containerd.sh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtdVersion {
    V1_6,
    V1_7,
    V2_1,
}

/// Comma-separated series the matrix tests run on (`1.6,1.7,2.1` when unset).
pub const VERSIONS_ENV: &str = "PEERMIRROR_CONTAINERD_VERSIONS";

impl CtdVersion {
    pub const ALL: [CtdVersion; 3] = [CtdVersion::V1_6, CtdVersion::V1_7, CtdVersion::V2_1];

    pub fn series(self) -> &'static str {
        match self {
            CtdVersion::V1_6 => "1.6",
            CtdVersion::V1_7 => "1.7",
            CtdVersion::V2_1 => "2.1",
        }
    }

    /// 2.x reads config `version = 3` and pulls through the transfer service.
    pub fn is_v2(self) -> bool {
        self == CtdVersion::V2_1
    }

    /// Where this version's binaries are: `None` for the system's (on PATH).
    fn bin_dir(self) -> Option<PathBuf> {
        match self {
            CtdVersion::V1_6 => None,
            v => Some(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/containerd")
                    .join(v.series())
                    .join("usr/bin"),
            ),
        }
    }

    fn binary(self, name: &str) -> PathBuf {
        match self.bin_dir() {
            None => PathBuf::from(name),
            Some(dir) => {
                let path = dir.join(name);
                assert!(
                    path.exists(),
                    "{} missing: run `bash scripts/fetch-containerd.sh {}` (or leave {} out of {VERSIONS_ENV})",
                    path.display(),
                    self.series(),
                    self.series()
                );
                path
            }
        }
    }

    pub fn containerd_bin(self) -> PathBuf {
        self.binary("containerd")
    }

    pub fn ctr_bin(self) -> PathBuf {
        self.binary("ctr")
    }

    /// The versions a [`VERSIONS_ENV`] value names, in its order; an error for any name that is
    /// not a known series (a typo must not quietly select nothing).
    pub fn parse_list(list: &str) -> Result<Vec<CtdVersion>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                CtdVersion::ALL
                    .into_iter()
                    .find(|c| c.series() == v)
                    .ok_or_else(|| {
                        format!(
                            "{VERSIONS_ENV} names {v:?}, which is not one of {:?}",
                            CtdVersion::ALL.map(CtdVersion::series)
                        )
                    })
            })
            .collect()
    }

    /// The versions [`VERSIONS_ENV`] selects (all when unset or empty); panics on an unknown name.
    pub fn selection() -> Vec<CtdVersion> {
        match std::env::var(VERSIONS_ENV) {
            Ok(list) if !list.trim().is_empty() => {
                CtdVersion::parse_list(&list).unwrap_or_else(|e| panic!("{e}"))
            }
            _ => CtdVersion::ALL.to_vec(),
        }
    }

    /// Whether [`VERSIONS_ENV`] selects this version (all when unset or empty).
    pub fn selected(self) -> bool {
        CtdVersion::selection().contains(&self)
    }

    /// For the first line of a matrix test: false (with a note) when the selection leaves it out.
    /// The note goes to the real stderr, past the test harness's capture, so a run that skipped
    /// a version says so in its output even though the test is reported as passed.
    pub fn should_run(self) -> bool {
        let run = self.selected();
        if !run {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "[matrix] SKIPPED: containerd {} is not in {VERSIONS_ENV}",
                self.series()
            );
        }
        run
    }

    /// What is wrong with this version's binaries, if anything: each must exist and
    /// `containerd --version` must report this series.
    pub fn check_binaries(self) -> Result<(), String> {
        if let Some(dir) = self.bin_dir() {
            for name in ["containerd", "ctr", "containerd-shim-runc-v2"] {
                let path = dir.join(name);
                if !path.exists() {
                    return Err(format!(
                        "{} missing: run `bash scripts/fetch-containerd.sh {}` (or leave {} out \
                         of {VERSIONS_ENV})",
                        path.display(),
                        self.series(),
                        self.series()
                    ));
                }
            }
        }
        let bin = match self.bin_dir() {
            None => PathBuf::from("containerd"),
            Some(dir) => dir.join("containerd"),
        };
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let want = format!(" {}.", self.series());
        let want_v = format!(" v{}.", self.series());
        if !out.status.success() || !(text.contains(&want) || text.contains(&want_v)) {
            return Err(format!(
                "{} --version does not report containerd {}: {}",
                bin.display(),
                self.series(),
                text.trim()
            ));
        }
        Ok(())
    }
}

/// How to start a [`Containerd`].
#[derive(Clone, Debug)]
pub struct CtdOptions {
    pub version: CtdVersion,
    /// Enable the CRI plugin with this registry `config_path` (hosts.toml tree).
    pub cri_config_path: Option<PathBuf>,
    /// `concurrent_layer_fetch_buffer` (2.1+: the transfer service's and CRI's parallel chunked
    /// fetch, ranged requests of this many bytes); `None` leaves it off.
    pub fetch_buffer: Option<u64>,
    /// Run containerd and every `ctr` (which fetches itself) inside this network namespace.
    pub netns: Option<String>,
}

impl Default for CtdOptions {
    fn default() -> Self {
        CtdOptions {
            version: CtdVersion::V1_6,
            cri_config_path: None,
            fetch_buffer: None,
            netns: None,
        }
    }
}

/// The config file for `opts`: `version = 2` for 1.x, `version = 3` for 2.x. CRI is disabled
/// unless asked for (it wants CNI and a runtime); with CRI on, image pulls need only the images
/// side: the native snapshotter (no mounts) and the registry `config_path`. CNI points at empty
/// dirs of our own, so nothing on the host is read.
fn config_toml(base: &Path, socket: &Path, opts: &CtdOptions) -> String {
    let mut toml = format!(
        "version = {}\n\
         root = \"{root}\"\n\
         state = \"{state}\"\n",
        if opts.version.is_v2() { 3 } else { 2 },
        root = base.join("root").display(),
        state = base.join("state").display(),
    );
    let cni_bin = base.join("cni/bin");
    let cni_conf = base.join("cni/conf");
    match (&opts.cri_config_path, opts.version.is_v2()) {
        (None, false) => toml.push_str("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"),
        (None, true) => toml.push_str(
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.runtime\"]\n",
        ),
        (Some(_), _) => {}
    }
    toml.push_str(&format!(
        "\n[grpc]\n  address = \"{sock}\"\n\
         \n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
         \n[debug]\n  address = \"\"\n  level = \"info\"\n\
         \n[metrics]\n  address = \"\"\n\
         \n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
        sock = socket.display(),
        opt = base.join("opt").display(),
    ));
    if opts.version.is_v2() {
        // 2.x pulls (ctr and CRI) go through the transfer service, which unpacks only for the
        // platform/snapshotter pairs listed here (overlayfs by default).
        toml.push_str(&format!(
            "\n[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  platform = \"linux/{}\"\n  snapshotter = \"native\"\n",
            super::fixtures::host_arch()
        ));
        if let Some(b) = opts.fetch_buffer {
            toml.push_str(&format!(
                "\n[plugins.\"io.containerd.transfer.v1.local\"]\n  concurrent_layer_fetch_buffer = {b}\n"
            ));
        }
    }
    if let Some(config_path) = &opts.cri_config_path {
        let _ = fs::create_dir_all(&cni_bin);
        let _ = fs::create_dir_all(&cni_conf);
        let (cp, cb, cc) = (config_path.display(), cni_bin.display(), cni_conf.display());
        if opts.version.is_v2() {
            toml.push_str(&format!(
                "\n[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n{fb}\
                 \n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"{cp}\"\n\
                 \n[plugins.\"io.containerd.cri.v1.runtime\".cni]\n  bin_dirs = [\"{cb}\"]\n  conf_dir = \"{cc}\"\n",
                fb = opts
                    .fetch_buffer
                    .map(|b| format!("  concurrent_layer_fetch_buffer = {b}\n"))
                    .unwrap_or_default(),
            ));
        } else {
            toml.push_str(&format!(
                "\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n\
                 \n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"native\"\n\
                 \n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{cp}\"\n\
                 \n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{cb}\"\n  conf_dir = \"{cc}\"\n"
            ));
        }
    }
    toml
}

/// A containerd daemon with its own root, state and sockets in a temp dir.
pub struct Containerd {
    name: String,
    version: CtdVersion,
    netns: Option<String>,
    child: Option<Child>,
    config: PathBuf,
    socket: PathBuf,
    root: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Containerd {
    /// Bytes of the largest blob this containerd is still writing (`ingest/*/data`): a pull
    /// in progress.
    pub fn ingest_bytes(&self) -> u64 {
        let Ok(dirs) = std::fs::read_dir(self.content_dir().join("ingest")) else {
            return 0;
        };
        dirs.filter_map(|d| std::fs::metadata(d.ok()?.path().join("data")).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    }

    /// containerd 1.6 (the system's), CRI off.
    pub fn start(name: &str) -> Containerd {
        Containerd::start_with(name, CtdOptions::default())
    }

    pub fn start_with(name: &str, opts: CtdOptions) -> Containerd {
        let dir = new_temp_dir(&format!("pm-e2e-ctd-{name}-"));
        let base = dir.path();
        let root = base.join("root");
        // Short names: unix socket paths are limited to 108 bytes.
        let socket = base.join("c.sock");
        let config = base.join("config.toml");
        // The opt plugin would otherwise write to /opt/containerd.
        fs::write(&config, config_toml(base, &socket, &opts)).expect("write containerd config");
        let mut containerd = Containerd {
            name: name.to_string(),
            version: opts.version,
            netns: opts.netns.clone(),
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

    pub fn version(&self) -> CtdVersion {
        self.version
    }

    /// The config file it was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
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

    /// `ctr --address SOCK` of this version, inside [`CtdOptions::netns`] when set.
    fn ctr_command(&self) -> Command {
        let mut cmd = command_in(self.netns.as_deref(), self.version.ctr_bin());
        cmd.arg("--address").arg(&self.socket);
        cmd
    }

    /// `ctr --address SOCK -n k8s.io ARGS...`
    pub fn ctr(&self, args: &[&str]) -> Output {
        run_with_timeout(
            self.ctr_command()
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
        self.ctr_within(
            &[
                "images",
                "pull",
                "--snapshotter",
                "native",
                "--hosts-dir",
                &hosts,
                reference,
            ],
            timeout,
        )
    }

    /// `ctr content fetch --hosts-dir` (every blob of the default platform into the content
    /// store, digests checked by containerd on commit, no unpack), killed after `timeout`.
    pub fn fetch_within(
        &self,
        reference: &str,
        hosts_dir: &Path,
        timeout: Duration,
    ) -> Result<(), String> {
        let hosts = hosts_dir.display().to_string();
        self.ctr_within(
            &["content", "fetch", "--hosts-dir", &hosts, reference],
            timeout,
        )
    }

    /// `ctr -n k8s.io ARGS...` killed after `timeout`; its output on failure.
    fn ctr_within(&self, args: &[&str], timeout: Duration) -> Result<(), String> {
        let out = run_with_timeout(
            self.ctr_command()
                .args(["--connect-timeout", "5s", "-n", NAMESPACE])
                .args(args),
            timeout,
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(output_text(&out))
        }
    }

    /// Whether the content store holds blob `hex` and it hashes to its name.
    pub fn has_verified_blob(&self, hex: &str) -> bool {
        let path = self.content_dir().join("blobs/sha256").join(hex);
        sha256_file_if_exists(&path).as_deref() == Some(hex)
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
            // A blob the garbage collector removed after the listing is no longer stored.
            let Some(actual) = sha256_file_if_exists(&path) else {
                continue;
            };
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

    /// Flips `len` bytes in the middle of the stored blob `hex`, keeping its length (a provider
    /// whose disk went bad). Returns the blob's path.
    pub fn corrupt_blob(&self, hex: &str, len: usize) -> PathBuf {
        use std::io::{Read, Seek, SeekFrom, Write};
        let path = self.content_dir().join("blobs/sha256").join(hex);
        let size = fs::metadata(&path).unwrap().len();
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()));
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(size / 2)).unwrap();
        f.read_exact(&mut buf).unwrap();
        buf.iter_mut().for_each(|b| *b ^= 0xff);
        f.seek(SeekFrom::Start(size / 2)).unwrap();
        f.write_all(&buf).unwrap();
        f.sync_all().unwrap();
        assert_ne!(sha256_file(&path), hex, "corruption did not take");
        path
    }

    /// Whether the daemon answers on its socket.
    pub fn is_up(&self) -> bool {
        run_with_timeout(
            self.ctr_command()
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
        let child = command_in(self.netns.as_deref(), self.version.containerd_bin())
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
