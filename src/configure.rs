//! `peermirror configure`: writes containerd `hosts.toml` files naming this node's mirror(s),
//! and `--restore` puts back what was there before.
//!
//! containerd (1.5+) reads `<config_path>/<host[:port]>/hosts.toml` for each registry, falling back to
//! `<config_path>/_default/hosts.toml`; it tries the `[host."URL"]` tables in file order, then `server`.
//! A file it cannot parse is only logged and silently ignored, so every file is built with the `toml`
//! crate, read back and compared before an atomic rename puts it in place.
//!
//! Before first replacing a file peermirror did not write, it is copied to `hosts.toml.peermirror-backup`;
//! where there was no file, an empty `hosts.toml.peermirror-none` records that. Our own files start with
//! [`MARKER`], which is how a second run knows not to back up its own output.

use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::net::Ipv6Addr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

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

const HEADER: &str = "# Written by peermirror configure; the original is in hosts.toml.peermirror-backup\n\
                      # (none if hosts.toml.peermirror-none exists). `peermirror configure --restore` puts it back.\n\n";

#[derive(clap::Args, Debug, Clone)]
pub struct ConfigureArgs {
    /// containerd's registry `config_path` directory (one subdirectory per registry).
    #[arg(
        long,
        env = "PEERMIRROR_CONFIG_PATH",
        default_value = "/etc/containerd/certs.d"
    )]
    pub config_path: PathBuf,

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
    #[error("{action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A registry or mirror URL reduced to what containerd uses: scheme, host and optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    /// Lower-cased; IPv6 addresses keep their brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl Endpoint {
    /// Parses `http(s)://HOST[:PORT][/]`; `flag` names the option in errors.
    pub fn parse(flag: &'static str, value: &str) -> Result<Self, ConfigureError> {
        let example = if flag == "--registry" {
            "https://ghcr.io"
        } else {
            "http://127.0.0.1:5000"
        };
        let bad = |problem| ConfigureError::InvalidUrl {
            flag,
            value: value.to_owned(),
            problem,
            example,
        };
        let (scheme, rest) = value.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad("a path, query or fragment is not allowed"));
        }
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not allowed"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
                addr.parse::<Ipv6Addr>()
                    .map_err(|_| bad("invalid IPv6 address"))?;
                let port = match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
                };
                (format!("[{}]", addr.to_ascii_lowercase()), port)
            }
            None => {
                let (host, port) = match authority.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (authority, None),
                };
                // The reference grammar's domain: dot-separated alphanumeric labels with inner
                // hyphens. It also keeps `..`, `/` and `_default` out of directory names.
                let label_ok = |l: &str| {
                    !l.is_empty()
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                };
                if !host.split('.').all(label_ok) {
                    return Err(bad("invalid host name"));
                }
                (host.to_ascii_lowercase(), port)
            }
        };
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad("port out of range"))?,
            ),
            Some(_) => return Err(bad("invalid port")),
        };
        Ok(Self { https, host, port })
    }

    /// `host` or `host:port`: the registry's directory name under `config_path`.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority()
        )
    }

    /// The `server` for this registry: Docker Hub's images are named `docker.io/...` but its API
    /// lives at registry-1.docker.io (containerd makes the same substitution without a hosts.toml).
    pub fn server(&self) -> String {
        if self.host == "docker.io" && self.port.is_none() {
            "https://registry-1.docker.io".to_owned()
        } else {
            self.url()
        }
    }

    fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host == "[::1]" || self.host.starts_with("127.")
    }
}

/// A bearer token; never shown by `Debug`.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads the first non-empty line of `path`, trimmed.
    pub fn from_file(path: &Path) -> Result<Self, ConfigureError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigureError::TokenFile {
            path: path.to_owned(),
            source,
        })?;
        let bad = |problem| ConfigureError::BadToken {
            path: path.to_owned(),
            problem,
        };
        let token = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| bad("holds no token"))?;
        // Visible ASCII only: anything else could not be sent as a header (or would inject one).
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("holds characters not allowed in an HTTP header"));
        }
        Ok(Self(token.to_owned()))
    }
}

/// Everything that goes into each `[host."MIRROR"]` table, validated.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub mirrors: Vec<Endpoint>,
    /// `None` leaves `dial_timeout` out.
    pub dial_timeout: Option<Duration>,
    pub ca_file: Option<String>,
    pub client_pair: Option<(String, String)>,
    pub token: Option<Token>,
}

