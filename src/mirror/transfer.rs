use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::StatusCode;
use tokio::sync::{Semaphore, mpsc, watch};

use super::book::{Fault, PeerIdentity, ProviderBook};
use super::{Found, MirrorConfig, MirrorError, Miss, PeerClient, ProviderSet};
use crate::content::{Descriptor, Key};
use crate::oci::headers::{CONTENT_DIGEST, MIRRORED};
use crate::oci::{ContentRange, Digest, RangeSpec, Sha256Verifier};
use crate::routing::{Provider, Router};

/// Chunks buffered between the peer and the client: back-pressure, bounded memory.
const CHANNEL_CHUNKS: usize = 8;
/// How long to wait for the lookup to find another provider when one fails.
pub(super) const NEXT_PROVIDER_WAIT: Duration = Duration::from_millis(200);
/// Most transfers fetched whole before sending (each at most `--verify-before-send` bytes);
/// beyond it small blobs stream like large ones rather than wait.
const WHOLE_TRANSFERS: usize = 8;

/// Everything a peer request needs: the client, the token, the book of providers and the
/// timeouts. Cheap to clone into each spawned transfer.
#[derive(Clone)]
pub(super) struct Fetcher {
    /// The latest peer client (replaced when TLS material is reloaded).
    client: watch::Receiver<PeerClient>,
    /// Sent to peers as a bearer token in token mode.
    token: Option<Arc<crate::auth::Tokens>>,
    /// Who is connected: a token only goes to a connected peer's registry address.
    router: Arc<dyn Router>,
    pub(super) book: Arc<ProviderBook>,
    pub(super) response_timeout: Duration,
    pub(super) hedge_delay: Duration,
    stall_timeout: Duration,
    verify_before_send: u64,
    whole: Arc<Semaphore>,
}

/// What a provider's answer must say to be used.
#[derive(Clone, Copy)]
struct Expect {
    digest: Digest,
    /// The blob's size as the first answer gave it (on a resume); a trusted descriptor's
    /// size is checked in any case.
    size: Option<u64>,
    /// Where the body must start.
    offset: u64,
}

/// A provider whose answer passed the checks, and what it said.
struct Answer {
    provider: Provider,
    identity: PeerIdentity,
    response: reqwest::Response,
    size: u64,
}

impl Fetcher {
    pub(super) fn new(
        client: watch::Receiver<PeerClient>,
        token: Option<Arc<crate::auth::Tokens>>,
        router: Arc<dyn Router>,
        book: Arc<ProviderBook>,
        config: &MirrorConfig,
    ) -> Self {
        Fetcher {
            client,
            token,
            router,
            book,
            response_timeout: config.response_timeout,
            hedge_delay: config.hedge_delay,
            stall_timeout: config.stall_timeout,
            verify_before_send: config.verify_before_send,
            whole: Arc::new(Semaphore::new(WHOLE_TRANSFERS)),
        }
    }

    /// A request for `path` at provider `p`: the current client and scheme, the mirrored
    /// marker (so the peer answers from local content only), and the token if any. `None`
    /// when a token would go to an address that is not a connected peer's registry endpoint
    /// (a forged provider record must not collect our token).
    pub(super) fn request(
        &self,
        method: reqwest::Method,
        p: &Provider,
        path: &str,
    ) -> Option<reqwest::RequestBuilder> {
        let (client, scheme) = {
            let c = self.client.borrow();
            (c.client.clone(), c.scheme)
        };
        let url = format!("{scheme}://{}{path}", p.addr);
        let mut req = client.request(method, url).header(MIRRORED, "true");
        if let Some(t) = self.token.as_ref().and_then(|t| t.for_peers()) {
            if !self.is_connected_peer(p) {
                tracing::warn!(peer = %p.peer, addr = %p.addr, "provider address is not a connected peer's; not sending it the token");
                return None;
            }
            req = req.bearer_auth(t);
        }
        Some(req)
    }

