//! `peermirror configure`: writes containerd `hosts.toml` files naming this node's mirror(s),
//! and `--restore` puts back what was there before.
//!
//! containerd (1.5+) reads `<config_path>/<host[:port]>/hosts.toml` for each registry, falling back to
//! `<config_path>/_default/hosts.toml`; it tries the `[host."URL"]` tables in file order, then `server`.
//! A file it cannot parse is only logged and silently ignored, so every file is built with the `toml`
//! crate, parsed back and compared before an atomic rename puts it in place.
//!
//! Before first replacing a file peermirror did not write, it is copied to `hosts.toml.peermirror-backup`;
//! where there was no file, an empty `hosts.toml.peermirror-none` records that. Our own files start with
//! [`MARKER`], which is how a second run knows not to back up its own output.
//!
//! Layout: `endpoint` parses and validates the flags, `render` builds each file, `files` reads,
//! backs up, writes and restores them.

mod containerd_config;
mod endpoint;
mod files;
mod render;
mod token;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use containerd_config::{ContainerdConfig, V3_DEFAULT_CONFIG_PATH, check, inspect};
pub use endpoint::{Endpoint, MirrorSettings, Token};
pub use render::render_hosts_toml;
/// For the fuzz targets (`fuzz/`): one hosts.toml's token rewrite, on its text.
#[doc(hidden)]
pub use token::rewrite_text as rewrite_hosts_text;
pub use token::{OwnHost, host_port, own_hosts, rewrite_token};

use endpoint::{parse_dial_timeout, parse_unique};
use files::{install, original_text, read_optional, restore};
use render::render;

/// The file containerd reads in each registry directory.
pub const HOSTS_FILE: &str = "hosts.toml";
/// A copy of the `hosts.toml` that was there before peermirror first replaced it.
pub const BACKUP_FILE: &str = "hosts.toml.peermirror-backup";
/// Empty file recording that there was no `hosts.toml` before peermirror wrote one.
pub const NONE_FILE: &str = "hosts.toml.peermirror-none";
/// First line of every file we write; files starting with it are ours.
pub const MARKER: &str = "# Written by peermirror configure";
/// Directory containerd uses for registries without their own directory.
pub const DEFAULT_DIR: &str = "_default";
/// Where hosts.toml files go when neither `--config-path` nor a containerd config names a place.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd/certs.d";

#[derive(clap::Args, Debug, Clone)]
pub struct ConfigureArgs {
    /// containerd's registry `config_path` directory (one subdirectory per registry). Default:
    /// the first directory of the `config_path` in --containerd-config, else
    /// /etc/containerd/certs.d.
    #[arg(long, env = "PEERMIRROR_CONFIG_PATH")]
    pub config_path: Option<PathBuf>,

    /// containerd's config file (e.g. /etc/containerd/config.toml, `version = 2` or `3`): read
    /// for the registry `config_path` in force, with a loud warning when containerd would
    /// ignore the mirror (containerd 2.2+'s colon-separated default, issue 12636).
    #[arg(long, env = "PEERMIRROR_CONTAINERD_CONFIG")]
    pub containerd_config: Option<PathBuf>,

    /// URL of a mirror to try before the registry, e.g. http://127.0.0.1:5000. Repeat (or separate
    /// with commas) for several; containerd tries them in this order.
    #[arg(
        long,
        env = "PEERMIRROR_MIRROR",
        value_delimiter = ',',
        required_unless_present = "restore"
    )]
    pub mirror: Vec<String>,

    /// Upstream registry to mirror, with its scheme, e.g. https://docker.io. Repeatable. None: write
    /// `_default/hosts.toml`, used for every registry without its own directory.
    #[arg(long, env = "PEERMIRROR_REGISTRY", value_delimiter = ',')]
    pub registry: Vec<String>,

    /// How long containerd waits to connect to a mirror before trying the next host (Go duration;
    /// containerd 1.7+ honours it, 1.6 ignores it). `0` or `none` leaves it out.
    #[arg(long, env = "PEERMIRROR_DIAL_TIMEOUT", default_value = "200ms", value_parser = parse_dial_timeout)]
    pub dial_timeout: Duration,

    /// CA certificate (absolute path, as containerd sees it) to verify https mirrors.
    #[arg(long, env = "PEERMIRROR_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Client certificate for mTLS to the mirrors (absolute path); needs --client-key.
    #[arg(long, env = "PEERMIRROR_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,

    /// Client private key for mTLS to the mirrors (absolute path); needs --client-cert.
    #[arg(long, env = "PEERMIRROR_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,

    /// File whose first non-empty line is a bearer token containerd sends to the mirrors.
    /// The hosts.toml files then hold a secret and are written with mode 0600.
    #[arg(long, env = "PEERMIRROR_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Keep the `[host]` tables (other mirrors) of the original hosts.toml, tried after ours.
    #[arg(long, env = "PEERMIRROR_KEEP_EXISTING_MIRRORS")]
    pub keep_existing_mirrors: bool,

    /// Put back the original files for the given registries (all, when none given) and remove
    /// the ones that had no original. Mirror options are ignored.
    #[arg(long, env = "PEERMIRROR_RESTORE")]
    pub restore: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error(
        "{flag} {value:?}: {problem}; expected http(s)://HOST[:PORT] with nothing after it, e.g. {example}"
    )]
    InvalidUrl {
        flag: &'static str,
        value: String,
        problem: &'static str,
        example: &'static str,
    },
    #[error(
        "no --mirror given: name this node's mirror, e.g. --mirror http://127.0.0.1:5000 (or use --restore)"
    )]
    NoMirror,
    #[error("{flag} {value} is given twice; give each once")]
    Duplicate { flag: &'static str, value: String },
    #[error("--client-cert and --client-key go together: give both or neither")]
    IncompleteClientPair,
    #[error("{flag} {path:?}: {problem}")]
    BadPath {
        flag: &'static str,
        path: PathBuf,
        problem: &'static str,
    },
    #[error("cannot read --token-file {path:?}: {source}")]
    TokenFile { path: PathBuf, source: io::Error },
    #[error("--token-file {path:?} {problem}")]
    BadToken {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("{path:?} line {line}: {message}; fix or remove it, or drop --keep-existing-mirrors")]
    ExistingInvalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("building hosts.toml failed: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("the hosts.toml written to {path:?} did not read back as built; refused to install it")]
    RoundTrip { path: PathBuf },
    #[error(
        "this peermirror was built without the toml crate's `preserve_order` feature, so it cannot keep the order of [host] tables (the order containerd tries them); rebuild with it"
    )]
    OrderUnsupported,
    #[error("cannot read the containerd config {path:?} (--containerd-config): {source}")]
    ContainerdConfigUnreadable { path: PathBuf, source: io::Error },
    #[error("the containerd config {path:?} (--containerd-config) is not valid: {problem}")]
    ContainerdConfigInvalid { path: PathBuf, problem: String },
    #[error("{action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What one run did, for printing. Holds paths only, never file contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: Vec<Entry>,
    /// Why containerd might not use these files (from --containerd-config); for stderr.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wrote `hosts.toml`; there was no original (or it is already saved).
    Wrote,
    /// Copied a foreign `hosts.toml` to the backup, then wrote ours.
    WroteAfterBackup,
    /// Put the backup back as `hosts.toml`.
    Restored,
    /// Removed our `hosts.toml`, as there was none before.
    Removed,
    /// `hosts.toml` was replaced by someone else after we wrote it; left it (and any backup) alone.
    LeftForeign,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return writeln!(f, "nothing to do");
        }
        for Entry { path, action } in &self.entries {
            let path = path.display();
            match action {
                Action::Wrote => writeln!(f, "wrote {path}")?,
                Action::WroteAfterBackup => {
                    writeln!(f, "wrote {path} (original saved as {BACKUP_FILE})")?
                }
                Action::Restored => writeln!(f, "restored the original {path}")?,
                Action::Removed => writeln!(f, "removed {path} (there was none before)")?,
                Action::LeftForeign => writeln!(
                    f,
                    "left {path} alone: changed by someone else since peermirror wrote it"
                )?,
            }
        }
        Ok(())
    }
}

