//! The read-only OCI distribution endpoint that containerd's `hosts.toml` names as a mirror.
//!
//! Requests are parsed into a typed [`Route`] first; anything malformed is refused before any
//! lookup. Hits stream from the local content source; misses answer 404 with an OCI error body
//! at once, so containerd falls back to the next host.

mod access;
mod body;
mod partial;
mod routes;
mod verify;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;

use access::AccessRecord;
pub use access::{AccessSink, RequestEntry, Source};
pub use body::{Body, LoggedBody};
pub use partial::Ingests;
pub use routes::{Route, RouteKind, parse as parse_route};

use crate::auth::{Guard, Refusal};
use crate::content::{ContentSource, Descriptor, Index, SourceError};
use crate::limits::{UploadLimits, UploadSlot};
use crate::metrics::{Metrics, RequestLabels};
use crate::mirror::{Mirror, MirrorError, Target};
use crate::oci::headers::{
    ACCEPTED_TOKENS, API_VERSION, CHILDREN, CONTENT_DIGEST, CROWD, FOLLOWERS, MIRRORED, ROLLOUT,
    ROLLOUT_FAILED,
};
use crate::oci::{ByteRange, Digest, ErrorCode, Name, OciError, RangeSpec, Reference, TagKey};
use crate::server::ConnInfo;

/// Blobs from this size on have their peers capped by `--max-followers`.
const FOLLOW_MIN: u64 = 1024 * 1024;
/// Manifests whose children are remembered (content-addressed: they never change) ...
const CHILDREN_CACHED: usize = 4096;
/// ... for this long, so a busy node does not read a manifest twice per peer.
const CHILDREN_TTL: Duration = Duration::from_secs(600);
/// Reading a manifest to list its children is a hint: given up on after this.
const CHILDREN_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared state of the endpoint.
pub struct Registry {
    index: Arc<Index>,
    source: Arc<dyn ContentSource>,
    metrics: Arc<Metrics>,
    /// Serves local misses from peers; `None` runs a local-only mirror.
    mirror: Option<Arc<Mirror>>,
    guard: Guard,
    limits: UploadLimits,
    verifier: Arc<verify::LocalVerifier>,
    /// containerd's downloads in progress, served to peers as they grow.
    ingests: Option<Ingests>,
    /// Where finished requests are reported besides the access log (the status page).
    access_sink: Option<Arc<dyn AccessSink>>,
    /// The children of manifests served to peers (see [`Registry::holds_children`]).
    children: Arc<crate::ttl::TtlMap<Digest, Arc<[Digest]>>>,
}

/// The outcome of routing, before the access-log wrapper is put around the body.
struct Answer {
    response: Response<Body>,
    source: Source,
    route: RouteKind,
    expected: u64,
    /// Held while the body uploads.
    slot: Option<UploadSlot>,
}

impl Answer {
    fn error(e: OciError, route: RouteKind) -> Self {
        let mut response = Response::new(body::full(e.to_json()));
        *response.status_mut() = e.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if e.code == ErrorCode::Unsupported {
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        let source = if e.status() == StatusCode::NOT_FOUND {
            Source::Miss
        } else {
            Source::None
        };
        Answer {
            response,
            source,
            route,
            expected: 0,
            slot: None,
        }
    }

    /// `retry_after`: the failure throttle's window, for a 429.
    fn refused(r: Refusal, retry_after: Duration) -> Self {
        let (code, msg) = match r {
            Refusal::Throttled => (
                ErrorCode::TooManyRequests,
                "too many failed attempts; slow down",
            ),
            Refusal::NoClientCert => (ErrorCode::Unauthorized, "a client certificate is required"),
            Refusal::Revoked => (ErrorCode::Denied, "the client certificate has been revoked"),
            Refusal::CrlExpired => (
                ErrorCode::Denied,
                "the certificate revocation list has expired; certificates are refused until it is renewed",
            ),
            Refusal::MissingToken | Refusal::WrongToken => {
                (ErrorCode::Unauthorized, "a valid bearer token is required")
            }
        };
        let mut a = Answer::error(OciError::new(code, msg), RouteKind::Refused);
        a.source = Source::None;
        let h = a.response.headers_mut();
        if code == ErrorCode::Unauthorized {
            h.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="peermirror""#),
            );
        } else if code == ErrorCode::TooManyRequests {
            // Whole seconds, rounded up: a client that waits that long is let in again.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        a
    }

    /// This blob already has its `--max-followers` peers streaming it: the asker tries
    /// another copy (a 503 it does not count against us), or comes back with [`CROWD`].
    fn followed(followers: usize) -> Self {
        let mut a = Answer::busy(RouteKind::Blob);
        a.response
            .headers_mut()
            .insert(FOLLOWERS, HeaderValue::from(followers));
        a
    }

    fn busy(route: RouteKind) -> Self {
        let mut a = Answer::error(
            OciError::new(
                ErrorCode::Unavailable,
                "too many uploads in progress; retry shortly",
            ),
            route,
        );
        a.response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        a
    }
}

impl Answer {
    /// 416 with the `Content-Range: bytes */SIZE` that RFC 9110 asks for.
    fn unsatisfiable(size: u64, route: RouteKind) -> Self {
        let mut a = Answer::error(
            OciError::new(ErrorCode::RangeInvalid, "requested range not satisfiable"),
            route,
        );
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
            a.response.headers_mut().insert(CONTENT_RANGE, v);
        }
        a
    }
}

