//! Hostile peers end to end (issue 9): real containerd 1.6 pulling through `peermirror run`
//! (hosts.toml written by `peermirror configure`), one honest node holding the image, and a
//! hostile libp2p node (`tests/support/hostile.rs`, in this process) advertising the same
//! digests and tag while its HTTP server lies. The upstream docker-registry is STOPPED once the
//! honest node has the image, so every byte of every pull must come through the asking node's
//! mirror from a peer: a mirror that did nothing would fail every case. For every lie a fresh
//! asking node's `ctr images pull` must succeed within 30 s with the upstream's digests and
//! the layers' bytes served from peers; over the lies, the liar must have been asked.
//! The byte lies pull by digest (`repo@sha256:...`): a tag is not self-certifying, and a liar
//! whose HEAD names another size makes the tag answer a 404 on purpose (containerd's fallback
//! to the upstream is the designed answer there); the tag lie itself runs with the upstream up.
//!
//! One registry, honest node and liar serve every case (the lie is a mode switch on the liar's
//! HTTP server); each case gets a fresh asking node, so penalties from one case do not hide
//! the liar in the next.
//!
//! Run with `cargo test --test e2e_hostile -- --include-ignored` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/fake_peer.rs"]
mod fake_peer;
#[path = "support/hostile.rs"]
mod hostile;

use std::time::{Duration, Instant};

use common::*;
use hostile::{Hostile, Lie};
use peermirror::content::Key;
use peermirror::oci::{Digest, TagKey};

const PULL_WITHIN: Duration = Duration::from_secs(30);

/// What the liar does in one case.
#[derive(Clone, Copy, Debug)]
enum Case {
    Lie(Lie),
    /// The tag answered with another image's manifest (served honestly by digest).
    OtherImageForTag,
    /// A second liar whose identify names a recorder as its registry address.
    ForgedAddress,
}

/// Give `liar` every blob of `image` and advertise its digests and its `v1` tag.
async fn load(liar: &Hostile, image: &FixtureImage, reg: &str) {
    let mut keys = Vec::new();
    let mut digests = image.pulled_digests();
    digests.insert(image.root.digest.clone());
    for d in &digests {
        let bytes = image.read_blob(d);
        let media = if *d == image.root.digest {
            image.root.media_type.clone()
        } else {
            "application/octet-stream".to_string()
        };
        let got = liar.http.add_blob(bytes, &media);
        assert_eq!(got.to_string(), *d);
        keys.push(Key::Digest(d.parse::<Digest>().unwrap()));
    }
    keys.push(Key::Tag(
        TagKey::from_image_name(&image.reference(reg)).unwrap(),
    ));
    liar.provide(&keys).await;
}

/// The upstream with the image pulled (`multi`), and the decoy (`small`) it does not have.
fn upstream_and_decoy() -> (Registry, FixtureImage, FixtureImage) {
    let registry = Registry::start();
    let image = fixture("multi");
    registry.push(&image);
    (registry, image, fixture("small"))
}