impl MirrorSettings {
    pub fn from_args(args: &ConfigureArgs) -> Result<Self, ConfigureError> {
        let mirrors = parse_unique("--mirror", &args.mirror)?;
        if mirrors.is_empty() {
            return Err(ConfigureError::NoMirror);
        }
        let client_pair = match (&args.client_cert, &args.client_key) {
            (Some(c), Some(k)) => Some((
                cert_path("--client-cert", c)?,
                cert_path("--client-key", k)?,
            )),
            (None, None) => None,
            _ => return Err(ConfigureError::IncompleteClientPair),
        };
        let token = args
            .token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?;
        if token.is_some() && mirrors.iter().any(|m| !m.https && !m.is_loopback()) {
            tracing::warn!(
                "--token-file with a non-loopback http:// mirror: the token crosses the network in clear text"
            );
        }
        Ok(Self {
            mirrors,
            dial_timeout: Some(args.dial_timeout).filter(|d| !d.is_zero()),
            ca_file: args
                .ca_file
                .as_deref()
                .map(|p| cert_path("--ca-file", p))
                .transpose()?,
            client_pair,
            token,
        })
    }

    fn host_table(&self) -> Table {
        let mut t = Table::new();
        t.insert(
            "capabilities".into(),
            Value::Array(vec!["pull".into(), "resolve".into()]),
        );
        if let Some(d) = self.dial_timeout {
            t.insert("dial_timeout".into(), go_duration(d).into());
        }
        if let Some(ca) = &self.ca_file {
            t.insert("ca".into(), ca.clone().into());
        }
        if let Some((cert, key)) = &self.client_pair {
            let pair = Value::Array(vec![cert.clone().into(), key.clone().into()]);
            t.insert("client".into(), Value::Array(vec![pair]));
        }
        if let Some(Token(token)) = &self.token {
            let mut header = Table::new();
            header.insert("Authorization".into(), format!("Bearer {token}").into());
            t.insert("header".into(), Value::Table(header));
        }
        t
    }
}

/// containerd reads these files itself (relative paths against each registry's directory), and a
/// CA or key it cannot read fails every pull instead of falling back, so insist they are there.
fn cert_path(flag: &'static str, path: &Path) -> Result<String, ConfigureError> {
    let bad = |problem| ConfigureError::BadPath {
        flag,
        path: path.to_owned(),
        problem,
    };
    if !path.is_absolute() {
        return Err(bad("must be an absolute path (as containerd sees it)"));
    }
    if !path.is_file() {
        return Err(bad(
            "is not a readable file here; mount it at the path containerd uses",
        ));
    }
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| bad("must be valid UTF-8"))
}

fn parse_unique(flag: &'static str, values: &[String]) -> Result<Vec<Endpoint>, ConfigureError> {
    let mut out: Vec<Endpoint> = Vec::with_capacity(values.len());
    for v in values {
        let e = Endpoint::parse(flag, v.trim())?;
        // Two registries sharing a directory, or one mirror twice (one TOML key), cannot both be written.
        let same = |o: &Endpoint| match flag {
            "--registry" => o.authority() == e.authority(),
            _ => *o == e,
        };
        if out.iter().any(same) {
            return Err(ConfigureError::Duplicate {
                flag,
                value: e.url(),
            });
        }
        out.push(e);
    }
    Ok(out)
}

fn parse_dial_timeout(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "" | "0" | "none" => Ok(Duration::ZERO),
        s => humantime::parse_duration(s)
            .map_err(|e| format!("{e}; expected e.g. 200ms, 1s, or none")),
    }
}

/// A Go `time.ParseDuration` string (no spaces, unlike humantime's).
fn go_duration(d: Duration) -> String {
    match (d.subsec_nanos(), d.subsec_nanos() % 1_000_000) {
        (0, _) => format!("{}s", d.as_secs()),
        (_, 0) => format!("{}ms", d.as_millis()),
        _ => format!("{}ns", d.as_nanos()),
    }
}

/// Renders one hosts.toml: `server` (if `registry` is given, else from `existing`), our mirrors in
/// order, then, when `existing` (the original file's text) is given, its other `[host]` tables and
/// top-level keys. Pure: checks the result parses back to the same document.
pub fn render_hosts_toml(
    registry: Option<&Endpoint>,
    settings: &MirrorSettings,
    existing: Option<&str>,
) -> Result<String, ConfigureError> {
    let (text, _) = render(registry, settings, existing, Path::new(HOSTS_FILE))?;
    Ok(text)
}

