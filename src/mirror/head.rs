//! HEAD requests to providers, hedged and, for tags, cross-checked: a tag names whatever
//! digest its provider says, so one provider's word is not enough when others can be asked.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::StatusCode;

use super::book::Fault;
use super::transfer::{Fetcher, NEXT_PROVIDER_WAIT, descriptor, error_chain};
use super::{MirrorError, Miss, ProviderSet};
use crate::content::{Descriptor, Key};
use crate::oci::Digest;
use crate::routing::Provider;

/// Most providers asked about one tag; their answers must agree.
const TAG_QUORUM: usize = 3;

impl Fetcher {
    /// HEAD `path` at the providers: for a digest, the first answer that matches it (hedged
    /// like a GET); for a tag (`digest` is `None`), up to three providers in parallel, whose
    /// answers must name the same digest and size. Disagreement is a 404.
    pub(super) async fn head(
        &self,
        providers: &mut ProviderSet,
        path: &str,
        digest: Option<Digest>,
    ) -> Result<Descriptor, MirrorError> {
        let want = if digest.is_some() { 1 } else { TAG_QUORUM };
        let answers = self.ask(providers, path, digest, want).await;
        let Some((first, desc)) = answers.first() else {
            return Err(MirrorError::NotFound(Miss::ProvidersFailed));
        };
        if let Some(d) = digest {
            self.book
                .remember(Key::Digest(d), std::slice::from_ref(first));
        }
        // One provider only: its answer stands (nobody to compare with; under mTLS it is an
        // authenticated cluster member, elsewhere tags are off unless asked for).
        let agree = answers
            .iter()
            .all(|(_, d)| d.digest == desc.digest && d.size == desc.size);
        if !agree {
            let named: Vec<String> = answers
                .iter()
                .map(|(p, d)| format!("{}={}", p.addr, d.digest))
                .collect();
            tracing::warn!(%path, answers = ?named, "providers disagree about a tag; answering 404");
            self.book.tag_disagreement();
            return Err(MirrorError::NotFound(Miss::TagDisagreement));
        }
        Ok(desc.clone())
    }

    /// Collect up to `want` usable HEAD answers. With one wanted, the next provider is asked
    /// after the hedge delay or at once when one fails; with more, each as soon as found.
    async fn ask(
        &self,
        providers: &mut ProviderSet,
        path: &str,
        digest: Option<Digest>,
        want: usize,
    ) -> Vec<(Provider, Descriptor)> {
        let request = |p: Provider| {
            let req = self
                .request(reqwest::Method::HEAD, &p, path)
                .map(|r| r.timeout(self.response_timeout));
            async move {
                let res = match req {
                    Some(r) => Some(r.send().await),
                    None => None,
                };
                (p, res)
            }
        };
        let mut answers = Vec::new();
        let mut inflight = FuturesUnordered::new();
        let mut more = true;
        while answers.len() < want && (more || !inflight.is_empty()) {
            let ask_more = more && answers.len() + inflight.len() < want;
            let (delay, wait) = match (inflight.is_empty(), want) {
                (true, _) => (Duration::ZERO, NEXT_PROVIDER_WAIT),
                (false, 1) => (self.hedge_delay, Duration::ZERO),
                (false, _) => (Duration::ZERO, NEXT_PROVIDER_WAIT),
            };
            let found = async {
                tokio::time::sleep(delay).await;
                providers.next(wait).await
            };
            tokio::select! {
                Some((p, res)) = inflight.next() => {
                    match self.answer(&p, res, digest) {
                        Some(d) => answers.push((p, d)),
                        // That one is out: look for another.
                        None => more = true,
                    }
                }
                p = found, if ask_more => match p {
                    Some(p) => inflight.push(request(p)),
                    None => more = false,
                },
            }
        }
        answers
    }

    /// A provider's HEAD answer, if usable; shuns it when it answered wrongly.
    fn answer(
        &self,
        p: &Provider,
        res: Option<reqwest::Result<reqwest::Response>>,
        digest: Option<Digest>,
    ) -> Option<Descriptor> {
        let r = match res? {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %p.peer, addr = %p.addr, error = %error_chain(&e), "provider HEAD failed");
                self.fail_provider(p);
                return None;
            }
        };
        // A stale provider record: the peer no longer has it. Not a fault.
        if r.status() == StatusCode::NOT_FOUND {
            return None;
        }
        let identity = self.identity_of(p, &r);
        if self.book.is_shunned(&identity) {
            return None;
        }
        let fault = match (r.status() == StatusCode::OK)
            .then(|| descriptor(r.headers(), digest))
            .flatten()
        {
            None => Fault::Failed,
            // A wrong digest, or a size no trusted descriptor allows, is a lie.
            Some(d)
                if digest.is_none_or(|want| want == d.digest)
                    && self.size_ok(&d.digest, d.size) =>
            {
                return Some(d);
            }
            Some(_) => Fault::Mismatch,
        };
        tracing::warn!(peer = %p.peer, %identity, status = %r.status(), ?fault, "provider's HEAD answer refused (status, digest or size)");
        self.book.penalize(p, &identity, fault);
        None
    }
}
