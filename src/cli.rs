//! Command-line flags. Every flag can also be set with an environment variable
//! `PEERMIRROR_<FLAG>` (upper case, `-` as `_`), which is how the Helm chart configures it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Print the version.
    Version,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
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

    /// Address of the registry (mirror) endpoint.
    #[arg(long, env = "PEERMIRROR_REGISTRY_ADDR", default_value = "0.0.0.0:5000")]
    pub registry_addr: SocketAddr,

    /// Address of the health, readiness and metrics endpoint (never authenticated).
    #[arg(long, env = "PEERMIRROR_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Most simultaneous connections to the registry endpoint; more are closed at once.
    #[arg(long, env = "PEERMIRROR_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// How long in-flight responses may take to finish after SIGTERM.
    #[arg(long, env = "PEERMIRROR_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,

    #[command(flatten)]
    pub log: LogArgs,
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
