//! No start race and no fan-in: one node coordinates each blob's rollout.
//!
//! Nodes that miss a new blob at the same moment would all find nobody in flight and all send
//! their containerd to the upstream, whose one link they then share. The DHT cannot prevent
//! that: a record takes longer to become findable than a barrier start leaves. So every blob
//! has a **coordinator**, the node that every member of the cluster computes the same way
//! without asking anyone: of itself and the peers it knows, the one whose rendezvous score
//! (sha256 of node id and digest) is lowest. A node that misses a blob asks the coordinator
//! once (`HEAD` with [`ROLLOUT`] naming itself); the coordinator keeps, per blob, the nodes in
//! the order they asked and answers the first "fetch" (its containerd goes to the upstream, as
//! before) and each later one "follow" the node that asked just before it. The result is a
//! chain: one upstream copy, and each node uploads the blob about once, to the next.
//!
//! A follower holds containerd's request (no headers yet) while it waits for its predecessor's
//! in-flight copy to answer, then streams it like any provider's (verified, with failover to
//! the DHT's other copies if it stalls). The wait is bounded (`--mirror-claim-wait`,
//! jittered); if the predecessor's copy never appears, the miss is answered 404 as without
//! claims. A coordinator is trusted with nothing but that order: it names a node id, which the
//! asker resolves to an address itself (only connected peers' registry endpoints), and every
//! byte is verified as always, so a lying coordinator can delay a miss by the claim wait at
//! most. A coordinator that does not answer in time, or answers anything else, means "fetch".
//! Askers are trusted with less still: only a connected peer asking from its own registry
//! address joins a chain (see [`Mirror::rollout_join`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::Digest as _;

use super::book::ProviderBook;
use super::fetcher::Fetcher;
use super::providers::ProviderSet;
use super::{Mirror, Target};
use crate::content::Key;
use crate::oci::headers::{ROLLOUT, ROLLOUT_FAILED};
use crate::oci::{Digest, Name};
use crate::routing::{NodeId, Provider};
use crate::sync::MutexExt;

/// How long the coordinator gets to answer; past it this node fetches (a miss must stay fast).
const COORDINATOR_WAIT: Duration = Duration::from_millis(500);
/// Between looks at the predecessor's copy. Its spool answers a look as soon as its download
/// starts (a long poll), so this only paces looks at copies not yet begun.
const POLL: Duration = Duration::from_millis(40);
/// A look at the predecessor waits at most this long (its spool holds a look up to 3 s until
/// its download starts; a look cut short is followed by a liveness probe, then another look).
const LOOK_WAIT: Duration = Duration::from_millis(1500);
/// A rollout's order is forgotten this long after its last member joined. Long, so a node
/// that joins late (a slow node, a big blob still in flight) is placed behind the last member
/// rather than sent to the upstream; a member gone meanwhile costs its follower the claim wait.
const ROLLOUT_TTL: Duration = Duration::from_secs(600);
/// Members remembered over all rollouts, and per rollout: a few MB at most, whatever askers
/// send. A rollout past its cap puts every further asker behind its last member.
const MAX_TOTAL_MEMBERS: usize = 65_536;
const MAX_MEMBERS: usize = 8192;
/// Coordinators asked in turn when one does not answer.
const COORDINATORS: usize = 3;
/// Dead nodes replaced while waiting for a copy to follow.
const REPLACED: usize = 3;
/// A node reported failed is asked for `/v2/` this long before it is dropped from the chain: a
/// node that answers is starved, not dead, and is followed again.
const PROBE_WAIT: Duration = Duration::from_millis(500);
/// A node that became a rollout's first after its predecessor died sends its containerd to the
/// upstream (404) for this long: the `Range` resume that follows its cut response.
const PROMOTED_TTL: Duration = Duration::from_secs(60);
/// Node ids are libp2p PeerIds (base58) in the cluster, names in tests: short and plain.
const MAX_NODE_ID: usize = 128;

/// What the coordinator tells a node that misses a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Nobody asked before: let containerd fetch it from the upstream.
    Fetch,
    /// Follow this node's in-flight copy.
    Follow(NodeId),
}

impl Role {
    /// The [`ROLLOUT`] response header's value.
    pub fn header(&self) -> String {
        match self {
            Role::Fetch => "fetch".into(),
            Role::Follow(n) => format!("follow {n}"),
        }
    }

    fn parse(v: &str) -> Option<Role> {
        match v.split_once(' ') {
            None if v == "fetch" => Some(Role::Fetch),
            Some(("follow", id)) => node_id(id).map(Role::Follow),
            _ => None,
        }
    }
}

