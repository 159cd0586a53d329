#!/usr/bin/env python3
"""The chain of a rollout from `bench/rollout.sh`'s node logs (run it with ROLLOUT_LOGS=1).

    ROLLOUT_LOGS=1 bash bench/rollout.sh > run.log 2>&1; python3 bench/rollout_chain.py run.log

Per run, per node, in the order their containerd began the layer's ingest: whether it was the
node that fetched from the upstream (FIRST) or followed a peer, when its ingest began and ended
(seconds after the first began), and whom it fed (the node whose address fetched the layer
from it, the answer's source, and how long that response took). A first node that ends at the
lone pull's time while its follower ends seconds later has lost them on the first hop; a chain
whose nodes all end late lost them at the head.
"""
import collections
import re
import sys
from datetime import datetime

LINE = re.compile(r"\[(run\d+)\] node(\d+): (\S+Z) (.*)")
STARTED = re.compile(r"Started \{ digest: Digest\((sha256:\w+)\), total: Some\((\d+)\)")


def when(stamp):
    return datetime.strptime(stamp[:26], "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def main(path):
    runs = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in open(path, errors="replace"):
        m = LINE.match(line.rstrip("\n"))
        if m:
            runs[m.group(1)][int(m.group(2))].append((m.group(3), m.group(4)))
    for run, nodes in sorted(runs.items()):
        # The rollout's layer: the last blob over 1 MB whose ingest began (the lone pull's
        # layer began earlier, on node 1 only).
        layer = None
        for lines in nodes.values():
            for _, msg in lines:
                m = STARTED.search(msg)
                if m and int(m.group(2)) > 1_000_000:
                    layer = m.group(1)
        if layer is None:
            continue
        served = re.compile(
            r"method=GET path=\S+" + layer[7:] + r" remote=\d+\.\d+\.\d+\.(\d+):\d+ .*status=200 "
            r'source="(\w+)" bytes=(\d+).*duration_ms=([\d.]+)'
        )
        info = {}
        for n, lines in nodes.items():
            d = {"role": "?", "feeds": []}
            for stamp, msg in lines:
                if layer not in msg:
                    continue
                if "ingest event=Started" in msg:
                    d["start"] = when(stamp)
                elif "ingest event=Ended" in msg:
                    d["end"] = when(stamp)
                elif "fetches from the upstream" in msg:
                    d["role"] = "FIRST"
                elif "rollout: following" in msg:
                    d["role"] = "follow"
                m = served.search(msg)
                # Node i has address .10+i (tests/common/netns.rs); its own containerd is local.
                if m and int(m.group(3)) > 1_000_000 and int(m.group(1)) != 10 + n:
                    d["feeds"].append(f"node{int(m.group(1)) - 10} ({m.group(2)}, {float(m.group(4)) / 1000:.2f} s)")
            info[n] = d
        starts = [d["start"] for d in info.values() if "start" in d]
        if not starts:
            continue
        t0 = min(starts)
        print(f"{run} layer {layer[:19]}")
        for n in sorted(info, key=lambda n: info[n].get("start", float("inf"))):
            d = info[n]
            start = f"+{d['start'] - t0:6.2f}" if "start" in d else "     ?"
            end = f"+{d['end'] - t0:6.2f}" if "end" in d else "     ?"
            print(f"  node{n:<3} {d['role']:6} start {start}  end {end}  feeds {', '.join(d['feeds']) or '-'}")


if __name__ == "__main__":
    main(sys.argv[1])
