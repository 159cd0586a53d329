//! Asking providers, hedged: one loop for GETs and HEADs, and one checker for an answer.
//!
//! [`Fetcher::ask`] sends a request to a first provider, then to another when the outstanding
//! ones are slow (after the hedge delay), at once when one fails, or as soon as found when
//! several answers are wanted; it stops at the wanted number of answers, when the providers
//! run out, or at a deadline. [`Fetcher::vet`] decides whether an answer is usable and shuns
//! a provider whose answer is a lie (wrong digest or size) or a failure.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::StatusCode;

use super::ProviderSet;
use super::book::{Fault, PeerIdentity};
use super::fetcher::{Fetcher, descriptor, error_chain};
use super::providers::Offer;
use crate::content::Descriptor;
use crate::oci::headers::{CROWD, FOLLOWERS};
use crate::oci::{ContentRange, Digest};
use crate::routing::Provider;

/// How long to wait for the lookup to find another provider when one fails.
pub(super) const NEXT_PROVIDER_WAIT: Duration = Duration::from_millis(200);

/// How to ask: how many answers, how to widen the ask, and when to stop.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    /// Usable answers to collect; the ask ends with that many.
    pub(super) want: usize,
    /// Most providers asked at once.
    pub(super) at_once: usize,
    /// With one answer wanted: ask another provider too when none has answered by then.
    /// With more wanted, each provider is asked as soon as it is found (up to `want` at once).
    pub(super) hedge: Duration,
    /// How long to wait for the lookup to find the first provider.
    pub(super) first_wait: Duration,
    /// Once at least one answer is in hand, stop there with what has been collected (before
    /// the first answer, the ask goes on: the deadline bounds waiting for more, not for one).
    pub(super) deadline: Option<tokio::time::Instant>,
}

/// What a provider's answer must say to be used.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expect {
    /// The digest asked for; `None` for a tag (the answer names one).
    pub(super) digest: Option<Digest>,
    /// The blob's size as the first answer gave it (on a resume); a trusted descriptor's
    /// size is checked in any case.
    pub(super) size: Option<u64>,
    /// Where the body must start (a 206 answer is accepted only past 0).
    pub(super) offset: u64,
}

/// A provider whose answer passed the checks, and what it said.
pub(super) struct Answer {
    pub(super) provider: Provider,
    pub(super) identity: PeerIdentity,
    pub(super) response: reqwest::Response,
    /// The digest, the whole size and the media type the answer gives.
    pub(super) descriptor: Descriptor,
}

/// What a provider's answer is worth.
pub(super) enum Vetted {
    Usable(Box<Answer>),
    /// It has its cap of followers (how many it said): ask another copy first.
    Busy(Provider, usize),
    /// A miss, a failure or a lie (already counted against it).
    Unusable,
}

/// A request's outcome: `None` when it was not sent (a token would have gone to a stranger),
/// else the response or its error, unless it timed out.
type Sent = Option<Result<reqwest::Result<reqwest::Response>, tokio::time::error::Elapsed>>;

