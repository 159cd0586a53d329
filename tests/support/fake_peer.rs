//! The one fake peer of the test suite: an HTTP registry that serves the blobs and manifests
//! it was given (by digest, or by a tag mapped to a digest), lies in a chosen [`Lie`] (for
//! every blob, or for one digest), and records every request that reaches it.
//!
//! It is built on hyper directly, not on `peermirror::server`, so that a bug in the product's
//! server cannot make the fake behave like the product expects.
//!
//! Used alone ([`FakePeer::start`], on an address of the caller's choosing: penalties are keyed
//! by IP) and behind the hostile libp2p node of `hostile.rs` (which serves one fake on two
//! addresses with [`FakePeer::serve`], over TLS when the liar holds a cluster certificate).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use peermirror::oci::Digest;
use peermirror::routing::Provider;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How much the `Inflated` lie adds.
pub const INFLATE_BY: usize = 1_000_000;
/// The `Drip` lies' pace.
pub const DRIP_EVERY: Duration = Duration::from_secs(5);

/// How the fake answers a blob or manifest it has. (Tags always resolve to what
/// [`FakePeer::add_tag`] mapped them to: a tag lie is in the mapping, not the mode.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lie {
    /// No lie: the right headers and bytes.
    Honest,
    /// Waits this long before the status line, then answers honestly.
    Slow(Duration),
    /// `200`, `Content-Length: 0`, the right `Docker-Content-Digest`, no body.
    EmptyBody,
    /// The right headers, half the body, then the connection is cut.
    HalfThenClose,
    /// The right headers, the first this many bytes, then the connection is cut.
    CutAfter(usize),
    /// `Content-Length` and body inflated by [`INFLATE_BY`] zeros after the real bytes.
    Inflated,
    /// A well-formed answer that is this many bytes short (`Content-Length` and body agree).
    ShortBy(usize),
    /// The right bytes under another digest's `Docker-Content-Digest`.
    WrongDigestHeader,
    /// The right length of wrong bytes (every byte flipped).
    WrongBytes,
    /// [`Lie::WrongBytes`] for blobs larger than this many bytes, honest below: the manifest
    /// and config check out, so the asker goes on to stream a large layer's wrong bytes.
    WrongBytesAbove(usize),
    /// The right headers, then one byte every [`DRIP_EVERY`] (the first at once).
    Drip,
    /// The right headers, the first this many bytes at once, then one byte every [`DRIP_EVERY`].
    DripAfter(usize),
    /// "Busy" to every GET (`503` naming zero followers), even to one asking to crowd in: a
    /// peer lying about its load to be skipped, or to stall askers that trust it.
    AlwaysBusy,
}

/// One request that reached the fake: method, path and query, `Authorization` header.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    lie: Option<Lie>,
    /// Lies told about one digest only, before `lie`.
    lie_for: HashMap<Digest, Lie>,
    /// digest -> (bytes, media type)
    blobs: HashMap<Digest, (Bytes, String)>,
    /// tag (the last path segment) -> digest
    tags: HashMap<String, Digest>,
    seen: Vec<Seen>,
}

/// A fake peer's content, lies and record; cheap to clone (the clones share them).
#[derive(Clone, Default)]
pub struct FakePeer {
    state: Arc<Mutex<State>>,
}

/// A fake peer serving on its own address until dropped.
pub struct Started {
    pub fake: FakePeer,
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::ops::Deref for Started {
    type Target = FakePeer;
    fn deref(&self) -> &FakePeer {
        &self.fake
    }
}

impl Started {
    /// How a router names this fake as a provider called `peer`.
    pub fn provider(&self, peer: &str) -> Provider {
        Provider {
            peer: peer.into(),
            addr: self.addr,
        }
    }
}

impl FakePeer {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fake holding `data` (as `application/octet-stream`) and telling `lie` about it.
    pub fn with_blob(data: impl Into<Bytes>, lie: Lie) -> FakePeer {
        let fake = FakePeer::default();
        fake.add_blob(data, "application/octet-stream");
        fake.set_lie(lie);
        fake
    }

    /// Serve on a free port of `ip` until the returned handle is dropped.
    pub async fn start(self, ip: IpAddr) -> Started {
        self.start_on(ip, None).await
    }

    /// [`FakePeer::start`] over TLS with `tls` (a certificate of the cluster CA).
    pub async fn start_tls(self, ip: IpAddr, tls: Arc<rustls::ServerConfig>) -> Started {
        self.start_on(ip, Some(tokio_rustls::TlsAcceptor::from(tls)))
            .await
    }

    async fn start_on(self, ip: IpAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Started {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        self.serve(listener, tls, stop.clone());
        Started {
            fake: self,
            addr,
            stop,
        }
    }

    /// The lie told about every blob without a lie of its own.
    pub fn set_lie(&self, lie: Lie) {
        self.st().lie = Some(lie);
    }

    /// The lie told about `digest` only.
    pub fn set_lie_for(&self, digest: Digest, lie: Lie) {
        self.st().lie_for.insert(digest, lie);
    }

    pub fn lie(&self) -> Lie {
        self.st().lie.unwrap_or(Lie::Honest)
    }

    /// Every request that reached this fake so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.st().seen.clone()
    }

    /// How many requests reached this fake.
    pub fn asked(&self) -> usize {
        self.st().seen.len()
    }