fn render(
    registry: Option<&Endpoint>,
    settings: &MirrorSettings,
    existing: Option<&str>,
    path: &Path,
) -> Result<(String, Table), ConfigureError> {
    if !table_keeps_order() {
        return Err(ConfigureError::OrderUnsupported);
    }
    let existing = existing
        .map(|text| parse_existing(text, path))
        .transpose()?;
    let mut doc = Table::new();
    let old_server = existing.as_ref().and_then(|e| e.get("server")).cloned();
    if let Some(server) = registry.map(|r| Value::from(r.server())).or(old_server) {
        doc.insert("server".into(), server);
    }
    let mut hosts = Table::new();
    for m in &settings.mirrors {
        hosts.insert(m.url(), Value::Table(settings.host_table()));
    }
    if let Some(old) = &existing {
        // Top-level keys other than `server` configure the server host (e.g. its `ca`): keep them.
        for (k, v) in old.iter().filter(|(k, _)| *k != "server" && *k != "host") {
            doc.insert(k.clone(), v.clone());
        }
        if let Some(Value::Table(old_hosts)) = old.get("host") {
            for (url, table) in old_hosts {
                let ours = hosts
                    .keys()
                    .any(|h| url.trim_end_matches('/').eq_ignore_ascii_case(h));
                if !ours && table.is_table() {
                    hosts.insert(url.clone(), table.clone());
                }
            }
        }
    }
    doc.insert("host".into(), Value::Table(hosts));
    let text = format!("{HEADER}{}", toml::to_string(&doc)?);
    verify_round_trip(&text, &doc, path)?;
    Ok((text, doc))
}

/// Without toml's `preserve_order` feature a `Table` sorts its keys, which would reorder mirrors.
fn table_keeps_order() -> bool {
    let mut t = Table::new();
    t.insert("b".into(), Value::Boolean(true));
    t.insert("a".into(), Value::Boolean(true));
    t.keys().next().map(String::as_str) == Some("b")
}

fn parse_existing(text: &str, path: &Path) -> Result<Table, ConfigureError> {
    // Only the message and line: toml's full error quotes the file, which may hold a secret.
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let before = e.span().and_then(|s| text.get(..s.start)).unwrap_or("");
        ConfigureError::ExistingInvalid {
            path: path.to_owned(),
            line: before.matches('\n').count() + 1,
            message: e.message().to_owned(),
        }
    })
}

/// Same document, and the `[host]` tables in the same order (Table's `==` ignores order).
fn verify_round_trip(text: &str, doc: &Table, path: &Path) -> Result<(), ConfigureError> {
    let host_keys = |t: &Table| {
        t.get("host")
            .and_then(Value::as_table)
            .map(|h| h.keys().cloned().collect::<Vec<_>>())
    };
    match toml::from_str::<Table>(text) {
        Ok(back) if back == *doc && host_keys(&back) == host_keys(doc) => Ok(()),
        _ => Err(ConfigureError::RoundTrip {
            path: path.to_owned(),
        }),
    }
}

/// What one run did, for printing. Holds paths only, never file contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: Vec<Entry>,
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
    let dirs: Vec<PathBuf> = registries
        .iter()
        .map(|r| args.config_path.join(r.authority()))
        .collect();
    if args.restore {
        return restore(&args.config_path, dirs);
    }
    let settings = MirrorSettings::from_args(args)?;
    let targets: Vec<(Option<&Endpoint>, PathBuf)> = if registries.is_empty() {
        vec![(None, args.config_path.join(DEFAULT_DIR))]
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
        let (text, doc) = match &existing {
            Some((path, text)) => render(registry, &settings, Some(text), path)?,
            None => render(registry, &settings, None, &dir.join(HOSTS_FILE))?,
        };
        if let Some(r) = registry
            && let Some(port) = r.port
        {
            // containerd 1.6 looks for `host_port_` before `host:port`.
            let shadow = args.config_path.join(format!("{}_{port}_", r.host));
            if shadow.is_dir() {
                tracing::warn!(dir = %shadow.display(), "containerd reads this directory before ours; remove it");
            }
        }
        plans.push((dir, current, text, doc));
    }
    let mode = if settings.token.is_some() {
        0o600
    } else {
        0o644
    };
    let mut report = Report::default();
    for (dir, current, text, doc) in plans {
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let action = save_original(&dir, current)?;
        write_atomic(&dir, HOSTS_FILE, text.as_bytes(), mode, Some(&doc))?;
        report.entries.push(Entry {
            path: dir.join(HOSTS_FILE),
            action,
        });
    }
    Ok(report)
}

