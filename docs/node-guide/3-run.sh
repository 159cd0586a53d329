# Run the daemon (as a systemd unit, or the chart's DaemonSet; mTLS is the default
# --auth-mode). It logs to stderr, one `audit` line per request.
peermirror run --containerd-config "$CTD_CONFIG" --containerd-content-dir "$CTD_CONTENT" \
    --tls-cert "$ETC/$NODE.crt" --tls-key "$ETC/$NODE.key" \
    --tls-client-ca "$ETC/ca.crt" --tls-crl "$ETC/crl.pem" \
    --p2p-psk-file "$ETC/swarm.key" \
    --advertise-addr "$NODE_IP" --bootstrap "$BOOTSTRAP"