/// A node id as sent by a peer, if it looks like one.
pub fn node_id(s: &str) -> Option<NodeId> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NODE_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| NodeId::from(s))
}

/// The coordinator's side: per blob, the nodes that missed it, in the order they asked.
#[derive(Default)]
pub struct Rollouts {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    map: HashMap<Digest, Rollout>,
    /// Members over all rollouts.
    total: usize,
}

struct Rollout {
    members: Vec<NodeId>,
    touched: Instant,
}

impl Rollouts {
    /// `who` misses `digest`: its role. Asking again gives the same role while the rollout
    /// is remembered.
    pub fn join(&self, digest: Digest, who: NodeId) -> Role {
        let now = Instant::now();
        let mut state = self.inner.locked();
        let State { map, total } = &mut *state;
        if *total >= MAX_TOTAL_MEMBERS {
            map.retain(|_, r| now.duration_since(r.touched) < ROLLOUT_TTL);
            *total = map.values().map(|r| r.members.len()).sum();
            if *total >= MAX_TOTAL_MEMBERS {
                // Flooded: forgetting the rollouts costs only extra upstream copies.
                map.clear();
                *total = 0;
            }
        }
        let r = map.entry(digest).or_insert_with(|| Rollout {
            members: Vec::new(),
            touched: now,
        });
        if now.duration_since(r.touched) >= ROLLOUT_TTL {
            *total -= r.members.len();
            r.members.clear();
        }
        r.touched = now;
        let at = match r.members.iter().position(|m| *m == who) {
            Some(i) => i,
            None if r.members.len() < MAX_MEMBERS => {
                r.members.push(who);
                *total += 1;
                r.members.len() - 1
            }
            None => r.members.len(),
        };
        match at.checked_sub(1).and_then(|i| r.members.get(i)) {
            Some(before) => Role::Follow(before.clone()),
            None => Role::Fetch,
        }
    }

    /// The role of an asker that is not let into `digest`'s chain: behind its last member, or
    /// the upstream if it has none. Nothing is remembered, so nobody will be told to follow it.
    fn place(&self, digest: &Digest) -> Role {
        let state = self.inner.locked();
        let last = state
            .map
            .get(digest)
            .filter(|r| r.touched.elapsed() < ROLLOUT_TTL)
            .and_then(|r| r.members.last());
        match last {
            Some(m) => Role::Follow(m.clone()),
            None => Role::Fetch,
        }
    }

    /// Whether `who` is in `digest`'s chain.
    fn is_member(&self, digest: &Digest, who: &NodeId) -> bool {
        self.inner
            .locked()
            .map
            .get(digest)
            .is_some_and(|r| r.members.contains(who))
    }

    /// Drop `who` (dead) from `digest`'s chain: its follower moves up to its place.
    fn remove(&self, digest: &Digest, who: &NodeId) {
        let mut state = self.inner.locked();
        let State { map, total } = &mut *state;
        if let Some(r) = map.get_mut(digest) {
            let before = r.members.len();
            r.members.retain(|m| m != who);
            *total -= before - r.members.len();
        }
    }
}

/// The blobs for which this node became its rollout's first after its predecessor died.
#[derive(Default)]
pub(super) struct Promoted {
    inner: Mutex<HashMap<Digest, Instant>>,
}

impl Promoted {
    fn add(&self, digest: Digest) {
        let now = Instant::now();
        let mut map = self.inner.locked();
        if map.len() >= 1024 {
            map.retain(|_, at| now.duration_since(*at) < PROMOTED_TTL);
        }
        map.insert(digest, now);
    }

    /// Whether this node's containerd is to fetch `digest` from the upstream now.
    pub(super) fn contains(&self, digest: &Digest) -> bool {
        self.inner
            .locked()
            .get(digest)
            .is_some_and(|at| at.elapsed() < PROMOTED_TTL)
    }
}

/// What the coordinator said when the copy a node followed failed.
pub(super) enum Reassigned {
    /// Follow this copy now (from the byte reached).
    Follow(Provider),
    /// This node is now the first: its containerd goes to the upstream (the download ends, the
    /// response is cut, and containerd's `Range` resume gets a 404).
    Fetch,
    /// No coordinator answered: look for copies in the DHT as without one.
    NoAnswer,
}

/// How a node asks for its place in a blob's rollout: the coordinator first, and the next in
/// rendezvous order when one does not answer (a dead coordinator's successor starts a new
/// chain from the nodes that report to it, the first of which fetches).
#[derive(Clone)]
pub(super) struct Reassign {
    fetcher: Fetcher,
    book: Arc<ProviderBook>,
    rollouts: Arc<Rollouts>,
    promoted: Arc<Promoted>,
    /// Who coordinates, best first; `None`: this node.
    coordinators: Vec<Option<Provider>>,
    me: NodeId,
    digest: Digest,
    path: String,
}

