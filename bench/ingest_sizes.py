#!/usr/bin/env python3
"""How each node's containerd ingest grows during a `bench/rollout.sh` run.

    python3 bench/ingest_sizes.py 120 > sizes.txt &   # then start bench/rollout.sh
    python3 bench/ingest_sizes.py --show sizes.txt

Sampling: every 50 ms, the size of every `ingest/*/data` file of the test's containerds
(/tmp/pm-e2e-ctd-<node>-*/root/...), one line "unix-time node ref-tail size". `--show` prints,
per node and blob over 10 MB, its size in MB every 0.5 s (seconds after the first sample). The
first node's line shows how its own upstream download fills the file (containerd 2.1's chunked
fetch: in bursts); a follower's shows what reached it.
"""
import collections
import glob
import os
import sys
import time


def sample(seconds):
    end = time.time() + seconds
    dirs, scanned = [], 0.0
    while time.time() < end:
        now = time.time()
        if now - scanned > 0.5:
            dirs = glob.glob("/tmp/pm-e2e-ctd-*/root/io.containerd.content.v1.content/ingest/*")
            scanned = now
        for d in dirs:
            try:
                with open(os.path.join(d, "ref")) as f:
                    ref = f.read().strip()[-20:]
                size = os.stat(os.path.join(d, "data")).st_size
            except OSError:
                continue
            node = d.split("/")[2].split("-")[3]
            print(f"{now:.3f} {node} {ref} {size}", flush=True)
        time.sleep(0.05)


def show(path):
    rows = [line.split() for line in open(path) if len(line.split()) == 4]
    if not rows:
        return
    t0 = min(float(r[0]) for r in rows)
    series = collections.defaultdict(list)
    for t, node, ref, size in rows:
        series[(node, ref)].append((float(t), int(size)))
    for (node, ref), points in sorted(series.items(), key=lambda kv: kv[1][0][0]):
        if max(s for _, s in points) < 10_000_000:
            continue
        out, due = [], points[0][0]
        for t, s in points:
            if t >= due:
                out.append(f"{t - t0:.1f}:{s / 1e6:.0f}")
                due += 0.5
        print(node, ref, " ".join(out))


if __name__ == "__main__":
    if sys.argv[1] == "--show":
        show(sys.argv[2])
    else:
        sample(float(sys.argv[1]))
