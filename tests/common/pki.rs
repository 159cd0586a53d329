//! A cluster CA made with the real `peermirror certs` CLI.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::process::{new_temp_dir, output_text, peermirror_cli};

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
