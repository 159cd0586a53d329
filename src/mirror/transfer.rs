use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::StatusCode;
use tokio::sync::{mpsc, watch};

use super::book::{Fault, ProviderBook};
use super::{Found, MirrorConfig, MirrorError, Miss, PeerClient, ProviderSet};
use crate::content::{Descriptor, Key};
use crate::oci::headers::{CONTENT_DIGEST, MIRRORED};
use crate::oci::{ContentRange, Digest, RangeSpec, Sha256Verifier};
use crate::routing::Provider;

/// Chunks buffered between the peer and the client: back-pressure, bounded memory.
const CHANNEL_CHUNKS: usize = 8;
/// How long to wait for the lookup to find another provider when one fails.
const NEXT_PROVIDER_WAIT: Duration = Duration::from_millis(200);

/// Everything a peer request needs: the client, the token, the book of providers and the
/// timeouts. Cheap to clone into each spawned transfer.
#[derive(Clone)]
pub(super) struct Fetcher {
    /// The latest peer client (replaced when TLS material is reloaded).
    client: watch::Receiver<PeerClient>,
    /// Sent to peers as a bearer token in token mode.
    token: Option<Arc<crate::auth::Tokens>>,
    book: Arc<ProviderBook>,
    response_timeout: Duration,
    hedge_delay: Duration,
}

impl Fetcher {
    pub(super) fn new(
        client: watch::Receiver<PeerClient>,
        token: Option<Arc<crate::auth::Tokens>>,
        book: Arc<ProviderBook>,
        config: &MirrorConfig,
    ) -> Self {
        Fetcher {
            client,
            token,
            book,
            response_timeout: config.response_timeout,
            hedge_delay: config.hedge_delay,
        }
    }

    /// A request for `path` at provider `p`: the current client and scheme, the mirrored
    /// marker (so the peer answers from local content only), and the token if any.
    pub(super) fn request(
        &self,
        method: reqwest::Method,
        p: &Provider,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let (client, scheme) = {
            let c = self.client.borrow();
            (c.client.clone(), c.scheme)
        };
        let url = format!("{scheme}://{}{path}", p.addr);
        let mut req = client.request(method, url).header(MIRRORED, "true");
        if let Some(t) = self.token.as_ref().and_then(|t| t.first()) {
            req = req.bearer_auth(t);
        }
        req
    }

    /// HEAD `path` at the providers until one answers with usable headers: for a digest,
    /// matching it; for a tag (`digest` is `None`), naming the digest it resolves to.
    pub(super) async fn head(
        &self,
        providers: &mut ProviderSet,
        path: &str,
        digest: Option<Digest>,
    ) -> Result<Descriptor, MirrorError> {
        while let Some(p) = providers.next(NEXT_PROVIDER_WAIT).await {
            let req = self
                .request(reqwest::Method::HEAD, &p, path)
                .timeout(self.response_timeout);
            match req.send().await {
                Ok(r) if r.status() == StatusCode::OK => match descriptor(r.headers(), digest) {
                    Some(desc) if digest.is_none_or(|d| d == desc.digest) => {
                        if digest.is_some() {
                            self.book
                                .remember(Key::Digest(desc.digest), std::slice::from_ref(&p));
                        }
                        return Ok(desc);
                    }
                    _ => self.book.penalize(&p, Fault::Failed),
                },
                // A stale provider record: the peer no longer has it. Not a fault.
                Ok(r) if r.status() == StatusCode::NOT_FOUND => {}
                Ok(r) => {
                    tracing::debug!(peer = %p.peer, status = %r.status(), "provider refused HEAD");
                    self.book.penalize(&p, Fault::Failed);
                }
                Err(e) => {
                    tracing::warn!(peer = %p.peer, addr = %p.addr, error = %error_chain(&e), "provider HEAD failed");
                    self.book.penalize(&p, Fault::Failed);
                }
            }
        }
        Err(MirrorError::NotFound(Miss::ProvidersFailed))
    }
}

