//! hosts.toml parsing in `configure`: an existing file merged under our mirrors
//! (`configure::render_hosts_toml`, as `--keep-existing-mirrors` does) and the daemon's token
//! rotation rewriting a file in place (`configure::rewrite_hosts_text`).
//! Properties: no panic; what is rendered parses, lists our mirrors first and in order, and
//! rendering it again changes nothing; a rewrite parses, carries the new token, and a second
//! rewrite has nothing left to do.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use peermirror::configure::{Endpoint, MirrorSettings, render_hosts_toml, rewrite_hosts_text};
use toml::{Table, Value};

const MIRRORS: [&str; 2] = ["http://127.0.0.1:30020", "https://[::1]:30021"];

fn host_keys(text: &str) -> Vec<String> {
    let doc: Table = toml::from_str(text).expect("output parses");
    doc.get("host")
        .and_then(Value::as_table)
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mirrors = MIRRORS
        .iter()
        .map(|m| Endpoint::parse("--mirror", m).expect("a valid mirror"))
        .collect::<Vec<_>>();
    let settings = MirrorSettings {
        mirrors,
        dial_timeout: None,
        ca_file: None,
        client_pair: None,
        token: None,
    };
    if let Ok(out) = render_hosts_toml(None, &settings, Some(text)) {
        let keys = host_keys(&out);
        assert_eq!(
            &keys[..MIRRORS.len()],
            &MIRRORS[..],
            "our mirrors come first"
        );
        let again = render_hosts_toml(None, &settings, Some(&out)).expect("our output re-renders");
        assert_eq!(again, out, "rendering is not idempotent");
    }

    let own = |url: &str| url.contains(":30020");
    let path = Path::new("hosts.toml");
    if let Ok(Some(out)) = rewrite_hosts_text(text, &own, "fuzz-token", path) {
        assert!(out.contains("Bearer fuzz-token"));
        let _ = host_keys(&out);
        let again = rewrite_hosts_text(&out, &own, "fuzz-token", path).expect("re-parses");
        assert_eq!(again, None, "a second rewrite still changed something");
    }
});
