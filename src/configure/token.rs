//! Token rotation in place: the daemon rewrites the `Authorization` header that
//! `configure --token-file` put into the `[host."MIRROR"]` tables naming this node, in the
//! hosts.toml files configure wrote. containerd reads hosts.toml on every pull, so a rotated
//! or re-minted token takes effect without restarting anything.

use std::path::{Path, PathBuf};

use toml::Value;

use super::files::{io_err, is_ours};
use super::render::{parse_existing, verify_round_trip};
use super::{ConfigureError, Endpoint, HOSTS_FILE};
use crate::fsutil::{Existing, write_atomic};

/// `HOST` and `PORT` of `scheme://HOST[:PORT]` (the default port of the scheme when absent;
/// brackets removed from an IPv6 host), parsed as `configure` parsed the URL it wrote.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let ep = Endpoint::parse("--mirror", url).ok()?;
    let port = ep.port.unwrap_or(if ep.https { 443 } else { 80 });
    let host = ep.host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port))
}

/// Rewrites, in every `<config_path>/*/hosts.toml` written by configure, the
/// `Authorization = "Bearer ..."` header of each `[host."URL"]` table for which `own(URL)`
/// holds, to `token`; a table with no `Authorization` header gets one (configure was run
/// without `--token-file`, e.g. with only a signing key on the node). Only that header
/// changes; a file already carrying the token is left alone; a missing `config_path` holds
/// nothing to rewrite. Returns the files rewritten.
pub fn rewrite_token(
    config_path: &Path,
    own: &dyn Fn(&str) -> bool,
    token: &str,
) -> Result<Vec<PathBuf>, ConfigureError> {
    // Visible ASCII only: anything else could not be sent as a header (or would inject one).
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigureError::BadToken {
            path: config_path.to_path_buf(),
            problem: "holds characters not allowed in an HTTP header",
        });
    }
    let entries = match std::fs::read_dir(config_path) {
        // Not written yet (configure runs later): nothing to rewrite.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(io_err("reading", config_path))?,
    };
    let mut rewritten = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join(HOSTS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(io_err("reading", &path)(source)),
        };
        if !is_ours(text.as_bytes()) {
            continue;
        }
        if let Some(new_text) = rewrite_text(&text, own, token, &path)? {
            write_atomic(&path, new_text.as_bytes(), 0o600, Existing::Replace)
                .map_err(io_err("writing", &path))?;
            rewritten.push(path);
        }
    }
    rewritten.sort();
    Ok(rewritten)
}

