//! Command-line flags. Every flag can also be set with an environment variable
//! `PEERMIRROR_<FLAG>` (upper case, `-` as `_`), which is how the Helm chart configures it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::auth::AuthMode;
use crate::daemon::{
    Config, DaemonError, P2pSettings, Routing, Security, SpoolSettings, TokenSettings,
};
use crate::mirror::MirrorConfig;
use crate::routing::Bootstrap;
use crate::server::ServerLimits;
use crate::tls::{CrlExpired, TlsFiles};

#[derive(Parser, Debug)]
#[command(
    name = "peermirror",
    version,
    about = "Peer-to-peer in-cluster container image mirror for containerd"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the mirror daemon on this node.
    Run(Box<RunArgs>),
    /// Write containerd hosts.toml files that name this node's mirror.
    Configure(crate::configure::ConfigureArgs),
    /// A small cluster CA: init-ca, issue, revoke, crl, inspect.
    Certs(crate::certs::CertsArgs),
    /// Show this node's status, peers, lookups and content (talks to the admin socket).
    /// Exit codes: 0 ready (for `lookup`: found), 3 not ready (not found), saying why;
    /// 1 the daemon could not be asked (no socket at --admin-sock or <data-dir>/admin.sock,
    /// not root, a failed call); 2 a usage error.
    Status(crate::status::StatusArgs),
    /// Signed bearer tokens: `token issue --key FILE --ttl 1h --subject NAME`.
    Token(crate::token::TokenArgs),
    /// Print the version.
    Version,
}

/// `peermirror run`'s flags, in groups named like the README's sections of its flags table.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub containerd: ContainerdArgs,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub dht: DhtArgs,

    /// Where the node keeps its identity key, so a restart keeps its PeerId.
    #[arg(
        long,
        env = "PEERMIRROR_DATA_DIR",
        default_value = "/var/lib/peermirror"
    )]
    pub data_dir: PathBuf,

    /// Unix socket of the admin API (mode 0600), used by `peermirror status`
    /// [default: <data-dir>/admin.sock].
    #[arg(long, env = "PEERMIRROR_ADMIN_SOCK")]
    pub admin_sock: Option<PathBuf>,

    #[command(flatten)]
    pub mirror: MirrorArgs,

    #[command(flatten)]
    pub security: SecurityArgs,

    #[command(flatten)]
    pub uploads: UploadArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Which containerd, and where its content lives.
#[derive(Args, Debug, Clone)]
pub struct ContainerdArgs {
    /// containerd's gRPC socket.
    #[arg(
        long,
        env = "PEERMIRROR_CONTAINERD_SOCK",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_sock: PathBuf,

    /// containerd namespace whose images are served (Kubernetes uses k8s.io).
    #[arg(
        long,
        env = "PEERMIRROR_CONTAINERD_NAMESPACE",
        default_value = "k8s.io"
    )]
    pub containerd_namespace: String,

    /// containerd's content directory (`<root>/io.containerd.content.v1.content`). When readable,
    /// blobs are read from its files, much faster than over gRPC; gRPC remains the fallback.
    #[arg(long, env = "PEERMIRROR_CONTAINERD_CONTENT_DIR")]
    pub containerd_content_dir: Option<PathBuf>,

    /// containerd's config file (e.g. /etc/containerd/config.toml): checked at start for a
    /// registry `config_path` that would make containerd ignore the mirror (the colon-separated
    /// list of containerd 2.2+); `peermirror status` shows the warning.
    #[arg(long, env = "PEERMIRROR_CONTAINERD_CONFIG")]
    pub containerd_config: Option<PathBuf>,
}