/// The digest containerd recorded for `reference` (`ctr images ls`).
fn image_digest(ctd: &Containerd, reference: &str) -> Option<String> {
    ctd.ctr_ok(&["images", "ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .map(str::to_string)
}

/// A fresh asking node bootstrapping to `honest` and `liar`.
fn start_asker(honest: &Node, liar: &Hostile) -> Node {
    start_asker_with(Some(honest), liar, &[])
}

/// A fresh asking node bootstrapping to `honest` (if any) and `liar`, with `args` added to
/// `peermirror run`. Retried: now and then the daemon's libp2p dials fail with EADDRINUSE for
/// its whole life (port reuse binds the dial socket to `0.0.0.0:<router port>`, a port
/// `free_port` picked), and it never becomes ready.
fn start_asker_with(honest: Option<&Node>, liar: &Hostile, args: &[&str]) -> Node {
    for attempt in 1..=3 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Node::builder("asker")
                .bootstrap(honest.map(|h| &h.pm))
                .bootstrap_spec(liar.bootstrap_spec())
                .args(args)
                .start()
        }));
        match r {
            Ok(n) => return n,
            Err(_) if attempt < 3 => eprintln!("[hostile] asker not ready; starting another"),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn every_pull_succeeds_whatever_the_liar_says() {
    let started = Instant::now();
    let (mut registry, image, decoy) = upstream_and_decoy();
    let reg = registry.host();
    let by_tag = image.reference(&reg);
    let by_digest = format!("{reg}/{}@{}", image.repo(), image.root.digest);

    let liar = Hostile::start(false).await;
    load(&liar, &image, &reg).await;
    // The decoy's blobs too, served honestly by digest, for the tag lie.
    for d in decoy.pulled_digests() {
        liar.http
            .add_blob(decoy.read_blob(&d), &decoy.root.media_type);
    }
    let honest = Node::builder("honest")
        .bootstrap_spec(liar.bootstrap_spec())
        .start();
    honest.pull_direct(&image, &reg);
    // From here on the honest node is the only source of the real bytes.
    registry.stop();
    let layer_bytes: u64 = image.host_manifest().layers.iter().map(|l| l.size).sum();
    let mut lie_cases_asked = Vec::new();

    let mut failures = Vec::new();
    let cases = [
        Case::Lie(Lie::EmptyBody),
        Case::Lie(Lie::HalfThenClose),
        Case::Lie(Lie::Inflated),
        Case::Lie(Lie::WrongBytes),
        Case::Lie(Lie::Drip),
        Case::OtherImageForTag,
        Case::ForgedAddress,
    ];
    for case in cases {
        let case_started = Instant::now();
        let forged = match case {
            Case::ForgedAddress => {
                let f = Hostile::start(true).await;
                load(&f, &image, &reg).await;
                Some(f)
            }
            _ => None,
        };
        match case {
            Case::Lie(lie) => {
                liar.set_lie(lie);
                liar.http.add_tag("v1", image.root.digest.parse().unwrap());
            }
            Case::OtherImageForTag => {
                liar.set_lie(Lie::Honest);
                liar.http.add_tag("v1", decoy.root.digest.parse().unwrap());
            }
            Case::ForgedAddress => {
                liar.set_lie(Lie::Honest);
                liar.http.add_tag("v1", image.root.digest.parse().unwrap());
            }
        }
        let which = forged.as_ref().unwrap_or(&liar);
        if let Some(f) = &forged {
            f.http.add_tag("v1", image.root.digest.parse().unwrap());
        }
        let before = which.connected();
        let asker = start_asker(&honest, which);
        which
            .wait_connected(before + 1, Duration::from_secs(10))
            .await;
        asker.configure(&registry, &asker.pm.registry_url(), &[] as &[&str]);
        // Both bootstrap peers connected (a state of the asker's swarm, not a warm-up request:
        // no provider is looked up or cached); a node still dialing its bootstrap peers finds
        // no provider, and with the upstream down that would fail the pull before any lie.
        let connected = wait_until(Duration::from_secs(20), || {
            asker.pm.metric("peermirror_connected_peers", &[]) >= 2.0
        });
        assert!(
            connected,
            "{case:?}: the asker did not connect to the honest node and the liar:\n{}",
            asker.pm.log_tail(20)
        );
        let hits_before = which.http.seen().len();

        // The tag lie's designed outcome is a 404 and containerd's fallback: the only case that
        // needs the upstream.
        let tag_lie = matches!(case, Case::OtherImageForTag);
        if tag_lie {
            registry.start_again();
        }
        let reference = match case {
            Case::Lie(_) => by_digest.clone(),
            _ => by_tag.clone(),
        };
        let t = Instant::now();
        let pulled = asker
            .ctd
            .pull_within(&reference, &asker.hosts_dir(), PULL_WITHIN);
        if tag_lie {
            registry.stop();
        }
        let took = t.elapsed();
        let liar_asked = which.http.seen().len() - hits_before;
        let mut problems = Vec::new();
        match &pulled {
            Err(e) => problems.push(format!(
                "pull failed after {took:?}: {}",
                last_lines_of(&strip_ansi_codes(e), 4)
            )),
            Ok(()) if took > PULL_WITHIN => problems.push(format!("pull took {took:?}")),
            Ok(()) => {
                let got = image_digest(&asker.ctd, &reference);
                if got.as_deref() != Some(image.root.digest.as_str()) {
                    problems.push(format!(
                        "pulled image digest {got:?}, upstream's is {}",
                        image.root.digest
                    ));
                }
                let have = asker.ctd.content_digests();
                for d in image.pulled_digests() {
                    if !have.contains(&d) {
                        problems.push(format!("content {d} missing"));
                    }
                }
                // Every stored blob hashes to its name.
                asker.ctd.verify_content_blobs();
            }
        }
        if let Some(f) = &forged {
            let seen = f.recorder.seen();
            if !seen.is_empty() {
                problems.push(format!(
                    "the forged registry address received {} request(s): {:?}",
                    seen.len(),
                    seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
                ));
            }
        }
        let from_peers = asker.bytes_from("peer");
        if pulled.is_ok() && !tag_lie && from_peers < layer_bytes as f64 {
            problems.push(format!(
                "only {from_peers} bytes served from peers, less than the image's {layer_bytes} \
                 layer bytes (the upstream is down: where did the rest come from?)"
            ));
        }
        if let Case::Lie(lie) = case {
            lie_cases_asked.push((lie, liar_asked));
        }
        eprintln!(
            "[hostile] {case:?}: pull {} in {:.1}s; liar asked {liar_asked} time(s); {from_peers} bytes from peers; case took {:.1}s",
            if pulled.is_ok() { "ok" } else { "FAILED" },
            took.as_secs_f64(),
            case_started.elapsed().as_secs_f64()
        );
        if !problems.is_empty() {
            eprintln!("--- asker log ---\n{}", asker.pm.log_tail(40));
            failures.push(format!("{case:?}: {}", problems.join("; ")));
        }
    }
    eprintln!(
        "[hostile] all cases in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "pulls through a cluster with a liar failed:\n  {}",
        failures.join("\n  ")
    );
    // Which provider a lookup offers first is the DHT's order, so one case may never reach the
    // liar; but a run in which no lie was ever served tested nothing.
    assert!(
        lie_cases_asked.iter().any(|(_, n)| *n > 0),
        "the liar's HTTP server was never asked in any lie case: {lie_cases_asked:?}"
    );
}

/// How the cluster in [`a_fresh_node_takes_no_tag_from_a_liar`] authenticates.
#[derive(Clone, Copy, Debug)]
enum TagMode {
    /// `--auth-mode token --resolve-tags=true`: peers are not authenticated as servers.
    Token,
    /// `--auth-mode mtls`, the liar holding a valid certificate of the cluster CA.
    Mtls,
}

/// Issue 24: an honest node holds the image and has advertised its tag; the liar advertises
/// the tag too and answers it with another image's manifest. A fresh asking node (it knows
/// neither provider) pulls at once: containerd must commit the upstream's digest.
async fn a_fresh_node_takes_no_tag_from_a_liar(mode: TagMode) {
    let (registry, image, decoy) = upstream_and_decoy();
    let reg = registry.host();
    let reference = image.reference(&reg);
    let tag = Key::Tag(TagKey::from_image_name(&reference).unwrap());

    let secrets = tempfile::tempdir().unwrap();
    let pki = matches!(mode, TagMode::Mtls).then(|| {
        let pki = Pki::init();
        for name in ["honest", "asker"] {
            pki.issue(name, &["127.0.0.1"]);
        }
        // The liar is dialled at 127.0.0.3 (its connection IP), or 127.0.0.1.
        pki.issue("liar", &["127.0.0.3", "127.0.0.1"]);
        pki.issue("containerd-asker", &[]);
        pki
    });
    let token_file = secrets.path().join("tokens");
    std::fs::write(&token_file, "e2e-tag-quorum-token-0123456789\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let token_path = token_file.display().to_string();
    let run_args = |name: &str| -> Vec<String> {
        match &pki {
            Some(pki) => pki.mtls_run_args(name),
            None => ["--auth-mode", "token", "--token-file", &token_path]
                .iter()
                .chain(&["--resolve-tags", "true"])
                .map(|s| s.to_string())
                .collect(),
        }
    };

    let liar = Hostile::start_with(
        false,
        pki.as_ref()
            .map(|p| hostile::tls_config(&p.cert("liar"), &p.key("liar"))),
    )
    .await;
    for d in decoy.pulled_digests() {
        liar.http
            .add_blob(decoy.read_blob(&d), "application/octet-stream");
    }
    // The root last, with its media type: a verifiable manifest of another image.
    liar.http
        .add_blob(decoy.read_blob(&decoy.root.digest), &decoy.root.media_type);
    liar.http.add_tag("v1", decoy.root.digest.parse().unwrap());
    liar.provide(std::slice::from_ref(&tag)).await;

    // Under mTLS one authenticated member's answer may stand alone (DESIGN.md), so there the
    // honest node is in the DHT and its record out before anyone asks: the asker must hear
    // it. In token mode the honest node's record never reaches the asker (it is in no DHT
    // the asker can reach, as a record not out yet): the liar's answer is alone, and a lone
    // unauthenticated answer must not be enough.
    let shared_dht = matches!(mode, TagMode::Mtls);
    let mut honest = Node::builder("honest").args(&run_args("honest"));
    if shared_dht {
        honest = honest.bootstrap_spec(liar.bootstrap_spec());
    }
    let honest = honest.start();
    honest.pull_direct(&image, &reg);
    if shared_dht {
        liar.wait_provider_records(&tag, 2, Duration::from_secs(30))
            .await;
    }

    let before = liar.connected();
    // A fresh node's first lookups race its routing table: a longer resolve timeout than the
    // default 20 ms, so the liar is found and asked in every run.
    let asker = Node::builder("asker")
        .args(&run_args("asker"))
        .args(&["--mirror-resolve-timeout", "500ms"])
        .bootstrap(shared_dht.then_some(&honest.pm))
        .bootstrap_spec(liar.bootstrap_spec())
        .start();
    liar.wait_connected(before + 1, Duration::from_secs(10))
        .await;
    match &pki {
        Some(pki) => {
            let p = |f: std::path::PathBuf| f.display().to_string();
            asker.configure(
                &registry,
                &format!("https://{}", asker.pm.registry_host()),
                &[
                    "--ca-file".to_string(),
                    p(pki.ca()),
                    "--client-cert".to_string(),
                    p(pki.cert("containerd-asker")),
                    "--client-key".to_string(),
                    p(pki.key("containerd-asker")),
                ],
            );
        }
        None => asker.configure(
            &registry,
            &asker.pm.registry_url(),
            &["--token-file", &token_path],
        ),
    }

    let t = Instant::now();
    let pulled = asker
        .ctd
        .pull_within(&reference, &asker.hosts_dir(), PULL_WITHIN);
    let took = t.elapsed();
    let got = image_digest(&asker.ctd, &reference);
    let liar_asked = liar.http.hits("/manifests/v1");
    let m = asker.pm.metrics_text();
    let counted: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("peermirror_tag_") || l.starts_with("peermirror_mirror_misses"))
        .collect();
    eprintln!(
        "[tags] {mode:?}: pull {:?} in {:.1}s, committed {got:?} (upstream's {}, decoy {}); the liar was asked for the tag {liar_asked} time(s); {counted:?}",
        pulled.as_ref().map(|_| "ok"),
        took.as_secs_f64(),
        image.root.digest,
        decoy.root.digest
    );
    if let Err(e) = &pulled {
        panic!(
            "{mode:?}: the pull failed after {took:?}: {}\n--- asker log ---\n{}",
            last_lines_of(&strip_ansi_codes(e), 4),
            asker.pm.log_tail(40)
        );
    }
    assert_eq!(
        got.as_deref(),
        Some(image.root.digest.as_str()),
        "{mode:?}: containerd committed {reference} as {got:?}, not the upstream's {} (the liar's is {})\n--- asker log ---\n{}",
        image.root.digest,
        decoy.root.digest,
        asker.pm.log_tail(40)
    );
    assert!(
        liar_asked > 0,
        "{mode:?}: harness: the liar was never asked for the tag"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn a_fresh_node_takes_no_tag_from_a_liar_in_token_mode() {
    a_fresh_node_takes_no_tag_from_a_liar(TagMode::Token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn a_fresh_node_takes_no_tag_from_a_liar_with_a_valid_certificate() {
    a_fresh_node_takes_no_tag_from_a_liar(TagMode::Mtls).await;
}

/// `peermirror run`'s default `--verify-before-send`: blobs up to it are verified whole first.
const VERIFY_BEFORE_SEND: usize = 16 << 20;

/// The liar is the only provider of the `large` image (72 MiB layer, above
/// `--verify-before-send` and above the 64 MiB a real node hashes before serving) and the
/// upstream is STOPPED: the manifest and config it serves are honest, the layer is the right
/// length of wrong bytes. The asker streams them toward containerd and must find the mismatch
/// at the end: its answer aborted before it completes (audit `complete=false`), the pull
/// failed, nothing wrong in the store, the mismatch counted, the liar shunned (the layer is a
/// 404 afterwards).
async fn large_wrong_bytes_are_aborted(label: &str, asker_args: &[&str]) {
    let mut registry = Registry::start();
    let large = fixture_large();
    registry.push(&large);
    let reg = registry.host();
    let layer = large.host_manifest().layers[0].clone();
    assert!(layer.size as usize > VERIFY_BEFORE_SEND && layer.size > 64 << 20);
    let liar = Hostile::start(false).await;
    load(&liar, &large, &reg).await;
    liar.set_lie(Lie::WrongBytesAbove(VERIFY_BEFORE_SEND));
    let asker = start_asker_with(None, &liar, asker_args);
    liar.wait_connected(1, Duration::from_secs(10)).await;
    asker.configure(&registry, &asker.pm.registry_url(), &[] as &[&str]);
    registry.stop();
    // The asker finds the liar through the DHT before the pull (a fresh node's first lookups
    // can come back empty, a 404 with nowhere to fall back to): a HEAD of the manifest, so
    // the layer's own lookup is still the pull's.
    let http = Http::new();
    let manifest_url = asker.blob_url(&large, &large.root.digest, &reg);
    let found = wait_until_async(Duration::from_secs(30), || async {
        http.head(&manifest_url, &[]).await.status == 200
    })
    .await;
    assert!(
        found,
        "[{label}] the asker never found the liar's manifest:\n{}",
        asker.pm.log_tail(20)
    );

    let by_digest = format!("{reg}/{}@{}", large.repo(), large.root.digest);
    let t = Instant::now();
    let pulled = asker
        .ctd
        .pull_within(&by_digest, &asker.hosts_dir(), Duration::from_secs(120));
    let took = t.elapsed();
    let log = asker.log();
    let layer_gets: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" audit:") && l.contains("method=GET") && l.contains(layer.hex()))
        .collect();
    let mismatches = asker.pm.metric("peermirror_digest_mismatches_total", &[]);
    eprintln!(
        "[{label}] pull {} in {:.1}s; liar asked {} time(s) for the layer; mismatches {mismatches}\n{}",
        if pulled.is_ok() { "ok" } else { "FAILED" },
        took.as_secs_f64(),
        liar.http.hits(layer.hex()),
        layer_gets.join("\n")
    );
    assert!(
        pulled.is_err(),
        "[{label}] the pull succeeded with the liar's wrong bytes as the only source"
    );
    asker.ctd.verify_content_blobs();
    assert!(
        !asker.ctd.content_digests().contains(&layer.digest),
        "[{label}] the layer is in the store although only wrong bytes were offered"
    );
    assert!(
        liar.http.hits(layer.hex()) >= 1,
        "[{label}] the liar was never asked for the layer"
    );
    let streamed = layer_gets
        .iter()
        .find(|l| l.contains("status=200"))
        .unwrap_or_else(|| panic!("[{label}] the layer was never answered 200 (never streamed)"));
    assert!(
        streamed.contains("complete=false"),
        "[{label}] the answer carrying wrong bytes completed: {streamed}"
    );
    assert!(
        mismatches >= 1.0,
        "[{label}] the asker counted no digest mismatch"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("provider shunned") && l.contains("mismatch=true")),
        "[{label}] the liar was not shunned for the mismatch"
    );
    let r = http
        .head(&asker.blob_url(&large, &layer.digest, &reg), &[])
        .await;
    assert_eq!(
        r.status, 404,
        "[{label}] the asker still offers the layer from the shunned liar"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn large_wrong_bytes_never_complete_spooled() {
    large_wrong_bytes_are_aborted("large-spool", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn large_wrong_bytes_never_complete_unspooled() {
    large_wrong_bytes_are_aborted("large-no-spool", &["--spool-max-bytes", "0"]).await;
}