impl Registry {
    pub fn new(
        index: Arc<Index>,
        source: Arc<dyn ContentSource>,
        metrics: Arc<Metrics>,
        mirror: Option<Arc<Mirror>>,
        guard: Guard,
        limits: UploadLimits,
    ) -> Self {
        Registry {
            index,
            source,
            metrics,
            mirror,
            guard,
            limits,
            verifier: Arc::new(verify::LocalVerifier::default()),
            ingests: None,
            access_sink: None,
            children: Arc::new(crate::ttl::TtlMap::new(CHILDREN_CACHED)),
        }
    }

    /// Report every finished request to `sink` too (the daemon wires the status page here).
    pub fn with_access_sink(mut self, sink: Arc<dyn AccessSink>) -> Self {
        self.access_sink = Some(sink);
        self
    }

    /// Serve peers the blobs containerd is still downloading (`ingest/` of its content dir).
    pub fn with_ingests(mut self, ingests: Ingests) -> Self {
        self.ingests = Some(ingests);
        self
    }

    /// Remember which local blobs were found intact or damaged in `path` (under
    /// `--data-dir`), so a restart does not hash them again.
    pub fn with_verified_file(mut self, path: std::path::PathBuf) -> Self {
        self.verifier = Arc::new(
            verify::LocalVerifier::new(Some(path)).with_faults(self.metrics.faults.clone()),
        );
        self
    }

    /// Persist the verification verdicts not yet written (at shutdown).
    pub fn flush_verdicts(&self) {
        if let Err(e) = self.verifier.flush() {
            tracing::warn!(error = %e, "cannot persist verified blobs");
        }
    }