    fn is_connected_peer(&self, p: &Provider) -> bool {
        self.router
            .status()
            .peers
            .iter()
            .any(|s| s.registry == Some(p.addr))
    }

    /// Who answered: the serial of its server certificate under mTLS (remembered for its
    /// IP), else its IP.
    pub(super) fn identity_of(&self, p: &Provider, resp: &reqwest::Response) -> PeerIdentity {
        let cert = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate());
        if let Some(summary) = cert.and_then(|der| crate::pki::cert_summary(der).ok()) {
            self.book.learn_serial(p, summary.serial.clone());
            return PeerIdentity::Serial(summary.serial);
        }
        PeerIdentity::Ip(p.addr.ip())
    }

    /// Shun `p` for a failure seen before it proved who it is.
    pub(super) fn fail_provider(&self, p: &Provider) {
        self.book.penalize(p, &self.book.identity(p), Fault::Failed);
    }

    /// Whether a size a peer gave for `digest` is acceptable: the trusted descriptor's if one
    /// is known, else anything but 0 (except for the empty blob, whose size is 0).
    pub(super) fn size_ok(&self, digest: &Digest, size: u64) -> bool {
        match self.book.trusted(digest) {
            Some((known, _)) => size == known,
            None => size > 0 || *digest == Digest::of(b""),
        }
    }
}

/// The descriptor a provider's answer gives: the digest it names (or the one asked for), the
/// whole size (from `Content-Range` if ranged) and the media type.
pub(super) fn descriptor(
    headers: &http::HeaderMap,
    fallback_digest: Option<Digest>,
) -> Option<Descriptor> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    let digest = match text(CONTENT_DIGEST) {
        // A digest header that does not parse is a wrong header, not a missing one.
        Some(v) => v.parse().ok()?,
        None => fallback_digest?,
    };
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
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Check an answer to a GET against what is expected: its size if usable, else the fault.
/// A wrong digest header, a size other than the trusted descriptor's, or 0 for a non-empty
/// blob is a lie; anything else (a status, a missing length, a size differing only from the
/// first provider's untrusted one) is a failure.
fn check(f: &Fetcher, resp: &reqwest::Response, want: Expect) -> Result<u64, Fault> {
    let status = resp.status();
    let ok = status == StatusCode::OK || (want.offset > 0 && status == StatusCode::PARTIAL_CONTENT);
    if !ok {
        return Err(Fault::Failed);
    }
    let d = descriptor(resp.headers(), Some(want.digest)).ok_or(Fault::Failed)?;
    if d.digest != want.digest || !f.size_ok(&want.digest, d.size) {
        return Err(Fault::Mismatch);
    }
    if status == StatusCode::PARTIAL_CONTENT && !range_starts_at(resp, want.offset, d.size) {
        return Err(Fault::Failed);
    }
    match want.size {
        Some(s) if d.size != s => Err(Fault::Failed),
        _ => Ok(d.size),
    }
}