/// Configures (or, with `--restore`, restores) the hosts.toml files named by `args`.
pub fn run(args: &ConfigureArgs) -> Result<Report, ConfigureError> {
    let registries = parse_unique("--registry", &args.registry)?;
    let (from_config, warnings) = match &args.containerd_config {
        Some(file) => inspect(file, args.config_path.as_deref())?,
        None => (None, Vec::new()),
    };
    let config_path = args
        .config_path
        .clone()
        .or(from_config)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let dirs: Vec<PathBuf> = registries
        .iter()
        .map(|r| config_path.join(r.authority()))
        .collect();
    if args.restore {
        return restore(&config_path, dirs);
    }
    let settings = MirrorSettings::from_args(args)?;
    let targets: Vec<(Option<&Endpoint>, PathBuf)> = if registries.is_empty() {
        vec![(None, config_path.join(DEFAULT_DIR))]
    } else {
        registries.iter().map(Some).zip(dirs).collect()
    };
    // Render every file before writing any, so bad input never leaves a half-configured node.
    let mut plans = Vec::with_capacity(targets.len());
    for (registry, dir) in targets {
        let current = read_optional(&dir.join(HOSTS_FILE))?;
        let existing = if args.keep_existing_mirrors {
            original_text(&dir, current.as_ref())?
        } else {
            None
        };
        let text = match &existing {
            Some((path, text)) => render(registry, &settings, Some(text), path)?,
            None => render(registry, &settings, None, &dir.join(HOSTS_FILE))?,
        };
        if let Some(r) = registry
            && let Some(port) = r.port
        {
            // containerd 1.6 looks for `host_port_` before `host:port`.
            let shadow = config_path.join(format!("{}_{port}_", r.host));
            if shadow.is_dir() {
                tracing::warn!(dir = %shadow.display(), "containerd reads this directory before ours; remove it");
            }
        }
        plans.push((dir, current, text));
    }
    let mode = if settings.token.is_some() {
        0o600
    } else {
        0o644
    };
    let mut report = Report {
        warnings,
        ..Report::default()
    };
    for (dir, current, text) in plans {
        let action = install(&dir, current, &text, mode)?;
        report.entries.push(Entry {
            path: dir.join(HOSTS_FILE),
            action,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ConfigureArgs,
    }

    #[test]
    fn flags_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "x",
            "--mirror",
            "http://127.0.0.1:5000,http://127.0.0.1:5001",
            "--mirror",
            "https://10.0.0.5:5443",
            "--registry",
            "https://docker.io",
            "--dial-timeout",
            "none",
            "--keep-existing-mirrors",
        ])
        .unwrap();
        assert_eq!(cli.args.mirror.len(), 3);
        assert_eq!(cli.args.config_path, None);
        assert!(
            cli.args.dial_timeout.is_zero() && cli.args.keep_existing_mirrors && !cli.args.restore
        );
        let cli = Cli::try_parse_from(["x", "--mirror", "http://127.0.0.1:5000"]).unwrap();
        assert_eq!(cli.args.dial_timeout, Duration::from_millis(200));
        // --mirror is required, except to restore.
        assert!(Cli::try_parse_from(["x"]).is_err());
        assert!(Cli::try_parse_from(["x", "--restore"]).is_ok());
    }
}
