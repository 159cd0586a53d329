//! Authentication and TLS metrics: refusals, failed reloads, and how long the material lasts.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{ReasonLabels, WhatLabels, registered};

pub struct SecurityMetrics {
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub reload_failures: Family<WhatLabels, Counter>,
    /// Seconds until the CRL's nextUpdate (negative once it has passed).
    pub crl_expiry_seconds: Gauge<f64, AtomicU64>,
    /// Seconds until this node's TLS certificate expires.
    pub cert_expiry_seconds: Gauge<f64, AtomicU64>,
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
        }
    }
}
