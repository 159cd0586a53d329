//! Who gets a connection slot. A general pool anyone may use, a reserve only trusted addresses
//! (this node's containerd on loopback, connected DHT peers) may use, and a per-address cap.
//! When the general pool is full, the oldest connection from a stranger that has not yet
//! completed a request is closed to make room: a client that opens sockets and stays silent
//! can delay newcomers by nothing, instead of locking them out until its timeouts run out.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;

use super::ServerLimits;
use crate::metrics::ReasonLabels;
use crate::sync::MutexExt;

/// Addresses allowed into the reserve besides this node's containerd (127.0.0.1, ::1).
pub type Trusted = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Where refusals and evictions are counted. The default is a set of counters nobody reads,
/// for listeners whose numbers are not exported.
#[derive(Clone, Default)]
pub struct ConnCounters {
    /// `peermirror_connections_refused_total{reason}`: see [`Refusal`].
    pub refused: Family<ReasonLabels, Counter>,
    /// `peermirror_connections_evicted_total`.
    pub evicted: Counter,
}

/// Why a new connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already holds `max_connections_per_ip`.
    PerAddress,
    /// The pool (and, for a trusted address, the reserve) is full of connections that have
    /// each completed a request: busy clients, none to evict.
    PoolFull,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerAddress => "per_address",
            Refusal::PoolFull => "pool_full",
        }
    }
}

/// The containerd on this node reaches its mirror at 127.0.0.1 (what `peermirror configure`
/// writes). Only that address and `::1` count: other 127/8 addresses are not what containerd
/// uses, and tests stand strangers on them.
pub fn is_local_containerd(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => {
            v6 == Ipv6Addr::LOCALHOST || v6.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST)
        }
    }
}

