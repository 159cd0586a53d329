# Token mode instead of mTLS: containerd and peers send `Authorization: Bearer`. TLS stays on
# so the token never crosses the network in clear text, and peers' servers are still checked
# with --tls-peer-ca (so tags resolve through peers, as under mTLS). Do not pass
# --tls-client-ca here: it would demand client certificates, from containerd too.
# --hosts-dir lets the daemon write the token into containerd's hosts.toml (and rewrite it
# when the file changes), so `configure` needs no --token-file.
# TOKEN=$(openssl rand -hex 32), made once: the same token on every node.
(umask 077 && echo "$TOKEN" > "$ETC/tokens")
peermirror configure --containerd-config "$CTD_CONFIG" --mirror "$MIRROR" \
    --ca-file "$ETC/ca.crt" --registry "$UPSTREAM"
