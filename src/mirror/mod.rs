//! Serving what this node lacks from its peers, verified.
//!
//! On a local miss the [`Mirror`] finds providers (remembered ones first, else a [`Router`]
//! lookup bounded by the resolve timeout) and asks them over HTTP with
//! [`crate::oci::headers::MIRRORED`] set (so they answer from local content only). A provider's
//! headers are checked before its body is used (digest, and a size equal to the trusted
//! descriptor's when a relayed manifest named the blob, else > 0); one that answers wrongly,
//! fails or stalls is replaced by the next with a `Range` from the byte reached. Blobs up to
//! `verify_before_send` are fetched whole and verified before the first byte goes out; larger
//! ones stream with the last chunk held back until the sha256 matches. Liars are shunned by
//! identity (certificate serial under mTLS, else IP), never by PeerId. Why no response made of
//! unverified bytes ever completes: "The integrity argument" in `DESIGN.md`.

mod ask;
mod book;
mod claim;
mod fetcher;
mod head;
mod providers;
mod resolve_wait;
mod spooled;
mod transfer;
mod verified;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::content::{ByteStream, Descriptor, Key};
use crate::metrics::{Metrics, ReasonLabels};
use crate::oci::{ByteRange, Digest, Name, RangeSpec, Tag, TagKey};
use crate::routing::{Provider, Router};

use book::ProviderBook;
pub use book::{PeerEvent, PeerEventKind, PeerIdentity};
pub use claim::{Role, coordinator_of, node_id};
use fetcher::Fetcher;
pub use providers::ProviderSet;

#[cfg(test)]
mod tests;

#[derive(Clone, Debug)]
pub struct MirrorConfig {
    /// How long to wait for the first provider before answering 404, at least: the wait
    /// follows what lookups take on this cluster (see `resolve_wait`), up to
    /// `resolve_timeout_max`.
    pub resolve_timeout: Duration,
    /// The longest the adaptive wait for a first provider may become.
    pub resolve_timeout_max: Duration,
    /// Resolve tags through peers at all. The CLI turns it on by default only when peers
    /// are authenticated as servers (mTLS): elsewhere any DHT member could answer for a tag.
    pub resolve_tags: bool,
    /// Resolve `latest` through peers (off: `latest` moves too often to trust a peer's copy).
    pub resolve_latest_tag: bool,
    /// How long a tag waits, once a provider has answered, for the lookup to find others
    /// (up to three are asked; all must agree).
    pub tag_deadline: Duration,
    /// Let one provider's tag answer stand when no other confirms it within the deadline:
    /// on when peers are authenticated as servers, or when the operator asks for it.
    pub single_tag_answer: bool,
    /// When the first provider has not answered by then, ask the next one as well.
    pub hedge_delay: Duration,
    /// How long a provider that failed is skipped.
    pub failure_penalty: Duration,
    /// How long a provider that sent wrong bytes is skipped.
    pub mismatch_penalty: Duration,
    /// Wait for one provider's response headers at most this long.
    pub response_timeout: Duration,
    /// A provider that sends nothing for this long is left for the next (with a Range resume).
    pub stall_timeout: Duration,
    /// Blobs up to this size are fetched whole and verified before the first byte is sent.
    pub verify_before_send: u64,
    /// A node that misses a blob nobody has complete asks the blob's rollout coordinator
    /// (`claim`); told to follow a node, it waits up to this long (jittered) for that node's
    /// in-flight copy instead of sending its containerd to the upstream too. Zero: no claims.
    pub claim_wait: Duration,
}

/// The HTTP client for peer fetches and the scheme it speaks. The daemon publishes a new one
/// through a `watch` channel whenever the TLS material changes; each request takes the latest.
#[derive(Clone, Debug)]
pub struct PeerClient {
    pub client: reqwest::Client,
    pub scheme: Scheme,
}

/// What peers' registry endpoints speak: plain HTTP, or TLS (mTLS when client certificates
/// are configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The URL scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            resolve_timeout: Duration::from_millis(20),
            resolve_timeout_max: Duration::from_millis(250),
            resolve_tags: true,
            resolve_latest_tag: false,
            tag_deadline: Duration::from_millis(150),
            single_tag_answer: false,
            hedge_delay: Duration::from_millis(100),
            failure_penalty: Duration::from_secs(30),
            mismatch_penalty: Duration::from_secs(3600),
            response_timeout: Duration::from_secs(3),
            stall_timeout: Duration::from_secs(2),
            verify_before_send: 16 * 1024 * 1024,
            claim_wait: Duration::from_secs(5),
        }
    }
}