impl Fetcher {
    /// Send `method` for `path` to providers as [`Plan`] says and collect the answers that
    /// pass [`Fetcher::vet`] against `want`. Providers still being asked when the ask ends
    /// are given back to `providers`, first in line for a resume.
    pub(super) async fn ask(
        &self,
        providers: &mut ProviderSet,
        method: reqwest::Method,
        path: &str,
        want: Expect,
        plan: Plan,
    ) -> Vec<Answer> {
        let request = |p: Provider, crowd: bool| {
            let req = self.request(method.clone(), &p, path).map(|mut req| {
                if want.offset > 0 {
                    req = req.header(http::header::RANGE, format!("bytes={}-", want.offset));
                }
                if crowd {
                    req = req.header(CROWD, "true");
                }
                req
            });
            // Headers only: the body has its own stall timeout.
            let timeout = self.response_timeout;
            async move {
                let res: Sent = match req {
                    Some(req) => Some(tokio::time::timeout(timeout, req.send()).await),
                    None => None,
                };
                (p, crowd, res)
            }
        };
        let deadline = async {
            match plan.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut answers = Vec::new();
        let mut inflight = FuturesUnordered::new();
        // Providers being asked, to give back the slower ones.
        let mut asked: Vec<Provider> = Vec::new();
        let mut first = true;
        // Whether the lookup may still have someone to ask; `replace`: one just failed.
        let (mut more, mut replace) = (true, false);
        // A provider that answered busy, handed to `providers` once the select is over.
        let mut busy: Option<(Provider, usize)> = None;
        while answers.len() < plan.want && (more || !inflight.is_empty()) {
            if let Some((p, n)) = busy.take() {
                providers.busy(p, n);
            }
            let room = more
                && inflight.len() < plan.at_once
                && (plan.want == 1 || answers.len() + inflight.len() < plan.want);
            let (delay, wait) = if inflight.is_empty() {
                let wait = if first {
                    plan.first_wait
                } else {
                    NEXT_PROVIDER_WAIT
                };
                (Duration::ZERO, wait)
            } else if replace || plan.want > 1 {
                (Duration::ZERO, NEXT_PROVIDER_WAIT)
            } else {
                (plan.hedge, Duration::ZERO)
            };
            let found = async {
                tokio::time::sleep(delay).await;
                providers.next(wait).await
            };
            tokio::select! {
                Some((p, crowd, res)) = inflight.next() => {
                    asked.retain(|a| a != &p);
                    match self.vet(p, crowd, res, want) {
                        Vetted::Usable(a) => answers.push(*a),
                        Vetted::Busy(p, n) => {
                            busy = Some((p, n));
                            (more, replace) = (true, true);
                        }
                        Vetted::Unusable => (more, replace) = (true, true),
                    }
                }
                offer = found, if room => {
                    first = false;
                    replace = false;
                    match offer {
                        Some(Offer { provider: p, crowd }) => {
                            if !inflight.is_empty() {
                                tracing::debug!(peer = %p.peer, "providers slow; hedging");
                            }
                            asked.push(p.clone());
                            inflight.push(request(p, crowd));
                        }
                        None => more = false,
                    }
                }
                // Polled only with an answer in hand, so it completes at most once.
                () = &mut deadline, if !answers.is_empty() => break,
            }
        }
        if let Some((p, n)) = busy {
            providers.busy(p, n);
        }
        // The slower ones of a hedge race stay available for a resume.
        for loser in asked {
            providers.give_back(loser);
        }
        answers
    }

    /// A provider's answer, if usable. A wrong digest header, a size other than the trusted
    /// descriptor's, or 0 for a non-empty blob is a lie (shunned long); a failed request, a
    /// status other than 200 (or 206 to a resume), a missing length, a `Content-Range` that
    /// does not start where asked, or a size differing only from the first provider's
    /// untrusted one is a failure. A 404 is neither: the provider record was stale.
    ///
    /// A 503 naming its followers is "busy": the provider streams this blob to its cap of
    /// peers and is asked again only when no other copy has room (`crowd`); busy again then,
    /// it is a failure. A provider gains nothing by claiming to be busy: it is simply asked less.
    fn vet(&self, p: Provider, crowd: bool, res: Sent, want: Expect) -> Vetted {
        let r = match res {
            None => return Vetted::Unusable,
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => {
                tracing::warn!(peer = %p.peer, addr = %p.addr, error = %error_chain(&e), "provider request failed");
                self.fail_provider(&p);
                return Vetted::Unusable;
            }
            Some(Err(_)) => {
                tracing::debug!(peer = %p.peer, "provider did not answer in time");
                self.fail_provider(&p);
                return Vetted::Unusable;
            }
        };
        self.heard(&p, &r);
        if r.status() == StatusCode::NOT_FOUND {
            return Vetted::Unusable;
        }
        let identity = self.identity_of(&p, &r);
        if self.book.is_shunned(&identity) {
            tracing::debug!(peer = %p.peer, %identity, "provider's identity is shunned");
            return Vetted::Unusable;
        }
        if let Some(n) = followers(&r)
            && !crowd
        {
            tracing::debug!(peer = %p.peer, followers = n, "provider busy; asking another copy");
            return Vetted::Busy(p, n);
        }
        match check(self, &r, want) {
            Ok(descriptor) => Vetted::Usable(Box::new(Answer {
                provider: p,
                identity,
                response: r,
                descriptor,
            })),
            Err(fault) => {
                tracing::warn!(peer = %p.peer, %identity, status = %r.status(), ?fault, "provider's answer refused (status, digest or size)");
                self.book.penalize(&p, &identity, fault);
                Vetted::Unusable
            }
        }
    }

    /// GET `path` from `want.offset`, hedged: the first usable answer.
    pub(super) async fn connect(
        &self,
        providers: &mut ProviderSet,
        path: &str,
        want: Expect,
        first_wait: Duration,
    ) -> Option<Answer> {
        let plan = Plan {
            want: 1,
            at_once: usize::MAX,
            hedge: self.hedge_delay,
            first_wait,
            deadline: None,
        };
        self.ask(providers, reqwest::Method::GET, path, want, plan)
            .await
            .into_iter()
            .next()
    }
}

/// The descriptor an answer gives if its status, digest and size are acceptable, else the
/// fault.
fn check(f: &Fetcher, resp: &reqwest::Response, want: Expect) -> Result<Descriptor, Fault> {
    let status = resp.status();
    let ok = status == StatusCode::OK || (want.offset > 0 && status == StatusCode::PARTIAL_CONTENT);
    if !ok {
        return Err(Fault::Failed);
    }
    let d = descriptor(resp.headers(), want.digest).ok_or(Fault::Failed)?;
    if want.digest.is_some_and(|w| w != d.digest) || !f.size_ok(&d.digest, d.size) {
        return Err(Fault::Mismatch);
    }
    if status == StatusCode::PARTIAL_CONTENT && !range_starts_at(resp, want.offset, d.size) {
        return Err(Fault::Failed);
    }
    match want.size {
        Some(s) if d.size != s => Err(Fault::Failed),
        _ => Ok(d),
    }
}

/// The followers a busy answer (503) names, if it is one.
fn followers(resp: &reqwest::Response) -> Option<usize> {
    if resp.status() != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    resp.headers()
        .get(FOLLOWERS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A 206 answer to a resume must start where we are, for the blob's whole size.
fn range_starts_at(resp: &reqwest::Response, offset: u64, size: u64) -> bool {
    resp.headers()
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ContentRange::parse)
        .is_some_and(|r| r.start == offset && r.size == size)
}
