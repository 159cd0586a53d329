//! peermirror: a peer-to-peer, in-cluster container image mirror for containerd.
//!
//! # Layout
//! - [`oci`]: pure OCI distribution types (digest, name, reference, range, error body, manifest walking).
//! - [`content`]: the local-content seam ([`content::ContentSource`]), its in-memory fake, and the
//!   [`content::Index`] of what this node can serve, kept current by the [`content::Indexer`].
//! - [`containerd`]: the real [`content::ContentSource`] over containerd's gRPC API (and its content dir).
//! - [`registry`]: the read-only OCI distribution HTTP endpoint containerd uses as a mirror.
//! - [`ops`]: the operations listener: `/healthz`, `/readyz`, `/metrics`.
//! - [`pki`]: reading certificates, keys and CRLs at run time (the `certs` CLI makes them).
//! - [`metrics`]: Prometheus metrics, passed in, never global.
//! - [`ttl`]: a small bounded map whose entries expire (caches of the mirror and registry).
//! - [`cli`] and [`daemon`]: flags, and `run(listeners, shutdown)` wiring it all together.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod configure;
pub mod containerd;
pub mod content;
pub mod cri;
pub mod daemon;
pub mod fsutil;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod ops;
pub mod pki;
pub mod registry;
pub mod reload;
pub mod routing;
pub mod server;
pub mod status;
pub mod tls;
pub mod ttl;