/// The descriptor a provider's answer gives: the digest it names (or the one asked for), the
/// whole size (from `Content-Range` if ranged) and the media type.
fn descriptor(headers: &http::HeaderMap, fallback_digest: Option<Digest>) -> Option<Descriptor> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    let digest = text(CONTENT_DIGEST)
        .and_then(|v| v.parse().ok())
        .or(fallback_digest)?;
    let size = text(http::header::CONTENT_RANGE.as_str())
        .and_then(ContentRange::parse)
        .map(|r| r.size)
        .or_else(|| text(http::header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok()))?;
    let media_type = text(http::header::CONTENT_TYPE.as_str())
        .unwrap_or_default()
        .to_string();
    Some(Descriptor {
        digest,
        size,
        media_type,
    })
}

/// An error with its causes, so a refused handshake says why (e.g. "certificate revoked").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Start a GET at `offset`, hedging: if the first provider has not answered within the hedge
/// delay, the next one is asked too, and the first good answer wins.
async fn connect(
    f: &Fetcher,
    providers: &mut ProviderSet,
    path: &str,
    offset: u64,
    wait_first: Duration,
) -> Option<(Provider, reqwest::Response)> {
    let request = |p: Provider| {
        let mut req = f.request(reqwest::Method::GET, &p, path);
        if offset > 0 {
            req = req.header(http::header::RANGE, format!("bytes={offset}-"));
        }
        let timeout = f.response_timeout;
        async move {
            let res = tokio::time::timeout(timeout, req.send()).await;
            (p, res)
        }
    };
    let mut inflight = FuturesUnordered::new();
    let first = providers.next(wait_first).await?;
    let mut asked = vec![first.clone()];
    inflight.push(request(first));
    let mut more = true;
    loop {
        let hedge = tokio::time::sleep(f.hedge_delay);
        tokio::select! {
            Some((p, res)) = inflight.next() => {
                asked.retain(|a| a != &p);
                match res {
                    Ok(Ok(r)) if r.status() == StatusCode::OK
                        || (offset > 0 && r.status() == StatusCode::PARTIAL_CONTENT) => {
                        // The slower ones of a hedge race stay available for a resume.
                        for loser in asked {
                            providers.give_back(loser);
                        }
                        return Some((p, r));
                    }
                    Ok(Ok(r)) if r.status() == StatusCode::NOT_FOUND => {}
                    Ok(Ok(r)) => {
                        tracing::debug!(peer = %p.peer, status = %r.status(), "provider refused GET");
                        f.book.penalize(&p, Fault::Failed);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %p.peer, addr = %p.addr, error = %error_chain(&e), "provider GET failed");
                        f.book.penalize(&p, Fault::Failed);
                    }
                    Err(_) => {
                        tracing::debug!(peer = %p.peer, "provider did not answer in time");
                        f.book.penalize(&p, Fault::Failed);
                    }
                }
                // That one is out: ask the next at once.
                match providers.next(NEXT_PROVIDER_WAIT).await {
                    Some(p) => {
                        asked.push(p.clone());
                        inflight.push(request(p));
                    }
                    None => {
                        more = false;
                        if inflight.is_empty() {
                            return None;
                        }
                    }
                }
            }
            _ = hedge, if more => {
                match providers.next(Duration::ZERO).await {
                    Some(p) => {
                        tracing::debug!(peer = %p.peer, "first provider slow; hedging");
                        asked.push(p.clone());
                        inflight.push(request(p));
                    }
                    None => more = false,
                }
            }
        }
    }
}

