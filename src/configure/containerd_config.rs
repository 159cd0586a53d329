//! Reads containerd's own config file for the registry `config_path` in force, and says when it
//! would make containerd ignore the hosts.toml files peermirror writes.
//!
//! containerd 1.x reads config `version = 2` (`[plugins."io.containerd.grpc.v1.cri".registry]`;
//! a file without `version` is version 1, `[plugins.cri.registry]`); 2.x reads `version = 3`
//! (`[plugins."io.containerd.cri.v1.images".registry]`). containerd 2.2+ defaults `config_path` to
//! `/etc/containerd/certs.d:/etc/docker/certs.d`, and its transfer-service path (every pull, CRI
//! too, unless `use_local_image_pull = true`) treats that string as ONE directory: every mirror
//! is silently ignored (containerd issue 12636). 2.1.9 does the same with a list of its own (the
//! e2e matrix measures it), so any 2.x config with a list is warned about.

use std::io;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::ConfigureError;

/// What containerd 2.2+ uses when its config names no `config_path`.
pub const V3_DEFAULT_CONFIG_PATH: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";

/// The registry settings found in a containerd config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdConfig {
    /// The file read.
    pub file: PathBuf,
    /// The config's `version` (1 when absent).
    pub version: i64,
    /// `config_path` as written, or containerd's default for the config version when absent
    /// (`None`: 1.x without one, where CRI does not read hosts.toml at all).
    pub config_path: Option<String>,
    /// The file names no `config_path`.
    pub defaulted: bool,
    /// `use_local_image_pull = true` under the CRI images plugin (2.x).
    pub use_local_image_pull: bool,
}

impl ContainerdConfig {
    /// Reads and parses `file`. A file that does not exist is not an error (containerd then
    /// runs on its built-in defaults), but a warning: see [`check`].
    pub fn read(file: &Path) -> Result<Option<Self>, ConfigureError> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ConfigureError::ContainerdConfigUnreadable {
                    path: file.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(file, &text).map(Some)
    }

    /// Parses the text of `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigureError> {
        let invalid = |problem: String| ConfigureError::ContainerdConfigInvalid {
            path: file.to_path_buf(),
            problem,
        };
        let doc: Table = text.parse().map_err(|e: toml::de::Error| {
            invalid(e.message().trim().to_string() + &line_of(text, e.span()))
        })?;
        let version = match doc.get("version") {
            None => 1,
            Some(Value::Integer(v)) if (1..=3).contains(v) => *v,
            Some(v) => return Err(invalid(format!("`version = {v}` is not 1, 2 or 3"))),
        };
        let (plugin, registry) = match version {
            1 => ("cri", &["cri", "registry"][..]),
            2 => (
                "io.containerd.grpc.v1.cri",
                &["io.containerd.grpc.v1.cri", "registry"][..],
            ),
            _ => (
                "io.containerd.cri.v1.images",
                &["io.containerd.cri.v1.images", "registry"][..],
            ),
        };
        let plugins = doc.get("plugins").and_then(Value::as_table);
        let registry_table = plugins.and_then(|p| dig(p, registry));
        let written = match registry_table.and_then(|r| r.get("config_path")) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(invalid(format!(
                    "[plugins.\"{plugin}\".registry] config_path is not a string"
                )));
            }
        };
        let use_local_image_pull = version == 3
            && plugins
                .and_then(|p| dig(p, &[plugin]))
                .and_then(|t| t.get("use_local_image_pull"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let defaulted = written.as_deref().is_none_or(str::is_empty);
        let config_path = match (written, version) {
            (Some(s), _) if !s.is_empty() => Some(s),
            (_, 3) => Some(V3_DEFAULT_CONFIG_PATH.to_string()),
            _ => None,
        };
        Ok(ContainerdConfig {
            file: file.to_path_buf(),
            version,
            config_path,
            defaulted,
            use_local_image_pull,
        })
    }

    /// The directories of `config_path`, in order (containerd splits it on `:`).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.config_path
            .as_deref()
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    /// The directory hosts.toml files belong in: the first of the list.
    pub fn first_dir(&self) -> Option<PathBuf> {
        self.dirs().into_iter().next()
    }
}