/// The registry and operations listeners, and the limits on the registry's connections.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address of the registry (mirror) endpoint.
    #[arg(long, env = "PEERMIRROR_REGISTRY_ADDR", default_value = "0.0.0.0:5000")]
    pub registry_addr: SocketAddr,

    /// Address of the health, readiness and metrics endpoint (never authenticated).
    #[arg(long, env = "PEERMIRROR_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Connections to the registry endpoint anyone may hold. When all are taken, the oldest
    /// one that has completed no request is closed for a newcomer; when all are busy, the
    /// newcomer is closed. Lowered at start to fit the open-file limit.
    #[arg(long, env = "PEERMIRROR_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Connections kept, beyond --max-connections, for this node's containerd (127.0.0.1)
    /// and connected peers, so a flood from elsewhere cannot lock them out.
    #[arg(long, env = "PEERMIRROR_RESERVED_CONNECTIONS", default_value_t = 256)]
    pub reserved_connections: usize,

    /// Most simultaneous connections from one address; more are closed at once.
    #[arg(long, env = "PEERMIRROR_MAX_CONNECTIONS_PER_IP", default_value_t = 128)]
    pub max_connections_per_ip: usize,

    /// How long a client may take to send a request head (also how long an idle keep-alive
    /// connection stays open).
    #[arg(long, env = "PEERMIRROR_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a client may take to complete the TLS handshake.
    #[arg(long, env = "PEERMIRROR_TLS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// How long in-flight responses may take to finish after SIGTERM.
    #[arg(long, env = "PEERMIRROR_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Failed authentications from one remote address (never loopback) that get it 429 until
    /// --auth-failure-window has passed since its first failure.
    #[arg(long, env = "PEERMIRROR_AUTH_FAILURES_MAX", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failures_max: u32,

    /// The window --auth-failures-max counts in, and how long a throttled address waits.
    #[arg(long, env = "PEERMIRROR_AUTH_FAILURE_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub auth_failure_window: Duration,
}

/// The libp2p DHT: where it listens, how it finds peers, how long its records live.
#[derive(Args, Debug, Clone)]
pub struct DhtArgs {
    /// Address of the libp2p (DHT) listener.
    #[arg(long, env = "PEERMIRROR_ROUTER_ADDR", default_value = "0.0.0.0:5001")]
    pub router_addr: SocketAddr,

    /// The address other nodes reach this node at, IP[:PORT] (PORT defaults to the router
    /// port). Needed when --router-addr is 0.0.0.0; the Helm chart passes the node IP.
    #[arg(long, env = "PEERMIRROR_ADVERTISE_ADDR", value_parser = parse_advertise)]
    pub advertise_addr: Option<AdvertiseAddr>,

    /// How to find peers: `static:<multiaddr>` (repeatable), `dns:<host>:<port>` (a headless
    /// Service, re-resolved), or `none`.
    #[arg(
        long = "bootstrap",
        env = "PEERMIRROR_BOOTSTRAP",
        value_delimiter = ',',
        default_value = "none"
    )]
    pub bootstrap: Vec<Bootstrap>,

    /// Lifetime of this node's provider records in the DHT.
    #[arg(long, env = "PEERMIRROR_PROVIDER_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub provider_ttl: Duration,

    /// How often provider records are re-published (well under --provider-ttl).
    #[arg(long, env = "PEERMIRROR_REPUBLISH_INTERVAL", default_value = "3m", value_parser = humantime::parse_duration)]
    pub republish_interval: Duration,

    /// Kademlia's replication factor k: how many nodes store each provider record. Each key
    /// announced costs about k + 8 requests and each node stores keys-per-node × k records;
    /// 5 (not libp2p's 20) keeps 200 nodes × 2,000 keys within a node's budget, and a key is
    /// lost only if all k holders die within one republish interval (docs/scale.md). Use the
    /// same value on every node.
    #[arg(long, env = "PEERMIRROR_DHT_REPLICATION", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub dht_replication: u16,

    /// libp2p private-network pre-shared key file (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex
    /// characters): only nodes holding the same key can join the DHT.
    #[arg(long, env = "PEERMIRROR_P2P_PSK_FILE")]
    pub p2p_psk_file: Option<PathBuf>,
}

