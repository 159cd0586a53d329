//! `peermirror status`: the admin API's client, as a readable table or JSON for scripts, and
//! `peermirror status web`, the same as a page in a browser ([`web`]).

pub mod web;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::admin::{AdminError, connect, proto};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Web(#[from] web::WebError),
}

impl From<tonic::Status> for StatusError {
    fn from(s: tonic::Status) -> Self {
        StatusError::Admin(AdminError::Call(s))
    }
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The admin socket of the running daemon (`peermirror run --admin-sock`)
    /// [default: <data-dir>/admin.sock].
    // `global`: also accepted after the subcommand (`status peers --admin-sock ...`).
    #[arg(long, global = true, env = "PEERMIRROR_ADMIN_SOCK")]
    pub admin_sock: Option<PathBuf>,

    /// The daemon's `--data-dir` (read from the same environment variable as `run`): its
    /// admin socket is `<data-dir>/admin.sock` unless --admin-sock says otherwise.
    #[arg(
        long,
        global = true,
        env = "PEERMIRROR_DATA_DIR",
        default_value = "/var/lib/peermirror"
    )]
    pub data_dir: PathBuf,

    /// Output format.
    #[arg(long, short, global = true, env = "PEERMIRROR_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,

    #[command(subcommand)]
    pub what: Option<StatusCommand>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug, Clone)]
pub enum StatusCommand {
    /// Connected peers.
    Peers,
    /// Which peers provide a digest or a tag, and whether each answers a HEAD in time.
    Lookup {
        /// `sha256:<hex>` or `registry/repo:tag`.
        reference: String,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// What this node advertises.
    Content {
        /// Only keys containing this text.
        filter: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Serve this node's status as a web page that refreshes itself (read-only; loopback by
    /// default: reach it with `kubectl port-forward`). Runs until interrupted.
    Web(web::WebArgs),
}

impl StatusArgs {
    /// The socket to talk to: `--admin-sock`, else the one `run` makes in its `--data-dir`.
    pub fn admin_sock(&self) -> PathBuf {
        self.admin_sock
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.sock"))
    }
}

/// The text to print and whether the command succeeded (for `status`: whether the node is
/// ready).
pub async fn run(args: &StatusArgs) -> Result<(String, bool), StatusError> {
    if let Some(StatusCommand::Web(web)) = &args.what {
        // Checked before connecting: a refused address is the user's to fix first.
        web.check_listen()?;
    }
    let mut client = connect(&args.admin_sock()).await?;
    let json = args.output == Output::Json;
    match &args.what {
        None => {
            let s = client.status(proto::StatusRequest {}).await?.into_inner();
            let ready = s.ready;
            Ok((
                if json {
                    status_json(&s)
                } else {
                    status_table(&s)
                },
                ready,
            ))
        }
        Some(StatusCommand::Peers) => {
            let p = client.peers(proto::PeersRequest {}).await?.into_inner();
            Ok((
                if json {
                    peers_json(&p)
                } else {
                    peers_table(&p)
                },
                true,
            ))
        }
        Some(StatusCommand::Lookup { reference, timeout }) => {
            let l = client
                .lookup(proto::LookupRequest {
                    key: reference.clone(),
                    timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
                })
                .await?
                .into_inner();
            let found = l.local || l.providers.iter().any(|p| p.answered);
            Ok((
                if json {
                    lookup_json(&l)
                } else {
                    lookup_table(&l)
                },
                found,
            ))
        }
        Some(StatusCommand::Content { filter, limit }) => {
            let c = client
                .content(proto::ContentRequest {
                    filter: filter.clone().unwrap_or_default(),
                    limit: *limit,
                })
                .await?
                .into_inner();
            Ok((
                if json {
                    content_json(&c)
                } else {
                    content_table(&c)
                },
                true,
            ))
        }
        Some(StatusCommand::Web(web)) => {
            web::run(web, client).await?;
            Ok((String::new(), true))
        }
    }
}

fn when(secs: i64) -> String {
    if secs <= 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs());
    let rel = match t.duration_since(SystemTime::now()) {
        Ok(d) => format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        Err(e) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(e.duration().as_secs()))
        ),
    };
    format!("{} ({rel})", humantime::format_rfc3339_seconds(t))
}