/// What is being asked for on a miss.
#[derive(Clone, Debug)]
pub enum Target {
    Blob(Digest),
    ManifestDigest(Digest),
    ManifestTag(TagKey, Tag),
}

impl Target {
    /// The path of this target on a peer's registry endpoint.
    fn path(&self, name: &Name) -> String {
        match self {
            Target::Blob(d) => peer_path(name.as_str(), "blobs", &d.to_string(), None),
            Target::ManifestDigest(d) => {
                peer_path(name.as_str(), "manifests", &d.to_string(), None)
            }
            Target::ManifestTag(key, tag) => peer_path(
                name.as_str(),
                "manifests",
                tag.as_str(),
                Some(key.registry()),
            ),
        }
    }
}

/// `/v2/NAME/KIND/REFERENCE[?ns=NS]`: the one place a peer's URL path is spelled.
fn peer_path(name: &str, kind: &str, reference: &str, ns: Option<&str>) -> String {
    let mut path = format!("/v2/{name}/{kind}/{reference}");
    if let Some(ns) = ns {
        path.push_str("?ns=");
        path.extend(form_urlencoded::byte_serialize(ns.as_bytes()));
    }
    path
}

/// What the peers had: the content's descriptor and, for GET, its verified bytes.
pub struct Found {
    pub descriptor: Descriptor,
    /// The part of the blob answered: `None` for all of it, else the client's one range.
    pub window: Option<ByteRange>,
    /// The bytes of `window`, verified as they stream; `None` for HEAD.
    pub body: Option<ByteStream>,
}

/// Why the peers did not answer with the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// Tags (or this tag, `latest`) are not resolved through peers here.
    TagNotResolved,
    /// No provider was found within the resolve timeout (or nobody had it a moment ago).
    NoProvider,
    /// Providers were found but none delivered: each failed, refused, or no longer had it.
    ProvidersFailed,
    /// The providers asked about a tag named different digests: nobody's word is taken.
    TagDisagreement,
    /// One unauthenticated provider answered a tag and none confirmed it in time.
    TagUnconfirmed,
}

impl Miss {
    /// The `reason` label of `peermirror_mirror_misses_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::TagNotResolved => "tag_not_resolved",
            Miss::NoProvider => "no_provider",
            Miss::ProvidersFailed => "providers_failed",
            Miss::TagDisagreement => "tag_disagreement",
            Miss::TagUnconfirmed => "tag_unconfirmed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("no peer has it ({})", .0.as_str())]
    NotFound(Miss),
    #[error("requested range not satisfiable (size {0})")]
    RangeNotSatisfiable(u64),
}

/// What a diagnostic probe of one provider found.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub provider: Provider,
    /// The HTTP status it answered with; `None` if the request failed.
    pub status: Option<http::StatusCode>,
    pub latency: Duration,
    /// Why the request failed (with its causes), if it did.
    pub error: Option<String>,
}

pub struct Mirror {
    book: Arc<ProviderBook>,
    fetcher: Fetcher,
    metrics: Arc<Metrics>,
    config: MirrorConfig,
    /// Where blob downloads from peers are shared and kept; `None` streams each request's
    /// own download (`--spool-max-bytes 0`).
    spool: Option<Arc<crate::spool::Spool>>,
    /// Advertises spooled downloads as in flight.
    inflight: Option<crate::routing::partial_records::InFlight>,
    /// Small bodies a HEAD fetched and verified, for the GET that follows.
    kept: verified::Kept,
    /// How long a lookup may take before a miss is answered.
    resolve_wait: resolve_wait::ResolveWait,
    /// The rollouts this node coordinates.
    rollouts: Arc<claim::Rollouts>,
    /// Blobs this node's containerd fetches from the upstream after its predecessor died.
    promoted: Arc<claim::Promoted>,
}

impl Mirror {
    pub fn new(
        router: Arc<dyn Router>,
        client: tokio::sync::watch::Receiver<PeerClient>,
        metrics: Arc<Metrics>,
        config: MirrorConfig,
        token: Option<Arc<crate::auth::Tokens>>,
    ) -> Self {
        let book = Arc::new(ProviderBook::new(router.clone(), metrics.clone(), &config));
        let fetcher = Fetcher::new(client, token, router, book.clone(), &config);
        Mirror {
            book,
            fetcher,
            metrics,
            spool: None,
            inflight: None,
            kept: verified::Kept::new(verified::KEEP),
            resolve_wait: resolve_wait::ResolveWait::new(
                config.resolve_timeout,
                config.resolve_timeout_max,
            ),
            rollouts: Arc::default(),
            promoted: Arc::default(),
            config,
        }
    }

