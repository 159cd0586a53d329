#!/usr/bin/env python3
"""A TCP proxy whose upstream->client direction is capped by ONE token bucket shared by every
connection: the upstream's total egress is limited, like a WAN link in front of a registry.

    throttle_proxy.py --listen 127.0.0.1:0 --upstream 127.0.0.1:PORT --rate BYTES_PER_SEC \
        --port-file F [--stats-file S] [--only NEEDLE]

Writes its bound port to F (atomically) once listening. Counts bytes each way, per connection
and in total; for HTTP/1.1 it also notes the request lines (method and path) seen on each
connection, so a test can tell which connections fetched a given blob. Prints one JSON line per
connection closed on stdout; writes the totals to S (JSON, atomically) every 200 ms and on
SIGTERM/SIGINT, then exits. With --only, the cap applies only to connections whose client bytes
contained NEEDLE (a digest, say): the others pass at full speed. Python 3 standard library only. Listens and connects on the given
addresses only (the tests and benches use 127.0.0.1).
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time

CHUNK = 64 * 1024


class Bucket:
    """Shared rate limit by virtual finish time: each chunk reserves n/rate seconds of the
    link after the previous reservation (FIFO, so concurrent connections share fairly);
    up to `burst` seconds of unused link time may be caught up."""

    def __init__(self, rate, burst=0.05):
        self.rate = float(rate)
        self.burst = burst
        self.next_free = time.monotonic()

    async def take(self, n):
        if self.rate <= 0:
            return
        now = time.monotonic()
        start = max(self.next_free, now - self.burst)
        self.next_free = start + n / self.rate
        delay = self.next_free - now
        if delay > 0:
            await asyncio.sleep(delay)


class Stats:
    def __init__(self, path):
        self.path = path
        self.up_bytes = 0  # client -> upstream
        self.down_bytes = 0  # upstream -> client
        self.connections = 0
        self.open = 0
        self.closed = []  # per-connection records

    def snapshot(self):
        return {
            "bytes_to_upstream": self.up_bytes,
            "bytes_from_upstream": self.down_bytes,
            "connections": self.connections,
            "open": self.open,
            "closed": self.closed,
        }

    def write(self):
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f)
        os.replace(tmp, self.path)


def request_lines(data, carry):
    """HTTP request lines ("GET /v2/... ") in client bytes; `carry` is the unfinished tail."""
    buf = carry + data
    lines = buf.split(b"\r\n")
    found = []
    for line in lines[:-1]:
        parts = line.split(b" ")
        if len(parts) == 3 and parts[2].startswith(b"HTTP/") and parts[0].isalpha():
            found.append(f"{parts[0].decode('latin-1')} {parts[1].decode('latin-1')}")
    return found, lines[-1][-4096:]


async def pipe(reader, writer, on_chunk, bucket=None, capped=lambda: True):
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            if bucket is not None and capped():
                await bucket.take(len(data))
            on_chunk(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def handle(client_r, client_w, upstream, bucket, stats, only):
    stats.connections += 1
    stats.open += 1
    conn = {"id": stats.connections, "requests": [], "up": 0, "down": 0, "start": time.time()}
    host, port = upstream
    try:
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, asyncio.TimeoutError) as e:
        conn["error"] = str(e)
        client_w.close()
        stats.open -= 1
        return
    carry = [b""]
    capped = [only is None]

    def on_up(data):
        stats.up_bytes += len(data)
        conn["up"] += len(data)
        if only is not None and only in carry[0] + data:
            capped[0] = True
        found, carry[0] = request_lines(data, carry[0])
        conn["requests"].extend(found)

    def on_down(data):
        stats.down_bytes += len(data)
        conn["down"] += len(data)

    t1 = asyncio.ensure_future(pipe(client_r, up_w, on_up))
    t2 = asyncio.ensure_future(pipe(up_r, client_w, on_down, bucket, lambda: capped[0]))
    # The response direction ends the connection: when the upstream is done (or the client
    # went away and the upstream write failed), close both.
    await asyncio.wait([t1, t2], return_when=asyncio.FIRST_COMPLETED)
    if not t2.done():
        # The client closed its side: give the upstream's answer a moment, then stop.
        try:
            await asyncio.wait_for(asyncio.shield(t2), 1.0)
        except asyncio.TimeoutError:
            t2.cancel()
    t1.cancel()
    for w in (client_w, up_w):
        try:
            w.close()
        except OSError:
            pass
    stats.open -= 1
    conn["seconds"] = round(time.time() - conn["start"], 3)
    del conn["start"]
    stats.closed.append(conn)
    print(json.dumps(conn), flush=True)


def addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--upstream", required=True)
    p.add_argument(
        "--rate", type=float, required=True, help="bytes/s upstream->client, all connections (0: no cap)"
    )
    p.add_argument("--port-file", required=True)
    p.add_argument("--stats-file")
    p.add_argument("--only", help="cap only connections whose requests contain this text")
    a = p.parse_args()
    only = a.only.encode("latin-1") if a.only else None

    bucket = Bucket(a.rate)
    stats = Stats(a.stats_file)
    upstream = addr(a.upstream)
    lhost, lport = addr(a.listen)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, bucket, stats, only), lhost, lport, limit=CHUNK
    )
    port = server.sockets[0].getsockname()[1]
    tmp = f"{a.port_file}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, a.port_file)
    stats.write()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
        stats.write()
    server.close()
    stats.write()
    print(json.dumps({k: v for k, v in stats.snapshot().items() if k != "closed"}), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