    /// Answer one request. Never fails: every problem becomes an OCI error response.
    pub async fn handle<B>(&self, req: Request<B>, conn: Arc<ConnInfo>) -> Response<LoggedBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        // Strangers are refused before any lookup, read or peer traffic.
        let (answer, identity) = match self.guard.check(req.headers(), &conn) {
            Ok(identity) => {
                let mut answer = self.answer(&req, conn.remote.ip()).await;
                self.tell_accepted_tokens(&req, &identity, &mut answer.response);
                (answer, identity.to_string())
            }
            Err(refusal) => {
                let from_peer = req.headers().contains_key(MIRRORED);
                self.metrics
                    .security
                    .refused(refusal.reason(), conn.remote.ip(), from_peer);
                (
                    Answer::refused(refusal, self.guard.throttle.window()),
                    format!("refused:{}", refusal.reason()),
                )
            }
        };
        let status = answer.response.status().as_u16();
        self.metrics
            .registry
            .requests
            .get_or_create(&RequestLabels {
                route: answer.route.as_str(),
                method: method_label(&method),
                status,
                source: answer.source.as_str(),
            })
            .inc();
        let record = AccessRecord {
            method,
            path,
            remote: conn.remote,
            identity,
            status,
            source: answer.source,
            started,
            expected: answer.expected,
            sent_bytes: self
                .metrics
                .registry
                .response_bytes
                .get_or_create(&answer.source.labels())
                .clone(),
            sink: self.access_sink.clone(),
        };
        let slot = answer.slot;
        let mut response = answer.response;
        if record.method == Method::HEAD {
            response = headers_only(response);
        }
        response.map(|b| LoggedBody::new(b, record, slot))
    }

    /// To a peer that proved itself with a static token: which lines this node accepts, so
    /// it sends the newest both hold ([`crate::auth::Tokens::for_peer`]).
    fn tell_accepted_tokens<B, R>(
        &self,
        req: &Request<B>,
        identity: &crate::auth::Identity,
        response: &mut Response<R>,
    ) {
        if identity.token_line.is_none() || !req.headers().contains_key(MIRRORED) {
            return;
        }
        let Some(tokens) = &self.guard.tokens else {
            return;
        };
        if let Ok(v) = http::HeaderValue::from_str(&tokens.accepted_ids()) {
            response.headers_mut().insert(ACCEPTED_TOKENS, v);
        }
    }

    async fn answer<B>(&self, req: &Request<B>, from: IpAddr) -> Answer {
        let route = match routes::parse(req.uri().path()) {
            Ok(r) => r,
            Err(e) => return Answer::error(e, RouteKind::Invalid),
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Answer::error(
                OciError::new(
                    ErrorCode::Unsupported,
                    "this mirror is read-only: GET and HEAD only",
                ),
                route.kind(),
            );
        }
        let asked = Asked::read(req, from);
        match route {
            Route::Base => {
                let mut response = Response::new(body::full("{}"));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
                    .headers_mut()
                    .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
                Answer {
                    response,
                    source: Source::None,
                    route: RouteKind::Base,
                    expected: 0,
                    slot: None,
                }
            }
            Route::Manifest { name, reference } => {
                let ns = query_param(req.uri().query(), "ns");
                let tag_key = match (&reference, &ns) {
                    (Reference::Tag(tag), Some(ns)) => TagKey::new(ns, &name, tag).ok(),
                    _ => None,
                };
                let digest = match &reference {
                    Reference::Digest(d) => Some(*d),
                    Reference::Tag(_) => tag_key.as_ref().and_then(|k| self.index.resolve(k)),
                };
                if let Some(desc) = digest.and_then(|d| self.index.stat(&d)) {
                    let digest = desc.digest;
                    let mut a = self.serve(&asked, desc, RouteKind::Manifest).await;
                    if asked.mirrored
                        && !asked.head
                        && a.response.status().is_success()
                        && self.holds_children(&digest).await
                    {
                        a.response
                            .headers_mut()
                            .insert(CHILDREN, HeaderValue::from_static("held"));
                    }
                    return a;
                }
                let target = match (reference, tag_key) {
                    (Reference::Digest(d), _) => Some(Target::ManifestDigest(d)),
                    (Reference::Tag(tag), Some(key)) => Some(Target::ManifestTag(key, tag)),
                    (Reference::Tag(_), None) => None,
                };
                let miss = OciError::new(
                    ErrorCode::ManifestUnknown,
                    "manifest unknown to this mirror",
                );
                match target {
                    Some(t) => {
                        self.ask_peers(&asked, &name, t, RouteKind::Manifest, miss)
                            .await
                    }
                    None => Answer::error(miss, RouteKind::Manifest),
                }
            }
            Route::Blob { name, digest } => {
                // Built only on a miss: a hit is the hot path.
                let miss = || {
                    OciError::new(
                        ErrorCode::BlobUnknown,
                        format!("blob {digest} unknown to this mirror"),
                    )
                };
                match self.index.stat(&digest) {
                    Some(desc) => self.serve(&asked, desc, RouteKind::Blob).await,
                    None if asked.mirrored && asked.rollout.is_some() => {
                        self.rollout(&asked, digest, miss()).await
                    }
                    None if asked.mirrored => match self.in_flight(&asked, &digest).await {
                        Some(a) => a,
                        None => Answer::error(miss(), RouteKind::Blob),
                    },
                    None => {
                        self.ask_peers(&asked, &name, Target::Blob(digest), RouteKind::Blob, miss())
                            .await
                    }
                }
            }
        }
    }

    /// A peer misses a blob this node coordinates (see `mirror::claim`): its role, on a 404
    /// (a node without a mirror, or a peer that ignores the header, answers a plain miss,
    /// which means "fetch").
    async fn rollout(&self, asked: &Asked, digest: Digest, miss: OciError) -> Answer {
        let mut a = Answer::error(miss, RouteKind::Blob);
        if let (Some(mirror), Some(asker)) = (&self.mirror, asked.rollout.clone()) {
            let role = mirror
                .rollout_join(digest, asker, asked.rollout_failed.clone(), asked.from)
                .await;
            if let Ok(v) = HeaderValue::from_str(&role.header()) {
                a.response.headers_mut().insert(ROLLOUT, v);
            }
        }
        a
    }

    /// A local miss: ask peers, unless this request came from a peer (then it is a miss here,
    /// never forwarded again, so requests cannot loop).
    async fn ask_peers(
        &self,
        asked: &Asked,
        name: &Name,
        target: Target,
        route: RouteKind,
        miss: OciError,
    ) -> Answer {
        let Some(mirror) = self.mirror.as_ref().filter(|_| !asked.mirrored) else {
            return Answer::error(miss, route);
        };
        let slot = if asked.head {
            None
        } else {
            match self.limits.try_start() {
                Some(s) => Some(s),
                None => return Answer::busy(route),
            }
        };
        match mirror
            .fetch(name, target, asked.head, asked.range.as_ref())
            .await
        {
            Ok(found) => {
                let body = match found.body {
                    Some(s) => body::stream(self.limits.pace(s)),
                    None => body::empty(),
                };
                let mut a = content(&found.descriptor, found.window, body, route, slot);
                a.source = Source::Peer;
                a
            }
            Err(MirrorError::NotFound(_)) => Answer::error(miss, route),
            Err(MirrorError::RangeNotSatisfiable(size)) => Answer::unsatisfiable(size, route),
        }
    }

    /// Serve a blob or manifest held locally, honouring one byte range.
    async fn serve(&self, asked: &Asked, desc: Descriptor, route: RouteKind) -> Answer {
        let Ok(window) = RangeSpec::window(asked.range.as_ref(), desc.size) else {
            return Answer::unsatisfiable(desc.size, route);
        };
        // A peer never completes bytes we have not checked: see `verify`.
        let mut check = Check::None;
        if asked.mirrored {
            // A range that covers the whole blob is checked like a full GET.
            let ranged = window.is_some_and(|r| r.start > 0 || r.len() < desc.size);
            match self.verdict_for(asked, &desc, ranged, route).await {
                Ok(c) => check = c,
                Err(answer) => return answer,
            }
        }
        let desc = &desc;
        self.respond(asked, desc, window, route, |offset, len| async move {
            let s = self
                .source
                .read(&desc.digest, offset, Some(len))
                .await
                .map_err(|e| self.read_failed(e, &desc.digest, route))?;
            Ok(match check {
                Check::Stream(stamp) => self.checked(s, desc, stamp),
                Check::Background(stamp) => {
                    self.verify_later(&desc.digest, stamp);
                    s
                }
                Check::None => s,
            })
        })
        .await
    }

    /// The answer for `window` of `desc`: headers only for HEAD; for GET a transfer slot
    /// (busy if none is free) and the body `open(offset, len)` gives, paced.
    async fn respond<F, Fut>(
        &self,
        asked: &Asked,
        desc: &Descriptor,
        window: Option<ByteRange>,
        route: RouteKind,
        open: F,
    ) -> Answer
    where
        F: FnOnce(u64, u64) -> Fut,
        Fut: std::future::Future<Output = Result<crate::content::ByteStream, Answer>>,
    {
        if asked.head {
            return content(desc, window, body::empty(), route, None);
        }
        // Small blobs go out in a moment; spreading their followers would only add a round trip.
        let follow = if asked.mirrored && route == RouteKind::Blob && desc.size >= FOLLOW_MIN {
            match self.limits.follow(desc.digest, asked.crowd) {
                Ok(g) => g,
                Err(n) => return Answer::followed(n),
            }
        } else {
            None
        };
        let Some(slot) = self.limits.try_start() else {
            return Answer::busy(route);
        };
        let slot = slot.following(follow);
        let (offset, len) = window.map_or((0, desc.size), |r| (r.start, r.len()));
        match open(offset, len).await {
            Ok(s) => content(
                desc,
                window,
                body::stream(self.limits.pace(s)),
                route,
                Some(slot),
            ),
            Err(answer) => answer,
        }
    }

    /// Whether every blob the local manifest `digest` names is held complete here: the peer
    /// it is served to then takes this node for a provider of them (see [`CHILDREN`]). Any
    /// doubt (a read that fails or is slow, bytes that do not parse) answers no, which only
    /// costs the peer a lookup.
    async fn holds_children(&self, digest: &Digest) -> bool {
        let children = match self.children.get(digest) {
            Some(c) => c,
            None => {
                let Some(c) = self.read_children(digest).await else {
                    return false;
                };
                self.children.insert(*digest, c.clone(), CHILDREN_TTL);
                c
            }
        };
        !children.is_empty() && children.iter().all(|d| self.index.stat(d).is_some())
    }

    async fn read_children(&self, digest: &Digest) -> Option<Arc<[Digest]>> {
        let desc = self.index.stat(digest)?;
        // No more than the index's size for it, and no manifest over the limit.
        let limit = desc.size.min(crate::content::MAX_MANIFEST_SIZE);
        let read = crate::content::read_small(self.source.as_ref(), digest, desc.size, limit);
        let data = tokio::time::timeout(CHILDREN_READ_TIMEOUT, read)
            .await
            .ok()?
            .ok()?;
        let children = crate::oci::children(&desc.media_type, &data).ok()?;
        Some(children.into_iter().map(|c| c.digest).collect())
    }

    /// How to check a local blob a peer asked for. A cached verdict decides at once; HEAD
    /// never hashes; a small blob is hashed before the headers; a full GET is hashed as it
    /// streams; a range is served as is (the asker verifies the whole digest) and the blob is
    /// hashed in the background.
    async fn verdict_for(
        &self,
        asked: &Asked,
        desc: &Descriptor,
        ranged: bool,
        route: RouteKind,
    ) -> Result<Check, Answer> {
        let stamp = self.source.stamp(&desc.digest).await;
        match self.verifier.cached(&desc.digest, stamp) {
            Some(verify::Verdict::Intact) => return Ok(Check::None),
            Some(verify::Verdict::Corrupt) => {
                self.index.remove_content(&desc.digest);
                return Err(damaged(route));
            }
            None => {}
        }
        if asked.head {
            return Ok(Check::None);
        }
        if desc.size <= verify::HASH_FIRST_MAX {
            return match self
                .verifier
                .check(self.source.as_ref(), &desc.digest, stamp)
                .await
            {
                Ok(verify::Verdict::Intact) => Ok(Check::None),
                Ok(verify::Verdict::Corrupt) => {
                    on_corrupt(&self.index, &self.metrics, &desc.digest);
                    Err(damaged(route))
                }
                Err(e) => Err(self.read_failed(e, &desc.digest, route)),
            };
        }
        Ok(if ranged {
            Check::Background(stamp)
        } else {
            Check::Stream(stamp)
        })
    }

    /// The whole blob, hashed as it goes; a damaged copy ends the body before its last byte.
    fn checked(
        &self,
        s: crate::content::ByteStream,
        desc: &Descriptor,
        stamp: Option<verify::Stamp>,
    ) -> crate::content::ByteStream {
        let (verifier, index, metrics, digest) = (
            self.verifier.clone(),
            self.index.clone(),
            self.metrics.clone(),
            desc.digest,
        );
        verify::checked(s, digest, desc.size, move |v| {
            verifier.record(digest, stamp, v);
            if v == verify::Verdict::Corrupt {
                on_corrupt(&index, &metrics, &digest);
            }
        })
    }

    fn verify_later(&self, digest: &Digest, stamp: Option<verify::Stamp>) {
        let (index, metrics, digest) = (self.index.clone(), self.metrics.clone(), *digest);
        self.verifier
            .check_later(self.source.clone(), digest, stamp, move || {
                on_corrupt(&index, &metrics, &digest)
            });
    }

    fn read_failed(&self, e: SourceError, digest: &Digest, route: RouteKind) -> Answer {
        let code = if e.is_not_found() {
            // The store lost it since it was indexed: stop offering it.
            self.index.remove_content(digest);
            if route == RouteKind::Manifest {
                ErrorCode::ManifestUnknown
            } else {
                ErrorCode::BlobUnknown
            }
        } else {
            ErrorCode::Unavailable
        };
        tracing::warn!(%digest, error = %e, "reading local content failed");
        Answer::error(OciError::new(code, e.to_string()), route)
    }
}

