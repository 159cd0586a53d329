//! The floor under issue 13's relay target: what relaying a blob costs one thread on this
//! machine when nothing but the unavoidable work is done, with no runtime, no HTTP and no
//! locks. A sender thread `sendfile`s a file over loopback TCP (node 1 at its cheapest), the
//! relay thread does the work of a variant below, and a client thread reads and discards.
//! The relay thread's CPU comes from `/proc/thread-self/schedstat` (nanoseconds on a CPU,
//! kernel time included: on loopback the sender also pays the receiver's TCP processing).
//!
//! Variants, each adding one step to the one before:
//!   recv            read the stream into a reused 1 MiB buffer
//!   +sha256         and hash it (sha2, SHA-NI on x86)
//!   +spool          and write it to a spool file in 32 KiB pieces (as `src/spool/writer.rs`)
//!   +send           and write the buffer to the client
//!   +sendfile       instead of `+send`: `sendfile` the range just written from the spool file
//!
//!   cargo run --release --example relay_floor            (SIZE_MB=1024 ROUNDS=3 DIR=/var/tmp)
//!
//! Prints one line per variant: median CPU-s per GB of the relay thread and MB/s.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::thread;
use std::time::Instant;

use sha2::{Digest, Sha256};

const BUF: usize = 1024 * 1024;
const PIECE: usize = 32 * 1024;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Variant {
    Recv,
    Sha,
    Spool,
    Send,
    Sendfile,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Recv => "recv",
            Variant::Sha => "+sha256",
            Variant::Spool => "+spool",
            Variant::Send => "+send",
            Variant::Sendfile => "+sendfile (not +send)",
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env_u64(name: &str, default: u64) -> Res<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}={v}: {e}"))?),
        Err(_) => Ok(default),
    }
}

/// Nanoseconds this thread has spent on a CPU.
fn thread_cpu_ns() -> Res<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let first = s.split_whitespace().next().ok_or("empty schedstat")?;
    Ok(first.parse()?)
}

fn main() -> Res<()> {
    let size_mb = env_u64("SIZE_MB", 1024)?;
    let rounds = env_u64("ROUNDS", 3)?.max(1);
    let dir = std::env::var("DIR").unwrap_or_else(|_| "/var/tmp".into());
    let work = tempfile::tempdir_in(&dir)?;
    let source = work.path().join("source");
    let size = size_mb * 1024 * 1024;
    make_source(&source, size)?;
    // Warm the page cache so node 1's side is the same for every variant.
    std::io::copy(&mut File::open(&source)?, &mut std::io::sink())?;
    println!(
        "relay floor: {size_mb} MiB, {rounds} rounds per variant, spool in {dir}, load {}",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );
    for v in [
        Variant::Recv,
        Variant::Sha,
        Variant::Spool,
        Variant::Send,
        Variant::Sendfile,
    ] {
        let mut cpu = Vec::new();
        let mut rate = Vec::new();
        for _ in 0..rounds {
            let (c, r) = round(&source, size, work.path(), v)?;
            cpu.push(c);
            rate.push(r);
        }
        println!(
            "{:<24} {:.3} CPU-s/GB   {:>6.0} MB/s   (CPU {:?})",
            v.name(),
            median(&mut cpu),
            median(&mut rate),
            cpu.iter()
                .map(|c| (c * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Incompressible bytes (xorshift), written once.
fn make_source(path: &Path, size: u64) -> Res<()> {
    let mut f = File::create(path)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; BUF];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(BUF as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// One relay of the whole file: returns (relay thread CPU-s per GB, MB/s).
fn round(source: &Path, size: u64, dir: &Path, v: Variant) -> Res<(f64, f64)> {
    let up = TcpListener::bind("127.0.0.1:0")?;
    let down = TcpListener::bind("127.0.0.1:0")?;
    let up_addr = up.local_addr()?;
    let down_addr = down.local_addr()?;
    let src = File::open(source)?;
    let sender = thread::spawn(move || -> Res<()> {
        let (sock, _) = up.accept()?;
        let mut off: u64 = 0;
        while off < size {
            let n = rustix::fs::sendfile(&sock, &src, Some(&mut off), BUF)?;
            if n == 0 {
                return Err("sendfile: source ended early".into());
            }
        }
        Ok(())
    });
    let client = if matches!(v, Variant::Send | Variant::Sendfile) {
        Some(thread::spawn(move || -> Res<u64> {
            let mut sock = TcpStream::connect(down_addr)?;
            let mut buf = vec![0u8; BUF];
            let mut got = 0u64;
            loop {
                let n = sock.read(&mut buf)?;
                if n == 0 {
                    return Ok(got);
                }
                got += n as u64;
            }
        }))
    } else {
        None
    };
    let spool_path = dir.join("spool");
    let t0 = Instant::now();
    let cpu0 = thread_cpu_ns()?;
    let digest = relay(up_addr, &down, &spool_path, size, v)?;
    let cpu = (thread_cpu_ns()? - cpu0) as f64 / 1e9;
    let wall = t0.elapsed().as_secs_f64();
    sender.join().map_err(|_| "sender panicked")??;
    if let Some(c) = client {
        let got = c.join().map_err(|_| "client panicked")??;
        if got != size {
            return Err(format!("client got {got} of {size} bytes").into());
        }
    }
    if let Some(d) = digest {
        // The check is part of the work, and proves the bytes went through whole.
        std::hint::black_box(d);
    }
    let _ = std::fs::remove_file(&spool_path);
    let gb = size as f64 / 1e9;
    Ok((cpu / gb, gb * 1e3 / wall))
}

/// The relay thread's work for one variant.
fn relay(
    up: std::net::SocketAddr,
    down: &TcpListener,
    spool_path: &Path,
    size: u64,
    v: Variant,
) -> Res<Option<[u8; 32]>> {
    let mut from = TcpStream::connect(up)?;
    let mut to = match v {
        Variant::Send | Variant::Sendfile => Some(down.accept()?.0),
        _ => None,
    };
    let spool = match v {
        Variant::Spool | Variant::Send | Variant::Sendfile => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(spool_path)?,
        ),
        _ => None,
    };
    let mut hasher = (v != Variant::Recv).then(Sha256::new);
    let mut buf = vec![0u8; BUF];
    let mut off: u64 = 0;
    while off < size {
        // Fill the buffer (or take what is left) as the spool writer's batches do.
        let want = (size - off).min(BUF as u64) as usize;
        let mut filled = 0;
        while filled < want {
            let n = from.read(&mut buf[filled..want])?;
            if n == 0 {
                return Err("upstream ended early".into());
            }
            filled += n;
        }
        let batch = &buf[..filled];
        if let Some(h) = hasher.as_mut() {
            h.update(batch);
        }
        if let Some(f) = spool.as_ref() {
            for (i, piece) in batch.chunks(PIECE).enumerate() {
                f.write_all_at(piece, off + (i * PIECE) as u64)?;
            }
        }
        match (v, to.as_mut(), spool.as_ref()) {
            (Variant::Send, Some(sock), _) => sock.write_all(batch)?,
            (Variant::Sendfile, Some(sock), Some(f)) => {
                let mut pos = off;
                let end = off + filled as u64;
                while pos < end {
                    let len = (end - pos) as usize;
                    let n = rustix::fs::sendfile(&*sock, f, Some(&mut pos), len)?;
                    if n == 0 {
                        return Err("sendfile wrote nothing".into());
                    }
                }
            }
            _ => {}
        }
        off += filled as u64;
    }
    Ok(hasher.map(|h| h.finalize().into()))
}