/// Fetching what this node lacks from peers: deadlines, tags, verification and the spool.
#[derive(Args, Debug, Clone)]
pub struct MirrorArgs {
    /// How long to wait, at least, for a peer that has a missing blob before answering 404
    /// (containerd then goes to the upstream registry). With --mirror-resolve-timeout-max
    /// above it, the wait follows the DHT lookups' latency on this node (twice their 99th
    /// percentile) up to that; a lookup that asked the closest nodes and found nobody
    /// answers 404 at once.
    #[arg(long, env = "PEERMIRROR_MIRROR_RESOLVE_TIMEOUT", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub mirror_resolve_timeout: Duration,

    /// The longest the adaptive wait for a provider may become (see --mirror-resolve-timeout;
    /// the current wait is the `peermirror_resolve_wait_seconds` gauge). Equal to
    /// --mirror-resolve-timeout keeps the wait fixed (a lookup slower than it is a 404 and an
    /// upstream pull for a blob a peer holds).
    #[arg(long, env = "PEERMIRROR_MIRROR_RESOLVE_TIMEOUT_MAX", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub mirror_resolve_timeout_max: Duration,

    /// Resolve tags through peers (digests always are). Default: on when peers prove they are
    /// cluster members: --auth-mode mtls or mtls+token, or token over TLS (--tls-cert, --tls-key
    /// and --tls-peer-ca: peers' server certificates are checked); off otherwise (any DHT
    /// member could answer for a tag; turning it on there logs a warning).
    #[arg(long, env = "PEERMIRROR_RESOLVE_TAGS", action = ArgAction::Set)]
    pub resolve_tags: Option<bool>,

    /// With --resolve-tags=true and unauthenticated peers (token or none without TLS): let a
    /// tag stand on one provider's answer when no other confirms it within the tag deadline
    /// (the earlier behaviour). Off: such a tag answers 404 and containerd asks the upstream.
    /// When peers are authenticated (mTLS, or token over TLS) a lone answer stands anyway.
    #[arg(long, env = "PEERMIRROR_TRUST_UNCONFIRMED_TAGS", default_value_t = false, action = ArgAction::Set)]
    pub trust_unconfirmed_tags: bool,

    /// Also resolve the `latest` tag through peers (off: it moves too often to trust a peer).
    #[arg(long, env = "PEERMIRROR_RESOLVE_LATEST_TAG", default_value_t = false, action = ArgAction::Set)]
    pub resolve_latest_tag: bool,

    /// How long to wait for a peer's response headers before asking the next.
    #[arg(long, env = "PEERMIRROR_MIRROR_RESPONSE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub mirror_response_timeout: Duration,

    /// A peer that sends no bytes for this long is left for the next (resuming where it
    /// stopped); the response fails when none is left.
    #[arg(long, env = "PEERMIRROR_MIRROR_STALL_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub mirror_stall_timeout: Duration,

    /// Blobs up to this many bytes are fetched whole from peers and verified before the
    /// first byte is sent (a lying peer then costs a clean fallback, not a broken pull).
    #[arg(long, env = "PEERMIRROR_VERIFY_BEFORE_SEND", default_value_t = 16 * 1024 * 1024)]
    pub verify_before_send: u64,

    /// Bytes of blobs fetched from peers kept under `<data-dir>/spool`: every request for one
    /// blob (containerd's ranged chunks, peers) shares one download, served while it arrives
    /// and dropped once containerd has committed the blob (least recently used first when
    /// full). A blob larger than the free room streams unspooled; 0 turns the spool off.
    #[arg(long, env = "PEERMIRROR_SPOOL_MAX_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub spool_max_bytes: u64,

    /// When the first peer has not answered by then, ask the next one too.
    #[arg(long, env = "PEERMIRROR_MIRROR_HEDGE_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub mirror_hedge_delay: Duration,

    /// Rollouts: a node that misses a blob nobody has complete asks the blob's coordinator (one
    /// of the nodes, the same for every node) for its place. The first to ask lets its
    /// containerd fetch it from the upstream; each later one holds containerd's request up to
    /// this long (jittered) until the node that asked before it has a copy in flight, and
    /// streams that: a chain, one upstream copy. A miss costs one request to the coordinator.
    /// 0 turns it off: every miss then answers 404 at once (docs/benchmarks.md, "Rollouts").
    #[arg(long, env = "PEERMIRROR_MIRROR_CLAIM_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub mirror_claim_wait: Duration,
}

