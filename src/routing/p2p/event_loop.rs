//! The event loop: owns the swarm, runs commands from [`P2pRouter`](super::P2pRouter) handles,
//! tracks lookups and peers, redials bootstrap peers, and publishes a [`Snapshot`] of what it
//! knows whenever that changes.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{
    self, GetProvidersOk, KBucketKey, ProviderRecord, QueryId, QueryResult, RecordKey,
};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, ping};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::announce::{Announcer, Outcome};
use super::handle::{Command, PeerEntry, Refused, Snapshot};
use super::swarm::{Behaviour, BehaviourEvent, PING_INTERVAL, parse_registry};
use super::{Bootstrap, multiaddr_ip, socket_multiaddr};
use crate::metrics::{Metrics, WhatLabels};
use crate::routing::Provider;

/// Lookups that find nothing are retried while routing tables fill after start-up.
const LOOKUP_RETRIES: u32 = 3;
const LOOKUP_RETRY_DELAY: Duration = Duration::from_millis(200);
const BOOTSTRAP_BACKOFF_MAX: Duration = Duration::from_secs(30);
const DNS_REFRESH: Duration = Duration::from_secs(30);
/// A lookup's Kademlia query ends by this deadline even if the asker is still waiting (the
/// query timeout is long, for announcements).
const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);
/// How often the loop does its periodic work (retries, deadlines, pings' verdicts, gauges).
const TICK: Duration = Duration::from_millis(100);
/// Announcement queries a node runs at a time (see announce.rs).
const ANNOUNCE_IN_FLIGHT: usize = 16;
/// How often expired records of other nodes are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often the DHT gauges are refreshed (counting the backlog walks the whole schedule).
const GAUGES_EVERY: Duration = Duration::from_secs(2);
/// A connection that has answered no ping for this long is closed, and its peer taken out of
/// the routing table: its machine died or its process froze. Four intervals (20 s): a peer's
/// answer comes from its connection task, but on a saturated machine that waits for a core too
/// (30 debug-build nodes on 2 cores saw gaps of 6 s between answers, and closing healthy
/// connections there fed the load with re-dials).
const SILENT_AFTER: Duration = Duration::from_secs(4 * PING_INTERVAL.as_secs());
/// The routing table counts as filled when it has not grown for this long (a cluster that
/// starts together is fully connected within ~7 s in bench/dht_sim.sh NETNS=1).
const TABLE_SETTLED: Duration = Duration::from_secs(5);
/// While the routing table holds fewer than k peers, it is refreshed (a Kademlia bootstrap:
/// a lookup of this node's own id) this often. Nodes that join together each ask the seed
/// before it knows the others, so each learns nobody new, and libp2p's own refresh comes only
/// every 5 min; a cluster's announcements and lookups would meet them, a quiet one would not.
const SMALL_TABLE_REFRESH: Duration = Duration::from_secs(3);

struct LookupState {
    key: RecordKey,
    tx: mpsc::Sender<Provider>,
    sent: HashSet<PeerId>,
    attempt: u32,
    started: Instant,
    /// When the first provider was handed to the asker (the lookup's latency as it saw it).
    first: Option<Duration>,
}

/// How a lookup's query ended, for the log line that explains a miss: how many peers it
/// asked, how many answered or failed (dead, refused, timed out), how many were still pending
/// when it was cut short, and which of the closest peers answered (Kademlia's result: the
/// nodes that should hold the key's records).
struct LookupEnd {
    requests: u32,
    answered: u32,
    failed: u32,
    pending: u32,
    closest_answered: Vec<PeerId>,
}

impl LookupEnd {
    fn new(stats: &kad::QueryStats, closest_answered: Vec<PeerId>) -> Self {
        LookupEnd {
            requests: stats.num_requests(),
            answered: stats.num_successes(),
            failed: stats.num_failures(),
            pending: stats.num_pending(),
            closest_answered,
        }
    }