/// Start a GET at `want.offset`, hedging: if the first provider has not answered within the
/// hedge delay, the next one is asked too. The first answer that passes the checks (status,
/// digest header, size) wins; a provider whose answer fails them is shunned and the next is
/// asked, so one liar's headers cost a round trip, not the response.
async fn connect(
    f: &Fetcher,
    providers: &mut ProviderSet,
    path: &str,
    want: Expect,
    wait_first: Duration,
) -> Option<Answer> {
    let request = |p: Provider| {
        let req = f.request(reqwest::Method::GET, &p, path).map(|mut req| {
            if want.offset > 0 {
                req = req.header(http::header::RANGE, format!("bytes={}-", want.offset));
            }
            req
        });
        let timeout = f.response_timeout;
        async move {
            let res = match req {
                Some(req) => Some(tokio::time::timeout(timeout, req.send()).await),
                None => None,
            };
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
                    None => {}
                    Some(Ok(Ok(r))) if r.status() == StatusCode::NOT_FOUND => {}
                    Some(Ok(Ok(r))) => {
                        let identity = f.identity_of(&p, &r);
                        if f.book.is_shunned(&identity) {
                            tracing::debug!(peer = %p.peer, %identity, "provider's identity is shunned");
                        } else {
                            match check(f, &r, want) {
                                Ok(size) => {
                                    // The slower ones of a hedge race stay available for a resume.
                                    for loser in asked {
                                        providers.give_back(loser);
                                    }
                                    return Some(Answer { provider: p, identity, response: r, size });
                                }
                                Err(fault) => {
                                    tracing::warn!(peer = %p.peer, %identity, status = %r.status(), ?fault, "provider's answer refused (status, digest or size)");
                                    f.book.penalize(&p, &identity, fault);
                                }
                            }
                        }
                    }
                    Some(Ok(Err(e))) => {
                        tracing::warn!(peer = %p.peer, addr = %p.addr, error = %error_chain(&e), "provider GET failed");
                        f.fail_provider(&p);
                    }
                    Some(Err(_)) => {
                        tracing::debug!(peer = %p.peer, "provider did not answer in time");
                        f.fail_provider(&p);
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
    /// GET a blob from peers. Blobs up to `--verify-before-send` are fetched whole and
    /// verified before the first byte goes out, so a lie costs a clean miss or a refetch
    /// from the next provider; larger ones stream, verified, with the last chunk held back.
    pub(super) async fn get(
        &self,
        mut providers: ProviderSet,
        path: String,
        digest: Digest,
        range: Option<&RangeSpec>,
    ) -> Result<Found, MirrorError> {
        let failed = MirrorError::NotFound(Miss::ProvidersFailed);
        let known = self.book.trusted(&digest);
        loop {
            // Always fetch from byte 0: the digest covers the whole blob, so even a client's
            // resume (`Range: bytes=N-`) is answered with bytes whose prefix was hashed too.
            let want = Expect {
                digest,
                size: None,
                offset: 0,
            };
            let first = connect(self, &mut providers, &path, want, Duration::ZERO)
                .await
                .ok_or(MirrorError::NotFound(Miss::ProvidersFailed))?;
            let size = first.size;
            let media_type = match &known {
                Some((_, m)) if !m.is_empty() => m.clone(),
                _ => header_text(&first.response, http::header::CONTENT_TYPE),
            };
            let descriptor = Descriptor {
                digest,
                size,
                media_type,
            };
            let window = RangeSpec::window(range, size)
                .map_err(|_| MirrorError::RangeNotSatisfiable(size))?;
            let bounds = window.map_or((0, size.saturating_sub(1)), |r| (r.start, r.end));
            let permit = if size <= self.verify_before_send {
                tokio::time::timeout(self.response_timeout, self.whole.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            let whole = permit.is_some();
            let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
            let sink = if whole {
                Sink::Whole(Vec::new())
            } else {
                Sink::Stream { tx, held: None }
            };
            let mut job = Transfer::new(self, providers, &path, &descriptor, bounds, sink);
            if !whole {
                tokio::spawn(job.stream(first));
                return Ok(Found {
                    descriptor,
                    window,
                    body: Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))),
                });
            }
            match job.fetch(first).await {
                Outcome::Verified => {
                    drop(permit);
                    let body = job.take_window();
                    let once = futures_util::stream::once(async move { Ok(body) });
                    return Ok(Found {
                        descriptor,
                        window,
                        body: Some(Box::pin(once)),
                    });
                }
                // The liars are shunned and nothing was sent: try the others from scratch.
                Outcome::Mismatch => providers = job.providers,
                Outcome::NoProvider | Outcome::ClientGone => return Err(failed),
            }
        }
    }
}

impl Fetcher {
    /// Download `digest` from `providers` into the spool entry `writer` owns: one download
    /// however many requests read it. Resumes across providers like a streamed transfer;
    /// on a mismatch the liars are shunned and the entry fails (its readers end with an
    /// error, never cleanly), so the next request starts afresh from the others.
    pub(super) async fn download(
        &self,
        mut providers: ProviderSet,
        path: String,
        digest: Digest,
        mut writer: crate::spool::Writer,
    ) -> SpoolEnd {
        use crate::spool::Failure;
        let want = Expect {
            digest,
            size: None,
            offset: 0,
        };
        let Some(first) = connect(self, &mut providers, &path, want, Duration::ZERO).await else {
            // Providers were found, but none answered with the blob.
            writer.fail(Failure::Fetch("no provider answered with the blob".into()));
            return SpoolEnd::NoAnswer;
        };
        let media_type = match self.book.trusted(&digest) {
            Some((_, m)) if !m.is_empty() => m,
            _ => header_text(&first.response, http::header::CONTENT_TYPE),
        };
        let descriptor = Descriptor {
            digest,
            size: first.size,
            media_type,
        };
        if let Err(e) = writer.start(descriptor.size, descriptor.media_type.clone()) {
            // The entry has failed with NoRoom: its readers stream without the spool.
            tracing::info!(%digest, error = %e, "not spooling this blob");
            return SpoolEnd::NoRoom;
        }
        let window = (0, descriptor.size.saturating_sub(1));
        let mut job = Transfer::new(
            self,
            providers,
            &path,
            &descriptor,
            window,
            Sink::Spool(writer),
        );
        let outcome = job.fetch(first).await;
        let Sink::Spool(writer) = std::mem::replace(&mut job.sink, Sink::Whole(Vec::new())) else {
            return SpoolEnd::Failed;
        };
        match outcome {
            Outcome::Verified => {
                writer.verified();
                SpoolEnd::Verified
            }
            Outcome::Mismatch => {
                writer.fail(Failure::Mismatch);
                SpoolEnd::Failed
            }
            Outcome::NoProvider => {
                writer.fail(Failure::Fetch(
                    "no provider could complete the transfer".into(),
                ));
                SpoolEnd::Failed
            }
            Outcome::ClientGone => {
                writer.fail(Failure::Io("writing the spool file failed".into()));
                SpoolEnd::Failed
            }
        }
    }
}

/// How a spooled download ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SpoolEnd {
    Verified,
    /// No provider answered with the blob.
    NoAnswer,
    /// It does not fit in the spool.
    NoRoom,
    Failed,
}

impl SpoolEnd {
    /// The `reason` label of `peermirror_spool_downloads_total`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SpoolEnd::Verified => "verified",
            SpoolEnd::NoAnswer => "no_answer",
            SpoolEnd::NoRoom => "no_room",
            SpoolEnd::Failed => "failed",
        }
    }
}

