//! The libp2p private network (`--p2p-psk-file`).

use super::*;

fn write_psk(dir: &Path, name: &str, seed: &str) -> String {
    let path = dir.join(name);
    fs::write(
        &path,
        format!(
            "/key/swarm/psk/1.0.0/\n/base16/\n{}\n",
            sha256_hex(seed.as_bytes())
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

fn readyz(pm: &Peermirror) -> Option<(u16, String)> {
    http_get_sync(&pm.metrics_host(), "/readyz")
}

/// A node with the cluster's pre-shared key; nodes without it, or with another
/// key, bootstrapping to it never become ready ("no peers connected"); a node
/// with the same key does.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn private_network_key_keeps_strangers_out() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = write_psk(keys.path(), "swarm.key", "cluster-one");
    let k2 = write_psk(keys.path(), "other.key", "cluster-two");
    // One containerd under all four: the DHT is what is tested.
    let ctd = Containerd::start("psk");
    let a = start_pm(&ctd, &strings(&["--p2p-psk-file", &k1]), None);
    let start_unready = |args: &[&str]| {
        let mut pm = Peermirror::builder(&ctd).args(args).bootstrap(&a).start();
        assert!(pm.is_running());
        pm
    };
    let mut none = start_unready(&[]);
    let mut other = start_unready(&["--p2p-psk-file", &k2]);
    let started = Instant::now();
    let c = start_pm(&ctd, &strings(&["--p2p-psk-file", &k1]), Some(&a));
    eprintln!(
        "[e] node with the key ready after {:.2}s",
        started.elapsed().as_secs_f64()
    );
    // Give the strangers as long again, and then some.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for (what, pm) in [("no key", &mut none), ("other key", &mut other)] {
            assert!(pm.is_running(), "{what}: exited:\n{}", pm.log_tail(30));
            let r = readyz(pm);
            assert!(
                matches!(&r, Some((503, body)) if body.contains("no peers connected")),
                "{what}: /readyz {r:?}\n{}",
                pm.log_tail(30)
            );
        }
        thread_sleep(Duration::from_millis(500));
    }
    let peers = |pm: &Peermirror| pm.metric("peermirror_connected_peers", &[]);
    eprintln!(
        "[e] after {:.1}s: connected peers A={} C={} no-key={} other-key={}; no-key /readyz {:?}",
        started.elapsed().as_secs_f64(),
        peers(&a),
        peers(&c),
        peers(&none),
        peers(&other),
        readyz(&none)
    );
    assert_eq!(peers(&a), 1.0, "A is connected to a stranger");
    assert_eq!(peers(&c), 1.0);
    assert_eq!(peers(&none), 0.0);
    assert_eq!(peers(&other), 0.0);
    assert_eq!(readyz(&c).map(|r| r.0), Some(200));
}
