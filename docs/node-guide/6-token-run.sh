# ...and the daemon in token mode (peers' server certificates checked with --tls-peer-ca):
peermirror run --auth-mode token --token-file "$ETC/tokens" --hosts-dir "$CERTS_D" \
    --containerd-config "$CTD_CONFIG" --containerd-content-dir "$CTD_CONTENT" \
    --tls-cert "$ETC/$NODE.crt" --tls-key "$ETC/$NODE.key" \
    --tls-peer-ca "$ETC/ca.crt" --tls-crl "$ETC/crl.pem" \
    --p2p-psk-file "$ETC/swarm.key" \
    --advertise-addr "$NODE_IP" --bootstrap "$BOOTSTRAP"