/// What this node gives away: uploads at once and egress bytes per second.
#[derive(Args, Debug, Clone)]
pub struct UploadArgs {
    /// Most uploads (response bodies) at once; beyond it requests get 503 with Retry-After.
    /// 0 = unlimited.
    #[arg(long, env = "PEERMIRROR_MAX_CONCURRENT_UPLOADS", default_value_t = 64)]
    pub max_concurrent_uploads: usize,

    /// Egress cap in bytes per second shared by all uploads. 0 = unlimited.
    #[arg(long, env = "PEERMIRROR_MAX_EGRESS_BPS", default_value_t = 0)]
    pub max_egress_bps: u64,

    /// Most peers streaming one blob (1 MiB or more) from this node at once; another is told
    /// "busy" and streams it from a node that follows this one, so a rollout forms a chain
    /// in which every node uploads about what it downloads. A peer that finds every copy
    /// busy is let in anyway. 0 = unlimited.
    #[arg(long, env = "PEERMIRROR_MAX_FOLLOWERS", default_value_t = DEFAULT_MAX_FOLLOWERS)]
    pub max_followers: usize,
}

/// `--max-followers`: one, a chain.
pub const DEFAULT_MAX_FOLLOWERS: usize = 1;

/// Who may use the registry endpoint, and the TLS material for it and for peer fetches.
#[derive(Args, Debug, Clone)]
pub struct SecurityArgs {
    /// How clients authenticate: mtls, token, mtls+token, or none (needs --insecure-no-auth).
    #[arg(long, env = "PEERMIRROR_AUTH_MODE", value_enum, default_value_t = AuthMode::Mtls)]
    pub auth_mode: AuthMode,

    /// Allow --auth-mode none: anyone who reaches the port can pull through this node.
    #[arg(long, env = "PEERMIRROR_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Server certificate (PEM chain) for the registry endpoint; also presented to peers.
    #[arg(long, env = "PEERMIRROR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) for --tls-cert.
    #[arg(long, env = "PEERMIRROR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Cluster CA (PEM): when given, clients must present a certificate it signed, in every
    /// auth mode (in token mode containerd too: give --tls-peer-ca there instead).
    #[arg(long, env = "PEERMIRROR_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// CA for peers' server certificates (default: --tls-client-ca).
    #[arg(long, env = "PEERMIRROR_TLS_PEER_CA")]
    pub tls_peer_ca: Option<PathBuf>,

    /// Check peers' certificates for this DNS name rather than their IP address.
    #[arg(long, env = "PEERMIRROR_TLS_PEER_SERVER_NAME")]
    pub tls_peer_server_name: Option<String>,

    /// Certificate revocation list (PEM or DER), repeatable; reloaded when it changes.
    #[arg(long = "tls-crl", env = "PEERMIRROR_TLS_CRL", value_delimiter = ',')]
    pub tls_crl: Vec<PathBuf>,

    /// What to do when a CRL is past its nextUpdate: deny (refuse every certificate) or warn.
    #[arg(long, env = "PEERMIRROR_CRL_EXPIRED", value_enum, default_value_t = CrlExpired::Deny)]
    pub crl_expired: CrlExpired,

    /// Bearer tokens, one per line, newest first (several lines let a rotation overlap); every
    /// line is accepted; reloaded when it changes. containerd is handed the first line; a peer
    /// the newest line it says it accepts, one not heard from yet the last line (unless
    /// --token-signing-key is given). Rotate in two steps: the new token first on every node,
    /// then drop the old line.
    #[arg(long, env = "PEERMIRROR_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// HS256 key file (raw bytes, at least 32; a cluster Secret): tokens it signed (JWT,
    /// audience `peermirror`) are accepted until they expire, and this node mints short-lived
    /// ones for its containerd (see --hosts-dir) and its peer requests. Reloaded when it changes.
    #[arg(long, env = "PEERMIRROR_TOKEN_SIGNING_KEY")]
    pub token_signing_key: Option<PathBuf>,

