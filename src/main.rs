//! The `peermirror` binary: parses flags, sets up logging and hands over to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use peermirror::cli::{Cli, Command, LogArgs, LogFormat};
use peermirror::daemon::{self, Config, Listeners};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("peermirror: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Configure(args) => {
            init_tracing(&LogArgs {
                log_format: LogFormat::Text,
                log_level: "warn".into(),
            })?;
            let report = peermirror::configure::run(&args)?;
            for w in &report.warnings {
                eprintln!("peermirror configure: WARNING: {w}");
            }
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(args) => {
            print!("{}", peermirror::token::run(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(args) => {
            print!("{}", peermirror::certs::run(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            let (text, ok) = rt.block_on(peermirror::status::run(&args))?;
            print!("{text}");
            // Not ready (or not found): a distinct code for scripts and probes.
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Version => {
            println!("peermirror {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            init_tracing(&args.log)?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(async {
                let registry = tokio::net::TcpListener::bind(args.server.registry_addr)
                    .await
                    .with_context(|| {
                        format!("binding --registry-addr {}", args.server.registry_addr)
                    })?;
                let ops = tokio::net::TcpListener::bind(args.server.metrics_addr)
                    .await
                    .with_context(|| {
                        format!("binding --metrics-addr {}", args.server.metrics_addr)
                    })?;
                tracing::info!(
                    registry = %args.server.registry_addr,
                    metrics = %args.server.metrics_addr,
                    version = env!("CARGO_PKG_VERSION"),
                    "peermirror starting"
                );
                let shutdown = CancellationToken::new();
                tokio::spawn(signal_shutdown(shutdown.clone()));
                daemon::run(
                    Config::from_args(&args)?,
                    Listeners { registry, ops },
                    shutdown,
                )
                .await
                .context("running the daemon")?;
                tracing::info!("peermirror stopped");
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

async fn signal_shutdown(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown signal received; draining in-flight responses");
    token.cancel();
}

fn init_tracing(log: &LogArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log_level).with_context(|| {
        format!(
            "--log-level {:?} is not a valid level or filter",
            log.log_level
        )
    })?;
    // Colour only for a person at a terminal, never into files or log shippers.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match log.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}
