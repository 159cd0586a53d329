//! Claims of mTLS that no other test checked (issue 22, item 10), through in-process daemons:
//! certificates, key and CA reloaded with a transfer in flight; `--tls-peer-server-name`; a
//! liar shunned by its certificate serial wherever it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use peermirror::content::{Key, MemorySource};
use peermirror::daemon::{Config, Routing};
use peermirror::oci::Digest;
use peermirror::routing::{MemoryNetwork, MemoryRouter, Provider};
use peermirror::tls::CrlExpired;
use support::fake_peer::{FakePeer, Lie};
use support::hostile::tls_config;
use support::mtls::{Pki, https, mtls_config, start_node, tls_client};
use support::{Node, next_loopback, pattern, routed, start_on, wait_ready};
use tokio::net::TcpListener;

const MANIFEST_TYPE: &str = "application/octet-stream";

/// Replaces `to` with `from`'s content as a Secret update does (a new inode renamed into place).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(tmp, to).unwrap();
}

/// Status of `GET /v2/` on a fresh connection, or the error.
async fn fresh_get(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    match client.get(url).send().await {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => Err(format!("{e:?}")),
    }
}

#[tokio::test]
async fn cert_key_and_ca_reload_while_a_transfer_runs_on_the_old_ones() {
    let (old, new) = (Pki::new(), Pki::new());
    for pki in [&old, &new] {
        pki.issue("server", 30);
        pki.issue("client", 30);
    }
    // Larger than the socket buffers: the server is still writing it after the reload.
    let layer = pattern(32 * 1024 * 1024, 61);
    let source = MemorySource::new();
    source.add_image("127.0.0.1:5000/test/app:v1", &[&layer]);
    let node = start_node(
        source,
        mtls_config(&old, "server", Routing::Off, CrlExpired::Deny),
    )
    .await;
    let client_of = |pki: &Pki| {
        tls_client(
            &pki.path("ca.crt"),
            Some((&pki.path("client.crt"), &pki.path("client.key"))),
        )
    };
    let v2 = format!("{}/v2/", https(&node));
    let url = format!("{}/v2/test/app/blobs/{}", https(&node), Digest::of(&layer));
    let mut in_flight = client_of(&old).get(&url).send().await.unwrap();
    assert_eq!(in_flight.status(), 200);
    let mut got = in_flight.chunk().await.unwrap().unwrap().len();

    // The node's certificate and key from the new CA, and the new CA as the one clients must
    // come from (with its CRL: a CRL must be signed by the client CA).
    for f in ["server.crt", "server.key", "crl.pem", "ca.crt"] {
        replace(&new.path(f), &old.path(f));
    }
    // A client of the new CA only gets in once the node presents the new certificate and
    // accepts the new CA, both on the same fresh connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fresh_get(&client_of(&new), &v2).await {
            Ok(200) => break,
            other => assert!(
                Instant::now() < deadline,
                "the new certificate and CA never took effect: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fresh_get(&client_of(&old), &v2).await.is_err(),
        "a new connection from the old CA's client was accepted after the reload"
    );

    // The transfer that started under the old certificate completes, with the right bytes.
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut hasher, &layer[..got]);
    while let Some(c) = in_flight.chunk().await.unwrap() {
        sha2::Digest::update(&mut hasher, &c);
        got += c.len();
    }
    assert_eq!(got, layer.len());
    let whole = Digest::from_bytes(sha2::Digest::finalize(hasher).into());
    assert_eq!(
        whole,
        Digest::of(&layer),
        "the transfer completed with wrong bytes"
    );
    node.stop().await;
}

/// A node of `net` named `name` with `pki`'s certificate `cert`, holding `blobs`, `tweak`ed.
async fn node_on(
    net: &MemoryNetwork,
    pki: &Pki,
    cert: &str,
    name: &str,
    source: MemorySource,
    tweak: impl FnOnce(&mut Config),
) -> Node {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = MemoryRouter::new(net.clone(), name, l.local_addr().unwrap());
    let mut cfg = mtls_config(pki, cert, routed(r), CrlExpired::Deny);
    tweak(&mut cfg);
    let n = start_on(l, source, cfg).await;
    wait_ready(&n, true).await;
    n
}