    /// Lifetime of the tokens this node mints with --token-signing-key; each is replaced at
    /// half of it.
    #[arg(long, env = "PEERMIRROR_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,

    /// containerd's hosts directory (its `config_path`) where `peermirror configure` wrote
    /// this node's mirror: the daemon writes containerd's token into those tables (adding the
    /// header when missing) at start, when the token file changes or a minted token nears
    /// expiry, so rotation needs no restart. Without it, containerd has only the token
    /// `configure --token-file` wrote (a warning at start says when it has none).
    #[arg(long, env = "PEERMIRROR_HOSTS_DIR")]
    pub hosts_dir: Option<PathBuf>,
}

impl Config {
    /// The daemon's settings from `peermirror run`'s flags; refuses flags that only make
    /// sense together when one is missing.
    pub fn from_args(args: &RunArgs) -> Result<Self, DaemonError> {
        let (c, d, m) = (&args.containerd, &args.dht, &args.mirror);
        Ok(Config {
            containerd_sock: c.containerd_sock.clone(),
            containerd_namespace: c.containerd_namespace.clone(),
            content_dir: c.containerd_content_dir.clone(),
            containerd_config: c.containerd_config.clone(),
            data_dir: Some(args.data_dir.clone()),
            spool: SpoolSettings::new(args.data_dir.join("spool"), m.spool_max_bytes),
            limits: args.server.limits(),
            routing: Routing::P2p(d.settings()),
            mirror: MirrorConfig {
                resolve_timeout: m.mirror_resolve_timeout,
                resolve_timeout_max: m.mirror_resolve_timeout_max,
                resolve_tags: resolve_tags(m.resolve_tags, &args.security),
                resolve_latest_tag: m.resolve_latest_tag,
                single_tag_answer: peers_authenticated(&args.security) || m.trust_unconfirmed_tags,
                hedge_delay: m.mirror_hedge_delay,
                claim_wait: m.mirror_claim_wait,
                response_timeout: m.mirror_response_timeout,
                stall_timeout: m.mirror_stall_timeout,
                verify_before_send: m.verify_before_send,
                ..MirrorConfig::default()
            },
            security: Security::from_args(&args.security)?,
            token: TokenSettings {
                signing_key: args.security.token_signing_key.clone(),
                ttl: args.security.token_ttl,
                hosts_dir: args.security.hosts_dir.clone(),
            },
            max_uploads: args.uploads.max_concurrent_uploads,
            max_egress_bps: args.uploads.max_egress_bps,
            max_followers: args.uploads.max_followers,
            admin_sock: Some(
                args.admin_sock
                    .clone()
                    .unwrap_or_else(|| args.data_dir.join("admin.sock")),
            ),
        })
    }
}

impl ServerArgs {
    fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            reserved_connections: self.reserved_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_read_timeout: self.header_read_timeout,
            handshake_timeout: self.tls_handshake_timeout,
            drain_timeout: self.drain_timeout,
            auth_failures_max: self.auth_failures_max,
            auth_failure_window: self.auth_failure_window,
            ..ServerLimits::default()
        }
    }
}

impl DhtArgs {
    fn settings(&self) -> P2pSettings {
        P2pSettings {
            listen: self.router_addr,
            advertise: self
                .advertise_addr
                .map(|a| SocketAddr::new(a.ip, a.port.unwrap_or(self.router_addr.port()))),
            bootstrap: self.bootstrap.clone(),
            psk_file: self.p2p_psk_file.clone(),
            provider_ttl: self.provider_ttl,
            republish_interval: self.republish_interval,
            replication: usize::from(self.dht_replication),
        }
    }
}

/// Whether peers are authenticated as servers (their certificates checked against the cluster
/// CA), so a tag answer comes from a cluster member: the one place that trust is decided.
/// Under mTLS they always are; in token (or none) mode they are when this node speaks TLS to
/// them, since the peer client then checks every server certificate against `--tls-peer-ca`
/// (else `--tls-client-ca`) and its CRLs, and refuses to start without one of them.
pub fn peers_authenticated(security: &SecurityArgs) -> bool {
    let tls_with_ca = security.tls_cert.is_some()
        && security.tls_key.is_some()
        && (security.tls_peer_ca.is_some() || security.tls_client_ca.is_some());
    matches!(security.auth_mode, AuthMode::Mtls | AuthMode::MtlsToken) || tls_with_ca
}