fn header_text(resp: &reqwest::Response, name: http::header::HeaderName) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Where verified bytes go.
enum Sink {
    /// To the client as they come; the last chunk is held back until the blob is verified.
    Stream {
        tx: mpsc::Sender<io::Result<Bytes>>,
        held: Option<Bytes>,
    },
    /// Into memory (at most `--verify-before-send` bytes), sent only once verified.
    Whole(Vec<u8>),
    /// Into the spool file, which every reader follows; the spool holds back each reader's
    /// last bytes until the writer reports the blob verified.
    Spool(crate::spool::Writer),
}

struct Transfer {
    fetcher: Fetcher,
    providers: ProviderSet,
    path: String,
    digest: Digest,
    size: u64,
    /// Inclusive byte window the client asked for.
    window: (u64, u64),
    sink: Sink,
    /// Media type and bytes of a manifest being relayed.
    capture: Option<(String, Vec<u8>)>,
    /// Who contributed bytes, by identity, for the verdict.
    contributors: Vec<(Provider, PeerIdentity)>,
}

/// How one pass over the providers ended.
enum Outcome {
    Verified,
    /// Every byte arrived but the digest does not match; the contributors are shunned.
    Mismatch,
    /// Nobody is left to complete it.
    NoProvider,
    ClientGone,
}

