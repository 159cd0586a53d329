//! The fixture images (OCI layouts built once by `tests/fixtures/build-images.sh`) and digests.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use tempfile::TempDir;

use super::process::{new_temp_dir, output_text, run_with_timeout};

/// Fixture images built by `tests/fixtures/build-images.sh`, each tagged `v1`.
pub const FIXTURE_IMAGES: [&str; 3] = ["big", "multi", "multiarch"];

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Streams a file through SHA-256 (blobs can be large).
pub fn sha256_file(path: &Path) -> String {
    sha256_file_if_exists(path).unwrap_or_else(|| panic!("open {}: not found", path.display()))
}

/// Like [`sha256_file`], `None` when the file is gone (containerd's garbage collector may
/// remove a blob between a directory listing and the open).
pub fn sha256_file_if_exists(path: &Path) -> Option<String> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("open {}: {e}", path.display()),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read blob");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(hex::encode(hasher.finalize()))
}

/// The OCI architecture name of this host (what `ctr pull` picks by default).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

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

/// Builds the ~200 MB `huge` fixture (one layer) once, into `target/e2e-fixtures-huge`, only
/// for the tests that ask for it (`build-images.sh --huge`), and returns it.
pub fn fixture_huge() -> FixtureImage {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    fixture_apart(&DIR, "huge")
}

/// Builds the ~72 MB `large` fixture (one layer, above the 64 MiB a serving node hashes before
/// answering) once, into `target/e2e-fixtures-large` (`build-images.sh --large`).
pub fn fixture_large() -> FixtureImage {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    fixture_apart(&DIR, "large")
}

/// A fixture built on its own (`build-images.sh --<name>`) into `target/e2e-fixtures-<name>`,
/// so the default build stays small.
fn fixture_apart(dir: &'static OnceLock<PathBuf>, name: &str) -> FixtureImage {
    let dir = dir.get_or_init(|| {
        let out = target_dir().join(format!("e2e-fixtures-{name}"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build-images.sh");
        let res = run_with_timeout(
            Command::new("bash")
                .arg(&script)
                .arg(format!("--{name}"))
                .arg(&out),
            Duration::from_secs(900),
        );
        assert!(
            res.status.success(),
            "{} --{name} failed:\n{}",
            script.display(),
            output_text(&res)
        );
        out
    });
    fixture_in(dir, name)
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
    fixture_in(fixtures(), name)
}

/// The fixture `name` in the layouts directory `dir`.
fn fixture_in(dir: &Path, name: &str) -> FixtureImage {
    let layout = dir.join(name);
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

/// A one-layer image made for one test run (see [`random_image`]); its layout is removed on
/// Drop.
pub struct RandomImage {
    pub image: FixtureImage,
    _dir: TempDir,
}

impl RandomImage {
    /// Bytes a pull of it stores: manifest, config and layer.
    pub fn bytes(&self) -> u64 {
        let m = self.image.host_manifest();
        m.descriptor.size + m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>()
    }

    pub fn layer(&self) -> Descriptor {
        self.image.host_manifest().layers[0].clone()
    }
}

/// An image nobody has seen: one gzip'd tar layer holding `size_mb` MiB of incompressible bytes
/// (AES-256-CTR of zeros keyed by `seed`, as `bench/lib.sh` makes them), tag `v1`, repository
/// `test/<name>`, in an OCI layout in a temp dir. Gzip, so that skopeo pushes the layer as it is.
pub fn random_image(name: &str, size_mb: u64, seed: &str) -> RandomImage {
    let dir = new_temp_dir(&format!("pm-e2e-image-{name}-"));
    let layout = dir.path().join(name);
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("mkdir layout");
    let script = format!(
        "set -eu; cd {dir}; mkdir src; \
         head -c {bytes} /dev/zero | openssl enc -aes-256-ctr -nosalt -pbkdf2 -pass pass:{seed} >src/data.bin; \
         tar -C src --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -cf layer.tar data.bin; \
         rm -rf src; sha256sum layer.tar | cut -d' ' -f1 >diff_id; gzip -1 -n layer.tar",
        dir = dir.path().display(),
        bytes = size_mb << 20,
    );
    let out = run_with_timeout(
        Command::new("bash").args(["-c", &script]),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "random layer: {}", output_text(&out));
    let diff_id = fs::read_to_string(dir.path().join("diff_id")).expect("diff_id");
    let gz = dir.path().join("layer.tar.gz");
    let layer_hex = sha256_file(&gz);
    let layer_size = fs::metadata(&gz).expect("layer").len();
    fs::rename(&gz, blobs.join(&layer_hex)).expect("move layer");
    let put = |bytes: Vec<u8>| -> (String, u64) {
        let hex = sha256_hex(&bytes);
        fs::write(blobs.join(&hex), &bytes).expect("write blob");
        (hex, bytes.len() as u64)
    };
    let config = serde_json::json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", diff_id.trim())]},
    });
    let (config_hex, config_size) = put(serde_json::to_vec(&config).expect("config json"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_hex}"),
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_hex}"),
            "size": layer_size,
        }],
    });
    let (manifest_hex, manifest_size) = put(serde_json::to_vec(&manifest).expect("manifest json"));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("index json"),
    )
    .expect("write index.json");
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    RandomImage {
        image: fixture_in(dir.path(), name),
        _dir: dir,
    }
}
