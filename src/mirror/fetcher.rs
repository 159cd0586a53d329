//! The peer client's side of one request: the current client and token, who a provider is
//! (certificate serial or IP), what size a peer may claim, and the descriptor its headers give.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::book::{Fault, PeerIdentity, ProviderBook};
use super::{MirrorConfig, PeerClient};
use crate::auth::TokenId;
use crate::content::Descriptor;
use crate::oci::headers::{ACCEPTED_TOKENS, CONTENT_DIGEST, MIRRORED};
use crate::oci::{ContentRange, Digest};
use crate::routing::{Provider, Router};
use crate::sync::MutexExt;

/// Peers whose accepted tokens are remembered at once.
const MAX_PEERS_REMEMBERED: usize = 4096;

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
    /// Which static tokens each peer (its registry address) said it accepts, so it is sent
    /// the newest one it holds (a rotation without 401s).
    accepted: Arc<Mutex<HashMap<SocketAddr, Vec<TokenId>>>>,
    /// Who is connected: a token only goes to a connected peer's registry address.
    router: Arc<dyn Router>,
    pub(super) book: Arc<ProviderBook>,
    pub(super) response_timeout: Duration,
    pub(super) hedge_delay: Duration,
    pub(super) stall_timeout: Duration,
    pub(super) verify_before_send: u64,
    /// Permits for whole-blob transfers.
    pub(super) whole: Arc<Semaphore>,
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
            accepted: Arc::default(),
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
        let url = format!("{}://{}{path}", scheme.as_str(), p.addr);
        let mut req = client.request(method, url).header(MIRRORED, "true");
        let token = self.token.as_ref().and_then(|t| {
            let accepted = self.accepted.locked();
            t.for_peer(accepted.get(&p.addr).map(Vec::as_slice))
        });
        if let Some(t) = token {
            if !self.is_connected_peer(p) {
                tracing::warn!(peer = %p.peer, addr = %p.addr, "provider address is not a connected peer's; not sending it the token");
                return None;
            }
            req = req.bearer_auth(t);
        }
        Some(req)
    }

    /// Remembers which tokens `p` accepts, from its answer's [`ACCEPTED_TOKENS`] header. A
    /// 401 says what was sent is no longer accepted (the peer dropped a line before this node
    /// heard of its new one): the next request tries this node's newest line.
    pub(super) fn heard(&self, p: &Provider, resp: &reqwest::Response) {
        let Some(tokens) = &self.token else {
            return;
        };
        let ids = match resp.headers().get(ACCEPTED_TOKENS) {
            Some(v) => TokenId::parse_list(v.to_str().unwrap_or_default()),
            None if resp.status() == reqwest::StatusCode::UNAUTHORIZED => {
                tokens.first_id().into_iter().collect()
            }
            None => return,
        };
        let mut accepted = self.accepted.locked();
        // Bounded by the addresses of connected peers in practice; a hard cap all the same.
        if accepted.len() >= MAX_PEERS_REMEMBERED && !accepted.contains_key(&p.addr) {
            accepted.clear();
        }
        accepted.insert(p.addr, ids);
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
            Some(known) => size == known.size,
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
