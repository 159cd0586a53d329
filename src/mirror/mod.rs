//! Serving what this node lacks from its peers, verified.
//!
//! On a local miss the [`Mirror`] finds providers through the [`Router`] (waiting at most the
//! resolve timeout for the first), asks them over HTTP with [`MIRRORED_HEADER`] set (so they
//! answer from local content only and never forward), hedges when the first is slow, and
//! streams the body through a sha256 check that holds back the final chunk until the digest
//! matches. A provider that fails mid-stream is replaced by the next with a `Range` from the
//! byte reached; one that sends wrong bytes is shunned for a while and the client connection is
//! aborted, never ended cleanly, so no response made of unverified bytes ever completes.
//! (containerd then resumes elsewhere and fails that pull at commit, keeping nothing; its next
//! attempt avoids the shunned peer. Serving nodes verify their own copies before uploading to
//! peers, see `registry::verify`, so this backstop is for hostile peers and races.)

mod providers;
mod transfer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};

use crate::content::{ByteStream, Key};
use crate::metrics::Metrics;
use crate::oci::{ByteRange, Digest, Name, RangeError, TagKey};
use crate::routing::{Provider, Router};

pub use providers::ProviderSet;

/// Marks a request sent by a peer: serve it from local content only.
pub const MIRRORED_HEADER: &str = "x-peermirror-mirrored";

#[derive(Clone, Debug)]
pub struct MirrorConfig {
    /// How long to wait for the first provider before answering 404.
    pub resolve_timeout: Duration,
    /// Resolve tags through peers at all.
    pub resolve_tags: bool,
    /// Resolve `latest` through peers (off: `latest` moves too often to trust a peer's copy).
    pub resolve_latest_tag: bool,
    /// When the first provider has not answered by then, ask the next one as well.
    pub hedge_delay: Duration,
    /// How long a provider that failed is skipped.
    pub failure_penalty: Duration,
    /// How long a provider that sent wrong bytes is skipped.
    pub mismatch_penalty: Duration,
    /// Wait for one provider's response headers at most this long.
    pub response_timeout: Duration,
}

/// The HTTP client for peer fetches and the scheme it speaks. The daemon publishes a new one
/// through a `watch` channel whenever the TLS material changes; each request takes the latest.
#[derive(Clone, Debug)]
pub struct PeerClient {
    pub client: reqwest::Client,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            resolve_timeout: Duration::from_millis(20),
            resolve_tags: true,
            resolve_latest_tag: false,
            hedge_delay: Duration::from_millis(100),
            failure_penalty: Duration::from_secs(30),
            mismatch_penalty: Duration::from_secs(300),
            response_timeout: Duration::from_secs(3),
        }
    }
}

/// What is being asked for on a miss.
#[derive(Clone, Debug)]
pub enum Target {
    Blob(Digest),
    ManifestDigest(Digest),
    ManifestTag(TagKey, crate::oci::Tag),
}

/// A response ready to be sent to the local client.
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `None` for HEAD.
    pub body: Option<ByteStream>,
    pub expected_len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("no peer has it")]
    NotFound,
    #[error("requested range not satisfiable (size {0})")]
    RangeNotSatisfiable(u64),
}

pub struct Mirror {
    router: Arc<dyn Router>,
    /// The latest peer client (replaced when TLS material is reloaded).
    client: tokio::sync::watch::Receiver<PeerClient>,
    /// Sent to peers as a bearer token in token mode.
    token: Option<Arc<crate::auth::Tokens>>,
    metrics: Arc<Metrics>,
    config: MirrorConfig,
    /// Providers skipped until the given time.
    penalties: Mutex<HashMap<String, Instant>>,
    /// Keys nobody had, answered 404 without a lookup until the given time.
    negative: Mutex<HashMap<Key, Instant>>,
    /// Providers known to have a key without asking the DHT: those that just served it, the
    /// digest a tag resolved to, and the children of a manifest a provider served. A pull is
    /// one lookup for the tag and then mostly cache hits, so a busy DHT cannot make the later
    /// requests of the same pull miss the resolve timeout.
    known: Mutex<HashMap<Key, (Instant, Vec<Provider>)>>,
}