/// How a local blob is checked on its way to a peer.
enum Check {
    /// Already known intact, a HEAD, or not asked by a peer.
    None,
    /// Hashed as it streams.
    Stream(Option<verify::Stamp>),
    /// A range: served as is, the blob hashed in the background.
    Background(Option<verify::Stamp>),
}

/// A local blob turned out damaged: stop serving and advertising it.
fn on_corrupt(index: &Index, metrics: &Metrics, digest: &Digest) {
    tracing::error!(%digest, "local content does not match its digest; no longer serving or advertising it");
    metrics.registry.local_corruptions.inc();
    index.remove_content(digest);
}

fn damaged(route: RouteKind) -> Answer {
    let code = if route == RouteKind::Manifest {
        ErrorCode::ManifestUnknown
    } else {
        ErrorCode::BlobUnknown
    };
    Answer::error(OciError::new(code, "local copy is damaged"), route)
}

/// What of a request matters once it is routed, read from its headers once.
struct Asked {
    head: bool,
    /// Sent by a peer: answer from local content only, and verify it first.
    mirrored: bool,
    /// A peer that found every copy busy: let it in beyond `--max-followers`.
    crowd: bool,
    /// A peer that misses this blob asks this node, its coordinator, for its role.
    rollout: Option<crate::routing::NodeId>,
    /// ... reporting that the copy it followed, this node's, failed.
    rollout_failed: Option<crate::routing::NodeId>,
    /// The client's one byte range, not yet checked against a size; a header that is not one
    /// well-formed range is ignored (RFC 9110) and the whole content is sent.
    range: Option<RangeSpec>,
    /// The address the request came from.
    from: IpAddr,
}