impl Reassign {
    /// This node's place, reporting that the copy of `failed` failed it, if one did.
    pub(super) async fn ask(&self, failed: Option<&NodeId>) -> Reassigned {
        for c in &self.coordinators {
            let role = match c {
                None => {
                    join_reporting(
                        &self.rollouts,
                        &self.fetcher,
                        &self.book,
                        self.digest,
                        self.me.clone(),
                        failed.cloned(),
                    )
                    .await
                }
                Some(c) => match ask(&self.fetcher, c, &self.path, &self.me, failed).await {
                    Asked::Role(r) => r,
                    Asked::Has => return Reassigned::Follow(c.clone()),
                    Asked::NoAnswer => continue,
                },
            };
            return match role {
                Role::Follow(p) if p != self.me => match resolve(&self.book, &p, c.as_ref()) {
                    Some(p) => Reassigned::Follow(p),
                    None => Reassigned::NoAnswer,
                },
                _ => Reassigned::Fetch,
            };
        }
        Reassigned::NoAnswer
    }

    /// The copy this node followed died with part of the blob sent: its containerd fetches the
    /// rest from the upstream (the `Range` resume after its cut response gets a 404).
    pub(super) fn promote(&self, failed: &NodeId) {
        tracing::info!(digest = %self.digest, %failed, "rollout: the copy this node followed died; its containerd fetches the rest from the upstream");
        self.promoted.add(self.digest);
    }
}

/// The coordinator's side of a join, with a failure report checked first: `failed` is dropped
/// from the chain only if it does not answer (a node starved by its own predecessor answers).
async fn join_reporting(
    rollouts: &Rollouts,
    fetcher: &Fetcher,
    book: &ProviderBook,
    digest: Digest,
    asker: NodeId,
    failed: Option<NodeId>,
) -> Role {
    // This node is alive, whatever a follower of its copy saw.
    let me = NodeId::from(book.local_id());
    if let Some(f) = failed.filter(|f| *f != asker && *f != me && rollouts.is_member(&digest, f))
        && !alive(fetcher, book, &f).await
    {
        tracing::info!(%digest, dead = %f, "rollout: a member does not answer; its follower moves up");
        rollouts.remove(&digest, &f);
    }
    rollouts.join(digest, asker)
}

/// Whether `asker` is a connected peer whose registry endpoint is at `from`.
fn speaks_for_itself(book: &ProviderBook, asker: &NodeId, from: IpAddr) -> bool {
    let from = from.to_canonical();
    book.peers()
        .iter()
        .any(|p| p.peer == *asker && p.addr.ip().to_canonical() == from)
}

/// Whether `node`'s registry endpoint answers at all within [`PROBE_WAIT`].
async fn alive(fetcher: &Fetcher, book: &ProviderBook, node: &NodeId) -> bool {
    let Some(p) = resolve(book, node, None) else {
        return false;
    };
    let Some(req) = fetcher.request(reqwest::Method::GET, &p, "/v2/") else {
        return false;
    };
    req.timeout(PROBE_WAIT).send().await.is_ok()
}

/// A peer by id: `known` if it is that one, else a connected peer's registry endpoint.
fn resolve(book: &ProviderBook, id: &NodeId, known: Option<&Provider>) -> Option<Provider> {
    if let Some(k) = known.filter(|k| k.peer == *id) {
        return Some(k.clone());
    }
    book.peers().into_iter().find(|p| p.peer == *id)
}

/// What a coordinator answered.
enum Asked {
    Role(Role),
    /// It has the blob itself.
    Has,
    NoAnswer,
}

/// Ask coordinator `c` for this node's role in `path`'s blob, reporting `failed` if any.
async fn ask(
    fetcher: &Fetcher,
    c: &Provider,
    path: &str,
    me: &NodeId,
    failed: Option<&NodeId>,
) -> Asked {
    let Some(mut req) = fetcher.request(reqwest::Method::HEAD, c, path) else {
        return Asked::NoAnswer;
    };
    req = req.header(ROLLOUT, me.as_str());
    if let Some(f) = failed {
        req = req.header(ROLLOUT_FAILED, f.as_str());
    }
    // A report waits for the coordinator's probe of the failed node.
    let wait = COORDINATOR_WAIT
        + if failed.is_some() {
            PROBE_WAIT
        } else {
            Duration::ZERO
        };
    let res = match req.timeout(wait).send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(coordinator = %c.peer, error = %e, "rollout coordinator did not answer");
            return Asked::NoAnswer;
        }
    };
    fetcher.heard(c, &res);
    if res.status().is_success() {
        return Asked::Has;
    }
    match res
        .headers()
        .get(ROLLOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(Role::parse)
    {
        Some(r) => Asked::Role(r),
        None => Asked::NoAnswer,
    }
}

