//! HEAD requests to providers, hedged and, for tags, cross-checked: a tag names whatever
//! digest its provider says, so the lookup is given a bounded time to find others, and one
//! provider's word stands alone only from an authenticated peer (or when the operator says so).

use std::time::Duration;

use super::ask::{Expect, NEXT_PROVIDER_WAIT, Plan};
use super::fetcher::Fetcher;
use super::{MirrorError, Miss, ProviderSet};
use crate::content::{Descriptor, Key};
use crate::oci::Digest;
use crate::routing::Provider;

/// Most providers asked about one tag; their answers must agree.
const TAG_QUORUM: usize = 3;

/// How a tag is decided: how long more providers are listened for, and whether one
/// provider's answer may stand alone.
#[derive(Clone, Copy, Debug)]
pub(super) struct TagRule {
    pub deadline: Duration,
    pub single_answer: bool,
}

impl Fetcher {
    /// HEAD a digest's `path` at the providers: the first answer that matches it, one
    /// provider at a time (the next when one fails or is slow).
    pub(super) async fn head(
        &self,
        providers: &mut ProviderSet,
        path: &str,
        digest: Digest,
    ) -> Result<Descriptor, MirrorError> {
        let plan = Plan {
            want: 1,
            at_once: 1,
            hedge: self.hedge_delay,
            first_wait: NEXT_PROVIDER_WAIT,
            deadline: None,
        };
        let answers = self.heads(providers, path, Some(digest), plan).await;
        let Some((first, desc)) = answers.into_iter().next() else {
            return Err(MirrorError::NotFound(Miss::ProvidersFailed));
        };
        self.book.remember(Key::Digest(digest), &[first]);
        Ok(desc)
    }

    /// Resolve a tag at `path`: up to three providers, each asked as the lookup finds it,
    /// until three answered, the lookup ends or `rule.deadline` passes with an answer in hand;
    /// their answers must name the same digest and size, else 404. A lone answer stands only
    /// if `rule.single_answer`.
    pub(super) async fn tag(
        &self,
        providers: &mut ProviderSet,
        path: &str,
        rule: TagRule,
    ) -> Result<Descriptor, MirrorError> {
        let plan = Plan {
            want: TAG_QUORUM,
            at_once: TAG_QUORUM,
            hedge: self.hedge_delay,
            first_wait: NEXT_PROVIDER_WAIT,
            deadline: Some(tokio::time::Instant::now() + rule.deadline),
        };
        let answers = self.heads(providers, path, None, plan).await;
        let Some((first, desc)) = answers.first() else {
            return Err(MirrorError::NotFound(Miss::ProvidersFailed));
        };
        let agree = answers
            .iter()
            .all(|(_, d)| d.digest == desc.digest && d.size == desc.size);
        if !agree {
            let named: Vec<String> = answers
                .iter()
                .map(|(p, d)| format!("{}={}", p.addr, d.digest))
                .collect();
            tracing::warn!(%path, answers = ?named, "providers disagree about a tag; answering 404");
            let asked: Vec<Provider> = answers.iter().map(|(p, _)| p.clone()).collect();
            self.book.tag_disagreement(&asked);
            return Err(MirrorError::NotFound(Miss::TagDisagreement));
        }
        if answers.len() == 1 && !rule.single_answer {
            tracing::info!(%path, provider = %first.addr, digest = %desc.digest, wait = ?rule.deadline,
                "one provider answered a tag and none confirmed it; peers are not authenticated, so answering 404");
            self.book.tag_unconfirmed();
            return Err(MirrorError::NotFound(Miss::TagUnconfirmed));
        }
        Ok(desc.clone())
    }

    /// The usable HEAD answers, as [`Fetcher::ask`] collects them under `plan`.
    async fn heads(
        &self,
        providers: &mut ProviderSet,
        path: &str,
        digest: Option<Digest>,
        plan: Plan,
    ) -> Vec<(Provider, Descriptor)> {
        let expect = Expect {
            digest,
            size: None,
            offset: 0,
        };
        self.ask(providers, reqwest::Method::HEAD, path, expect, plan)
            .await
            .into_iter()
            .map(|a| (a.provider, a.descriptor))
            .collect()
    }
}
