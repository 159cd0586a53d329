//! Fitting the connection caps to the file-descriptor limit: a cap the process cannot reach
//! would turn a flood into EMFILE for everything else (containerd's channel, peer fetches,
//! uploads' files) instead of an orderly eviction.

use rustix::process::{Resource, getrlimit, setrlimit};

use super::ServerLimits;

/// Descriptors kept for everything but the registry's connections: the operations endpoint
/// (64 connections), libp2p connections, peer fetches, containerd's gRPC channel, the files of
/// uploads in flight (`--max-concurrent-uploads`), the admin socket and the reload watches.
pub const HEADROOM: u64 = 1024;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go programs do at start (the soft
/// 1024 that systemd, and containerd 2 since it dropped `LimitNOFILE`, hand to containers is
/// a relic of `select(2)`, which nothing here uses). Returns the soft limit now in force;
/// `None` is unlimited.
pub fn raise_nofile_limit() -> Option<u64> {
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        let want = rustix::process::Rlimit {
            current: l.maximum,
            maximum: l.maximum,
        };
        match setrlimit(Resource::Nofile, want) {
            Ok(()) => l.current = l.maximum,
            Err(e) => tracing::debug!(error = %e, "cannot raise the open-file limit"),
        }
    }
    l.current
}

/// `limits` with the general pool plus the reserve fitted under `nofile` less [`HEADROOM`]
/// (half of `nofile` when it is small). The reserve keeps at most a quarter of what is left.
pub fn fit_to_fd_limit(limits: ServerLimits, nofile: Option<u64>) -> ServerLimits {
    let Some(nofile) = nofile else {
        return limits;
    };
    let budget = if nofile > 2 * HEADROOM {
        nofile - HEADROOM
    } else {
        nofile / 2
    };
    let budget = usize::try_from(budget).unwrap_or(usize::MAX).max(2);
    let wanted = limits
        .max_connections
        .saturating_add(limits.reserved_connections);
    if wanted <= budget {
        return limits;
    }
    let reserved_connections = limits.reserved_connections.min(budget / 4);
    let max_connections = (budget - reserved_connections).max(1);
    tracing::warn!(
        nofile,
        max_connections,
        reserved_connections,
        "the open-file limit is too low for --max-connections and --reserved-connections; lowered them (raise the limit to keep them)"
    );
    ServerLimits {
        max_connections,
        reserved_connections,
        ..limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(l: &ServerLimits) -> (usize, usize) {
        (l.max_connections, l.reserved_connections)
    }

    #[test]
    fn caps_fit_under_the_limit_with_headroom() {
        let d = ServerLimits::default();
        assert_eq!(caps(&fit_to_fd_limit(d.clone(), None)), caps(&d));
        assert_eq!(caps(&fit_to_fd_limit(d.clone(), Some(1 << 20))), caps(&d));
        // The default 4096 + 256 needs 5,376 descriptors.
        assert_eq!(caps(&fit_to_fd_limit(d.clone(), Some(4096))), (2816, 256));
        assert_eq!(caps(&fit_to_fd_limit(d.clone(), Some(1024))), (384, 128));
        let tiny = fit_to_fd_limit(d, Some(3));
        assert!(tiny.max_connections >= 1);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let now = raise_nofile_limit();
        assert_eq!(now, getrlimit(Resource::Nofile).maximum);
    }
}