enum Step {
    /// The provider delivered everything up to `size`.
    Complete,
    /// The provider failed (broke, stalled, sent too much); continue from the next.
    Failed,
    /// Stop: the client went away.
    Abort,
}

impl Transfer {
    fn new(
        fetcher: &Fetcher,
        providers: ProviderSet,
        path: &str,
        descriptor: &Descriptor,
        window: (u64, u64),
        sink: Sink,
    ) -> Self {
        let size = descriptor.size;
        // A manifest's bytes are kept (they are small) to learn who has its children.
        let capture = (crate::oci::is_manifest_media_type(&descriptor.media_type)
            && size <= crate::content::MAX_MANIFEST_SIZE)
            .then(|| (descriptor.media_type.clone(), Vec::new()));
        Transfer {
            fetcher: fetcher.clone(),
            providers,
            path: path.to_string(),
            digest: descriptor.digest,
            size,
            window,
            sink,
            capture,
            contributors: Vec::new(),
        }
    }

    /// Stream to the client; any failure ends the body with an error, never cleanly.
    async fn stream(mut self, first: Answer) {
        match self.fetch(first).await {
            Outcome::Verified => {
                if let Sink::Stream { tx, held } = &mut self.sink
                    && let Some(h) = held.take()
                {
                    let _ = tx.send(Ok(h)).await;
                }
            }
            Outcome::Mismatch => self.fail("digest mismatch").await,
            Outcome::NoProvider => self.fail("no provider could complete the transfer").await,
            Outcome::ClientGone => {}
        }
    }

    /// The verified bytes of the client's window (whole mode).
    fn take_window(&mut self) -> Bytes {
        let Sink::Whole(buf) = std::mem::replace(&mut self.sink, Sink::Whole(Vec::new())) else {
            return Bytes::new();
        };
        let all = Bytes::from(buf);
        clip(&all, 0, self.window).unwrap_or_default()
    }