#[tokio::test]
async fn tls_peer_server_name_checks_peers_for_that_name_and_refuses_others() {
    const NAME: &str = "peermirror.cluster.test";
    let pki = Pki::new();
    // One provider's certificate names only the shared DNS name (as one cert-manager
    // certificate for every node would), the other's only its IP.
    pki.issue_for("named", 30, &[NAME], &[]);
    pki.issue("by-ip", 30);
    pki.issue("asker", 30);
    let (on_named, on_by_ip) = (pattern(300 * 1024, 62), pattern(300 * 1024, 63));
    let (d_named, d_by_ip) = (Digest::of(&on_named), Digest::of(&on_by_ip));
    let net = MemoryNetwork::new();
    let holding = |blob: &[u8]| {
        let s = MemorySource::new();
        s.add_image("127.0.0.1:5000/test/app:v1", &[blob]);
        s
    };
    let named = node_on(&net, &pki, "named", "named", holding(&on_named), |_| {}).await;
    let by_ip = node_on(&net, &pki, "by-ip", "by-ip", holding(&on_by_ip), |_| {}).await;
    for (d, n, peer) in [(d_named, &named, "named"), (d_by_ip, &by_ip, "by-ip")] {
        net.insert(
            Key::Digest(d),
            Provider {
                peer: peer.into(),
                addr: n.addr,
            },
        );
    }
    let with_name = node_on(&net, &pki, "asker", "with-name", MemorySource::new(), |c| {
        c.security.tls.as_mut().unwrap().peer_server_name = Some(NAME.into());
    })
    .await;
    let without = node_on(&net, &pki, "asker", "without", MemorySource::new(), |_| {}).await;
    let client = tls_client(
        &pki.path("ca.crt"),
        Some((&pki.path("asker.crt"), &pki.path("asker.key"))),
    );
    let fetch = |asker: &Node, d: Digest| {
        let url = format!("{}/v2/test/app/blobs/{d}", https(asker));
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    };

    // Without the flag, peers are checked for the address dialled. (First: a node that
    // fetched a blob advertises its spool copy, and this one's certificate names only its IP.)
    let (status, _) = fetch(&without, d_named).await;
    assert_eq!(
        status, 404,
        "without the name, a certificate lacking the IP passed"
    );
    let (status, body) = fetch(&without, d_by_ip).await;
    assert_eq!(status, 200);
    assert!(body.as_ref() == on_by_ip.as_slice());
    // With it, the reverse.
    let (status, body) = fetch(&with_name, d_named).await;
    assert_eq!(status, 200, "with the name set, the named peer was refused");
    assert!(body.as_ref() == on_named.as_slice());
    let (status, _) = fetch(&with_name, d_by_ip).await;
    assert_eq!(
        status, 404,
        "with the name set, a peer whose certificate lacks it was accepted"
    );
    for n in [named, by_ip, with_name, without] {
        n.stop().await;
    }
}

/// A liar holding a cluster certificate sends wrong bytes and is shunned by its serial. It
/// comes back as a new provider (another peer name, address and port) with the same
/// certificate, honest now: the asker connects, sees the serial and takes nothing from it. The
/// same honest server under another certificate at another address is used at once, so the
/// refusal is the serial's, not the address's or the content's.
#[tokio::test]
async fn a_liar_is_shunned_by_its_certificate_serial_at_any_address() {
    let pki = Pki::new();
    pki.issue("asker", 30);
    let (first, again, other): (IpAddr, IpAddr, IpAddr) =
        (next_loopback(), next_loopback(), next_loopback());
    let liar_serial = pki.issue_for("liar", 30, &[], &[first, again]);
    pki.issue_for("other", 30, &[], &[other]);
    let liar_tls = tls_config(&pki.path("liar.crt"), &pki.path("liar.key"));
    let other_tls = tls_config(&pki.path("other.crt"), &pki.path("other.key"));

    let fake = FakePeer::default();
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| pattern(200 * 1024, 70 + i)).collect();
    let d: Vec<Digest> = blobs
        .iter()
        .map(|b| fake.add_blob(b.clone(), MANIFEST_TYPE))
        .collect();
    fake.set_lie(Lie::WrongBytes);
    let liar = fake.clone().start_tls(first, liar_tls.clone()).await;

    let net = MemoryNetwork::new();
    net.insert(Key::Digest(d[0]), liar.provider("liar"));
    let asker = node_on(&net, &pki, "asker", "asker", MemorySource::new(), |_| {}).await;
    let client = tls_client(
        &pki.path("ca.crt"),
        Some((&pki.path("asker.crt"), &pki.path("asker.key"))),
    );
    let fetch = |digest: Digest| {
        let url = format!("{}/v2/test/app/blobs/{digest}", https(&asker));
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    };
    assert_eq!(fetch(d[0]).await.0, 404, "the lie was answered");

    // Back, honest, elsewhere, with the same certificate.
    fake.set_lie(Lie::Honest);
    drop(liar);
    let back = fake.clone().start_tls(again, liar_tls).await;
    net.insert(Key::Digest(d[1]), back.provider("liar-reborn"));
    let asked_before = fake.hits(&d[1].to_string());
    assert_eq!(
        fetch(d[1]).await.0,
        404,
        "the liar's certificate was served from again at a new address"
    );
    assert!(
        fake.hits(&d[1].to_string()) > asked_before,
        "the new address was never asked (shunned by address, not serial): {:?}",
        fake.seen()
    );

    // The same server under another certificate: served.
    let honest = fake.clone().start_tls(other, other_tls).await;
    net.insert(Key::Digest(d[2]), honest.provider("other"));
    let (status, body) = fetch(d[2]).await;
    assert_eq!(status, 200, "an honest certificate was refused");
    assert!(body.as_ref() == blobs[2].as_slice());
    let m = asker.metrics().await;
    let counted = format!("peermirror_peer_mismatches_total{{peer=\"serial:{liar_serial}\"}} 1");
    assert!(
        m.contains(&counted),
        "the lie was not counted against the serial: {m}"
    );
    asker.stop().await;
}