/// Which of `nodes` (ids) coordinates `digest`'s rollout, as every node computes it.
pub fn coordinator_of<'a>(nodes: &[&'a str], digest: &Digest) -> Option<&'a str> {
    nodes.iter().copied().min_by_key(|n| score(n, digest))
}

/// A node's rendezvous score for `digest`: the lowest among the nodes coordinates it.
fn score(node: &str, digest: &Digest) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(node.as_bytes());
    h.update(b"\n");
    h.update(digest.as_bytes());
    h.finalize().into()
}

impl Mirror {
    /// The coordinator's answer to a peer `asker` that misses `digest`, having found the copy
    /// of `failed` dead if it says so. `from`: the address the request came from.
    ///
    /// Only a node that speaks for itself joins the chain (and may report a failure): a
    /// connected peer whose registry endpoint is at `from`. Any other asker (an id nobody
    /// knows, or a peer naming another) is told where it would stand and not remembered, so
    /// an attacker cannot fill a chain with ids that will never send, which would make every
    /// later asker wait for them and then go to the upstream together.
    pub async fn rollout_join(
        &self,
        digest: Digest,
        asker: NodeId,
        failed: Option<NodeId>,
        from: IpAddr,
    ) -> Role {
        if !speaks_for_itself(&self.book, &asker, from) {
            tracing::debug!(%digest, %asker, %from, "rollout: an asker that is not a peer at its own address is not let into the chain");
            self.metrics.mirror.rollout_strangers.inc();
            return self.rollouts.place(&digest);
        }
        join_reporting(
            &self.rollouts,
            &self.fetcher,
            &self.book,
            digest,
            asker,
            failed,
        )
        .await
    }

    /// Whether this node's containerd is to fetch `digest` from the upstream now (its
    /// predecessor in the rollout died).
    pub(super) fn promoted(&self, digest: &Digest) -> bool {
        self.config.claim_wait > Duration::ZERO && self.promoted.contains(digest)
    }

    /// Nobody has `digest` complete: ask its coordinator who fetches it from the upstream.
    /// `None`: this node does (answer 404 now); else the copy to follow.
    pub(super) async fn claim_or_follow(&self, name: &Name, digest: Digest) -> Option<ProviderSet> {
        let wait = self.config.claim_wait;
        if wait.is_zero() {
            return None;
        }
        let me = NodeId::from(self.book.local_id());
        let place = Reassign {
            fetcher: self.fetcher.clone(),
            book: self.book.clone(),
            rollouts: self.rollouts.clone(),
            promoted: self.promoted.clone(),
            coordinators: self.coordinators(&me, &digest),
            me,
            digest,
            path: Target::Blob(digest).path(name),
        };
        let Reassigned::Follow(mut parent) = place.ask(None).await else {
            tracing::debug!(%digest, "rollout: this node fetches from the upstream");
            return None;
        };
        self.metrics.mirror.claim_waits.inc();
        let deadline = tokio::time::Instant::now() + wait.mul_f64(jitter(0.75..=1.0));
        let mut replaced = 0;
        loop {
            match self.await_copy(&parent, &place.path, deadline).await {
                Look::Ready => {
                    tracing::debug!(%digest, parent = %parent.peer, "rollout: following");
                    return Some(ProviderSet::assigned(
                        Key::Digest(digest),
                        parent,
                        place,
                        self.book.clone(),
                    ));
                }
                Look::Late => break,
                // The node to follow is dead before it sent anything: a new place.
                Look::Dead if replaced < REPLACED => {
                    replaced += 1;
                    match place.ask(Some(&parent.peer)).await {
                        Reassigned::Follow(p) => parent = p,
                        Reassigned::Fetch => return None,
                        Reassigned::NoAnswer => break,
                    }
                }
                Look::Dead => break,
            }
        }
        tracing::debug!(%digest, parent = %parent.peer, "rollout: the copy to follow did not appear in time");
        self.metrics.mirror.claim_timeouts.inc();
        None
    }

