//! Bearer tokens with containerd.

use super::*;

/// Token mode: containerd pulls with the `Authorization` header `configure
/// --token-file` wrote (hosts.toml 0600); requests without it get 401 with
/// `WWW-Authenticate` and OCI `UNAUTHORIZED`; the token is never logged.
/// Then the failure throttle: failures from 127.0.0.1 (where containerd connects
/// from) are never throttled, so the right token keeps working.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn token_mode_with_containerd() {
    let registry = Registry::start();
    let big = fixture("big");
    let multi = fixture("multi");
    registry.push(&big);
    registry.push(&multi);
    let reg = registry.host();

    let secrets = tempfile::tempdir().unwrap();
    let token = format!(
        "pmtok-{}",
        sha256_hex(format!("{:?}{}", Instant::now(), std::process::id()).as_bytes())
    );
    let token_file = secrets.path().join("tokens");
    fs::write(&token_file, format!("{token}\nsecond-token-for-rotation\n")).unwrap();
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o600)).unwrap();
    let token_path = token_file.display().to_string();

    let source = Containerd::start("source");
    source.pull_ok(&big.reference(&reg), None, true);
    source.pull_ok(&multi.reference(&reg), None, true);
    let pm = start_pm(
        &source,
        &strings(&["--auth-mode", "token", "--token-file", &token_path]),
        None,
    );

    let client = Containerd::start("client");
    let hosts = tempfile::tempdir().unwrap();
    let mirror = pm.registry_url();
    peermirror_configure_ok(&[
        "--config-path",
        &hosts.path().display().to_string(),
        "--mirror",
        &mirror,
        "--registry",
        &registry.url(),
        "--token-file",
        &token_path,
    ]);
    let toml_path = hosts.path().join(&reg).join("hosts.toml");
    let mode = fs::metadata(&toml_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "hosts.toml holds a token but has mode {mode:o}"
    );
    let toml_text = fs::read_to_string(&toml_path).unwrap();
    assert!(
        toml_text.contains("Authorization") && toml_text.contains(&format!("Bearer {token}")),
        "hosts.toml has no Authorization header:\n{}",
        toml_text.replace(&token, "<token>")
    );

    let layer = big_layer();
    let took = {
        let t = Instant::now();
        client.pull_ok(&big.reference(&reg), Some(hosts.path()), false);
        t.elapsed()
    };
    let log = read_log(pm.log_path());
    let served: Vec<&str> = request_audits(&log)
        .into_iter()
        .filter(|l| l.contains(layer.hex()) && l.contains("method=GET"))
        .collect();
    eprintln!(
        "[b] client pulled big with the token in {:.2}s; layer audit:\n  {}",
        took.as_secs_f64(),
        served.join("\n  ")
    );
    assert!(
        served.iter().any(|l| l.contains("client=token:line1")
            && l.contains("source=\"local\"")
            && l.contains("status=200")),
        "no audit line shows the layer served to token line 1:\n{}",
        request_audits(&log).join("\n")
    );
    assert_eq!(registry_gets(&registry, layer.hex()), 1);

    // Strangers: no header, a wrong token, a blob without the header.
    let http = Http::new();
    let v2 = format!("{mirror}/v2/");
    for (what, headers) in [
        ("no header", vec![]),
        (
            "wrong token",
            vec![("authorization", "Bearer not-the-token")],
        ),
        ("basic auth", vec![("authorization", "Basic dXNlcjpwYXNz")]),
    ] {
        let r = http.get(&v2, &headers).await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert!(
            r.header("www-authenticate").is_some(),
            "{what}: 401 without WWW-Authenticate"
        );
        assert_eq!(r.error_code().as_deref(), Some("UNAUTHORIZED"), "{what}");
    }
    let blob = blob_url(&mirror, &big, &layer.digest, &reg);
    let r = http.get(&blob, &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.body.len() < 4096, "a refused blob request got a body");
    let bearer = format!("Bearer {token}");
    let r = http.head(&blob, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "the right token is refused on HEAD: {r:?}");
    let r = http
        .get(
            &v2,
            &[("authorization", "Bearer second-token-for-rotation")],
        )
        .await;
    assert_eq!(r.status, 200, "line 2 of the token file is refused");
    assert!(auth_failures(&pm, "missing_token") >= 2.0);
    assert!(auth_failures(&pm, "wrong_token") >= 1.0);

    // Never the token in the log (nor any part of its secret hex).
    let log = read_log(pm.log_path());
    assert!(
        !log.contains(&token) && !log.contains(&token[6..22]),
        "the token appears in peermirror's log"
    );
    assert!(
        lines_with(&log, &["client=token:line2"]).len() == 1,
        "the second token's request is not attributed to line 2"
    );

    // Failures from loopback are not throttled: containerd connects from 127.0.0.1, and a
    // local process that keeps failing must not push its pulls to the upstream.
    let mut failures = 4; // 3 on /v2/ + 1 blob
    while failures < 15 {
        assert_eq!(http.get(&v2, &[]).await.status, 401);
        failures += 1;
    }
    let r = http.get(&v2, &[("authorization", &bearer)]).await;
    assert_eq!(
        r.status, 200,
        "after {failures} failures from 127.0.0.1 the right token must still work"
    );
    client.pull_ok(&multi.reference(&reg), Some(hosts.path()), false);
    let throttled = request_audits(&read_log(pm.log_path()))
        .into_iter()
        .filter(|l| l.contains("status=429"))
        .count();
    assert_eq!(throttled, 0, "containerd was throttled on loopback");
    assert!(!read_log(pm.log_path()).contains(&token));
}