/// A [`Trusted`] predicate over a set that `load` rebuilds at most once per `every`, so the
/// accept loop under a flood does not rebuild it for each connection.
pub fn cached_set<F>(every: Duration, load: F) -> Trusted
where
    F: Fn() -> HashSet<IpAddr> + Send + Sync + 'static,
{
    let cache: Mutex<Option<(Instant, Arc<HashSet<IpAddr>>)>> = Mutex::new(None);
    Arc::new(move |ip| {
        let mut c = cache.locked();
        let fresh = matches!(&*c, Some((at, _)) if at.elapsed() < every);
        if !fresh {
            *c = Some((Instant::now(), Arc::new(load())));
        }
        c.as_ref().is_some_and(|(_, set)| set.contains(&ip))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    General,
    Reserve,
}

struct Entry {
    ip: IpAddr,
    pool: Pool,
    cancel: CancellationToken,
}

/// What happened since the last summary line.
#[derive(Default)]
struct Tally {
    per_address: u64,
    pool_full: u64,
    evicted: u64,
}

#[derive(Default)]
struct Table {
    per_ip: HashMap<IpAddr, usize>,
    general: usize,
    reserved: usize,
    conns: HashMap<u64, Entry>,
    /// General-pool connections from strangers that have not completed a request, by id
    /// (ids grow with accept order, so the first is the oldest): the eviction candidates.
    unfinished: BTreeSet<u64>,
    next_id: u64,
    peak: usize,
    tally: Tally,
}

/// The connection registry of one listener.
pub struct Admission {
    pool: usize,
    reserve: usize,
    per_ip: usize,
    trusted: Option<Trusted>,
    counters: ConnCounters,
    table: Mutex<Table>,
}

impl Admission {
    /// Caps from `limits`; `trusted` adds addresses to the reserve's (containerd's are always in).
    pub fn new(
        limits: &ServerLimits,
        trusted: Option<Trusted>,
        counters: ConnCounters,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            pool: limits.max_connections,
            reserve: limits.reserved_connections,
            per_ip: limits.max_connections_per_ip,
            trusted,
            counters,
            table: Mutex::new(Table::default()),
        })
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.table.locked().conns.len()
    }

    /// The most connections that ever held a slot at once.
    pub fn peak(&self) -> usize {
        self.table.locked().peak
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        is_local_containerd(ip) || self.trusted.as_ref().is_some_and(|t| t(ip))
    }

    /// A slot for a connection from `ip`, evicting the oldest unfinished stranger if the
    /// general pool is full; or why not. Refusals and evictions are counted here.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        // Asked before taking the lock: the predicate may consult the router.
        let trusted = self.is_trusted(ip);
        let mut t = self.table.locked();
        let result = self.place(&mut t, ip, trusted);
        match result {
            Ok(pool) => {
                let id = t.next_id;
                t.next_id += 1;
                *t.per_ip.entry(ip).or_insert(0) += 1;
                match pool {
                    Pool::General => t.general += 1,
                    Pool::Reserve => t.reserved += 1,
                }
                // Trusted connections are never evicted, wherever they sit.
                if pool == Pool::General && !trusted {
                    t.unfinished.insert(id);
                }
                let cancel = CancellationToken::new();
                t.conns.insert(
                    id,
                    Entry {
                        ip,
                        pool,
                        cancel: cancel.clone(),
                    },
                );
                t.peak = t.peak.max(t.conns.len());
                Ok(Slot {
                    admission: self.clone(),
                    id,
                    cancel,
                    finished: AtomicBool::new(false),
                })
            }
            Err(r) => {
                match r {
                    Refusal::PerAddress => t.tally.per_address += 1,
                    Refusal::PoolFull => t.tally.pool_full += 1,
                }
                self.counters
                    .refused
                    .get_or_create(&ReasonLabels { reason: r.as_str() })
                    .inc();
                Err(r)
            }
        }
    }

    fn place(&self, t: &mut Table, ip: IpAddr, trusted: bool) -> Result<Pool, Refusal> {
        if t.per_ip.get(&ip).copied().unwrap_or(0) >= self.per_ip {
            return Err(Refusal::PerAddress);
        }
        if t.general < self.pool {
            return Ok(Pool::General);
        }
        if trusted && t.reserved < self.reserve {
            return Ok(Pool::Reserve);
        }
        let Some(victim) = t.unfinished.pop_first() else {
            return Err(Refusal::PoolFull);
        };
        if let Some(e) = remove(t, victim) {
            e.cancel.cancel();
        }
        t.tally.evicted += 1;
        self.counters.evicted.inc();
        Ok(Pool::General)
    }

    fn finish(&self, id: u64) {
        self.table.locked().unfinished.remove(&id);
    }

    fn leave(&self, id: u64) {
        remove(&mut self.table.locked(), id);
    }

    /// One line for the last period's refusals and evictions, if there were any.
    pub(super) fn log_summary(&self) {
        let mut t = self.table.locked();
        let tally = std::mem::take(&mut t.tally);
        let open = t.conns.len();
        drop(t);
        if tally.per_address + tally.pool_full + tally.evicted > 0 {
            tracing::warn!(
                refused_per_address = tally.per_address,
                refused_pool_full = tally.pool_full,
                evicted_unfinished = tally.evicted,
                open,
                pool = self.pool,
                reserve = self.reserve,
                "connection slots under pressure in the last minute"
            );
        }
    }
}

/// Takes `id` out of the table and gives back its place in the counts.
fn remove(t: &mut Table, id: u64) -> Option<Entry> {
    let e = t.conns.remove(&id)?;
    t.unfinished.remove(&id);
    match e.pool {
        Pool::General => t.general -= 1,
        Pool::Reserve => t.reserved -= 1,
    }
    if let Some(n) = t.per_ip.get_mut(&e.ip) {
        *n -= 1;
        if *n == 0 {
            t.per_ip.remove(&e.ip);
        }
    }
    Some(e)
}

