//! Authentication and TLS metrics: refusals, failed reloads, and how long the material lasts.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{ReasonLabels, WhatLabels, registered};
use crate::sync::MutexExt;

pub struct SecurityMetrics {
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub reload_failures: Family<WhatLabels, Counter>,
    /// Seconds until the CRL's nextUpdate (negative once it has passed).
    pub crl_expiry_seconds: Gauge<f64, AtomicU64>,
    /// Seconds until this node's TLS certificate expires.
    pub cert_expiry_seconds: Gauge<f64, AtomicU64>,
    /// Refusals of this node's own containerd (loopback, not a peer request), for `status`.
    local: Mutex<Option<LocalRefusal>>,
}

/// Requests or handshakes from this node itself (where containerd connects from) that were
/// refused: its pulls then go quietly to the upstream, so `status` says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRefusal {
    pub count: u64,
    pub last_at: SystemTime,
    /// The last refusal's reason label (`missing_token`, `no_certificate`, ...).
    pub reason: &'static str,
}

impl SecurityMetrics {
    pub fn register(r: &mut Registry) -> Self {
        SecurityMetrics {
            auth_failures: registered(
                r,
                "auth_failures",
                "Refused handshakes and requests, by reason",
                Family::default(),
            ),
            reload_failures: registered(
                r,
                "reload_failures",
                "Certificate, key, CA, CRL or token files that failed to reload (the old material stays)",
                Family::default(),
            ),
            crl_expiry_seconds: registered(
                r,
                "crl_next_update_seconds",
                "Seconds until the CRL's nextUpdate; alert well before 0",
                Gauge::default(),
            ),
            cert_expiry_seconds: registered(
                r,
                "cert_expiry_seconds",
                "Seconds until this node's TLS certificate expires; alert well before 0",
                Gauge::default(),
            ),
            local: Mutex::new(None),
        }
    }

    /// Counts a refused handshake or request by `reason`; one from loopback that is not a
    /// peer's request (`from_peer`: it carried the mirrored marker) is remembered as
    /// containerd's.
    pub fn refused(&self, reason: &'static str, remote: IpAddr, from_peer: bool) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
        if remote.to_canonical().is_loopback() && !from_peer {
            let mut local = self.local.locked();
            let count = local.as_ref().map_or(0, |l| l.count) + 1;
            *local = Some(LocalRefusal {
                count,
                last_at: SystemTime::now(),
                reason,
            });
        }
    }

    /// The refusals of this node's own containerd since start, if any.
    pub fn local_refusal(&self) -> Option<LocalRefusal> {
        self.local.locked().clone()
    }
}