impl Fetcher {
    /// GET a blob from peers and stream it, verified, to the client.
    pub(super) async fn get(
        &self,
        mut providers: ProviderSet,
        path: String,
        digest: Digest,
        range: Option<&RangeSpec>,
    ) -> Result<Found, MirrorError> {
        let failed = MirrorError::NotFound(Miss::ProvidersFailed);
        // Always fetch from byte 0: the digest covers the whole blob, so even a client's resume
        // (`Range: bytes=N-`) is answered with bytes whose prefix was hashed too.
        let (first, resp) = connect(self, &mut providers, &path, 0, Duration::ZERO)
            .await
            .ok_or(failed)?;
        let descriptor = match descriptor(resp.headers(), Some(digest)) {
            Some(d) if d.digest == digest => d,
            _ => {
                self.book.penalize(&first, Fault::Failed);
                return Err(MirrorError::NotFound(Miss::ProvidersFailed));
            }
        };
        let size = descriptor.size;
        let window =
            RangeSpec::window(range, size).map_err(|_| MirrorError::RangeNotSatisfiable(size))?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        // A manifest's bytes are kept (they are small) to learn who has its children.
        let capture = (crate::oci::is_manifest_media_type(&descriptor.media_type)
            && size <= crate::content::MAX_MANIFEST_SIZE)
            .then(|| (descriptor.media_type.clone(), Vec::new()));
        let job = Transfer {
            fetcher: self.clone(),
            providers,
            path,
            digest,
            size,
            window: window.map_or((0, size.saturating_sub(1)), |r| (r.start, r.end)),
            tx,
            capture,
        };
        tokio::spawn(job.run(first, resp));
        Ok(Found {
            descriptor,
            window,
            body: Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))),
        })
    }
}

struct Transfer {
    fetcher: Fetcher,
    providers: ProviderSet,
    path: String,
    digest: Digest,
    size: u64,
    /// Inclusive byte window the client asked for.
    window: (u64, u64),
    tx: mpsc::Sender<io::Result<Bytes>>,
    /// Media type and bytes of a manifest being relayed.
    capture: Option<(String, Vec<u8>)>,
}

enum Step {
    /// The provider delivered everything up to `size`.
    Complete,
    /// The provider failed; continue from the next.
    Failed,
    /// Stop: the client went away, or the provider sent more than the blob's size.
    Abort,
}

impl Transfer {
    async fn run(mut self, first: Provider, resp: reqwest::Response) {
        let mut verifier = Sha256Verifier::new(self.digest);
        // The last chunk for the client is held back until the whole blob is verified.
        let mut held: Option<Bytes> = None;
        let mut contributors = vec![first.clone()];
        let mut current = Some((first, resp));
        loop {
            let (p, resp) = match current.take() {
                Some(c) => c,
                None => {
                    let offset = verifier.bytes_seen();
                    match connect(
                        &self.fetcher,
                        &mut self.providers,
                        &self.path,
                        offset,
                        NEXT_PROVIDER_WAIT,
                    )
                    .await
                    {
                        Some((p, r)) => {
                            tracing::info!(peer = %p.peer, offset, digest = %self.digest, "resuming from another provider");
                            contributors.push(p.clone());
                            (p, r)
                        }
                        None => {
                            self.fail("no provider could complete the transfer").await;
                            return;
                        }
                    }
                }
            };
            match self.pump(&p, resp, &mut verifier, &mut held).await {
                Step::Complete => break,
                Step::Failed => continue,
                Step::Abort => return,
            }
        }
        if verifier.matches() {
            if let Some(h) = held {
                let _ = self.tx.send(Ok(h)).await;
            }
            self.learn(&contributors);
        } else {
            tracing::error!(digest = %self.digest, "digest mismatch from peers; aborting the response");
            for p in &contributors {
                self.fetcher.book.penalize(p, Fault::Mismatch);
            }
            self.fail("digest mismatch").await;
        }
    }

    /// A verified transfer tells us who has this blob and, for a manifest, its children.
    fn learn(&self, providers: &[Provider]) {
        self.fetcher
            .book
            .remember(Key::Digest(self.digest), providers);
        let Some((media_type, data)) = &self.capture else {
            return;
        };
        if let Ok(children) = crate::oci::children(media_type, data) {
            for c in children {
                self.fetcher.book.remember(Key::Digest(c.digest), providers);
            }
        }
    }