const NEGATIVE_TTL: Duration = Duration::from_millis(250);
const NEGATIVE_MAX: usize = 4096;
const KNOWN_TTL: Duration = Duration::from_secs(300);
const KNOWN_MAX: usize = 65_536;

impl Mirror {
    pub fn new(
        router: Arc<dyn Router>,
        client: tokio::sync::watch::Receiver<PeerClient>,
        metrics: Arc<Metrics>,
        config: MirrorConfig,
        token: Option<Arc<crate::auth::Tokens>>,
    ) -> Arc<Self> {
        Arc::new(Mirror {
            router,
            client,
            token,
            metrics,
            config,
            penalties: Mutex::new(HashMap::new()),
            negative: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP client for peer fetches: no redirects (a peer cannot send us elsewhere),
    /// bounded connect and read waits.
    pub fn client_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .tcp_nodelay(true)
            .no_proxy()
    }

    pub fn config(&self) -> &MirrorConfig {
        &self.config
    }

    fn is_penalized(&self, p: &Provider) -> bool {
        let mut map = self.penalties.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&p.peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(&p.peer);
                false
            }
            None => false,
        }
    }

    fn penalize(&self, p: &Provider, mismatch: bool) {
        let d = if mismatch {
            self.metrics.digest_mismatches.inc();
            self.config.mismatch_penalty
        } else {
            self.metrics.provider_failures.inc();
            self.config.failure_penalty
        };
        tracing::warn!(peer = %p.peer, addr = %p.addr, mismatch, penalty = ?d, "provider shunned");
        self.penalties
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p.peer.clone(), Instant::now() + d);
    }

    fn negative_hit(&self, key: &Key) -> bool {
        let map = self.negative.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).is_some_and(|until| *until > Instant::now())
    }

    fn remember_miss(&self, key: Key) {
        let mut map = self.negative.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= NEGATIVE_MAX {
            let now = Instant::now();
            map.retain(|_, until| *until > now);
            if map.len() >= NEGATIVE_MAX {
                map.clear();
            }
        }
        map.insert(key, Instant::now() + NEGATIVE_TTL);
    }

    /// Ask the DHT for providers of `key`, counting it.
    pub(crate) fn lookup(&self, key: &Key) -> tokio::sync::mpsc::Receiver<Provider> {
        self.metrics.dht_lookups.inc();
        self.router.lookup(key)
    }

    /// Remember that `providers` have `key`.
    pub(crate) fn remember(&self, key: Key, providers: &[Provider]) {
        if providers.is_empty() {
            return;
        }
        let mut map = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= KNOWN_MAX {
            map.retain(|_, (at, _)| at.elapsed() < KNOWN_TTL);
            if map.len() >= KNOWN_MAX {
                map.clear();
            }
        }
        map.insert(key, (Instant::now(), providers.to_vec()));
    }

    fn known_providers(&self, key: &Key) -> Vec<Provider> {
        let map = self.known.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some((at, p)) if at.elapsed() < KNOWN_TTL => p.clone(),
            _ => Vec::new(),
        }
    }

    /// Find providers of `key`; `None` if none answered within the resolve timeout.
    async fn providers(self: &Arc<Self>, key: Key) -> Option<ProviderSet> {
        let known = self.known_providers(&key);
        if known.is_empty() && self.negative_hit(&key) {
            return None;
        }
        if !known.is_empty() {
            return Some(ProviderSet::known(key, known, self.clone()));
        }
        let started = Instant::now();
        let rx = self.lookup(&key);
        let mut set = ProviderSet::new(rx, self.clone());
        let first = set.first(self.config.resolve_timeout).await;
        self.metrics
            .resolve_latency
            .observe(started.elapsed().as_secs_f64());
        if first {
            Some(set)
        } else {
            self.remember_miss(key);
            None
        }
    }

    /// Serve `target` from peers. `range` is the client's raw `Range` header, if any.
    pub async fn fetch(
        self: &Arc<Self>,
        name: &Name,
        target: Target,
        head: bool,
        range: Option<&str>,
    ) -> Result<Fetched, MirrorError> {
        let (key, path_ref, digest) = match &target {
            Target::Blob(d) => (Key::Digest(*d), format!("blobs/{d}"), Some(*d)),
            Target::ManifestDigest(d) => (Key::Digest(*d), format!("manifests/{d}"), Some(*d)),
            Target::ManifestTag(key, tag) => {
                if !self.config.resolve_tags
                    || (tag.as_str() == "latest" && !self.config.resolve_latest_tag)
                {
                    return Err(MirrorError::NotFound);
                }
                (Key::Tag(key.clone()), String::new(), None)
            }
        };
        let mut providers = self.providers(key).await.ok_or(MirrorError::NotFound)?;
        let (digest, path_ref, head_info) = match (digest, &target) {
            (Some(d), _) => (d, path_ref, None),
            (None, Target::ManifestTag(key, tag)) => {
                // A tag is resolved by one provider's HEAD; the bytes are then checked against
                // the digest it names, like any other manifest.
                let info = transfer::resolve_tag(self, &mut providers, name, key, tag).await?;
                providers.rewind();
                // containerd asks for the manifest by digest next: the same peers have it.
                self.remember(Key::Digest(info.digest), providers.seen());
                (
                    info.digest,
                    format!("manifests/{}", info.digest),
                    Some(info),
                )
            }
            (None, _) => return Err(MirrorError::NotFound),
        };
        let path = format!("/v2/{name}/{path_ref}");
        if head {
            let info = match head_info {
                Some(i) => i,
                None => transfer::head(self, &mut providers, &path, digest).await?,
            };
            let (status, len, headers) = response_headers(&info, range)?;
            return Ok(Fetched {
                status,
                headers,
                body: None,
                expected_len: len,
            });
        }
        transfer::get(self, providers, path, digest, range).await
    }
}

