use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::StatusCode;
use tokio::sync::mpsc;

use super::{BlobInfo, Fetched, Mirror, MirrorError, ProviderSet, blob_info, response_headers};
use crate::content::Key;
use crate::oci::{ByteRange, Digest, Name, RangeError, Sha256Verifier, Tag, TagKey};
use crate::routing::Provider;

/// Chunks buffered between the peer and the client: back-pressure, bounded memory.
const CHANNEL_CHUNKS: usize = 8;
/// How long to wait for the lookup to find another provider when one fails.
const NEXT_PROVIDER_WAIT: Duration = Duration::from_millis(200);

fn url(mirror: &Mirror, p: &Provider, path: &str) -> String {
    format!("{}{}", mirror.peer_base(p), path)
}

/// Ask providers, one after another, to resolve a tag with HEAD.
pub(super) async fn resolve_tag(
    mirror: &Arc<Mirror>,
    providers: &mut ProviderSet,
    name: &Name,
    key: &TagKey,
    tag: &Tag,
) -> Result<BlobInfo, MirrorError> {
    let path = format!("/v2/{name}/manifests/{tag}?ns={}", encode(key.registry()));
    head_any(mirror, providers, &path, None).await
}

/// HEAD a digest at the providers until one answers with matching headers.
pub(super) async fn head(
    mirror: &Arc<Mirror>,
    providers: &mut ProviderSet,
    path: &str,
    digest: Digest,
) -> Result<BlobInfo, MirrorError> {
    head_any(mirror, providers, path, Some(digest)).await
}

async fn head_any(
    mirror: &Arc<Mirror>,
    providers: &mut ProviderSet,
    path: &str,
    digest: Option<Digest>,
) -> Result<BlobInfo, MirrorError> {
    while let Some(p) = providers.next(NEXT_PROVIDER_WAIT).await {
        let req = mirror
            .peer_request(reqwest::Method::HEAD, url(mirror, &p, path))
            .timeout(mirror.config.response_timeout);
        match req.send().await {
            Ok(r) if r.status() == StatusCode::OK => match blob_info(r.headers(), digest) {
                Some(info) if digest.is_none_or(|d| d == info.digest) => {
                    if digest.is_some() {
                        mirror.remember(Key::Digest(info.digest), std::slice::from_ref(&p));
                    }
                    return Ok(info);
                }
                _ => mirror.penalize(&p, false),
            },
            // A stale provider record: the peer no longer has it. Not a fault.
            Ok(r) if r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => {
                tracing::debug!(peer = %p.peer, status = %r.status(), "provider refused HEAD");
                mirror.penalize(&p, false);
            }
            Err(e) => {
                tracing::warn!(peer = %p.peer, addr = %p.addr, error = %error_chain(&e), "provider HEAD failed");
                mirror.penalize(&p, false);
            }
        }
    }
    Err(MirrorError::NotFound)
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

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Start a GET at `offset`, hedging: if the first provider has not answered within the hedge
/// delay, the next one is asked too, and the first good answer wins.
async fn connect(
    mirror: &Arc<Mirror>,
    providers: &mut ProviderSet,
    path: &str,
    offset: u64,
    wait_first: Duration,
) -> Option<(Provider, reqwest::Response)> {
    let request = |p: Provider| {
        let mut req = mirror.peer_request(reqwest::Method::GET, url(mirror, &p, path));
        if offset > 0 {
            req = req.header(http::header::RANGE, format!("bytes={offset}-"));
        }
        let timeout = mirror.config.response_timeout;
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
        let hedge = tokio::time::sleep(mirror.config.hedge_delay);
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
                        mirror.penalize(&p, false);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %p.peer, addr = %p.addr, error = %error_chain(&e), "provider GET failed");
                        mirror.penalize(&p, false);
                    }
                    Err(_) => {
                        tracing::debug!(peer = %p.peer, "provider did not answer in time");
                        mirror.penalize(&p, false);
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

/// GET a blob from peers and stream it, verified, to the client.
pub(super) async fn get(
    mirror: &Arc<Mirror>,
    mut providers: ProviderSet,
    path: String,
    digest: Digest,
    range: Option<&str>,
) -> Result<Fetched, MirrorError> {
    // Always fetch from byte 0: the digest covers the whole blob, so even a client's resume
    // (`Range: bytes=N-`) is answered with bytes whose prefix was hashed too.
    let (first, resp) = connect(mirror, &mut providers, &path, 0, Duration::ZERO)
        .await
        .ok_or(MirrorError::NotFound)?;
    let info = match blob_info(resp.headers(), Some(digest)) {
        Some(i) if i.digest == digest => i,
        _ => {
            mirror.penalize(&first, false);
            return Err(MirrorError::NotFound);
        }
    };
    let (status, len, headers) = response_headers(&info, range)?;
    let window = match range.map(|r| ByteRange::parse(r, info.size)) {
        Some(Ok(r)) => (r.start, r.end),
        Some(Err(RangeError::Unsatisfiable)) => {
            return Err(MirrorError::RangeNotSatisfiable(info.size));
        }
        _ => (0, info.size.saturating_sub(1)),
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    // A manifest's bytes are kept (they are small) to learn who has its children.
    let capture = (crate::oci::is_manifest_media_type(&info.media_type)
        && info.size <= crate::content::MAX_MANIFEST_SIZE)
        .then(|| (info.media_type.clone(), Vec::new()));
    let job = Transfer {
        mirror: mirror.clone(),
        providers,
        path,
        digest,
        size: info.size,
        window,
        tx,
        capture,
    };
    tokio::spawn(job.run(first, resp));
    Ok(Fetched {
        status,
        headers,
        body: Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))),
        expected_len: len,
    })
}

struct Transfer {
    mirror: Arc<Mirror>,
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
                        &self.mirror,
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
                self.mirror.penalize(p, true);
            }
            self.fail("digest mismatch").await;
        }
    }

    /// A verified transfer tells us who has this blob and, for a manifest, its children.
    fn learn(&self, providers: &[Provider]) {
        self.mirror.remember(Key::Digest(self.digest), providers);
        let Some((media_type, data)) = &self.capture else {
            return;
        };
        if let Ok(children) = crate::oci::children(media_type, data) {
            for c in children {
                self.mirror.remember(Key::Digest(c.digest), providers);
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
            self.mirror.penalize(p, false);
            return Step::Failed;
        }
        let mut body = resp.bytes_stream();
        while let Some(item) = body.next().await {
            let mut chunk = match item {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(peer = %p.peer, error = %e, at = verifier.bytes_seen(), "provider stream broke");
                    self.mirror.penalize(p, false);
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
                self.mirror.penalize(p, true);
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
        self.mirror.penalize(p, false);
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

fn range_starts_at(resp: &reqwest::Response, offset: u64, size: u64) -> bool {
    let Some(v) = resp
        .headers()
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // "bytes START-END/TOTAL"
    let parsed = v
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('-'))
        .and_then(|(s, rest)| {
            Some((
                s.parse::<u64>().ok()?,
                rest.rsplit_once('/')?.1.parse::<u64>().ok()?,
            ))
        });
    parsed == Some((offset, size))
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
