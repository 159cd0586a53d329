# This node's settings: every step below uses them. Set them (or export them) first.
: "${NODE:=node-1}"           # its name: the certificates' CN and file names
: "${NODE_IP:=10.0.0.5}"      # the address other nodes reach it at
: "${ETC:=/etc/peermirror}"   # its certificates, keys and secrets
: "${CTD_CONFIG:=/etc/containerd/config.toml}"
: "${CTD_CONTENT:=/var/lib/containerd/io.containerd.content.v1.content}"
: "${CERTS_D:=/etc/containerd/certs.d}"   # containerd's registry config_path
: "${MIRROR:=https://127.0.0.1:5000}"     # where containerd reaches this node's mirror
: "${UPSTREAM:=https://docker.io}"        # an upstream registry (repeat --registry for more)
: "${BOOTSTRAP:=dns:peermirror.kube-system.svc.cluster.local:5001}"
: "${METRICS:=127.0.0.1:9090}"            # its --metrics-addr, as reached from the node
: "${IMAGE:=docker.io/library/busybox:1.36}"   # an image to check it with
