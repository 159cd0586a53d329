//! Hostile input on the TLS listener while good clients are served.

use super::*;

/// Writes `bytes` on a new connection to `addr`, then reads until the server
/// closes or `timeout`: (what came back, whether the server closed).
fn send_and_read(addr: &str, bytes: &[u8], timeout: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = s.write_all(bytes);
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// Whether the server has closed `s` (a read returns 0 or an error).
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

fn pseudo_random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Hostile input on the mTLS listener of the real daemon: plain HTTP, garbage,
/// a client certificate from another CA, none at all, and 40 connections that
/// stall in the handshake (20 silent, 20 after half a ClientHello). Meanwhile a
/// good client and a containerd pull are served at normal speed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn hostile_tls_input_does_not_stop_good_clients() {
    let registry = Registry::start();
    let big = fixture("big");
    registry.push(&big);
    let reg = registry.host();
    let pki = Pki::init();
    pki.issue("node1", &["127.0.0.1"]);
    pki.issue("containerd-client", &[]);
    pki.issue("good", &[]);
    let other = Pki::init();
    other.issue("intruder", &[]);

    let source = Containerd::start("source");
    source.pull_ok(&big.reference(&reg), None, true);
    let pm = start_pm(&source, &pki.mtls_run_args("node1"), None);
    let addr = pm.registry_host();
    let base = mirror_url(&pm, true);
    let v2 = format!("{base}/v2/");

    // Plain HTTP to the TLS port.
    let (got, closed) = send_and_read(
        &addr,
        format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
        Duration::from_secs(15),
    );
    eprintln!(
        "[d] plain HTTP to the TLS port: {} bytes back, closed: {closed}: {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(80)])
    );
    assert!(closed, "plain HTTP: connection left open");
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "plain HTTP got an answer"
    );
    // Garbage, and garbage behind a TLS record header.
    for (what, bytes) in [
        ("random", pseudo_random_bytes(4096, 7)),
        ("record header + random", {
            let mut b = vec![0x16, 0x03, 0x01, 0x02, 0x00];
            b.extend(pseudo_random_bytes(512, 11));
            b
        }),
    ] {
        let (got, closed) = send_and_read(&addr, &bytes, Duration::from_secs(15));
        eprintln!(
            "[d] {what} garbage: {} bytes back, closed: {closed}",
            got.len()
        );
        assert!(closed, "{what} garbage: connection left open");
    }
    // Wrong CA, no certificate.
    let intruder = https_http(
        &pki.ca(),
        Some((&other.cert("intruder"), &other.key("intruder"))),
    );
    assert!(intruder.client.get(&v2).send().await.is_err());
    let anonymous = https_http(&pki.ca(), None);
    assert!(anonymous.client.get(&v2).send().await.is_err());

    // 40 stalled handshakes, held open while the good clients work.
    let mut stalled: Vec<TcpStream> = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(&addr).unwrap();
        if i % 2 == 1 {
            // A handshake record announcing 512 bytes, then only 40 of them.
            let mut b = vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ];
            b.extend(pseudo_random_bytes(29, i));
            s.write_all(&b).unwrap();
        }
        stalled.push(s);
    }
    let stalled_at = Instant::now();
    let good = https_http(&pki.ca(), Some((&pki.cert("good"), &pki.key("good"))));
    let t = Instant::now();
    let r = good.get(&v2, &[]).await;
    let first = t.elapsed();
    assert_eq!(r.status, 200);
    let layer = big_layer();
    let t = Instant::now();
    let body = good
        .get(&blob_url(&base, &big, &layer.digest, &reg), &[])
        .await;
    let blob_took = t.elapsed();
    assert_eq!(body.status, 200);
    assert_eq!(digest_of(&body.body), layer.digest);
    eprintln!(
        "[d] with 40 stalled handshakes open: good client /v2/ in {:.1} ms, the {} MB layer in {:.2}s",
        first.as_secs_f64() * 1000.0,
        layer.size / 1_000_000,
        blob_took.as_secs_f64()
    );
    assert!(
        first < Duration::from_secs(2),
        "good client waited {first:?}"
    );

    // containerd, through configure's hosts.toml, also served meanwhile.
    let client = Containerd::start("client");
    let hosts = mtls_hosts(&pki, &base, &registry);
    let t = Instant::now();
    client.pull_ok(&big.reference(&reg), Some(hosts.path()), false);
    let pull_took = t.elapsed();
    assert_eq!(
        registry_gets(&registry, layer.hex()),
        1,
        "the upstream served the layer: containerd was not served by peermirror"
    );
    let open = stalled
        .iter_mut()
        .filter_map(|s| (!is_closed(s)).then_some(()))
        .count();
    eprintln!(
        "[d] containerd pull through the mirror in {:.2}s; {open} of 40 stalled connections still open after {:.1}s",
        pull_took.as_secs_f64(),
        stalled_at.elapsed().as_secs_f64()
    );

    // The stalled handshakes are cut by the handshake deadline.
    let all_closed = wait_until(Duration::from_secs(60), || {
        stalled.iter_mut().all(is_closed)
    });
    let cut_after = stalled_at.elapsed();
    let m = pm.metrics_text();
    let reasons: Vec<String> = m
        .lines()
        .filter(|l| l.starts_with("peermirror_auth_failures_total{"))
        .map(str::to_string)
        .collect();
    eprintln!(
        "[d] stalled handshakes all closed: {all_closed}, after {:.1}s; auth failures:\n  {}",
        cut_after.as_secs_f64(),
        reasons.join("\n  ")
    );
    assert!(all_closed, "stalled handshakes still open after 60s");
    assert!(auth_failures(&pm, "handshake_timeout") >= 20.0, "{m}");
    assert!(auth_failures(&pm, "unknown_ca") >= 1.0, "{m}");
    assert!(auth_failures(&pm, "no_certificate") >= 1.0, "{m}");
    assert!(
        auth_failures(&pm, "not_tls") + auth_failures(&pm, "bad_handshake") >= 2.0,
        "{m}"
    );
    // Still fine afterwards.
    assert_eq!(good.get(&v2, &[]).await.status, 200);
    let log = read_log(pm.log_path());
    assert!(!lines_with(&log, &["TLS handshake refused", "unknown_ca"]).is_empty());

    // Silent connections fill the general pool of a daemon capped at 16; the node's own
    // containerd (127.0.0.1) still gets in at once through the reserve.
    let mut args = pki.mtls_run_args("node1");
    args.extend(strings(&["--max-connections", "16"]));
    let capped = start_pm(&source, &args, None);
    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(capped.registry_host()).unwrap())
        .collect();
    thread_sleep(Duration::from_millis(300));
    let url = format!("{}/v2/", mirror_url(&capped, true));
    let t = Instant::now();
    let r = good.client.get(&url).send().await;
    eprintln!(
        "[d] --max-connections 16 and 20 silent connections: a good client {} after {:.2}s",
        match &r {
            Ok(r) => format!("got {}", r.status()),
            Err(e) => format!("failed ({e})"),
        },
        t.elapsed().as_secs_f64()
    );
    assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(silent);
}
