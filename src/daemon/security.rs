//! The security side of start-up: which settings combinations are refused, the TLS material
//! and the token file (each reloaded when its files change), and the loud warnings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{DaemonError, Wiring};
use crate::auth::{AuthMode, Tokens};
use crate::metrics::WhatLabels;
use crate::tls::{self, MaterialRx, TlsFiles};

/// Authentication and TLS settings.
#[derive(Clone, Debug)]
pub struct Security {
    pub mode: AuthMode,
    pub insecure_no_auth: bool,
    pub tls: Option<TlsFiles>,
    pub token_file: Option<PathBuf>,
}

impl Security {
    /// No TLS, no auth: for tests and a loopback-only demo.
    pub fn insecure() -> Self {
        Security {
            mode: AuthMode::None,
            insecure_no_auth: true,
            tls: None,
            token_file: None,
        }
    }

    /// Refuse combinations that would silently be less safe than asked for.
    pub fn validate(&self) -> Result<(), DaemonError> {
        match self.mode {
            AuthMode::None if !self.insecure_no_auth => return Err(DaemonError::NoAuthNotAllowed),
            m if m.needs_client_cert() => match &self.tls {
                Some(t) if t.client_ca.is_some() => {}
                _ => return Err(DaemonError::MtlsWithoutClientCa),
            },
            _ => {}
        }
        if self.mode.needs_token() && self.token_file.is_none() {
            return Err(DaemonError::TokenWithoutFile);
        }
        Ok(())
    }
}

/// Loads the TLS material (when configured) and keeps it current.
pub(super) fn start_tls(
    w: &mut Wiring,
    security: &Security,
) -> Result<Option<MaterialRx>, DaemonError> {
    let Some(files) = &security.tls else {
        return Ok(None);
    };
    let material = tls::load(files)?;
    let rx = material.subscribe();
    w.tasks.spawn(
        "tls reload",
        tls::keep_current(
            files.clone(),
            material,
            w.metrics.clone(),
            w.shutdown.clone(),
        ),
    );
    Ok(Some(rx))
}

/// Loads the token file (when configured) and re-reads it whenever it changes; a broken file
/// keeps the old tokens.
pub(super) fn start_tokens(
    w: &mut Wiring,
    security: &Security,
) -> Result<Option<Arc<Tokens>>, DaemonError> {
    let Some(path) = &security.token_file else {
        return Ok(None);
    };
    let tokens = Arc::new(Tokens::load(path)?);
    let (t, metrics, shutdown) = (tokens.clone(), w.metrics.clone(), w.shutdown.clone());
    w.tasks.spawn("token reload", async move {
        let paths = vec![t.path().to_path_buf()];
        crate::reload::watch(paths, shutdown, || match t.reload() {
            Ok(n) => tracing::info!(tokens = n, "token file reloaded"),
            Err(e) => {
                metrics
                    .reload_failures
                    .get_or_create(&WhatLabels { what: "token" })
                    .inc();
                tracing::error!(error = %e, "token file changed but does not load; keeping the previous tokens");
            }
        })
        .await;
    });
    Ok(Some(tokens))
}

/// Say loudly, and keep saying, when the endpoint is less protected than it should be.
pub(super) fn warn_about_security(w: &mut Wiring, security: &Security) {
    if security.mode == AuthMode::None {
        let shutdown = w.shutdown.clone();
        w.tasks.spawn("no-auth warning", async move {
            let mut hourly = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = hourly.tick() => tracing::warn!("--auth-mode none: anyone who can reach the registry port can pull through this node"),
                }
            }
        });
    }
    if security.mode.needs_token() && security.tls.is_none() {
        tracing::warn!("token mode without TLS: peer fetches carry the token in clear text");
    }
}
