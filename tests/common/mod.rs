//! End-to-end test harness: real docker-registry, real containerd, real skopeo,
//! and the `peermirror` binary, all on 127.0.0.1.
//!
//! Every process started here is owned by a guard that kills it by PID on
//! Drop (also while unwinding from a failed assertion). Every wait is bounded
//! by a deadline. Temp dirs live under `std::env::temp_dir()` and are removed
//! on Drop; only the fixture cache in `target/e2e-fixtures` is kept on purpose.
//!
//! Used by integration test files with `mod common;`; each file uses a subset.
//! (In-process tests, without containerd or child processes, use `tests/support`.)
//!
//! Layout: `process` (waits, commands, logs), `fixtures` (images and digests),
//! `registry` (docker-registry, skopeo), `containerd`, `peermirror` (the binary),
//! `node` (containerd + peermirror + hosts.toml: one cluster node), `http`, `pki`, `netns`
//! (nodes in network namespaces of their own: `tests/e2e_netns.rs`), `proxy` (a rate-limited
//! TCP proxy in front of the upstream).
#![allow(dead_code)]
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod containerd;
mod fixtures;
mod http;
mod netns;
mod node;
mod peermirror;
mod pki;
mod process;
mod proxy;
mod registry;

// Each test binary uses a subset.
#[allow(unused_imports)]
pub use self::{
    containerd::*, fixtures::*, http::*, netns::*, node::*, peermirror::*, pki::*, process::*,
    proxy::*,
    registry::*,
};
