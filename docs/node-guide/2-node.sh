# On the node, as root: its files (copied from the CA machine: scp, or your config
# management), then containerd pointed at the mirror. --containerd-config finds the registry
# config_path and warns loudly when containerd would ignore the mirror ("containerd 1.7 and
# 2.x" below); containerd reads hosts.toml on every pull, no restart needed.
install -d -m 0700 "$ETC"
install -m 0644 pki/ca.crt pki/crl.pem "pki/$NODE.crt" "pki/containerd-$NODE.crt" "$ETC/"
install -m 0600 pki/swarm.key "pki/$NODE.key" "pki/containerd-$NODE.key" "$ETC/"
peermirror configure --containerd-config "$CTD_CONFIG" --mirror "$MIRROR" \
    --ca-file "$ETC/ca.crt" \
    --client-cert "$ETC/containerd-$NODE.crt" --client-key "$ETC/containerd-$NODE.key" \
    --registry "$UPSTREAM"
# (`peermirror configure --config-path "$CERTS_D" --restore` puts the previous files back.)