/// The original hosts.toml (for --keep-existing-mirrors): the current file if foreign, else the
/// backup, so merging with our own last output never keeps a mirror that was since dropped.
fn original_text(
    dir: &Path,
    current: Option<&(Vec<u8>, u32)>,
) -> Result<Option<(PathBuf, String)>, ConfigureError> {
    let (path, bytes) = match current {
        Some((bytes, _)) if !is_ours(bytes) => (dir.join(HOSTS_FILE), bytes.clone()),
        _ => {
            let backup = dir.join(BACKUP_FILE);
            match read_optional(&backup)? {
                Some((bytes, _)) => (backup, bytes),
                None => return Ok(None),
            }
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some((path, text))),
        Err(_) => Err(ConfigureError::ExistingInvalid {
            path,
            line: 1,
            message: "not UTF-8".into(),
        }),
    }
}

/// Records what was there before we first write: a backup of a foreign file, or the "none" marker.
/// Our own output is never backed up, so repeated runs keep the first original.
fn save_original(dir: &Path, current: Option<(Vec<u8>, u32)>) -> Result<Action, ConfigureError> {
    let none = dir.join(NONE_FILE);
    match current {
        Some((bytes, mode)) if !is_ours(&bytes) => {
            // A foreign file here is the latest original, even if an older backup exists.
            write_atomic(dir, BACKUP_FILE, &bytes, mode, None)?;
            remove_optional(&none)?;
            Ok(Action::WroteAfterBackup)
        }
        _ => {
            if !dir.join(BACKUP_FILE).exists() && !none.exists() {
                write_atomic(dir, NONE_FILE, b"", 0o644, None)?;
            }
            Ok(Action::Wrote)
        }
    }
}

fn restore(config_path: &Path, mut dirs: Vec<PathBuf>) -> Result<Report, ConfigureError> {
    if dirs.is_empty() {
        let entries = match fs::read_dir(config_path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Report::default()),
            Err(e) => return Err(io_err("listing", config_path)(e)),
        };
        for entry in entries {
            let dir = entry.map_err(io_err("listing", config_path))?.path();
            if dir.join(BACKUP_FILE).is_file() || dir.join(NONE_FILE).is_file() {
                dirs.push(dir);
            }
        }
        dirs.sort();
    }
    let mut report = Report::default();
    for dir in dirs {
        let hosts = dir.join(HOSTS_FILE);
        let (backup, none) = (dir.join(BACKUP_FILE), dir.join(NONE_FILE));
        let has_backup = backup.is_file();
        if !has_backup && !none.is_file() {
            continue;
        }
        let current = read_optional(&hosts)?;
        let ours_or_absent = current.as_ref().is_none_or(|(bytes, _)| is_ours(bytes));
        let action = match (has_backup, ours_or_absent) {
            (_, false) => Action::LeftForeign,
            (true, true) => {
                fs::rename(&backup, &hosts).map_err(io_err("restoring", &backup))?;
                sync_dir(&dir)?;
                Action::Restored
            }
            (false, true) => {
                remove_optional(&hosts)?;
                Action::Removed
            }
        };
        if action != Action::LeftForeign || !has_backup {
            remove_optional(&none)?;
        }
        if action == Action::Removed {
            // Most likely we created the directory too; an empty one means the same to containerd.
            let _ = fs::remove_dir(&dir);
        }
        if current.is_some() || action == Action::Restored {
            report.entries.push(Entry {
                path: hosts,
                action,
            });
        }
    }
    Ok(report)
}

fn is_ours(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER.as_bytes())
}

