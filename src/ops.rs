//! The operations listener (`--metrics-addr`), never authenticated: `/healthz` (the process
//! answers), `/readyz` (every readiness check passes; otherwise 503 with the reasons), and
//! `/metrics` in Prometheus text format.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::Full;

use crate::metrics::Metrics;

/// A readiness check: `None` when ready, or the reason it is not.
pub type Check = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// Everything the operations endpoint reports on.
pub struct Health {
    metrics: Arc<Metrics>,
    checks: Vec<Check>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Health {
            metrics,
            checks: Vec::new(),
        }
    }

    pub fn add_check(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// Reasons the node is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.checks.iter().filter_map(|c| c()).collect()
    }

    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into());
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                let reasons = self.not_ready_reasons();
                if reasons.is_empty() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", reasons.join("; ")),
                    )
                }
            }
            "/metrics" => {
                let mut r = text(StatusCode::OK, self.metrics.encode());
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