/// What a provider told us about a blob before we send anything.
#[derive(Clone, Debug)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// Status, body length and headers for a response about `info`, honouring one range.
fn response_headers(
    info: &BlobInfo,
    range: Option<&str>,
) -> Result<(StatusCode, u64, HeaderMap), MirrorError> {
    use http::HeaderValue;
    use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
    let parsed = match range.map(|r| ByteRange::parse(r, info.size)) {
        None | Some(Err(RangeError::Malformed)) => None,
        Some(Ok(r)) => Some(r),
        Some(Err(RangeError::Unsatisfiable)) => {
            return Err(MirrorError::RangeNotSatisfiable(info.size));
        }
    };
    let mut h = HeaderMap::new();
    let mt = if info.media_type.is_empty() {
        crate::oci::media_types::OCTET_STREAM
    } else {
        info.media_type.as_str()
    };
    if let Ok(v) = HeaderValue::from_str(mt) {
        h.insert(CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&info.digest.to_string()) {
        h.insert(crate::registry::CONTENT_DIGEST_HEADER, v);
    }
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, len) = match parsed {
        Some(r) => {
            if let Ok(v) = HeaderValue::from_str(&r.content_range(info.size)) {
                h.insert(CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, r.len())
        }
        None => (StatusCode::OK, info.size),
    };
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    Ok((status, len, h))
}

impl Mirror {
    /// A request to a peer: the current client, the mirrored marker, and the token if any.
    pub(crate) fn peer_request(
        &self,
        method: reqwest::Method,
        url: String,
    ) -> reqwest::RequestBuilder {
        let client = self.client.borrow().client.clone();
        let mut req = client.request(method, url).header(MIRRORED_HEADER, "true");
        if let Some(t) = self.token.as_ref().and_then(|t| t.first()) {
            req = req.bearer_auth(t);
        }
        req
    }

    /// `scheme://addr` of a provider's registry endpoint, in the scheme peers speak now.
    pub(crate) fn peer_base(&self, p: &Provider) -> String {
        format!("{}://{}", self.client.borrow().scheme, p.addr)
    }
}

/// Parse the pieces of a provider's answer that describe the blob.
pub(crate) fn blob_info(headers: &HeaderMap, fallback_digest: Option<Digest>) -> Option<BlobInfo> {
    let digest = headers
        .get(crate::registry::CONTENT_DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or(fallback_digest)?;
    let size = headers
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .or_else(|| {
            headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        })?;
    let media_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some(BlobInfo {
        digest,
        size,
        media_type,
    })
}
