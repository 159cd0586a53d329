//! The `node` role: one peermirror daemon over an in-memory content source.

use super::*;

pub async fn node(a: NodeArgs) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(false)
        .init();
    let source = MemorySource::new();
    let per = layers_per_image(a.keys);
    // Every node shares nothing: KEYS distinct digests each (the worst case for the DHT).
    for k in 0..IMAGES {
        let layers: Vec<Vec<u8>> = (0..per).map(|l| layer_bytes(a.index, k, l)).collect();
        let refs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
        source.add_image(&format!("sim.local/n{}/i{k}:v1", a.index), &refs);
    }
    let base = base_port(a.index);
    let registry = TcpListener::bind((a.ip, base))
        .await
        .expect("bind registry");
    let ops = TcpListener::bind((a.ip, base + 2)).await.expect("bind ops");
    let bootstrap: Vec<Bootstrap> = a
        .seed
        .iter()
        .enumerate()
        .filter(|(_, s)| **s != a.index)
        .map(|(i, s)| {
            let ip = a.seed_ip.get(i).copied().unwrap_or(a.ip);
            format!("static:/ip4/{ip}/tcp/{}", base_port(*s) + 1)
                .parse()
                .expect("seed")
        })
        .collect();
    let bootstrap = if bootstrap.is_empty() {
        vec![Bootstrap::None]
    } else {
        bootstrap
    };
    std::fs::create_dir_all(&a.dir).expect("dir");
    let config = Config {
        containerd_sock: "/nonexistent".into(),
        containerd_namespace: "k8s.io".into(),
        content_dir: None,
        // All nodes share 127.0.0.1: the per-IP cap (128) is meant for one host, and 199
        // askers at once hit it on a provider, fail its HEAD and shun it for 30 s.
        limits: ServerLimits {
            max_connections_per_ip: 4096,
            ..ServerLimits::default()
        },
        routing: Routing::P2p(P2pSettings {
            listen: SocketAddr::new(a.ip, base + 1),
            advertise: None,
            bootstrap,
            psk_file: None,
            provider_ttl: a.provider_ttl,
            republish_interval: a.republish_interval,
            replication: a.replication,
        }),
        mirror: MirrorConfig {
            resolve_timeout: a.resolve_timeout,
            resolve_timeout_max: a.resolve_timeout_max.unwrap_or(a.resolve_timeout),
            // Digests only: KEYS keys per node, no tags.
            resolve_tags: false,
            // The DHT alone: these lookups are of keys other nodes hold, and a claim (the
            // rollout coordinator's business) would only add its own wait to a miss.
            claim_wait: std::time::Duration::ZERO,
            ..MirrorConfig::default()
        },
        security: Security::insecure(),
        token: Default::default(),
        max_uploads: 0,
        max_egress_bps: 0,
        max_followers: peermirror::cli::DEFAULT_MAX_FOLLOWERS,
        admin_sock: Some(a.dir.join("admin.sock")),
        containerd_config: None,
        data_dir: Some(a.dir.join("data")),
        spool: None,
    };
    let stop = CancellationToken::new();
    let ctl_path = a.dir.join("ctl.sock");
    let _ = std::fs::remove_file(&ctl_path);
    let ctl = UnixListener::bind(&ctl_path).expect("bind ctl.sock");
    tokio::spawn(control(ctl, source.clone()));
    let s = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        s.cancel();
    });
    if let Err(e) =
        run_with_source(config, Arc::new(source), Listeners { registry, ops }, stop).await
    {
        eprintln!("node {}: {e}", a.index);
        std::process::exit(1);
    }
}

/// `commit TEXT` → the digest of TEXT, committed to the node's content.
async fn control(listener: UnixListener, source: MemorySource) {
    while let Ok((conn, _)) = listener.accept().await {
        let source = source.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match line.strip_prefix("commit ") {
                    Some(text) => source
                        .commit_blob(text.as_bytes().to_vec())
                        .digest
                        .to_string(),
                    None => "error: commit TEXT".to_string(),
                };
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