    /// Logged at debug under its own target, `peermirror::dht_lookups` (every pull's
    /// in-flight lookup finds nobody, so this is a diagnosis, not an event): the lines
    /// `bench/dht_sim.sh` reads to say why a lookup failed.
    fn log(&self, state: &LookupState) {
        let key = String::from_utf8_lossy(state.key.as_ref());
        let ms = state.started.elapsed().as_millis();
        let closest: Vec<String> = self
            .closest_answered
            .iter()
            .map(|p| p.to_string())
            .collect();
        let closest = closest.join(",");
        let abandoned = state.tx.is_closed();
        let (requests, answered, failed, pending) =
            (self.requests, self.answered, self.failed, self.pending);
        match state.first {
            None => tracing::debug!(
                target: "peermirror::dht_lookups",
                %key, ms, abandoned, requests, answered, failed, pending, %closest,
                "dht lookup found no provider"
            ),
            Some(first) => tracing::debug!(
                target: "peermirror::dht_lookups",
                %key, ms, first_ms = first.as_millis(), providers = state.sent.len(),
                requests, answered, failed, pending, "dht lookup ended"
            ),
        }
    }
}

struct KnownPeer {
    /// The IP of the first connection: where its registry answers (whatever it announces).
    conn_ip: Option<IpAddr>,
    registry: Option<SocketAddr>,
    addrs: Vec<Multiaddr>,
    last_seen: std::time::SystemTime,
}

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    /// The only way state leaves the loop: handles read the latest snapshot.
    state: watch::Sender<Snapshot>,
    metrics: Arc<Metrics>,
    bootstrap: Vec<Bootstrap>,
    lookups: HashMap<QueryId, LookupState>,
    retries: Vec<(Instant, LookupState)>,
    /// Lookups waiting for a provider's registry address (we are dialling it).
    awaiting: HashMap<PeerId, Vec<mpsc::Sender<Provider>>>,
    known: HashMap<PeerId, KnownPeer>,
    next_bootstrap: Instant,
    bootstrap_backoff: Duration,
    next_dns: Instant,
    /// Set when the last peer went away: re-announce everything when one comes back.
    reprovide_pending: bool,
    /// When to announce every key once more, after the routing table has filled (see
    /// `P2pConfig::ANNOUNCE_AGAIN_AFTER`).
    announce_again_at: Option<Instant>,
    announce_again_after: Option<Duration>,
    /// The routing table's size when every key was last announced (0: not yet), its largest
    /// size since, and when it last grew: a table that doubled and then stopped growing has
    /// new closest nodes for many keys (see `announce_when_table_settled`).
    announced_with_table: usize,
    table_peak: usize,
    table_grew_at: Instant,
    /// When to refresh a routing table smaller than k again (see `SMALL_TABLE_REFRESH`).
    next_small_refresh: Instant,
    announcer: Announcer,
    next_sweep: Instant,
    next_gauges: Instant,
    /// Kademlia's k: how many nodes hold each key's records.
    replication: usize,
    /// Peers whose last connection closed since the last tick (see `replace_lost_holders`).
    leaving: Vec<PeerId>,
    /// Peers that left within the last republish interval, and when.
    departed: HashMap<PeerId, Instant>,
    republish_interval: Duration,
    /// Each open connection's peer and its last sign of life (opened, or a ping answered);
    /// connections to peers without the ping protocol (older versions) are not in it.
    heard: HashMap<ConnectionId, (PeerId, Instant)>,
    /// When the last tick ran: a loop that did not run for a while cannot tell a silent peer
    /// from its own stall (see `close_silent_connections`).
    last_tick: Instant,
}

/// The parts of [`super::P2pConfig`] the loop keeps.
pub(super) struct LoopSettings {
    pub bootstrap: Vec<Bootstrap>,
    pub republish_interval: Duration,
    pub replication: usize,
    pub announce_again_after: Option<Duration>,
}

