//! HEAD requests to providers, hedged and, for tags, cross-checked: a tag names whatever
//! digest its provider says, so one provider's word is not enough when others can be asked.

use super::ask::{Expect, NEXT_PROVIDER_WAIT, Plan};
use super::fetcher::Fetcher;
use super::{MirrorError, Miss, ProviderSet};
use crate::content::{Descriptor, Key};
use crate::oci::Digest;

/// Most providers asked about one tag; their answers must agree.
const TAG_QUORUM: usize = 3;

impl Fetcher {
    /// HEAD `path` at the providers: for a digest, the first answer that matches it (one
    /// provider at a time, the next when one fails); for a tag (`digest` is `None`), up to three providers in parallel, whose
    /// answers must name the same digest and size. Disagreement is a 404.
    pub(super) async fn head(
        &self,
        providers: &mut ProviderSet,
        path: &str,
        digest: Option<Digest>,
    ) -> Result<Descriptor, MirrorError> {
        // A digest's providers are asked one at a time; a tag's, up to three at once.
        let want = if digest.is_some() { 1 } else { TAG_QUORUM };
        let plan = Plan {
            want,
            at_once: want,
            hedge: self.hedge_delay,
            first_wait: NEXT_PROVIDER_WAIT,
            deadline: None,
        };
        let expect = Expect {
            digest,
            size: None,
            offset: 0,
        };
        let answers: Vec<_> = self
            .ask(providers, reqwest::Method::HEAD, path, expect, plan)
            .await
            .into_iter()
            .map(|a| (a.provider, a.descriptor))
            .collect();
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
}