/// Whether tags resolve through peers: a tag answer is only as good as the peer's identity, so
/// the default is on only when peers are authenticated ([`peers_authenticated`]).
pub fn resolve_tags(flag: Option<bool>, security: &SecurityArgs) -> bool {
    let authenticated = peers_authenticated(security);
    match flag {
        None => authenticated,
        Some(true) if !authenticated => {
            tracing::warn!(
                auth_mode = ?security.auth_mode,
                "--resolve-tags is on but peers are not authenticated (no mTLS, no TLS with --tls-peer-ca): any DHT member can answer for a tag and steer this node to an image of its choice"
            );
            true
        }
        Some(on) => on,
    }
}

impl Security {
    /// Auth mode, TLS files and token file from the security flags. TLS is on when both
    /// --tls-cert and --tls-key are given; one without the other is refused (it would
    /// silently serve plain HTTP and drop every other TLS flag).
    pub fn from_args(a: &SecurityArgs) -> Result<Self, DaemonError> {
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(_), None) => {
                return Err(DaemonError::TlsHalf {
                    given: "--tls-cert",
                    missing: "--tls-key",
                });
            }
            (None, Some(_)) => {
                return Err(DaemonError::TlsHalf {
                    given: "--tls-key",
                    missing: "--tls-cert",
                });
            }
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: a.tls_client_ca.clone(),
                peer_ca: a.tls_peer_ca.clone(),
                crls: a.tls_crl.clone(),
                crl_expired: a.crl_expired,
                peer_server_name: a.tls_peer_server_name.clone(),
            }),
            _ => None,
        };
        Ok(Security {
            mode: a.auth_mode,
            insecure_no_auth: a.insecure_no_auth,
            tls,
            token_file: a.token_file.clone(),
        })
    }
}

/// `--advertise-addr`: an IP, optionally with a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdvertiseAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

