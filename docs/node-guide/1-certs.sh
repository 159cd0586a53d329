# Then, for each node: its serving certificate (pki/$NODE.crt; it names $NODE_IP and also
# 127.0.0.1 and ::1, where the node's containerd reaches its mirror) and its containerd's
# client certificate (pki/containerd-$NODE.crt, client use only).
peermirror certs issue --name "$NODE" --ip "$NODE_IP"
peermirror certs issue --name "containerd-$NODE"
