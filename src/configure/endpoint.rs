//! Parsing and validating what `configure` is told: mirror and registry endpoints, the token,
//! and the paths containerd will read. Everything here fails before any file is touched.

use std::fmt;
use std::fs;
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use super::{ConfigureArgs, ConfigureError};

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
pub struct Token(pub(super) String);

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

pub(super) fn parse_unique(
    flag: &'static str,
    values: &[String],
) -> Result<Vec<Endpoint>, ConfigureError> {
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

pub(super) fn parse_dial_timeout(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "" | "0" | "none" => Ok(Duration::ZERO),
        s => humantime::parse_duration(s)
            .map_err(|e| format!("{e}; expected e.g. 200ms, 1s, or none")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::parse("--mirror", s).unwrap()
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
    fn dial_timeout_parses() {
        assert_eq!(parse_dial_timeout("none"), Ok(Duration::ZERO));
        assert_eq!(parse_dial_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_dial_timeout("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_dial_timeout("soon").is_err());
    }
}
