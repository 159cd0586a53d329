//! A verified, resumable transfer of one blob from peers: to the client as it streams (the
//! last chunk held back until the digest matches), whole into memory for small blobs, or into
//! the spool. A provider that fails or stalls is left for the next, resuming with a `Range`.

use std::io;

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use tokio::sync::mpsc;

use super::ask::{Answer, Expect, NEXT_PROVIDER_WAIT};
use super::book::{Fault, PeerIdentity};
use super::fetcher::Fetcher;
use super::{Found, MirrorError, Miss, ProviderSet};
use crate::content::{Descriptor, Key};
use crate::oci::{ByteRange, Digest, RangeSpec, Sha256Verifier};
use crate::routing::Provider;

/// Chunks buffered between the peer and the client: back-pressure, bounded memory.
const CHANNEL_CHUNKS: usize = 8;

impl Fetcher {
    /// The first usable answer to a GET of the whole blob, its descriptor's media type the
    /// trusted one when a relayed manifest gave it (else the answer's `Content-Type`).
    /// When no provider is at hand (the known ones shunned, the others behind a lookup not
    /// yet started or still running, as on a retry after a mismatch) it waits for the
    /// lookup like any next provider.
    async fn open(
        &self,
        providers: &mut ProviderSet,
        path: &str,
        digest: Digest,
    ) -> Option<Answer> {
        let want = Expect {
            digest: Some(digest),
            size: None,
            offset: 0,
        };
        let mut first = self
            .connect(providers, path, want, NEXT_PROVIDER_WAIT)
            .await?;
        if let Some(known) = self.book.trusted(&digest)
            && !known.media_type.is_empty()
        {
            first.descriptor.media_type = known.media_type;
        }
        Some(first)
    }

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
        loop {
            // Always fetch from byte 0: the digest covers the whole blob, so even a client's
            // resume (`Range: bytes=N-`) is answered with bytes whose prefix was hashed too.
            let first = self
                .open(&mut providers, &path, digest)
                .await
                .ok_or(MirrorError::NotFound(Miss::ProvidersFailed))?;
            let descriptor = first.descriptor.clone();
            let size = descriptor.size;
            let window = RangeSpec::window(range, size)
                .map_err(|_| MirrorError::RangeNotSatisfiable(size))?;
            let bounds = window.unwrap_or(ByteRange {
                start: 0,
                end: size.saturating_sub(1),
            });
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
                Outcome::NoProvider | Outcome::ClientGone | Outcome::SpoolWriteFailed => {
                    return Err(failed);
                }
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
        started: impl FnOnce(),
    ) -> SpoolEnd {
        use crate::spool::Failure;
        let Some(first) = self.open(&mut providers, &path, digest).await else {
            // Providers were found, but none answered with the blob.
            writer.fail(Failure::Fetch("no provider answered with the blob".into()));
            return SpoolEnd::NoAnswer;
        };
        let descriptor = first.descriptor.clone();
        if let Err(e) = writer.start(descriptor.size, descriptor.media_type.clone()) {
            // The entry has failed with NoRoom: its readers stream without the spool.
            tracing::info!(%digest, error = %e, "not spooling this blob");
            return SpoolEnd::NoRoom;
        }
        started();
        let window = ByteRange {
            start: 0,
            end: descriptor.size.saturating_sub(1),
        };
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
            // A spool download has no client to lose; any stop is the spool's.
            Outcome::SpoolWriteFailed | Outcome::ClientGone => {
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
    window: ByteRange,
    sink: Sink,
    /// Media type and bytes of a manifest being relayed.
    capture: Option<(String, Vec<u8>)>,
    /// Who contributed bytes, by identity, for the verdict.
    contributors: Vec<(Provider, PeerIdentity)>,
    /// Of those, the ones that said they hold every child of the manifest (see
    /// [`crate::oci::headers::CHILDREN`]).
    hold_children: Vec<Provider>,
}

/// How one pass over the providers ended.
enum Outcome {
    Verified,
    /// Every byte arrived but the digest does not match; the contributors are shunned.
    Mismatch,
    /// Nobody is left to complete it.
    NoProvider,
    /// The client stopped reading (a streamed transfer only).
    ClientGone,
    /// Writing to the spool file failed: a local fault, not a provider's.
    SpoolWriteFailed,
}

enum Step {
    /// The provider delivered everything up to `size`.
    Complete,
    /// The provider failed (broke, stalled, sent too much); continue from the next.
    Failed,
    /// Stop: the client went away.
    ClientGone,
    /// Stop: the spool file could not be written.
    SpoolWriteFailed,
}

impl Transfer {
    fn new(
        fetcher: &Fetcher,
        providers: ProviderSet,
        path: &str,
        descriptor: &Descriptor,
        window: ByteRange,
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
            hold_children: Vec::new(),
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
            // The client is gone; a streamed transfer has no spool to fail.
            Outcome::ClientGone | Outcome::SpoolWriteFailed => {}
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
        self.hold_children.clear();
        loop {
            let answer = match current.take() {
                Some(a) => a,
                None => {
                    let offset = verifier.seen;
                    let want = Expect {
                        digest: Some(self.digest),
                        size: Some(self.size),
                        offset,
                    };
                    let Some(a) = self
                        .fetcher
                        .connect(&mut self.providers, &self.path, want, NEXT_PROVIDER_WAIT)
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
            if self.capture.is_some()
                && answer
                    .response
                    .headers()
                    .get(crate::oci::headers::CHILDREN)
                    .is_some_and(|v| v == "held")
            {
                self.hold_children.push(answer.provider.clone());
            }
            match self.pump(answer, &mut verifier).await {
                Step::Complete => break,
                Step::Failed => continue,
                Step::ClientGone => return Outcome::ClientGone,
                Step::SpoolWriteFailed => return Outcome::SpoolWriteFailed,
            }
        }
        let matched = match (&mut self.sink, &verifier.inline) {
            (_, Some(v)) => v.matches(),
            (Sink::Spool(w), None) => match w.check().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(digest = %self.digest, error = %e, "writing to the spool failed");
                    return Outcome::SpoolWriteFailed;
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
    /// their sizes, and who holds those children (only the providers that said so: a peer
    /// that is itself still pulling the image must not pass for a complete copy, or a rollout
    /// branches at it instead of forming a chain).
    fn learn(&self) {
        let providers: Vec<Provider> = self.contributors.iter().map(|c| c.0.clone()).collect();
        let book = &self.fetcher.book;
        book.remember(Key::Digest(self.digest), &providers);
        if let Some((media_type, data)) = &self.capture {
            book.learn_manifest(media_type, data, &self.hold_children);
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
                        return Step::ClientGone;
                    }
                }
                Sink::Spool(w) => {
                    if let Err(e) = w.write(&chunk).await {
                        tracing::warn!(digest = %self.digest, error = %e, "writing to the spool failed");
                        return Step::SpoolWriteFailed;
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
fn clip(chunk: &Bytes, start: u64, window: ByteRange) -> Option<Bytes> {
    let ByteRange { start: lo, end: hi } = window;
    let end = start + chunk.len() as u64; // exclusive
    if end <= lo || start > hi {
        return None;
    }
    let from = usize::try_from(lo.saturating_sub(start)).ok()?;
    let to = usize::try_from((hi + 1).min(end) - start).ok()?;
    (from < to).then(|| chunk.slice(from..to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_windows() {
        let w = |start, end| ByteRange { start, end };
        let c = Bytes::from_static(b"0123456789");
        assert_eq!(clip(&c, 0, w(0, 9)).unwrap(), c);
        assert_eq!(clip(&c, 0, w(3, 5)).unwrap().as_ref(), b"345");
        assert_eq!(clip(&c, 10, w(3, 5)), None);
        assert_eq!(clip(&c, 10, w(12, 100)).unwrap().as_ref(), b"23456789");
        assert_eq!(clip(&c, 10, w(0, 10)).unwrap().as_ref(), b"0");
        assert_eq!(clip(&c, 10, w(0, 9)), None);
    }
}
