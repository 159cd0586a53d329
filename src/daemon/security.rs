//! The security side of start-up: which settings combinations are refused, the TLS material
//! and the token file (each reloaded when its files change), and the loud warnings.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DaemonError, Routing, Wiring};
use crate::auth::{AuthMode, Tokens};
use crate::metrics::{Metrics, WhatLabels};
use crate::tls::{self, MaterialRx, TlsFiles};
use crate::token::SigningKey;

/// Signed tokens, and the hosts.toml files whose token the daemon keeps current.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// HS256 key (raw bytes): signed tokens are accepted, and this node mints its own.
    pub signing_key: Option<PathBuf>,
    /// Lifetime of the tokens this node mints; they are replaced at half of it.
    pub ttl: Duration,
    /// containerd's hosts directory where `configure --token-file` wrote this node's token.
    pub hosts_dir: Option<PathBuf>,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            signing_key: None,
            ttl: Duration::from_secs(15 * 60),
            hosts_dir: None,
        }
    }
}

impl TokenSettings {
    /// A minted token must outlive the pulls that use it, and be replaced while still valid.
    pub fn validate(&self) -> Result<(), DaemonError> {
        if self.signing_key.is_some()
            && !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&self.ttl)
        {
            return Err(DaemonError::TokenTtl(self.ttl));
        }
        Ok(())
    }
}

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

    /// Refuse combinations that would silently be less safe than asked for (without a
    /// token signing key).
    pub fn validate(&self) -> Result<(), DaemonError> {
        self.validate_with(false)
    }

    /// [`Security::validate`], knowing whether a token signing key is given.
    pub fn validate_with(&self, signing_key: bool) -> Result<(), DaemonError> {
        match self.mode {
            AuthMode::None if !self.insecure_no_auth => return Err(DaemonError::NoAuthNotAllowed),
            m if m.needs_client_cert() => match &self.tls {
                Some(t) if t.client_ca.is_some() => {}
                _ => return Err(DaemonError::MtlsWithoutClientCa),
            },
            _ => {}
        }
        if self.mode.needs_token() && self.token_file.is_none() && !signing_key {
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

/// The `[host."URL"]` tables that name this node's registry endpoint: its port, on a loopback
/// host or one of this node's addresses.
#[derive(Clone, Debug)]
pub(super) struct OwnMirror {
    port: u16,
    ips: Vec<IpAddr>,
}

impl OwnMirror {
    pub(super) fn new(registry: SocketAddr, routing: &Routing) -> Self {
        let mut ips = vec![registry.ip()];
        if let Routing::P2p(p) = routing
            && let Some(a) = p.advertise
        {
            ips.push(a.ip());
        }
        ips.retain(|ip| !ip.is_unspecified());
        OwnMirror {
            port: registry.port(),
            ips,
        }
    }

    pub(super) fn owns(&self, url: &str) -> bool {
        let Some((host, port)) = crate::configure::host_port(url) else {
            return false;
        };
        port == self.port
            && (host == "localhost"
                || host
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback() || self.ips.contains(&ip)))
    }
}

/// The name in this node's minted token subjects: the Kubernetes node (the chart passes
/// NODE_NAME) or the host name, cut to what a subject may hold.
fn node_name() -> String {
    let raw = std::env::var("NODE_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let name: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(100)
        .collect();
    if name.is_empty() { "node".into() } else { name }
}

/// Loads the token file and the signing key (when configured), re-reads them whenever they
/// change (a broken file keeps the old ones), and keeps the token in the hosts.toml files
/// under `--hosts-dir` current: rewritten at start, on each change, and, when this node mints
/// containerd's token, at half its lifetime.
pub(super) fn start_tokens(
    w: &mut Wiring,
    security: &Security,
    settings: &TokenSettings,
    own: OwnMirror,
) -> Result<Option<Arc<Tokens>>, DaemonError> {
    if security.token_file.is_none() && settings.signing_key.is_none() {
        return Ok(None);
    }
    let key = settings
        .signing_key
        .as_deref()
        .map(SigningKey::load)
        .transpose()?
        .map(Arc::new);
    let tokens = Arc::new(Tokens::new(
        security.token_file.as_deref(),
        key,
        settings.ttl,
        &node_name(),
    )?);
    w.tasks.spawn(
        "token reload",
        keep_tokens_current(
            tokens.clone(),
            settings.hosts_dir.clone(),
            own,
            w.metrics.clone(),
            w.shutdown.clone(),
        ),
    );
    Ok(Some(tokens))
}

/// After a failed hosts.toml rewrite, the next try.
const REWRITE_RETRY: Duration = Duration::from_secs(10);

async fn keep_tokens_current(
    tokens: Arc<Tokens>,
    hosts_dir: Option<PathBuf>,
    own: OwnMirror,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let token_path = tokens.path().map(Path::to_path_buf);
    let key_path = tokens.signing_key().map(|k| k.path().to_path_buf());
    let paths: Vec<PathBuf> = token_path.iter().chain(key_path.iter()).cloned().collect();
    let refresh = tokens.minted_ttl().map(|t| t / 2);
    let failed = |what: &'static str| {
        metrics
            .security
            .reload_failures
            .get_or_create(&WhatLabels { what })
            .inc();
    };
    let mut last = crate::reload::fingerprint(&paths);
    let mut last_hosts = hosts_dir.as_deref().map(hosts_fingerprint);
    // The first rewrite happens at once: containerd may hold a stale or placeholder token.
    let mut next_rewrite = hosts_dir.as_ref().map(|_| Instant::now());
    let mut tick = tokio::time::interval(crate::reload::POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::reload::fingerprint(&paths);
        if now != last {
            last = now;
            if token_path.is_some() {
                match tokens.reload() {
                    Ok(n) => tracing::info!(tokens = n, "token file reloaded"),
                    Err(e) => {
                        failed("token");
                        tracing::error!(error = %e, "token file changed but does not load; keeping the previous tokens");
                    }
                }
            }
            if let Some(key) = tokens.signing_key() {
                match key.reload() {
                    Ok(()) => tokens.forget_minted(),
                    Err(e) => {
                        failed("token-signing-key");
                        tracing::error!(error = %e, "token signing key changed but does not load; keeping the previous key");
                    }
                }
            }
            next_rewrite = hosts_dir.as_ref().map(|_| Instant::now());
        }
        // `configure` (re)wrote a file, possibly with an older token: put the current one in.
        let hosts_now = hosts_dir.as_deref().map(hosts_fingerprint);
        if hosts_now != last_hosts {
            last_hosts = hosts_now;
            next_rewrite = hosts_dir.as_ref().map(|_| Instant::now());
        }
        let (Some(dir), Some(due)) = (&hosts_dir, next_rewrite) else {
            continue;
        };
        if Instant::now() < due {
            continue;
        }
        next_rewrite = match rewrite_hosts(dir, &own, &tokens).await {
            true => {
                // Our own write is no news: without this, the next poll would see the file
                // change and rewrite it with a freshly minted token, every poll, forever.
                last_hosts = Some(hosts_fingerprint(dir));
                refresh.map(|r| Instant::now() + r)
            }
            false => {
                failed("hosts.toml");
                Some(Instant::now() + REWRITE_RETRY)
            }
        };
    }
}

/// Each `<dir>/*/hosts.toml`'s stat, taken again after each of our own rewrites, so only
/// someone else's write (`configure`) triggers a pass.
fn hosts_fingerprint(dir: &Path) -> crate::reload::Fingerprint {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(crate::configure::HOSTS_FILE))
        .collect();
    files.sort();
    crate::reload::fingerprint(&files)
}

/// Puts the current token for containerd into the hosts.toml files this node owns.
async fn rewrite_hosts(dir: &Path, own: &OwnMirror, tokens: &Tokens) -> bool {
    let Some(token) = tokens.for_containerd() else {
        return true;
    };
    let (dir, own) = (dir.to_path_buf(), own.clone());
    let done = tokio::task::spawn_blocking(move || {
        crate::configure::rewrite_token(&dir, &|url| own.owns(url), &token)
    })
    .await;
    match done {
        Ok(Ok(files)) => {
            for f in &files {
                tracing::info!(file = %f.display(), "hosts.toml token rewritten");
            }
            true
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot rewrite the token in hosts.toml; containerd keeps the previous one");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "the hosts.toml rewrite task failed");
            false
        }
    }
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