/// The new text of one file, or `None` when nothing changes. The leading comment lines (our
/// marker and note) are kept; the document is re-serialized and checked to parse back equal.
#[doc(hidden)]
pub fn rewrite_text(
    text: &str,
    own: &dyn Fn(&str) -> bool,
    token: &str,
    path: &Path,
) -> Result<Option<String>, ConfigureError> {
    let mut doc = parse_existing(text, path)?;
    let want = format!("Bearer {token}");
    let mut changed = false;
    if let Some(Value::Table(hosts)) = doc.get_mut("host") {
        for (url, host) in hosts.iter_mut() {
            if !own(url) {
                continue;
            }
            let Some(host) = host.as_table_mut() else {
                continue;
            };
            let header = host
                .entry("header")
                .or_insert_with(|| Value::Table(toml::Table::new()));
            let Some(header) = header.as_table_mut() else {
                continue;
            };
            match header.get_mut("Authorization") {
                Some(Value::String(auth)) => {
                    // Another scheme was put there by hand: not ours to replace.
                    if auth.starts_with("Bearer ") && *auth != want {
                        *auth = want.clone();
                        changed = true;
                    }
                }
                Some(_) => {}
                None => {
                    header.insert("Authorization".into(), Value::String(want.clone()));
                    changed = true;
                }
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    let comments: String = text
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let out = format!("{comments}{}", toml::to_string(&doc)?);
    verify_round_trip(&out, &doc, path)?;
    Ok(Some(out))
}

/// One `[host."URL"]` table naming this node's mirror, in a hosts.toml `configure` wrote:
/// what containerd will present to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnHost {
    pub file: PathBuf,
    pub url: String,
    /// It sends an `Authorization: Bearer` header.
    pub bearer: bool,
    /// It presents a client certificate (`client = [...]`).
    pub client_cert: bool,
}

/// The `[host."URL"]` tables for which `own(URL)` holds, in every `<config_path>/*/hosts.toml`
/// configure wrote. Best effort, for start-up advice: unreadable files are skipped.
pub fn own_hosts(config_path: &Path, own: &dyn Fn(&str) -> bool) -> Vec<OwnHost> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(config_path)
        .into_iter()
        .flatten()
        .flatten()
    {
        let file = entry.path().join(HOSTS_FILE);
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if !is_ours(text.as_bytes()) {
            continue;
        }
        let Ok(doc) = parse_existing(&text, &file) else {
            continue;
        };
        let Some(Value::Table(hosts)) = doc.get("host") else {
            continue;
        };
        for (url, host) in hosts.iter().filter(|(url, _)| own(url)) {
            let bearer = host
                .get("header")
                .and_then(|h| h.get("Authorization"))
                .and_then(Value::as_str)
                .is_some_and(|a| a.starts_with("Bearer "));
            out.push(OwnHost {
                file: file.clone(),
                url: url.clone(),
                bearer,
                client_cert: host.get("client").is_some(),
            });
        }
    }
    out.sort_by(|a, b| (&a.file, &a.url).cmp(&(&b.file, &b.url)));
    out
}

#[cfg(test)]
mod tests {
    use super::super::MARKER;
    use super::*;
    use toml::Table;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            host_port("http://127.0.0.1:5000"),
            Some(("127.0.0.1".into(), 5000))
        );
        assert_eq!(host_port("https://m.local"), Some(("m.local".into(), 443)));
        assert_eq!(host_port("http://[::1]:5000"), Some(("::1".into(), 5000)));
        assert_eq!(host_port("ftp://x"), None);
    }

    #[test]
    fn rewrites_only_our_bearer_header() {
        let text = format!(
            "{MARKER}; note\n# second\n\nserver = \"https://r\"\n\n[host.\"http://127.0.0.1:5000\"]\ncapabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://127.0.0.1:5000\".header]\nAuthorization = \"Bearer old\"\n\n[host.\"http://other:1\".header]\nAuthorization = \"Bearer theirs\"\n"
        );
        let own = |u: &str| u == "http://127.0.0.1:5000";
        let out = rewrite_text(&text, &own, "new", Path::new("x"))
            .unwrap()
            .unwrap();
        assert!(
            out.starts_with(&format!("{MARKER}; note\n# second\n")),
            "{out}"
        );
        let doc: Table = out.parse().unwrap();
        assert_eq!(
            doc["host"]["http://127.0.0.1:5000"]["header"]["Authorization"].as_str(),
            Some("Bearer new")
        );
        assert_eq!(
            doc["host"]["http://other:1"]["header"]["Authorization"].as_str(),
            Some("Bearer theirs")
        );
        assert_eq!(doc["server"].as_str(), Some("https://r"));
        assert!(
            rewrite_text(&out, &own, "new", Path::new("x"))
                .unwrap()
                .is_none()
        );
    }

    /// `configure` without `--token-file` (a node with only a signing key): the daemon still
    /// hands containerd its token, and `own_hosts` sees it.
    #[test]
    fn a_missing_header_is_added_to_our_tables_only() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{MARKER}\nserver = \"https://r\"\n\n[host.\"https://127.0.0.1:5000\"]\ncapabilities = [\"pull\"]\nclient = [[\"/c.crt\", \"/c.key\"]]\n\n[host.\"http://other:1\"]\ncapabilities = [\"pull\"]\n"
        );
        std::fs::create_dir(dir.path().join("docker.io")).unwrap();
        let file = dir.path().join("docker.io").join(HOSTS_FILE);
        std::fs::write(&file, &text).unwrap();
        let own = |u: &str| u == "https://127.0.0.1:5000";
        let before = own_hosts(dir.path(), &own);
        assert_eq!(
            before,
            [OwnHost {
                file: file.clone(),
                url: "https://127.0.0.1:5000".into(),
                bearer: false,
                client_cert: true,
            }]
        );
        assert_eq!(
            rewrite_token(dir.path(), &own, "minted").unwrap(),
            std::slice::from_ref(&file)
        );
        let doc: Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
        assert_eq!(
            doc["host"]["https://127.0.0.1:5000"]["header"]["Authorization"].as_str(),
            Some("Bearer minted")
        );
        assert!(doc["host"]["http://other:1"].get("header").is_none());
        assert!(own_hosts(dir.path(), &own)[0].bearer);
    }
}