    /// Share blob downloads through `spool` and advertise them through `inflight`. Takes the
    /// mirror before it is shared (in an `Arc`), so a spool can never be set too late.
    pub fn with_spool(
        mut self,
        spool: Arc<crate::spool::Spool>,
        inflight: Option<crate::routing::partial_records::InFlight>,
    ) -> Self {
        self.spool = Some(spool);
        self.inflight = inflight;
        self
    }

    /// The spool, if blob downloads are shared.
    pub fn spool(&self) -> Option<&Arc<crate::spool::Spool>> {
        self.spool.as_ref()
    }

    /// The HTTP client for peer fetches: no redirects (a peer cannot send us elsewhere),
    /// bounded connect and read waits, and the peer's certificate kept on each response (its
    /// serial is the identity penalties are keyed by).
    pub fn client_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_info(true)
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

    /// Recent mismatches, stalls and failures of providers, newest first (the status page).
    pub fn peer_events(&self) -> Vec<PeerEvent> {
        self.book.events()
    }

    /// Find providers of `key`; `None` if none answered within the resolve timeout.
    async fn providers(&self, key: Key) -> Option<ProviderSet> {
        let known = self.book.known(&key);
        if !known.is_empty() {
            return Some(ProviderSet::known(key, known, self.book.clone()));
        }
        if self.book.recently_missed(&key) {
            return None;
        }
        // Tokio's clock: the wait it measures is the timer's (and tests can pause it).
        let started = tokio::time::Instant::now();
        let mut set = ProviderSet::lookup(&key, self.book.clone());
        // A blob named by a manifest just relayed from a peer is expected to be found (peers
        // have that image, or are pulling it): its lookup may take the ceiling, since a miss
        // would send containerd upstream for it. The wait of a node that has seen few lookups
        // yet is still the floor.
        let expected = matches!(&key, Key::Digest(d) if self.book.trusted(d).is_some());
        let wait = if expected {
            self.resolve_wait.ceiling()
        } else {
            self.resolve_wait.current()
        };
        let first = set.first(wait).await;
        let took = started.elapsed();
        self.metrics
            .routing
            .resolve_latency
            .observe(took.as_secs_f64());
        if first {
            self.resolve_wait.found(took);
        } else if took >= wait && self.book.has_peers() {
            // Cut off, not a lookup that ended having found nobody. Not on a node with no peer
            // (alone, or still starting): its lookups wait for peers, not for the DHT, and
            // would raise every miss's wait to the ceiling.
            self.resolve_wait.cut_off(wait);
        }
        self.metrics.routing.resolve_wait.set(wait.as_secs_f64());
        if first {
            Some(set)
        } else {
            self.book.remember_miss(key);
            None
        }
    }

    /// Serve `target` from peers, honouring the client's one `range` (checked against the
    /// size once a provider has told it).
    pub async fn fetch(
        &self,
        name: &Name,
        target: Target,
        head: bool,
        range: Option<&RangeSpec>,
    ) -> Result<Found, MirrorError> {
        let result = self.fetch_inner(name, &target, head, range).await;
        if let Err(MirrorError::NotFound(miss)) = &result {
            tracing::debug!(%name, ?target, reason = miss.as_str(), "peers do not have it");
            self.metrics
                .mirror
                .misses
                .get_or_create(&ReasonLabels {
                    reason: miss.as_str(),
                })
                .inc();
        }
        result
    }

