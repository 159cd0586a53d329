//! peermirror: a peer-to-peer, in-cluster container image mirror for containerd.
//!
//! # Layout
//! Pure types and seams:
//! - [`oci`]: OCI distribution types with no I/O: digest, name, reference, range, wire headers,
//!   error body, manifest walking.
//! - [`content`]: the local-content seam ([`content::ContentSource`]), its in-memory fake, and the
//!   [`content::Index`] of what this node can serve, kept current by the [`content::Indexer`].
//! - [`routing`]: the [`routing::Router`] seam (lookup, advertise, withdraw, status), the libp2p
//!   Kademlia router, the in-memory router, the advertiser that keeps the DHT current, and the
//!   records of blobs still downloading ([`routing::partial_records`]).
//!
//! Serving:
//! - [`containerd`]: the real [`content::ContentSource`] over containerd's gRPC API and content dir.
//! - [`registry`]: the read-only OCI distribution HTTP endpoint containerd uses as a mirror;
//!   each response's [`registry::Source`] (where its bytes came from) and access record; it
//!   also serves peers blobs this node is still downloading.
//! - [`mirror`]: what this node lacks, fetched from peers and verified (see `DESIGN.md`).
//! - [`spool`]: one verified download per blob per node, under `--data-dir`, streamed to
//!   every request while it arrives; each response's last bytes wait for verification.
//! - [`server`]: the accept loop: connection limits, TLS handshakes off the accept path, draining.
//! - [`limits`]: upload slots and egress pacing.
//! - [`ops`]: the operations listener: `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: Prometheus metrics, one struct per subsystem, passed in, never global; a leaf
//!   (the registry reports each request to the status page through its own `AccessSink`).
//!
//! Security:
//! - [`auth`]: auth modes, bearer tokens, the request guard and its [`auth::Identity`].
//! - [`token`]: signed bearer tokens (JWT, HS256): minting, checking, `peermirror token issue`.
//! - [`tls`]: rustls configurations with CRLs, published through a `watch` channel on reload.
//! - [`pki`]: reading certificates, keys and CRLs at run time.
//! - [`certs`]: the `peermirror certs` CLI: a small cluster CA (rcgen).
//!
//! Operation:
//! - [`cli`]: flags (each with an env var) and their translation into configuration.
//! - [`daemon`]: `run(config, listeners, shutdown)`, wiring the subsystems in `start_*` steps.
//! - [`admin`]: the gRPC admin API on a unix socket (`proto/peermirror/v1/admin.proto`).
//! - [`status`]: `peermirror status`, the admin API's command-line client, and `status web`,
//!   its read-only web page.
//! - [`configure`]: `peermirror configure`: writes containerd's `hosts.toml`.
//! - `cri` (feature `cri-client`, on for the tests): a CRI image-service client, the kubelet's
//!   pull, for the end-to-end tests.
//!
//! Small utilities:
//! - [`reload`]: one poll loop that watches files and calls back on change.
//! - [`ttl`]: a small bounded map whose entries expire (caches of the mirror and registry).
//! - [`fsutil`]: atomic, durable file writes with the mode set at creation; page-cache reads
//!   that never block (else the blocking pool), and the pooled buffers they are lent out in.
//! - [`sync`]: locks that outlive a panicked holder (poisoning ignored in one place).
//! - [`grpc`]: gRPC channels over unix sockets (admin socket, containerd's CRI socket).
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod configure;
pub mod containerd;
pub mod content;
#[cfg(feature = "cri-client")]
pub mod cri;
pub mod daemon;
pub mod fsutil;
pub mod grpc;
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
pub mod spool;
pub mod status;
pub mod sync;
pub mod tls;
pub mod token;
pub mod ttl;