impl Asked {
    fn read<B>(req: &Request<B>, from: IpAddr) -> Self {
        let h = req.headers();
        Asked {
            head: req.method() == Method::HEAD,
            mirrored: h.contains_key(MIRRORED),
            crowd: h.contains_key(CROWD),
            rollout: h
                .get(ROLLOUT)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::mirror::node_id),
            rollout_failed: h
                .get(ROLLOUT_FAILED)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::mirror::node_id),
            range: h
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| RangeSpec::parse(v).ok()),
            from,
        }
    }
}

/// The one answer with content, local or from peers: status, headers and `body` for
/// `window` of `desc` (`None`: all of it).
fn content(
    desc: &Descriptor,
    window: Option<ByteRange>,
    body: Body,
    route: RouteKind,
    slot: Option<UploadSlot>,
) -> Answer {
    let (status, len) = match window {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.len()),
        None => (StatusCode::OK, desc.size),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, media_type_header(&desc.media_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&desc.digest.to_string()) {
        h.insert(CONTENT_DIGEST, v);
    }
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(r) = window
        && let Ok(v) = HeaderValue::from_str(&r.content_range(desc.size))
    {
        h.insert(CONTENT_RANGE, v);
    }
    Answer {
        response,
        source: Source::Local,
        route,
        expected: len,
        slot,
    }
}

/// A HEAD answer: the headers GET would send (with its Content-Length), no body. Over HTTP/2
/// a body on a HEAD response is a protocol error that resets the stream.
fn headers_only(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    if !parts.headers.contains_key(CONTENT_LENGTH)
        && let Some(len) = body.size_hint().exact()
    {
        parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, body::empty())
}

fn media_type_header(mt: &str) -> HeaderValue {
    if mt.is_empty() {
        return HeaderValue::from_static(crate::oci::media_types::OCTET_STREAM);
    }
    HeaderValue::from_str(mt)
        .unwrap_or_else(|_| HeaderValue::from_static(crate::oci::media_types::OCTET_STREAM))
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// The first value of a query parameter, decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}