fn status_table(s: &proto::StatusResponse) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<20} {v}\n"));
    row("version", s.version.clone());
    row("peer id", or_dash(&s.peer_id));
    row("registry", s.registry_addr.clone());
    row("listening", or_dash(&s.listen_addrs.join(", ")));
    row("advertised", or_dash(&s.advertised_addrs.join(", ")));
    row("ready", if s.ready { "yes".into() } else { "NO".into() });
    for r in &s.not_ready_reasons {
        row("  because", r.clone());
    }
    let ctrd = match (s.containerd_up, s.index_loaded) {
        (true, true) => "reachable, indexed".to_string(),
        _ => format!("NOT ready: {}", or_dash(&s.containerd_reason)),
    };
    row("containerd", ctrd);
    row("containerd version", or_dash(&s.containerd_version));
    row("namespace", or_dash(&s.containerd_namespace));
    row(
        "content",
        format!("{} images, {} blobs, {} tags", s.images, s.blobs, s.tags),
    );
    row("advertised keys", s.advertised_keys.to_string());
    row("peers", s.connected_peers.to_string());
    row("auth", s.auth_mode.clone());
    row("cert expires", when(s.cert_not_after));
    row("crl next update", when(s.crl_next_update));
    row("spool", or_dash(&s.spool));
    for w in &s.warnings {
        row("WARNING", w.clone());
    }
    for f in &s.local_faults {
        row(
            "LOCAL FAULT",
            format!(
                "{} x{} (last {}): {}",
                f.kind,
                f.count,
                when(f.last_at_ms / 1000),
                f.last
            ),
        );
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn status_json(s: &proto::StatusResponse) -> String {
    status_value(s).to_string() + "\n"
}

pub(crate) fn status_value(s: &proto::StatusResponse) -> serde_json::Value {
    json!({
        "version": s.version, "peer_id": s.peer_id, "registry_addr": s.registry_addr,
        "listen_addrs": s.listen_addrs, "advertised_addrs": s.advertised_addrs,
        "ready": s.ready, "not_ready_reasons": s.not_ready_reasons,
        "containerd": {"up": s.containerd_up, "indexed": s.index_loaded, "reason": s.containerd_reason, "version": s.containerd_version, "namespace": s.containerd_namespace},
        "warnings": s.warnings,
        "spool": s.spool,
        "local_faults": s.local_faults.iter().map(|f| json!({"kind": f.kind, "count": f.count, "last_at_ms": f.last_at_ms, "last": f.last})).collect::<Vec<_>>(),
        "content": {"images": s.images, "blobs": s.blobs, "tags": s.tags},
        "advertised_keys": s.advertised_keys, "connected_peers": s.connected_peers,
        "auth_mode": s.auth_mode, "cert_not_after": s.cert_not_after, "crl_next_update": s.crl_next_update,
    })
}

fn peers_table(p: &proto::PeersResponse) -> String {
    let mut out = format!("{:<54} {:<22} {}\n", "PEER", "REGISTRY", "LAST SEEN");
    for peer in &p.peers {
        out.push_str(&format!(
            "{:<54} {:<22} {}\n",
            peer.peer_id,
            or_dash(&peer.registry_addr),
            when(peer.last_seen)
        ));
    }
    out.push_str(&format!("{} peer(s)\n", p.peers.len()));
    out
}

fn peers_json(p: &proto::PeersResponse) -> String {
    peers_value(p).to_string() + "\n"
}

pub(crate) fn peers_value(p: &proto::PeersResponse) -> serde_json::Value {
    let peers: Vec<_> = p
        .peers
        .iter()
        .map(|x| json!({"peer_id": x.peer_id, "registry_addr": x.registry_addr, "addrs": x.addrs, "last_seen": x.last_seen}))
        .collect();
    json!({ "peers": peers })
}

fn lookup_table(l: &proto::LookupResponse) -> String {
    let mut out = format!(
        "key      {}\nlocal    {}\n",
        l.key,
        if l.local { "yes" } else { "no" }
    );
    if l.providers.is_empty() {
        out.push_str("providers: none found (a pull would go to the upstream registry)\n");
        return out;
    }
    out.push_str(&format!(
        "{:<54} {:<22} {:<8} {:<7} {}\n",
        "PROVIDER", "REGISTRY", "ANSWER", "MS", "ERROR"
    ));
    for p in &l.providers {
        let answer = if p.answered {
            "ok".to_string()
        } else if p.status > 0 {
            p.status.to_string()
        } else {
            "none".into()
        };
        out.push_str(&format!(
            "{:<54} {:<22} {:<8} {:<7} {}\n",
            p.peer_id, p.registry_addr, answer, p.latency_ms, p.error
        ));
    }
    out
}

fn lookup_json(l: &proto::LookupResponse) -> String {
    lookup_value(l).to_string() + "\n"
}

pub(crate) fn lookup_value(l: &proto::LookupResponse) -> serde_json::Value {
    let providers: Vec<_> = l
        .providers
        .iter()
        .map(|p| json!({"peer_id": p.peer_id, "registry_addr": p.registry_addr, "answered": p.answered, "status": p.status, "latency_ms": p.latency_ms, "error": p.error}))
        .collect();
    json!({"key": l.key, "local": l.local, "providers": providers})
}

fn content_table(c: &proto::ContentResponse) -> String {
    let mut out = format!("{:<6} {:<12} {}\n", "KIND", "SIZE", "KEY");
    for e in &c.entries {
        let detail = if e.kind == "tag" {
            format!("{} -> {}", e.key, e.target)
        } else {
            format!("{} {}", e.key, e.media_type)
        };
        out.push_str(&format!(
            "{:<6} {:<12} {}\n",
            e.kind,
            if e.kind == "tag" {
                "-".into()
            } else {
                e.size.to_string()
            },
            detail
        ));
    }
    out.push_str(&format!("{} of {} key(s)\n", c.entries.len(), c.total));
    out
}

fn content_json(c: &proto::ContentResponse) -> String {
    content_value(c).to_string() + "\n"
}

pub(crate) fn content_value(c: &proto::ContentResponse) -> serde_json::Value {
    let entries: Vec<_> = c
        .entries
        .iter()
        .map(|e| json!({"key": e.key, "kind": e.kind, "size": e.size, "media_type": e.media_type, "target": e.target}))
        .collect();
    json!({"entries": entries, "total": c.total})
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> StatusArgs {
        match Cli::try_parse_from(args) {
            Ok(Cli {
                command: Command::Status(args),
            }) => args,
            Ok(other) => panic!("{args:?}: not status: {other:?}"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    /// `--output` and `--admin-sock` go before or after the subcommand, as a person types them.
    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let before = parse(&[
            "peermirror",
            "status",
            "--output",
            "json",
            "--admin-sock",
            "/x.sock",
            "peers",
        ]);
        let after = parse(&[
            "peermirror",
            "status",
            "peers",
            "--output",
            "json",
            "--admin-sock",
            "/x.sock",
        ]);
        for args in [&before, &after] {
            assert_eq!(args.output, Output::Json);
            assert_eq!(args.admin_sock(), std::path::Path::new("/x.sock"));
            assert!(matches!(args.what, Some(StatusCommand::Peers)));
        }
        let lookup = parse(&[
            "peermirror",
            "status",
            "lookup",
            "sha256:00",
            "-o",
            "json",
            "--timeout",
            "1s",
        ]);
        assert_eq!(lookup.output, Output::Json);
        assert!(matches!(
            lookup.what,
            Some(StatusCommand::Lookup { ref reference, timeout })
                if reference == "sha256:00" && timeout == Duration::from_secs(1)
        ));
        // Without a subcommand, the defaults.
        let plain = parse(&["peermirror", "status"]);
        assert_eq!(plain.output, Output::Table);
        assert_eq!(
            plain.admin_sock(),
            std::path::Path::new("/var/lib/peermirror/admin.sock")
        );
        // `run --data-dir D` makes D/admin.sock: `status --data-dir D` finds it.
        let moved = parse(&["peermirror", "status", "--data-dir", "/srv/pm", "peers"]);
        assert_eq!(
            moved.admin_sock(),
            std::path::Path::new("/srv/pm/admin.sock")
        );
        let both = parse(&[
            "peermirror",
            "status",
            "--data-dir",
            "/srv/pm",
            "--admin-sock",
            "/x.sock",
        ]);
        assert_eq!(both.admin_sock(), std::path::Path::new("/x.sock"));
    }
}
