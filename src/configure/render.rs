//! Building one hosts.toml as a TOML table: our mirrors first, in order, then (when asked) the
//! original file's other hosts. Pure: no file is read or written here.

use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::endpoint::{Endpoint, MirrorSettings, Token};
use super::{ConfigureError, HOSTS_FILE};

const HEADER: &str = "# Written by peermirror configure; the original is in hosts.toml.peermirror-backup\n\
                      # (none if hosts.toml.peermirror-none exists). `peermirror configure --restore` puts it back.\n\n";

impl MirrorSettings {
    /// The `[host."MIRROR"]` table, the same for every mirror.
    pub(super) fn host_table(&self) -> Table {
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

/// A Go `time.ParseDuration` string (no spaces, unlike humantime's).
pub(super) fn go_duration(d: Duration) -> String {
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
    render(registry, settings, existing, Path::new(HOSTS_FILE))
}

pub(super) fn render(
    registry: Option<&Endpoint>,
    settings: &MirrorSettings,
    existing: Option<&str>,
    path: &Path,
) -> Result<String, ConfigureError> {
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
    // containerd only logs a file it cannot parse and goes on without it: never write one.
    verify_round_trip(&text, &doc, path)?;
    Ok(text)
}

/// Without toml's `preserve_order` feature a `Table` sorts its keys, which would reorder mirrors.
fn table_keeps_order() -> bool {
    let mut t = Table::new();
    t.insert("b".into(), Value::Boolean(true));
    t.insert("a".into(), Value::Boolean(true));
    t.keys().next().map(String::as_str) == Some("b")
}

pub(super) fn parse_existing(text: &str, path: &Path) -> Result<Table, ConfigureError> {
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
pub(super) fn verify_round_trip(
    text: &str,
    doc: &Table,
    path: &Path,
) -> Result<(), ConfigureError> {
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

#[cfg(test)]
mod tests {
    use super::super::files::is_ours;
    use super::*;

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
    fn durations_in_go_syntax() {
        assert_eq!(go_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1500000ns");
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
}