    async fn fetch_inner(
        &self,
        name: &Name,
        target: &Target,
        head: bool,
        range: Option<&RangeSpec>,
    ) -> Result<Found, MirrorError> {
        if let (Target::Blob(d) | Target::ManifestDigest(d), false) = (target, head)
            && let Some(found) = self.kept(d, range)
        {
            return found;
        }
        if let (Target::Blob(d), false) = (target, head) {
            match self.spooled(name, *d, range).await {
                spooled::Spooled::Found(found) => return Ok(found),
                spooled::Spooled::Miss(e) => return Err(e),
                spooled::Spooled::Bypass => {}
            }
        }
        let key = match target {
            Target::Blob(d) | Target::ManifestDigest(d) => Key::Digest(*d),
            Target::ManifestTag(key, tag) => {
                if !self.config.resolve_tags
                    || (tag.as_str() == "latest" && !self.config.resolve_latest_tag)
                {
                    return Err(MirrorError::NotFound(Miss::TagNotResolved));
                }
                Key::Tag(key.clone())
            }
        };
        let mut providers = self
            .providers(key)
            .await
            .ok_or(MirrorError::NotFound(Miss::NoProvider))?;
        let (digest, known) = match target {
            Target::Blob(d) | Target::ManifestDigest(d) => (*d, None),
            Target::ManifestTag(..) => {
                // A tag is resolved by the HEADs of up to three providers heard within the tag
                // deadline, which must agree; the bytes are then checked against the digest
                // they name, like any other manifest.
                let rule = head::TagRule {
                    deadline: self.config.tag_deadline,
                    single_answer: self.config.single_tag_answer,
                };
                let desc = self
                    .fetcher
                    .tag(&mut providers, &target.path(name), rule)
                    .await?;
                providers.rewind();
                // containerd asks for the manifest by digest next: the same peers have it.
                self.book
                    .remember(Key::Digest(desc.digest), &providers.seen());
                (desc.digest, Some(desc))
            }
        };
        let path = match target {
            Target::Blob(_) => target.path(name),
            _ => Target::ManifestDigest(digest).path(name),
        };
        if head {
            let descriptor = match (known, target) {
                (Some(d), _) => d,
                // A size from one unverified provider must not reach containerd.
                (None, Target::ManifestDigest(_)) => {
                    self.head_verified(providers, path, digest, None).await?
                }
                (None, _) => {
                    let claimed = self.fetcher.head(&mut providers, &path, digest).await?;
                    providers.rewind();
                    self.head_verified(providers, path, digest, Some(claimed))
                        .await?
                }
            };
            let window = RangeSpec::window(range, descriptor.size)
                .map_err(|_| MirrorError::RangeNotSatisfiable(descriptor.size))?;
            return Ok(Found {
                descriptor,
                window,
                body: None,
            });
        }
        self.fetcher.get(providers, path, digest, range).await
    }

    /// Ask the DHT for providers of `key` for up to `timeout`, and HEAD it at the first
    /// `max` found: the admin API's "who has it, and do they answer?".
    pub async fn probe(&self, key: &Key, timeout: Duration, max: usize) -> Vec<ProbeResult> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.book.lookup_uncounted(key);
        let mut found: Vec<Provider> = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if !found.contains(&p) && found.len() < max {
                found.push(p);
            }
        }
        let path = match key {
            // Any valid name: a peer serves a blob by its digest, whatever the repository.
            Key::Digest(d) | Key::Partial(d) => {
                peer_path("peermirror/status", "blobs", &d.to_string(), None)
            }
            Key::Tag(t) => peer_path(t.name(), "manifests", t.tag(), Some(t.registry())),
        };
        let checks = found.into_iter().map(|p| {
            let fetcher = &self.fetcher;
            let req = self
                .fetcher
                .request(reqwest::Method::HEAD, &p, &path)
                .map(|r| r.timeout(timeout));
            async move {
                let started = Instant::now();
                let Some(req) = req else {
                    return ProbeResult {
                        provider: p,
                        status: None,
                        latency: started.elapsed(),
                        error: Some(
                            "not a connected peer's address: the token is not sent there".into(),
                        ),
                    };
                };
                let res = req.send().await;
                let latency = started.elapsed();
                match res {
                    Ok(r) => {
                        fetcher.heard(&p, &r);
                        ProbeResult {
                            provider: p,
                            status: Some(r.status()),
                            latency,
                            error: refused_why(r.status()),
                        }
                    }
                    Err(e) => ProbeResult {
                        provider: p,
                        status: None,
                        latency,
                        // The causes too: "error sending request" alone does not say that
                        // the handshake was refused, or why.
                        error: Some(fetcher::error_chain(&e)),
                    },
                }
            }
        });
        futures_util::future::join_all(checks).await
    }
}

/// What a refusal by a peer means for this node, in words for `status lookup`.
fn refused_why(status: reqwest::StatusCode) -> Option<String> {
    match status.as_u16() {
        401 => Some("the peer refused this node's token (not in its --token-file, or not signed by its key)".into()),
        403 => Some("the peer refused this node's certificate (revoked, or its CRL has expired)".into()),
        429 => Some("the peer is throttling this node's address after repeated auth failures".into()),
        _ => None,
    }
}
