# Check it works. `ctr` reads hosts.toml only with --hosts-dir (without it, it never asks the
# mirror); kubelet's pulls (CRI) read containerd's config_path themselves.
ctr -n k8s.io images pull --hosts-dir "$CERTS_D" "$IMAGE"
peermirror status     # `ready yes`, peers >= 1, and no WARNING row (exit code 0; 3: not ready)
# Where the bytes came from: each request's audit line in the daemon's log says
# `source="peer"` (another node), `"local"` (this node's containerd) or `"miss"` (404:
# containerd went to the upstream); the same, summed, in the metrics:
curl -s "http://$METRICS/metrics" | grep '^peermirror_response_bytes_total'