    /// How many requests mentioned `needle` (a digest, a tag) in their path.
    pub fn hits(&self, needle: &str) -> usize {
        self.st()
            .seen
            .iter()
            .filter(|s| s.uri.contains(needle))
            .count()
    }

    pub fn add_blob(&self, data: impl Into<Bytes>, media_type: &str) -> Digest {
        let data = data.into();
        let d = Digest::of(&data);
        self.st().blobs.insert(d, (data, media_type.to_string()));
        d
    }

    pub fn add_tag(&self, tag: &str, digest: Digest) {
        self.st().tags.insert(tag.to_string(), digest);
    }

    async fn answer(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
        let seen = Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            authorization: req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        let head = req.method() == http::Method::HEAD;
        let path = req.uri().path().to_string();
        let reference = path.rsplit('/').next().unwrap_or_default().to_string();
        let (found, lie) = {
            let mut st = self.st();
            st.seen.push(seen);
            let digest = reference
                .parse::<Digest>()
                .ok()
                .or_else(|| st.tags.get(&reference).copied());
            let found =
                digest.and_then(|d| st.blobs.get(&d).map(|(b, m)| (d, b.clone(), m.clone())));
            let lie = digest.and_then(|d| st.lie_for.get(&d).copied());
            (found, lie.or(st.lie).unwrap_or(Lie::Honest))
        };
        let Some((digest, data, media_type)) = found else {
            return response(404, None, 0, "application/json", empty());
        };
        let len = data.len();
        let lie = match lie {
            Lie::WrongBytesAbove(n) if len > n => Lie::WrongBytes,
            Lie::WrongBytesAbove(_) => Lie::Honest,
            Lie::Drip => Lie::DripAfter(1),
            Lie::Slow(delay) => {
                tokio::time::sleep(delay).await;
                Lie::Honest
            }
            other => other,
        };
        if lie == Lie::AlwaysBusy && !head {
            let mut r = response(503, None, 0, "application/json", empty());
            r.headers_mut().insert(
                "x-peermirror-followers",
                http::HeaderValue::from_static("0"),
            );
            return r;
        }
        let (named, declared, body) = match lie {
            Lie::EmptyBody => (digest, 0, empty()),
            Lie::HalfThenClose => (digest, len, cut_after(data, len / 2)),
            Lie::CutAfter(n) => (digest, len, cut_after(data, n)),
            Lie::Inflated => {
                let mut v = data.to_vec();
                v.resize(len + INFLATE_BY, 0);
                (digest, len + INFLATE_BY, full(Bytes::from(v)))
            }
            Lie::ShortBy(n) => (digest, len - n, full(data.slice(..len - n))),
            Lie::WrongDigestHeader => (Digest::of(b"a fake peer's wrong digest"), len, full(data)),
            Lie::WrongBytes => (
                digest,
                len,
                full(data.iter().map(|b| !b).collect::<Vec<u8>>().into()),
            ),
            Lie::DripAfter(n) => (digest, len, drip_after(data, n)),
            Lie::Honest | Lie::Slow(_) | Lie::WrongBytesAbove(_) | Lie::Drip | Lie::AlwaysBusy => {
                (digest, len, full(data))
            }
        };
        let body = if head { empty() } else { body };
        response(200, Some(named), declared, &media_type, body)
    }

    /// Serve on `listener` until `stop`, over TLS when `tls` is given (the hostile node holding
    /// a stolen certificate of the cluster CA).
    pub fn serve(
        &self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        stop: CancellationToken,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let me = me.clone();
                let stop = stop.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => me.serve_connection(stream, stop).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                me.serve_connection(s, stop).await;
                            }
                        }
                    }
                });
            }
        });
    }

    async fn serve_connection<S>(self, stream: S, stop: CancellationToken)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req| {
            let me = self.clone();
            async move { Ok::<_, Infallible>(me.answer(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = conn => {}
        }
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|n: Infallible| match n {})
        .boxed_unsync()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|n| match n {}).boxed_unsync()
}

/// The first `n` bytes of `data`, then a broken body (the connection is cut).
fn cut_after(data: Bytes, n: usize) -> Body {
    let s = futures_util::stream::iter(vec![
        Ok(Frame::data(data.slice(..n))),
        Err(std::io::Error::other("fake peer: cut")),
    ]);
    StreamBody::new(s).boxed_unsync()
}

/// The first `n` bytes of `data` at once, then one byte every [`DRIP_EVERY`].
fn drip_after(data: Bytes, n: usize) -> Body {
    let head = data.slice(..n.min(data.len()));
    let rest = data.slice(head.len()..);
    let drip = futures_util::stream::unfold(0usize, move |i| {
        let rest = rest.clone();
        async move {
            if i >= rest.len() {
                return None;
            }
            tokio::time::sleep(DRIP_EVERY).await;
            Some((Ok(Frame::data(rest.slice(i..=i))), i + 1))
        }
    });
    StreamBody::new(futures_util::stream::once(async move { Ok(Frame::data(head)) }).chain(drip))
        .boxed_unsync()
}

fn response(
    status: u16,
    digest: Option<Digest>,
    len: usize,
    media_type: &str,
    body: Body,
) -> http::Response<Body> {
    let mut r = http::Response::builder()
        .status(status)
        .header("content-length", len)
        .header("content-type", media_type);
    if let Some(d) = digest {
        r = r.header("docker-content-digest", d.to_string());
    }
    r.body(body).unwrap()
}