fn dig<'a>(table: &'a Table, keys: &[&str]) -> Option<&'a Table> {
    keys.iter()
        .try_fold(table, |t, k| t.get(*k).and_then(Value::as_table))
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text.get(..s.start).map_or(0, |t| t.matches('\n').count()) + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

/// What is wrong with how containerd (configured by `config`, or on its defaults when `None`
/// for a file at `file`) would find the hosts.toml files written into `target` (given
/// explicitly by the user, or `None` when taken from the config). Each entry is one warning,
/// in plain words with the fix.
pub fn check(file: &Path, config: Option<&ContainerdConfig>, target: Option<&Path>) -> Vec<String> {
    let Some(c) = config else {
        return vec![format!(
            "containerd config {} does not exist, so containerd runs on its built-in defaults: \
             containerd 1.x then has no registry config_path (CRI pulls, the kubelet's, ignore \
             hosts.toml and bypass the mirror), and containerd 2.2+ uses config_path = \"{V3_DEFAULT_CONFIG_PATH}\", \
             which its transfer service reads as ONE directory, so every mirror is silently ignored \
             (containerd issue 12636). Fix: write the config with a single-directory config_path \
             (see the README), or pass the file containerd really reads",
            file.display()
        )];
    };
    let mut out = Vec::new();
    let dirs = c.dirs();
    if c.version < 3 && dirs.is_empty() {
        let table = if c.version == 2 {
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]"
        } else {
            "[plugins.cri.registry]"
        };
        out.push(format!(
            "{} sets no registry config_path (under {table}): containerd's CRI plugin (the \
             kubelet's pulls) does not read hosts.toml files, so those pulls bypass the mirror. \
             Fix: set config_path = \"/etc/containerd/certs.d\" there and restart containerd",
            c.file.display()
        ));
    }
    if c.version == 3 && dirs.len() > 1 {
        let cp = c.config_path.as_deref().unwrap_or_default();
        let origin = if c.defaulted {
            format!("sets no config_path, so containerd 2.2+ uses its default \"{cp}\"")
        } else {
            format!("sets config_path = \"{cp}\"")
        };
        if c.use_local_image_pull {
            out.push(format!(
                "{} {origin}, a colon-separated list; that is fine here because \
                 use_local_image_pull = true keeps pulls off the transfer service, which would read \
                 it as ONE directory (containerd issue 12636). hosts.toml files go in {}",
                c.file.display(),
                dirs[0].display()
            ));
        } else {
            out.push(format!(
                "CONTAINERD WILL IGNORE THE MIRROR: {} {origin}, a colon-separated list. \
                 containerd 2.1+ pulls (CRI too) through its transfer service, which treats the \
                 whole string as ONE directory named \"{cp}\", so every hosts.toml, and with it \
                 every mirror, is silently ignored (containerd issue 12636; measured on 2.1.9, \
                 and 2.2+ makes such a list its default). Fix: set a \
                 single-directory config_path = \"{}\" under \
                 [plugins.\"io.containerd.cri.v1.images\".registry], or set \
                 use_local_image_pull = true under [plugins.\"io.containerd.cri.v1.images\"], \
                 then restart containerd",
                c.file.display(),
                dirs[0].display()
            ));
        }
    }
    if let (Some(target), Some(first)) = (target, dirs.first())
        && target != first
    {
        out.push(format!(
            "hosts.toml files are written to {} but containerd ({}) reads {}: the mirror is \
             ignored. Fix: drop --config-path (it then follows the containerd config), or make \
             them the same",
            target.display(),
            c.file.display(),
            first.display()
        ));
    }
    out
}

/// Reads `file` and [`check`]s it: the directory hosts.toml files belong in (when the config
/// names one) and the warnings.
pub fn inspect(
    file: &Path,
    target: Option<&Path>,
) -> Result<(Option<PathBuf>, Vec<String>), ConfigureError> {
    let config = ContainerdConfig::read(file)?;
    let warnings = check(file, config.as_ref(), target);
    Ok((config.and_then(|c| c.first_dir()), warnings))
}