    /// Who coordinates `digest`, best first ([`COORDINATORS`] of them); `None`: this node.
    fn coordinators(&self, me: &NodeId, digest: &Digest) -> Vec<Option<Provider>> {
        let mut ranked: Vec<([u8; 32], Option<Provider>)> = self
            .book
            .peers()
            .into_iter()
            .map(|p| (score(p.peer.as_str(), digest), Some(p)))
            .collect();
        ranked.push((score(me.as_str(), digest), None));
        ranked.sort_by_key(|r| r.0);
        ranked
            .into_iter()
            .take(COORDINATORS)
            .map(|(_, p)| p)
            .collect()
    }

    /// Look at `parent` until its copy answers, `deadline` passes, or it proves dead (a look
    /// that fails and a `/v2/` that does not answer).
    async fn await_copy(
        &self,
        parent: &Provider,
        path: &str,
        deadline: tokio::time::Instant,
    ) -> Look {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Look::Late;
            }
            let Some(req) = self.fetcher.request(reqwest::Method::HEAD, parent, path) else {
                return Look::Late;
            };
            match req.timeout(left.min(LOOK_WAIT)).send().await {
                Ok(r) => {
                    self.fetcher.heard(parent, &r);
                    if r.status().is_success() {
                        return Look::Ready;
                    }
                }
                Err(_) if !alive(&self.fetcher, &self.book, &parent.peer).await => {
                    return Look::Dead;
                }
                Err(_) => {}
            }
            let pause = POLL.mul_f64(jitter(0.5..=1.5));
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
        }
    }
}

/// What looking at the node to follow found.
enum Look {
    Ready,
    Late,
    Dead,
}

fn jitter(range: std::ops::RangeInclusive<f64>) -> f64 {
    rand::rng().random_range(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    #[test]
    fn the_first_fetches_and_each_later_one_follows_the_one_before() {
        let r = Rollouts::default();
        assert_eq!(r.join(d(1), "a".into()), Role::Fetch);
        assert_eq!(r.join(d(1), "b".into()), Role::Follow("a".into()));
        assert_eq!(r.join(d(1), "c".into()), Role::Follow("b".into()));
        // Asking again keeps the place; another blob is another rollout.
        assert_eq!(r.join(d(1), "b".into()), Role::Follow("a".into()));
        assert_eq!(r.join(d(1), "a".into()), Role::Fetch);
        assert_eq!(r.join(d(2), "c".into()), Role::Fetch);
    }

    #[test]
    fn askers_that_flood_it_cannot_grow_it_without_bound() {
        let r = Rollouts::default();
        for i in 0..(MAX_TOTAL_MEMBERS + 10) {
            r.join(d((i % 251) as u8), NodeId::from(format!("n{i}")));
        }
        let s = r.inner.locked();
        assert!(s.total <= MAX_TOTAL_MEMBERS);
        assert_eq!(
            s.total,
            s.map.values().map(|r| r.members.len()).sum::<usize>()
        );
        // Past a rollout's cap, every further asker follows its last member.
        drop(s);
        let r = Rollouts::default();
        for i in 0..MAX_MEMBERS {
            r.join(d(9), NodeId::from(format!("m{i}")));
        }
        let last = NodeId::from(format!("m{}", MAX_MEMBERS - 1));
        assert_eq!(r.join(d(9), "late".into()), Role::Follow(last.clone()));
        assert_eq!(r.join(d(9), "later".into()), Role::Follow(last));
    }

    #[test]
    fn roles_cross_the_wire_and_bad_ids_are_refused() {
        for role in [Role::Fetch, Role::Follow("12D3KooWabc".into())] {
            assert_eq!(Role::parse(&role.header()), Some(role));
        }
        for bad in [
            "",
            "follow",
            "follow ",
            "follow a b",
            "follow a/b",
            "fetch now",
        ] {
            assert_eq!(Role::parse(bad), None, "{bad:?}");
        }
        assert!(node_id(&"x".repeat(MAX_NODE_ID + 1)).is_none());
    }

    #[test]
    fn every_node_names_the_same_coordinator() {
        let nodes = ["a", "b", "c", "d", "e"];
        for n in 0..20u8 {
            let digest = d(n);
            let best = |view: &[&'static str]| -> &'static str {
                view.iter()
                    .copied()
                    .min_by_key(|x| score(x, &digest))
                    .unwrap()
            };
            let all = best(&nodes);
            // Any node's view (itself plus the others) agrees.
            let mut reversed = nodes;
            reversed.reverse();
            assert_eq!(best(&reversed), all);
        }
        // Different blobs spread over the nodes.
        let picked: std::collections::HashSet<&str> = (0..40u8)
            .map(|n| {
                nodes
                    .iter()
                    .copied()
                    .min_by_key(|x| score(x, &d(n)))
                    .unwrap()
            })
            .collect();
        assert!(picked.len() >= 3, "{picked:?}");
    }
}
