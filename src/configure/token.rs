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
/// holds, to `token`. Only that value changes; a file already carrying the token is left
/// alone; a missing `config_path` holds nothing to rewrite. Returns the files rewritten.
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
            let Some(Value::String(auth)) = host
                .as_table_mut()
                .and_then(|h| h.get_mut("header"))
                .and_then(Value::as_table_mut)
                .and_then(|h| h.get_mut("Authorization"))
            else {
                continue;
            };
            if auth.starts_with("Bearer ") && *auth != want {
                *auth = want.clone();
                changed = true;
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
}
