//! The registry's path parser (`registry::parse_route`): never panics, and what it accepts
//! round-trips through its canonical form and contains nothing that could change its meaning
//! once decoded (no `%` escape, no empty or dot segment).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermirror::registry::{Route, parse_route};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(route) = parse_route(path) else {
        return;
    };
    let canonical = match &route {
        Route::Base => "/v2/".to_owned(),
        Route::Manifest { name, reference } => format!("/v2/{name}/manifests/{reference}"),
        Route::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
    };
    assert_eq!(
        parse_route(&canonical).ok().as_ref(),
        Some(&route),
        "{path:?} parsed, its canonical form {canonical:?} did not parse back the same"
    );
    assert!(!path.contains('%'), "{path:?}: an escape was accepted");
    if route != Route::Base {
        let bad = path
            .split('/')
            .skip(1)
            .any(|s| s.is_empty() || s == "." || s == "..");
        assert!(!bad, "{path:?}: an empty or dot segment was accepted");
    }
});
