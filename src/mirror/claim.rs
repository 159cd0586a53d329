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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::Digest as _;

use super::providers::ProviderSet;
use super::{Mirror, Target};
use crate::content::Key;
use crate::oci::headers::ROLLOUT;
use crate::oci::{Digest, Name};
use crate::routing::{NodeId, Provider};
use crate::sync::MutexExt;

/// How long the coordinator gets to answer; past it this node fetches (a miss must stay fast).
const COORDINATOR_WAIT: Duration = Duration::from_millis(500);
/// Between looks at the predecessor's copy. Its spool answers a look as soon as its download
/// starts (a long poll), so this only paces looks at copies not yet begun.
const POLL: Duration = Duration::from_millis(40);
/// A look at the predecessor waits at most this long (its spool holds a look up to 3 s).
const LOOK_WAIT: Duration = Duration::from_millis(3500);
/// A rollout's order is forgotten this long after its last member joined. Long, so a node
/// that joins late (a slow node, a big blob still in flight) is placed behind the last member
/// rather than sent to the upstream; a member gone meanwhile costs its follower the claim wait.
const ROLLOUT_TTL: Duration = Duration::from_secs(600);
/// Members remembered over all rollouts, and per rollout: a few MB at most, whatever askers
/// send. A rollout past its cap puts every further asker behind its last member.
const MAX_TOTAL_MEMBERS: usize = 65_536;
const MAX_MEMBERS: usize = 8192;
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
    /// The coordinator's answer to a peer `asker` that misses `digest`.
    pub fn rollout_join(&self, digest: Digest, asker: NodeId) -> Role {
        self.rollouts.join(digest, asker)
    }

    /// Nobody has `digest`: ask its coordinator who fetches it from the upstream. `None`: this
    /// node does (answer 404 now); else the copy to follow.
    pub(super) async fn claim_or_follow(&self, name: &Name, digest: Digest) -> Option<ProviderSet> {
        let wait = self.config.claim_wait;
        if wait.is_zero() {
            return None;
        }
        let me = NodeId::from(self.book.local_id());
        let path = Target::Blob(digest).path(name);
        let coordinator = self.coordinator(&me, &digest);
        let parent = match &coordinator {
            None => match self.rollouts.join(digest, me.clone()) {
                Role::Fetch => None,
                Role::Follow(p) => self.peer(&p, None),
            },
            Some(c) => self.ask_coordinator(c, &path, &me).await,
        };
        let Some(parent) = parent else {
            tracing::debug!(%digest, coordinator = ?coordinator.map(|c| c.peer), "rollout: this node fetches from the upstream");
            return None;
        };
        self.metrics.mirror.claim_waits.inc();
        let deadline = tokio::time::Instant::now() + wait.mul_f64(jitter(0.75..=1.0));
        if self.await_copy(&parent, &path, deadline).await {
            tracing::debug!(%digest, parent = %parent.peer, "rollout: following");
            return Some(ProviderSet::assigned(
                Key::Digest(digest),
                parent,
                self.book.clone(),
            ));
        }
        tracing::debug!(%digest, parent = %parent.peer, "rollout: the copy to follow did not appear in time");
        self.metrics.mirror.claim_timeouts.inc();
        None
    }

    /// The coordinator of `digest` among this node and the peers it knows; `None`: this node.
    fn coordinator(&self, me: &NodeId, digest: &Digest) -> Option<Provider> {
        let mine = score(me.as_str(), digest);
        self.book
            .peers()
            .into_iter()
            .map(|p| (score(p.peer.as_str(), digest), p))
            .filter(|(s, _)| *s < mine)
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, p)| p)
    }

    /// A peer by id: `known` if it is that one, else a connected peer's registry endpoint.
    fn peer(&self, id: &NodeId, known: Option<&Provider>) -> Option<Provider> {
        if let Some(k) = known.filter(|k| k.peer == *id) {
            return Some(k.clone());
        }
        self.book.peers().into_iter().find(|p| p.peer == *id)
    }

    /// Ask `c` for this node's role; the copy to follow, or `None` to fetch.
    async fn ask_coordinator(&self, c: &Provider, path: &str, me: &NodeId) -> Option<Provider> {
        let req = self
            .fetcher
            .request(reqwest::Method::HEAD, c, path)?
            .header(ROLLOUT, me.as_str())
            .timeout(COORDINATOR_WAIT);
        let res = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(coordinator = %c.peer, error = %e, "rollout coordinator did not answer; fetching");
                return None;
            }
        };
        self.fetcher.heard(c, &res);
        // It has the blob itself: follow it.
        if res.status().is_success() {
            return Some(c.clone());
        }
        let role = res
            .headers()
            .get(ROLLOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(Role::parse)?;
        match role {
            Role::Fetch => None,
            Role::Follow(p) if p == *me => None,
            Role::Follow(p) => self.peer(&p, Some(c)),
        }
    }

    /// Look at `parent` until its copy answers (true) or `deadline` passes.
    async fn await_copy(
        &self,
        parent: &Provider,
        path: &str,
        deadline: tokio::time::Instant,
    ) -> bool {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let Some(req) = self.fetcher.request(reqwest::Method::HEAD, parent, path) else {
                return false;
            };
            if let Ok(r) = req.timeout(left.min(LOOK_WAIT)).send().await {
                self.fetcher.heard(parent, &r);
                if r.status().is_success() {
                    return true;
                }
            }
            let pause = POLL.mul_f64(jitter(0.5..=1.5));
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
        }
    }
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