fn parse_advertise(s: &str) -> Result<AdvertiseAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(AdvertiseAddr {
            ip: sa.ip(),
            port: Some(sa.port()),
        });
    }
    s.parse::<IpAddr>()
        .map(|ip| AdvertiseAddr { ip, port: None })
        .map_err(|_| format!("{s:?} is not IP or IP:PORT (e.g. 10.0.0.5 or 10.0.0.5:5001)"))
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log output format.
    #[arg(long, env = "PEERMIRROR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter: a level (info, debug) or a tracing directive list (`info,audit=warn`).
    #[arg(long, env = "PEERMIRROR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["peermirror", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn tags_resolve_through_peers_by_default_only_when_peers_are_authenticated() {
        for (mode, want) in [
            ("mtls", true),
            ("mtls+token", true),
            ("token", false),
            ("none", false),
        ] {
            let a = run_args(&["--auth-mode", mode]);
            assert_eq!(
                Config::from_args(&a).unwrap().mirror.resolve_tags,
                want,
                "{mode}"
            );
        }
        let a = run_args(&["--auth-mode", "token", "--resolve-tags", "true"]);
        assert!(Config::from_args(&a).unwrap().mirror.resolve_tags);
        // Token mode over TLS: the peer client checks servers against the peer CA.
        let tls = [
            "--tls-cert",
            "/c",
            "--tls-key",
            "/k",
            "--tls-peer-ca",
            "/ca",
        ];
        let a = run_args(&[&["--auth-mode", "token"][..], &tls].concat());
        let m = Config::from_args(&a).unwrap().mirror;
        assert!(m.resolve_tags && m.single_tag_answer);
        // TLS without a CA to check peers by is no authentication.
        let a = run_args(&[
            "--auth-mode",
            "token",
            "--tls-cert",
            "/c",
            "--tls-key",
            "/k",
        ]);
        let m = Config::from_args(&a).unwrap().mirror;
        assert!(!m.resolve_tags && !m.single_tag_answer);
        let a = run_args(&["--resolve-tags", "false"]);
        assert!(!Config::from_args(&a).unwrap().mirror.resolve_tags);
    }

    #[test]
    fn a_lone_tag_answer_stands_only_from_authenticated_peers_or_when_asked_for() {
        for (mode, want) in [
            ("mtls", true),
            ("mtls+token", true),
            ("token", false),
            ("none", false),
        ] {
            let a = run_args(&["--auth-mode", mode, "--resolve-tags", "true"]);
            assert_eq!(
                Config::from_args(&a).unwrap().mirror.single_tag_answer,
                want,
                "{mode}"
            );
        }
        let a = run_args(&[
            "--auth-mode",
            "token",
            "--resolve-tags",
            "true",
            "--trust-unconfirmed-tags",
            "true",
        ]);
        assert!(Config::from_args(&a).unwrap().mirror.single_tag_answer);
    }

    #[test]
    fn mirror_deadlines_and_verify_size_have_flags() {
        let m = Config::from_args(&run_args(&[])).unwrap().mirror;
        assert_eq!(m.response_timeout, Duration::from_secs(3));
        assert_eq!(m.stall_timeout, Duration::from_secs(2));
        assert_eq!(m.verify_before_send, 16 * 1024 * 1024);
        assert_eq!(m.mismatch_penalty, Duration::from_secs(3600));
        let m = Config::from_args(&run_args(&[
            "--mirror-response-timeout",
            "1s",
            "--mirror-stall-timeout",
            "500ms",
            "--verify-before-send",
            "1024",
        ]))
        .unwrap()
        .mirror;
        assert_eq!(m.response_timeout, Duration::from_secs(1));
        assert_eq!(m.stall_timeout, Duration::from_millis(500));
        assert_eq!(m.verify_before_send, 1024);
    }

    #[test]
    fn the_data_dir_holds_the_spool_and_a_zero_budget_turns_it_off() {
        let c = Config::from_args(&run_args(&["--data-dir", "/d"])).unwrap();
        assert_eq!(c.data_dir.as_deref(), Some(std::path::Path::new("/d")));
        let spool = c.spool.unwrap();
        assert_eq!(spool.dir, PathBuf::from("/d/spool"));
        assert_eq!(spool.max_bytes.get(), 10 * 1024 * 1024 * 1024);
        let c = Config::from_args(&run_args(&["--spool-max-bytes", "0"])).unwrap();
        assert!(c.spool.is_none());
    }

    #[test]
    fn half_a_tls_pair_is_refused() {
        for (flags, given) in [
            (["--tls-cert", "/c.pem"], "--tls-cert"),
            (["--tls-key", "/k.pem"], "--tls-key"),
        ] {
            let mut a = run_args(&flags);
            a.security.auth_mode = AuthMode::Token;
            match Config::from_args(&a) {
                Err(e @ DaemonError::TlsHalf { .. }) => {
                    assert!(e.to_string().contains(given), "{e}")
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("{given} alone was accepted"),
            }
        }
        let a = run_args(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"]);
        assert!(Config::from_args(&a).unwrap().security.tls.is_some());
        assert!(
            Config::from_args(&run_args(&[]))
                .unwrap()
                .security
                .tls
                .is_none()
        );
    }

    #[test]
    fn token_mode_takes_a_token_file_or_a_signing_key() {
        let c = Config::from_args(&run_args(&[
            "--auth-mode",
            "token",
            "--token-signing-key",
            "/k",
            "--hosts-dir",
            "/etc/containerd/certs.d",
        ]))
        .unwrap();
        assert_eq!(c.token.ttl, Duration::from_secs(900));
        assert!(
            c.security
                .validate_with(c.token.signing_key.is_some())
                .is_ok()
        );
        let c = Config::from_args(&run_args(&["--auth-mode", "token"])).unwrap();
        let e = c.security.validate_with(false).unwrap_err().to_string();
        assert!(
            e.contains("--token-file") && e.contains("--token-signing-key"),
            "{e}"
        );
    }
}