/// One connection's place in an [`Admission`], given back on drop.
pub(super) struct Slot {
    admission: Arc<Admission>,
    id: u64,
    /// Fired when the connection is evicted: its task drops the socket.
    pub(super) cancel: CancellationToken,
    finished: AtomicBool,
}

impl Slot {
    /// The connection completed a request head: no longer a candidate for eviction.
    pub(super) fn finish(&self) {
        if !self.finished.swap(true, Ordering::Relaxed) {
            self.admission.finish(self.id);
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(pool: usize, reserve: usize, per_ip: usize, trusted: &[&str]) -> Arc<Admission> {
        let set: HashSet<IpAddr> = trusted.iter().map(|s| s.parse().unwrap()).collect();
        let limits = ServerLimits {
            max_connections: pool,
            reserved_connections: reserve,
            max_connections_per_ip: per_ip,
            ..ServerLimits::default()
        };
        Admission::new(
            &limits,
            Some(Arc::new(move |ip| set.contains(&ip))),
            ConnCounters::default(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn full_pool_evicts_the_oldest_unfinished_stranger() {
        let a = admission(2, 0, 10, &[]);
        let first = a.admit(ip("10.0.0.1")).unwrap();
        let second = a.admit(ip("10.0.0.2")).unwrap();
        let third = a.admit(ip("10.0.0.3")).unwrap();
        assert!(first.cancel.is_cancelled());
        assert!(!second.cancel.is_cancelled());
        assert_eq!(a.open(), 2);
        // A finished connection is not a candidate: the next victim is `third`.
        second.finish();
        let _fourth = a.admit(ip("10.0.0.4")).unwrap();
        assert!(third.cancel.is_cancelled());
        assert!(!second.cancel.is_cancelled());
        // The evicted slots dropping later changes nothing.
        drop(first);
        drop(third);
        assert_eq!(a.open(), 2);
        assert_eq!(a.counters.evicted.get(), 2);
    }

    #[test]
    fn busy_pool_refuses_strangers_but_not_the_trusted() {
        let a = admission(1, 2, 10, &["10.0.0.9"]);
        let busy = a.admit(ip("10.0.0.1")).unwrap();
        busy.finish();
        assert_eq!(a.admit(ip("10.0.0.2")).err(), Some(Refusal::PoolFull));
        let _c = a.admit(ip("127.0.0.1")).unwrap();
        let _p = a.admit(ip("10.0.0.9")).unwrap();
        // The reserve is full too now.
        assert_eq!(a.admit(ip("10.0.0.9")).err(), Some(Refusal::PoolFull));
        assert_eq!(a.peak(), 3);
    }

    #[test]
    fn trusted_connections_are_never_evicted() {
        let a = admission(1, 0, 10, &[]);
        let containerd = a.admit(ip("::1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.2")).err(), Some(Refusal::PoolFull));
        assert!(!containerd.cancel.is_cancelled());
    }

    #[test]
    fn per_address_cap_holds_and_is_given_back() {
        let a = admission(10, 0, 2, &[]);
        let one = a.admit(ip("10.0.0.1")).unwrap();
        let _two = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refusal::PerAddress));
        drop(one);
        assert!(a.admit(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn only_127_0_0_1_and_ipv6_loopback_are_local_containerd() {
        assert!(is_local_containerd(ip("127.0.0.1")));
        assert!(is_local_containerd(ip("::1")));
        assert!(is_local_containerd(ip("::ffff:127.0.0.1")));
        assert!(!is_local_containerd(ip("127.0.0.2")));
        assert!(!is_local_containerd(ip("10.0.0.1")));
    }

    #[test]
    fn cached_set_reloads_only_after_its_period() {
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let l = loads.clone();
        let t = cached_set(Duration::from_secs(60), move || {
            l.fetch_add(1, Ordering::SeqCst);
            [ip("10.0.0.7")].into_iter().collect()
        });
        assert!(t(ip("10.0.0.7")));
        assert!(!t(ip("10.0.0.8")));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