    async fn fail(&self, why: &str) {
        // An error ends the body uncleanly: hyper resets the stream instead of completing it.
        let _ = self.tx.send(Err(io::Error::other(why.to_string()))).await;
    }

    /// Copy one provider's body into the verifier and the client channel.
    async fn pump(
        &mut self,
        p: &Provider,
        resp: reqwest::Response,
        verifier: &mut Sha256Verifier,
        held: &mut Option<Bytes>,
    ) -> Step {
        let offset = verifier.bytes_seen();
        // A provider that ignores Range sends from 0: skip what we already have.
        let mut skip = if offset > 0 && resp.status() == StatusCode::OK {
            offset
        } else {
            0
        };
        if resp.status() == StatusCode::PARTIAL_CONTENT
            && !range_starts_at(&resp, offset, self.size)
        {
            self.fetcher.book.penalize(p, Fault::Failed);
            return Step::Failed;
        }
        let mut body = resp.bytes_stream();
        while let Some(item) = body.next().await {
            let mut chunk = match item {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(peer = %p.peer, error = %e, at = verifier.bytes_seen(), "provider stream broke");
                    self.fetcher.book.penalize(p, Fault::Failed);
                    return Step::Failed;
                }
            };
            if skip > 0 {
                let n = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
                chunk = chunk.slice(n..);
                skip -= n as u64;
            }
            if chunk.is_empty() {
                continue;
            }
            let start = verifier.bytes_seen();
            let end = start + chunk.len() as u64;
            if end > self.size {
                tracing::error!(peer = %p.peer, "provider sent more bytes than the blob's size");
                self.fetcher.book.penalize(p, Fault::Mismatch);
                self.fail("provider sent too many bytes").await;
                return Step::Abort;
            }
            verifier.update(&chunk);
            if let Some((_, buf)) = self.capture.as_mut() {
                buf.extend_from_slice(&chunk);
            }
            if let Some(out) = clip(&chunk, start, self.window)
                && let Some(prev) = held.replace(out)
                && self.tx.send(Ok(prev)).await.is_err()
            {
                return Step::Abort;
            }
            if end == self.size {
                return Step::Complete;
            }
        }
        if verifier.bytes_seen() == self.size {
            return Step::Complete;
        }
        tracing::warn!(peer = %p.peer, at = verifier.bytes_seen(), size = self.size, "provider body ended early");
        self.fetcher.book.penalize(p, Fault::Failed);
        Step::Failed
    }
}

/// The part of `chunk` (which starts at blob offset `start`) inside the inclusive window.
fn clip(chunk: &Bytes, start: u64, (lo, hi): (u64, u64)) -> Option<Bytes> {
    let end = start + chunk.len() as u64; // exclusive
    if end <= lo || start > hi {
        return None;
    }
    let from = usize::try_from(lo.saturating_sub(start)).ok()?;
    let to = usize::try_from((hi + 1).min(end) - start).ok()?;
    (from < to).then(|| chunk.slice(from..to))
}

/// A 206 answer to a resume must start where we are, for the blob's whole size.
fn range_starts_at(resp: &reqwest::Response, offset: u64, size: u64) -> bool {
    resp.headers()
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ContentRange::parse)
        .is_some_and(|r| r.start == offset && r.size == size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_windows() {
        let c = Bytes::from_static(b"0123456789");
        assert_eq!(clip(&c, 0, (0, 9)).unwrap(), c);
        assert_eq!(clip(&c, 0, (3, 5)).unwrap().as_ref(), b"345");
        assert_eq!(clip(&c, 10, (3, 5)), None);
        assert_eq!(clip(&c, 10, (12, 100)).unwrap().as_ref(), b"23456789");
        assert_eq!(clip(&c, 10, (0, 10)).unwrap().as_ref(), b"0");
        assert_eq!(clip(&c, 10, (0, 9)), None);
    }
}