impl EventLoop {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        state: watch::Sender<Snapshot>,
        metrics: Arc<Metrics>,
        settings: LoopSettings,
    ) -> Self {
        let LoopSettings {
            bootstrap,
            republish_interval,
            replication,
            announce_again_after,
        } = settings;
        EventLoop {
            swarm,
            commands,
            state,
            metrics,
            bootstrap,
            lookups: HashMap::new(),
            retries: Vec::new(),
            awaiting: HashMap::new(),
            known: HashMap::new(),
            next_bootstrap: Instant::now(),
            bootstrap_backoff: Duration::from_secs(1),
            next_dns: Instant::now(),
            // Keys advertised before the first peer connects reached nobody: announce them again then.
            reprovide_pending: true,
            announce_again_at: None,
            announce_again_after,
            announced_with_table: 0,
            table_peak: 0,
            table_grew_at: Instant::now(),
            next_small_refresh: Instant::now() + SMALL_TABLE_REFRESH,
            announcer: Announcer::new(republish_interval, ANNOUNCE_IN_FLIGHT),
            next_sweep: Instant::now() + SWEEP_EVERY,
            next_gauges: Instant::now(),
            replication: replication.max(1),
            leaving: Vec::new(),
            departed: HashMap::new(),
            republish_interval,
            heard: HashMap::new(),
            last_tick: Instant::now(),
        }
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (dns_tx, mut dns_rx) = mpsc::channel::<Vec<Multiaddr>>(8);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(addrs) = dns_rx.recv() => self.dial_unknown(addrs),
                _ = tick.tick() => self.on_tick(&dns_tx),
            }
        }
    }

    fn connected(&self) -> usize {
        self.swarm.connected_peers().count()
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Lookup { key, tx } => self.start_lookup(key, tx, 1),
            Command::Provide { keys, reply } => {
                let local = *self.swarm.local_peer_id();
                let mut refused = Vec::new();
                for k in keys {
                    // In the store at once, so a peer that asks this node already finds it;
                    // the announcement to the k closest follows, paced.
                    let record = ProviderRecord::new(k.clone(), local, Vec::new());
                    match self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .store_mut()
                        .add_provider(record)
                    {
                        Ok(()) => self.announcer.provide(k),
                        Err(e) => {
                            let key = String::from_utf8_lossy(k.as_ref()).into_owned();
                            tracing::warn!(%key, error = ?e, "cannot advertise key");
                            refused.push(Refused {
                                key: k,
                                reason: format!("{e:?}"),
                            });
                        }
                    }
                }
                let _ = reply.send(refused);
                self.pump_announcements();
            }
            Command::Withdraw { keys } => {
                for k in keys {
                    self.announcer.withdraw(&k);
                    self.swarm.behaviour_mut().kad.stop_providing(&k);
                }
            }
        }
    }

    /// Start due announcements while slots are free; none while no peer is connected (they
    /// would reach nobody: everything is re-announced when peers come).
    fn pump_announcements(&mut self) {
        if self.connected() == 0 {
            return;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        self.announcer
            .pump(Instant::now(), |key| match kad.start_providing(key) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(error = ?e, "cannot start a provider announcement");
                    None
                }
            });
    }

    fn on_announced(&mut self, id: QueryId, result: Result<(), kad::AddProviderError>) {
        let ok = result.is_ok();
        match self.announcer.finished(id, ok, Instant::now()) {
            Outcome::Ignored => return,
            Outcome::Announced => {}
            Outcome::Retry { attempt, after } => {
                tracing::debug!(
                    ?result,
                    attempt,
                    ?after,
                    "provider announcement failed; will retry"
                )
            }
        }
        let what = if ok { "announced" } else { "failed" };
        self.metrics
            .routing
            .dht
            .announcements
            .get_or_create(&WhatLabels { what })
            .inc();
        self.pump_announcements();
    }

    fn start_lookup(&mut self, key: RecordKey, tx: mpsc::Sender<Provider>, attempt: u32) {
        if tx.is_closed() {
            return;
        }
        let id = self.swarm.behaviour_mut().kad.get_providers(key.clone());
        self.lookups.insert(
            id,
            LookupState {
                key,
                tx,
                sent: HashSet::new(),
                attempt,
                started: Instant::now(),
                first: None,
            },
        );
    }

    fn provider_of(&self, peer: &PeerId) -> Option<Provider> {
        let addr = self.known.get(peer)?.registry?;
        Some(Provider {
            peer: peer.to_string().into(),
            addr,
        })
    }

    fn on_providers(&mut self, id: QueryId, providers: HashSet<PeerId>) {
        let local = *self.swarm.local_peer_id();
        let mut to_dial = Vec::new();
        if let Some(state) = self.lookups.get_mut(&id) {
            for p in providers {
                if p == local || !state.sent.insert(p) {
                    continue;
                }
                state.first.get_or_insert_with(|| state.started.elapsed());
                match self.known.get(&p).and_then(|k| k.registry) {
                    Some(addr) => {
                        let _ = state.tx.try_send(Provider {
                            peer: p.to_string().into(),
                            addr,
                        });
                    }
                    None => to_dial.push((p, state.tx.clone())),
                }
            }
        }
        for (p, tx) in to_dial {
            self.awaiting.entry(p).or_default().push(tx);
            if let Err(e) = self.swarm.dial(p) {
                tracing::debug!(peer = %p, error = %e, "cannot dial provider");
                self.awaiting.remove(&p);
            }
        }
    }

    fn on_lookup_finished(&mut self, id: QueryId, end: LookupEnd) {
        let Some(state) = self.lookups.remove(&id) else {
            return;
        };
        end.log(&state);
        if !state.sent.is_empty() || state.attempt >= LOOKUP_RETRIES || state.tx.is_closed() {
            return;
        }
        // With no peer connected yet the routing table is still filling: try again shortly.
        // A query some of whose peers failed (a dropped request, a peer that just died: the
        // holders are the peers it asks first) may have skipped the holders for the next
        // closest: ask again at once (a dead peer's failed dial took it out of the table).
        // Otherwise the query really asked the closest peers, so nothing found is a miss:
        // closing the channel now lets the mirror answer 404 at once instead of at its timeout.
        if self.connected() == 0 {
            self.retries
                .push((Instant::now() + LOOKUP_RETRY_DELAY, state));
        } else if end.failed > 0 {
            self.start_lookup(state.key, state.tx, state.attempt + 1);
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with(Protocol::P2p(*self.swarm.local_peer_id()));
                tracing::info!(address = %full, "router listening");
                self.state.send_modify(|s| s.listen.push(full));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.heard.insert(connection_id, (peer_id, Instant::now()));
                let remote = endpoint.get_remote_address().clone();
                if endpoint.is_dialer() {
                    // A dialled address is a listen address of the peer: routable.
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, remote.clone());
                }
                self.departed.remove(&peer_id);
                let entry = self.known.entry(peer_id).or_insert_with(|| KnownPeer {
                    conn_ip: multiaddr_ip(&remote),
                    registry: None,
                    addrs: Vec::new(),
                    last_seen: std::time::SystemTime::now(),
                });
                entry.last_seen = std::time::SystemTime::now();
                self.publish_peers();
                if self.connected() > 0 {
                    self.bootstrap_backoff = Duration::from_secs(1);
                }
                tracing::debug!(peer = %peer_id, %remote, "peer connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.heard.remove(&connection_id);
                if num_established == 0 {
                    self.known.remove(&peer_id);
                    self.leaving.push(peer_id);
                    tracing::debug!(peer = %peer_id, "peer disconnected");
                }
                self.publish_peers();
                if self.connected() == 0 {
                    self.reprovide_pending = true;
                    self.next_bootstrap = Instant::now() + self.bootstrap_backoff;
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
                if let Some(p) = peer_id {
                    self.awaiting.remove(&p);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identify(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                connection, result, ..
            })) => match result {
                Ok(_) => {
                    if let Some(h) = self.heard.get_mut(&connection) {
                        h.1 = Instant::now();
                    }
                }
                // A peer without ping (an older version, mid-upgrade) cannot be judged by it.
                Err(ping::Failure::Unsupported) => {
                    self.heard.remove(&connection);
                }
                // Silence is judged on the tick, by the last answer.
                Err(_) => {}
            },
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest { request })) => {
                let what = match request {
                    kad::InboundRequest::FindNode { .. } => "find_node",
                    kad::InboundRequest::GetProvider { .. } => "get_providers",
                    kad::InboundRequest::AddProvider { .. } => "add_provider",
                    _ => "other",
                };
                self.metrics
                    .routing
                    .dht
                    .requests
                    .get_or_create(&WhatLabels { what })
                    .inc();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            })) => match result {
                QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders {
                    providers, ..
                })) => {
                    self.on_providers(id, providers);
                    if step.last {
                        self.on_lookup_finished(id, LookupEnd::new(&stats, Vec::new()));
                    }
                }
                QueryResult::GetProviders(
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { closest_peers })
                    | Err(kad::GetProvidersError::Timeout { closest_peers, .. }),
                ) => self.on_lookup_finished(id, LookupEnd::new(&stats, closest_peers)),
                QueryResult::StartProviding(r) => self.on_announced(id, r.map(|_| ())),
                _ => {}
            },
            _ => {}
        }
    }

    fn on_identify(&mut self, peer_id: PeerId, info: identify::Info) {
        if !info.agent_version.starts_with("peermirror/") {
            tracing::warn!(peer = %peer_id, agent = %info.agent_version, "not a peermirror node; ignoring");
            return;
        }
        let Some(entry) = self.known.get_mut(&peer_id) else {
            return;
        };
        let conn_ip = entry.conn_ip;
        entry.registry = parse_registry(&info.agent_version, conn_ip);
        entry.addrs = info.listen_addrs.clone();
        entry.last_seen = std::time::SystemTime::now();
        let loopback_peer = conn_ip.is_some_and(|ip| ip.is_loopback());
        for addr in info.listen_addrs {
            // Another node's loopback address is our own machine: never route to it, unless we
            // reached that peer over loopback in the first place (several nodes on one host).
            let is_loopback = multiaddr_ip(&addr).is_some_and(|ip| ip.is_loopback());
            if !is_loopback || loopback_peer {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
        }
        self.publish_peers();
        if let Some(provider) = self.provider_of(&peer_id)
            && let Some(waiting) = self.awaiting.remove(&peer_id)
        {
            for tx in waiting {
                let _ = tx.try_send(provider.clone());
            }
        }
        if self.reprovide_pending {
            self.reprovide_pending = false;
            self.reannounce_all();
            self.announce_again_at = self.announce_again_after.map(|d| Instant::now() + d);
            tracing::info!("peers connected; announcing every provided key");
            self.pump_announcements();
        }
    }

    /// Publish the connected peers (and what identify told about them) to handles and metrics.
    fn publish_peers(&mut self) {
        let peers: Vec<PeerEntry> = self
            .swarm
            .connected_peers()
            .map(|p| {
                let k = self.known.get(p);
                PeerEntry {
                    id: *p,
                    registry: k.and_then(|k| k.registry),
                    addrs: k.map(|k| k.addrs.clone()).unwrap_or_default(),
                    last_seen: k.map_or(std::time::SystemTime::now(), |k| k.last_seen),
                }
            })
            .collect();
        self.metrics
            .routing
            .connected_peers
            .set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
        self.state.send_modify(|s| s.peers = peers);
    }

    fn on_tick(&mut self, dns_tx: &mpsc::Sender<Vec<Multiaddr>>) {
        let now = Instant::now();
        let due: Vec<LookupState> = {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            self.retries = later;
            due.into_iter().map(|(_, s)| s).collect()
        };
        for s in due {
            self.start_lookup(s.key, s.tx, s.attempt + 1);
        }
        self.end_abandoned_lookups(now);
        self.close_silent_connections(now);
        self.replace_lost_holders(now);
        self.announce_when_table_settled(now);
        self.refresh_small_table(now);
        if self.announce_again_at.is_some_and(|at| now >= at) {
            self.announce_again_at = None;
            self.reannounce_all();
            tracing::info!("routing table filled; announcing every provided key again");
        }
        self.pump_announcements();
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.swarm.behaviour_mut().kad.store_mut().sweep(now);
        }
        if now >= self.next_gauges {
            self.next_gauges = now + GAUGES_EVERY;
            let (_, records) = self.swarm.behaviour_mut().kad.store_mut().len();
            let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.metrics.routing.dht.stored_records.set(gauge(records));
            self.metrics
                .routing
                .dht
                .announce_backlog
                .set(gauge(self.announcer.backlog(now)));
        }
        if self.connected() == 0 && now >= self.next_bootstrap {
            self.dial_bootstrap(dns_tx);
            self.next_bootstrap = now + self.bootstrap_backoff;
            self.bootstrap_backoff = (self.bootstrap_backoff * 2).min(BOOTSTRAP_BACKOFF_MAX);
        } else if now >= self.next_dns {
            // Re-resolve the headless Service now and then to meet nodes that joined later.
            self.resolve_dns(dns_tx);
        }
    }

    /// Peers in the Kademlia routing table.
    fn table_size(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum()
    }

    /// Refresh a routing table that holds some peers but fewer than k.
    fn refresh_small_table(&mut self, now: Instant) {
        if now < self.next_small_refresh || self.connected() == 0 {
            return;
        }
        self.next_small_refresh = now + SMALL_TABLE_REFRESH;
        if self.table_size() < self.replication {
            // An error only says the table is empty: nothing to ask yet.
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    /// Announce every key again once the routing table has at least doubled since the keys
    /// were last announced and then stopped growing for `TABLE_SETTLED`. Keys announced while
    /// the table was small (a node's first seconds, a cluster that starts together) were
    /// stored on the closest nodes known then; once the others are known, a key's k closest
    /// are mostly nodes without its record, and lookups ask those. The timed pass
    /// (`announce_again_after`) alone left them missing for its whole minute (8 % of lookups
    /// in bench/dht_sim.sh NETNS=1 at 30 nodes). Doubling, so that a grown cluster triggers it
    /// a few times (log2 of its size), not at every join.
    fn announce_when_table_settled(&mut self, now: Instant) {
        if self.announce_again_after.is_none() || self.announced_with_table == 0 {
            return;
        }
        let size = self.table_size();
        if size > self.table_peak {
            self.table_peak = size;
            self.table_grew_at = now;
            return;
        }
        if size >= 2 * self.announced_with_table
            && now.duration_since(self.table_grew_at) >= TABLE_SETTLED
        {
            tracing::info!(
                before = self.announced_with_table,
                now = size,
                "routing table grew and settled; announcing every provided key again"
            );
            self.reannounce_all();
        }
    }

    /// Announce every provided key again, remembering the routing table's size for
    /// `announce_when_table_settled`.
    fn reannounce_all(&mut self) {
        self.announcer.reannounce_all();
        self.announced_with_table = self.table_size().max(1);
    }

    /// Re-announce the provided keys whose record holders left with the peers that just went
    /// away, instead of waiting up to a republish interval: a key is at risk when at least
    /// half of its k closest peers (connected, or gone within the last interval) are gone,
    /// one of them just now. Its records then sit on fewer than half of k nodes, and all of
    /// them may be gone (20 % of nodes at once: 6 % of keys are at risk, 0.03 % lost). The
    /// k closest are judged among the peers this node is connected to, which at cluster
    /// sizes (a few hundred) is every node; a holder it never connected to is not seen.
    fn replace_lost_holders(&mut self, now: Instant) {
        let interval = self.republish_interval;
        self.departed
            .retain(|_, at| now.duration_since(*at) < interval);
        let leaving: HashSet<PeerId> = std::mem::take(&mut self.leaving)
            .into_iter()
            .filter(|p| !self.swarm.is_connected(p))
            .collect();
        if leaving.is_empty() {
            return;
        }
        for p in &leaving {
            self.departed.insert(*p, now);
        }
        // (distance key, gone, gone just now)
        let peers: Vec<(KBucketKey<PeerId>, bool, bool)> = self
            .swarm
            .connected_peers()
            .map(|p| (KBucketKey::from(*p), false, false))
            .chain(
                self.departed
                    .keys()
                    .map(|p| (KBucketKey::from(*p), true, leaving.contains(p))),
            )
            .collect();
        let k = self.replication.min(peers.len());
        if k == 0 {
            return;
        }
        let mut by_distance = Vec::with_capacity(peers.len());
        let at_risk: Vec<RecordKey> = self
            .announcer
            .keys()
            .filter(|key| {
                let target = KBucketKey::new((*key).clone());
                by_distance.clear();
                by_distance.extend(
                    peers
                        .iter()
                        .map(|(p, gone, now)| (p.distance(&target), *gone, *now)),
                );
                by_distance.select_nth_unstable_by(k - 1, |a, b| a.0.cmp(&b.0));
                let closest = &by_distance[..k];
                closest.iter().any(|c| c.2)
                    && closest.iter().filter(|c| c.1).count() * 2 >= self.replication
            })
            .cloned()
            .collect();
        if !at_risk.is_empty() {
            tracing::info!(
                keys = at_risk.len(),
                gone = leaving.len(),
                "peers left; re-announcing the keys whose record holders went with them"
            );
            self.announcer.reannounce(at_risk);
        }
    }

    /// Close the connections that stopped answering pings, and take their peers out of the
    /// routing table so that queries stop waiting on them: a machine that died without a RST,
    /// or a frozen process, otherwise keeps its connections open for good, its queries'
    /// requests time out one by one, and the re-announcement of its keys never starts (that
    /// follows from the close, through `ConnectionClosed`). It is added back when it talks again.
    fn close_silent_connections(&mut self, now: Instant) {
        // Time this loop did not run (a starved machine: 30 nodes on 2 cores) is not counted
        // as the peers' silence: their answers may be waiting to be read.
        let stalled = now.saturating_duration_since(self.last_tick + 2 * TICK);
        self.last_tick = now;
        if !stalled.is_zero() {
            for (_, at) in self.heard.values_mut() {
                *at = (*at + stalled).min(now);
            }
        }
        let silent: Vec<(ConnectionId, PeerId)> = self
            .heard
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= SILENT_AFTER)
            .map(|(id, (peer, _))| (*id, *peer))
            .collect();
        for (id, peer) in silent {
            self.heard.remove(&id);
            tracing::info!(%peer, after = ?SILENT_AFTER, "peer stopped answering pings; closing its connection");
            self.swarm.close_connection(id);
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
        }
    }

    /// Finish lookup queries nobody waits for any more, or past their deadline: their rounds
    /// would otherwise keep asking peers for nothing.
    fn end_abandoned_lookups(&mut self, now: Instant) {
        let done: Vec<QueryId> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.tx.is_closed() || now.duration_since(l.started) >= LOOKUP_DEADLINE)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
        }
    }

    fn dial_bootstrap(&mut self, dns_tx: &mpsc::Sender<Vec<Multiaddr>>) {
        let statics: Vec<Multiaddr> = self
            .bootstrap
            .iter()
            .filter_map(|b| match b {
                Bootstrap::Static(a) => Some(a.clone()),
                _ => None,
            })
            .collect();
        for addr in statics {
            let opts = match addr.iter().last() {
                Some(Protocol::P2p(peer)) => DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .build(),
                _ => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%addr, error = %e, "bootstrap dial failed");
            }
        }
        self.resolve_dns(dns_tx);
        if self.connected() > 0 {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    fn resolve_dns(&mut self, dns_tx: &mpsc::Sender<Vec<Multiaddr>>) {
        self.next_dns = Instant::now() + DNS_REFRESH;
        for b in &self.bootstrap {
            if let Bootstrap::Dns { host, port } = b {
                let (host, port, tx) = (host.clone(), *port, dns_tx.clone());
                tokio::spawn(async move {
                    let lookup = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::net::lookup_host((host.as_str(), port)),
                    )
                    .await;
                    match lookup {
                        Ok(Ok(addrs)) => {
                            let _ = tx.send(addrs.map(socket_multiaddr).collect()).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%host, error = %e, "bootstrap DNS lookup failed")
                        }
                        Err(_) => tracing::debug!(%host, "bootstrap DNS lookup timed out"),
                    }
                });
            }
        }
    }

    /// Dial addresses (from DNS) that no connected peer already uses.
    fn dial_unknown(&mut self, addrs: Vec<Multiaddr>) {
        let connected: HashSet<IpAddr> = self.known.values().filter_map(|k| k.conn_ip).collect();
        let own: HashSet<IpAddr> = self
            .swarm
            .listeners()
            .filter_map(multiaddr_ip)
            .chain(self.swarm.external_addresses().filter_map(multiaddr_ip))
            .collect();
        let has_static = self
            .bootstrap
            .iter()
            .any(|b| matches!(b, Bootstrap::Static(_)));
        let others = addrs
            .iter()
            .filter_map(multiaddr_ip)
            .any(|ip| !own.contains(&ip));
        let alone = !others && !has_static;
        self.state
            .send_if_modified(|s| std::mem::replace(&mut s.alone, alone) != alone);
        for addr in addrs {
            let Some(ip) = multiaddr_ip(&addr) else {
                continue;
            };
            if connected.contains(&ip) || own.contains(&ip) {
                continue;
            }
            let _ = self
                .swarm
                .dial(DialOpts::unknown_peer_id().address(addr).build());
        }
    }
}