    /// Fetch every byte, resuming from the next provider on a failure or a stall, and verify.
    /// The spool's writer hashes what it writes (on a blocking thread, overlapped with the
    /// network); the other sinks are hashed here.
    async fn fetch(&mut self, first: Answer) -> Outcome {
        let mut verifier = Verify {
            inline: (!matches!(self.sink, Sink::Spool(_)))
                .then(|| Sha256Verifier::new(self.digest)),
            seen: 0,
        };
        let mut current = Some(first);
        self.contributors.clear();
        loop {
            let answer = match current.take() {
                Some(a) => a,
                None => {
                    let offset = verifier.seen;
                    let want = Expect {
                        digest: self.digest,
                        size: Some(self.size),
                        offset,
                    };
                    let Some(a) = connect(
                        &self.fetcher,
                        &mut self.providers,
                        &self.path,
                        want,
                        NEXT_PROVIDER_WAIT,
                    )
                    .await
                    else {
                        return Outcome::NoProvider;
                    };
                    tracing::info!(peer = %a.provider.peer, offset, digest = %self.digest, "resuming from another provider");
                    a
                }
            };
            self.contributors
                .push((answer.provider.clone(), answer.identity.clone()));
            match self.pump(answer, &mut verifier).await {
                Step::Complete => break,
                Step::Failed => continue,
                Step::Abort => return Outcome::ClientGone,
            }
        }
        let matched = match (&mut self.sink, &verifier.inline) {
            (_, Some(v)) => v.matches(),
            (Sink::Spool(w), None) => match w.check().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(digest = %self.digest, error = %e, "writing to the spool failed");
                    return Outcome::ClientGone;
                }
            },
            (_, None) => false,
        };
        if matched {
            self.learn();
            return Outcome::Verified;
        }
        tracing::error!(digest = %self.digest, "digest mismatch from peers");
        for (p, id) in &self.contributors {
            self.fetcher.book.penalize(p, id, Fault::Mismatch);
        }
        Outcome::Mismatch
    }

    /// A verified transfer tells us who has this blob and, for a manifest, its children and
    /// their sizes.
    fn learn(&self) {
        let providers: Vec<Provider> = self.contributors.iter().map(|c| c.0.clone()).collect();
        let book = &self.fetcher.book;
        book.remember(Key::Digest(self.digest), &providers);
        if let Some((media_type, data)) = &self.capture {
            book.learn_manifest(media_type, data, &providers);
        }
    }

    async fn fail(&self, why: &str) {
        // An error ends the body uncleanly: hyper resets the stream instead of completing it.
        if let Sink::Stream { tx, .. } = &self.sink {
            let _ = tx.send(Err(io::Error::other(why.to_string()))).await;
        }
    }

    /// Copy one provider's body into the verifier and the sink.
    async fn pump(&mut self, a: Answer, verifier: &mut Verify) -> Step {
        let (p, id) = (&a.provider, &a.identity);
        let offset = verifier.seen;
        // A provider that ignores Range sends from 0: skip what we already have.
        let mut skip = if offset > 0 && a.response.status() == StatusCode::OK {
            offset
        } else {
            0
        };
        let mut body = a.response.bytes_stream();
        loop {
            // Progress, not just the whole: a peer that drips a byte now and then is moved
            // past like one that stopped.
            let item = match tokio::time::timeout(self.fetcher.stall_timeout, body.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(peer = %p.peer, %id, at = verifier.seen, "provider stalled");
                    self.fetcher.book.stalled(p, id);
                    return Step::Failed;
                }
            };
            let mut chunk = match item {
                Ok(c) => {
                    self.fetcher
                        .book
                        .metrics()
                        .mirror
                        .peer_fetch_bytes
                        .inc_by(c.len() as u64);
                    c
                }
                Err(e) => {
                    tracing::warn!(peer = %p.peer, error = %e, at = verifier.seen, "provider stream broke");
                    self.fetcher.book.penalize(p, id, Fault::Failed);
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
            let start = verifier.seen;
            let end = start + chunk.len() as u64;
            if end > self.size {
                // The prefix verified so far stays; the next provider resumes from it. More
                // bytes than its own headers announced is a lie.
                tracing::warn!(peer = %p.peer, %id, "provider sent more bytes than the blob's size");
                self.fetcher.book.penalize(p, id, Fault::Mismatch);
                return Step::Failed;
            }
            verifier.seen = end;
            if let Some(v) = verifier.inline.as_mut() {
                v.update(&chunk);
            }
            if let Some((_, buf)) = self.capture.as_mut() {
                buf.extend_from_slice(&chunk);
            }
            match &mut self.sink {
                Sink::Whole(buf) => buf.extend_from_slice(&chunk),
                Sink::Stream { tx, held } => {
                    if let Some(out) = clip(&chunk, start, self.window)
                        && let Some(prev) = held.replace(out)
                        && tx.send(Ok(prev)).await.is_err()
                    {
                        return Step::Abort;
                    }
                }
                Sink::Spool(w) => {
                    if let Err(e) = w.write(&chunk).await {
                        tracing::warn!(digest = %self.digest, error = %e, "writing to the spool failed");
                        return Step::Abort;
                    }
                }
            }
            if end == self.size {
                return Step::Complete;
            }
        }
        if verifier.seen == self.size {
            return Step::Complete;
        }
        tracing::warn!(peer = %p.peer, %id, at = verifier.seen, size = self.size, "provider body ended early");
        self.fetcher.book.penalize(p, id, Fault::Failed);
        Step::Failed
    }
}

/// How far a transfer got, and its hash unless the spool's writer hashes.
struct Verify {
    inline: Option<Sha256Verifier>,
    /// Bytes accepted so far, from offset 0: where a resume starts.
    seen: u64,
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