/// The file's bytes and permission bits, or `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<(Vec<u8>, u32)>, ConfigureError> {
    match fs::read(path) {
        Ok(bytes) => {
            let meta = fs::metadata(path).map_err(io_err("reading", path))?;
            Ok(Some((bytes, meta.permissions().mode() & 0o7777)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

fn remove_optional(path: &Path) -> Result<(), ConfigureError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Temp file in the same directory, fsync, optional read-back check, mode, rename, fsync the directory:
/// containerd (which re-reads hosts.toml on every pull) sees the old file or the new one, never half.
fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    check: Option<&Table>,
) -> Result<(), ConfigureError> {
    let tmp = dir.join(format!(".{name}.peermirror-tmp-{}", std::process::id()));
    remove_optional(&tmp)?; // left over by a crashed run
    // Removes the temp file on every early return; after the rename it is gone already.
    let _guard = RemoveOnDrop(&tmp);
    // Created 0600 so a token is never readable by others, even for a moment.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("writing", &tmp))?;
    if let Some(doc) = check {
        let back = fs::read_to_string(&tmp).map_err(io_err("reading back", &tmp))?;
        verify_round_trip(&back, doc, &dir.join(name))?;
    }
    fs::set_permissions(&tmp, Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", &tmp))?;
    let target = dir.join(name);
    fs::rename(&tmp, &target).map_err(io_err("renaming onto", &target))?;
    sync_dir(dir)
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// Makes a rename durable across a crash.
fn sync_dir(dir: &Path) -> Result<(), ConfigureError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ConfigureError + 'a {
    move |source| ConfigureError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ConfigureArgs,
    }

    fn ep(s: &str) -> Endpoint {
        Endpoint::parse("--mirror", s).unwrap()
    }

    fn settings(mirrors: &[&str]) -> MirrorSettings {
        MirrorSettings {
            mirrors: mirrors.iter().map(|m| ep(m)).collect(),
            dial_timeout: Some(Duration::from_millis(200)),
            ca_file: None,
            client_pair: None,
            token: None,
        }
    }

    fn host_keys(doc: &Table) -> Vec<String> {
        doc["host"].as_table().unwrap().keys().cloned().collect()
    }

    #[test]
    fn urls_that_parse() {
        let cases = [
            (
                "http://127.0.0.1:5000",
                "http://127.0.0.1:5000",
                "127.0.0.1:5000",
            ),
            (
                "https://10.0.0.5:5443/",
                "https://10.0.0.5:5443",
                "10.0.0.5:5443",
            ),
            ("HTTPS://GHCR.io", "https://ghcr.io", "ghcr.io"),
            ("http://[::1]:5000", "http://[::1]:5000", "[::1]:5000"),
            (
                "https://my-registry.example.com:0443",
                "https://my-registry.example.com:443",
                "my-registry.example.com:443",
            ),
        ];
        for (input, url, authority) in cases {
            let e = ep(input);
            assert_eq!(
                (e.url().as_str(), e.authority().as_str()),
                (url, authority),
                "{input}"
            );
        }
    }

    #[test]
    fn urls_that_do_not() {
        let cases = [
            ("127.0.0.1:5000", "no scheme"),
            ("ftp://x", "scheme must be http or https"),
            ("http://x/v2", "path"),
            ("http://x?a=b", "path, query"),
            ("http://user:pw@x", "credentials"),
            ("http://", "invalid host"),
            ("http://..", "invalid host"),
            ("http://_default", "invalid host"),
            ("http://a_b", "invalid host"),
            ("http://-a.com", "invalid host"),
            ("http://x:", "invalid port"),
            ("http://x:99999", "port out of range"),
            ("http://x:0", "port out of range"),
            ("http://x:5:5", "invalid port"),
            ("http://[zz]:1", "invalid IPv6"),
            ("http://[::1]5000", "junk after"),
        ];
        for (input, problem) in cases {
            let err = Endpoint::parse("--registry", input)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("--registry {input:?}: ")), "{err}");
            assert!(err.contains(problem), "{input}: {err}");
            assert!(err.contains("e.g. https://ghcr.io"), "{err}");
        }
    }

    #[test]
    fn docker_io_server_is_registry_1() {
        let r = Endpoint::parse("--registry", "https://docker.io").unwrap();
        assert_eq!(
            (r.authority().as_str(), r.server().as_str()),
            ("docker.io", "https://registry-1.docker.io")
        );
        let r = Endpoint::parse("--registry", "http://127.0.0.1:5700").unwrap();
        assert_eq!(r.server(), "http://127.0.0.1:5700");
    }

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(go_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1500000ns");
        assert_eq!(parse_dial_timeout("none"), Ok(Duration::ZERO));
        assert_eq!(parse_dial_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_dial_timeout("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_dial_timeout("soon").is_err());
    }

    #[test]
    fn render_keeps_mirror_order_and_fields() {
        // Deliberately not in sorted order: containerd tries the tables in file order.
        let s = settings(&[
            "http://127.0.0.1:5000",
            "https://10.0.0.5:5443",
            "http://10.0.0.9:5000",
        ]);
        let text = render_hosts_toml(
            Some(&Endpoint::parse("--registry", "https://ghcr.io").unwrap()),
            &s,
            None,
        )
        .unwrap();
        assert!(is_ours(text.as_bytes()));
        let doc: Table = toml::from_str(&text).unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://ghcr.io"));
        assert_eq!(
            host_keys(&doc),
            [
                "http://127.0.0.1:5000",
                "https://10.0.0.5:5443",
                "http://10.0.0.9:5000"
            ]
        );
        // The textual order too, independent of how a parser stores tables.
        let pos = |m: &str| text.find(&format!("[host.\"{m}\"]")).unwrap();
        assert!(pos("http://127.0.0.1:5000") < pos("https://10.0.0.5:5443"));
        assert!(pos("https://10.0.0.5:5443") < pos("http://10.0.0.9:5000"));
        let h = doc["host"]["http://127.0.0.1:5000"].as_table().unwrap();
        assert_eq!(
            h.keys().collect::<Vec<_>>(),
            ["capabilities", "dial_timeout"]
        );
        assert_eq!(
            h["capabilities"],
            Value::Array(vec!["pull".into(), "resolve".into()])
        );
        assert_eq!(h["dial_timeout"].as_str(), Some("200ms"));
    }

    #[test]
    fn render_default_has_no_server_and_dial_timeout_can_be_omitted() {
        let mut s = settings(&["http://127.0.0.1:5000"]);
        s.dial_timeout = None;
        let doc: Table = toml::from_str(&render_hosts_toml(None, &s, None).unwrap()).unwrap();
        assert!(!doc.contains_key("server"));
        assert!(
            !doc["host"]["http://127.0.0.1:5000"]
                .as_table()
                .unwrap()
                .contains_key("dial_timeout")
        );
    }

    #[test]
    fn render_tls_and_token() {
        let mut s = settings(&["https://10.0.0.5:5443"]);
        s.ca_file = Some("/etc/pm/ca.crt".into());
        s.client_pair = Some(("/etc/pm/c.crt".into(), "/etc/pm/c.key".into()));
        s.token = Some(Token("s3cr3t".into()));
        let text = render_hosts_toml(None, &s, None).unwrap();
        let doc: Table = toml::from_str(&text).unwrap();
        let h = &doc["host"]["https://10.0.0.5:5443"];
        assert_eq!(h["ca"].as_str(), Some("/etc/pm/ca.crt"));
        let pair = Value::Array(vec!["/etc/pm/c.crt".into(), "/etc/pm/c.key".into()]);
        assert_eq!(h["client"], Value::Array(vec![pair]));
        assert_eq!(h["header"]["Authorization"].as_str(), Some("Bearer s3cr3t"));
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn render_keeps_existing_hosts_after_ours() {
        let existing = r#"
            server = "https://old.example.com"
            ca = "/etc/old-ca.crt"
            [host."http://127.0.0.1:5000/"]
            capabilities = ["pull"]
            [host."https://z-mirror.example.com"]
            capabilities = ["pull", "resolve"]
            [host."https://a-mirror.example.com"]
            skip_verify = true
        "#;
        let s = settings(&["http://127.0.0.1:5000"]);
        let reg = Endpoint::parse("--registry", "https://ghcr.io").unwrap();
        let doc: Table =
            toml::from_str(&render_hosts_toml(Some(&reg), &s, Some(existing)).unwrap()).unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://ghcr.io"));
        assert_eq!(doc["ca"].as_str(), Some("/etc/old-ca.crt"));
        assert_eq!(
            host_keys(&doc),
            [
                "http://127.0.0.1:5000",
                "https://z-mirror.example.com",
                "https://a-mirror.example.com"
            ]
        );
        // Ours replaces the old table for the same URL.
        assert!(
            doc["host"]["http://127.0.0.1:5000"]
                .get("dial_timeout")
                .is_some()
        );
        // For _default, the original server stays.
        let doc: Table =
            toml::from_str(&render_hosts_toml(None, &s, Some(existing)).unwrap()).unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://old.example.com"));
    }

    #[test]
    fn invalid_existing_file_names_line_without_quoting_it() {
        let existing = "server = \"https://x\"\n[host.\"http://m\".header]\nAuthorization = \"Bearer leak\" junk\n";
        let err = render_hosts_toml(None, &settings(&["http://127.0.0.1:5000"]), Some(existing))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ConfigureError::ExistingInvalid { line: 3, .. }),
            "{msg}"
        );
        assert!(!msg.contains("leak"), "{msg}");
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
        assert_eq!(cli.args.config_path, Path::new("/etc/containerd/certs.d"));
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
