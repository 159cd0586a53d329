//! The TCP congestion control of the connections the server sends on.
//!
//! A node in a rollout chain uploads a blob to the next node while it downloads it at the same
//! rate. Where one FIFO queue holds a node's incoming traffic (a capped link without flow
//! queueing), the ACKs of its upload wait behind its download. BBR, the default on some
//! nodes, then caps the upload at its model of the path, whose delay it measured before the
//! queue filled, and every node after it in the chain gets the bytes that late: containerd
//! 2.1's chunked fetch keeps that queue full, and the first hop of an 8-node rollout lost
//! 3-4 s (docs/benchmarks.md, "Session 14"). A loss-based algorithm such as cubic keeps its
//! window. It is set per socket, so the node's own default is left alone.

use std::io;
use std::os::fd::AsFd;

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketType, ipproto, sockopt};

/// Longest algorithm name the kernel takes (`TCP_CA_NAME_MAX` is 16, with its NUL).
const MAX_NAME: usize = 15;

/// A congestion control as given on the command line: an algorithm's name, or `None` for
/// the kernel's default (`system`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CongestionControl(pub Option<String>);

impl std::str::FromStr for CongestionControl {
    type Err = String;

    /// `system` (or empty) leaves the kernel's default; anything else must look like a kernel
    /// algorithm's name.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "system" {
            return Ok(CongestionControl(None));
        }
        let ok = s.len() <= MAX_NAME
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(format!(
                "`{s}` is not a TCP congestion control name (e.g. cubic, bbr, reno; `system` keeps the kernel's default)"
            ));
        }
        Ok(CongestionControl(Some(s.to_owned())))
    }
}

/// Whether `name` can be set on this node's sockets, with what to do if not: the kernel must
/// have it, and a process without CAP_NET_ADMIN may only pick what
/// `net.ipv4.tcp_allowed_congestion_control` lists.
pub fn check(name: &str) -> Result<(), String> {
    let probe = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, Some(ipproto::TCP))
        .map_err(|e| format!("cannot open a socket to try it: {e}"))?;
    sockopt::set_tcp_congestion(&probe, name).map_err(|e| match e {
        Errno::NOENT => format!(
            "this kernel has no `{name}` (see /proc/sys/net/ipv4/tcp_available_congestion_control; `modprobe tcp_{name}` loads it)"
        ),
        Errno::PERM => format!(
            "`{name}` is not in net.ipv4.tcp_allowed_congestion_control and this process lacks CAP_NET_ADMIN (add it to that sysctl, or pass --upload-congestion-control system)"
        ),
        e => format!("setting `{name}` failed: {e}"),
    })
}

/// Set `name` on one socket.
pub fn set(socket: impl AsFd, name: &str) -> io::Result<()> {
    sockopt::set_tcp_congestion(socket, name).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_system_means_the_default() {
        let parse = |s: &str| s.parse::<CongestionControl>().map(|c| c.0);
        assert_eq!(parse("system"), Ok(None));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("cubic"), Ok(Some("cubic".into())));
        assert_eq!(parse("bbr"), Ok(Some("bbr".into())));
        for bad in ["Cubic", "cu bic", "../x", "averyveryverylongname"] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.contains("not a TCP congestion control name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn an_algorithm_the_kernel_lacks_is_named_with_the_fix() {
        // reno is built into every kernel and always allowed.
        assert_eq!(check("reno"), Ok(()));
        let e = check("nosuchcc").unwrap_err();
        assert!(e.contains("has no `nosuchcc`"), "{e}");
        assert!(e.contains("tcp_available_congestion_control"), "{e}");
    }

    /// The algorithm of the server's end of the connection to `port`, read with `ss`.
    fn server_side_algorithm(port: u16) -> String {
        let out = std::process::Command::new("ss")
            .args(["-tinH", "state", "established", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // `ss -i` prints the algorithm first on each socket's second line.
        let alg = text
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next());
        alg.unwrap_or_else(|| panic!("no server socket on port {port}: {text}"))
            .to_string()
    }

    /// Serves with `cc` and returns the algorithm the accepted connection got.
    async fn accepted_with(cc: Option<&str>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let limits = crate::server::ServerLimits {
            congestion_control: cc.map(str::to_owned),
            ..Default::default()
        };
        let server = tokio::spawn(crate::server::serve(
            listener,
            |_req, _conn| async {
                http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
            },
            limits,
            None,
            shutdown.clone(),
        ));
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        // One answered request: the server has accepted (and set up) the connection.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let alg = server_side_algorithm(port);
        shutdown.cancel();
        drop(client);
        server.await.unwrap();
        alg
    }

    #[tokio::test]
    async fn accepted_connections_get_the_configured_algorithm() {
        let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .unwrap()
            .trim()
            .to_string();
        // Something other than the default, that every kernel has and allows.
        let other = if default == "reno" { "cubic" } else { "reno" };
        assert_eq!(accepted_with(Some(other)).await, other);
        assert_eq!(accepted_with(None).await, default);
        // One the kernel lacks: the server warns and keeps the default.
        assert_eq!(accepted_with(Some("nosuchcc")).await, default);
    }
}
