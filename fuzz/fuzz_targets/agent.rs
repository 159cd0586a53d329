//! The identify agent-string parser (`routing::parse_agent_registry`): a peer's
//! `peermirror/<ver> registry=[IP]:PORT` gives its registry endpoint. Input: one byte choosing
//! the connection's IP (or none), then the agent string.
//! Properties: no panic; no endpoint without a connection IP; the endpoint's IP is always the
//! connection's, never the announced one; the port round-trips through the daemon's own format.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use peermirror::routing::parse_agent_registry;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(agent) = std::str::from_utf8(rest) else {
        return;
    };
    let conn_ip = match pick % 4 {
        0 => None,
        1 => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        2 => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
    };
    let got = parse_agent_registry(agent, conn_ip);
    let Some(conn) = conn_ip else {
        assert_eq!(got, None, "{agent:?}: an endpoint without a connection IP");
        return;
    };
    if let Some(addr) = got {
        assert_eq!(addr.ip(), conn, "{agent:?}: the announced IP was used");
        // What agent_version writes, with and without an IP, gives the same endpoint.
        for ip in ["", "192.0.2.1", "[2001:db8::1]"] {
            let ours = format!("peermirror/0.1.0 registry={ip}:{}", addr.port());
            assert_eq!(parse_agent_registry(&ours, conn_ip), Some(addr), "{ours:?}");
        }
    }
    let port = u16::from(pick) << 8 | rest.len() as u16;
    let ours = format!("peermirror/0.1.0 registry=:{port}");
    assert_eq!(
        parse_agent_registry(&ours, conn_ip),
        Some(SocketAddr::new(conn, port))
    );
});
