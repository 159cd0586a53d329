# The CRL: `init-ca`, `revoke` and `crl` write one that lasts 7 days (--next-update). Once it
# lapses, the default --crl-expired deny refuses EVERY connection, so on the CA machine
# re-sign it well before (weekly, from cron) and copy it to every node, which reload it
# within seconds. `peermirror_crl_next_update_seconds` says how long it has left (the
# chart's PeermirrorCRLExpiringSoon alert fires on it; `peermirror status` shows it).
peermirror certs crl --next-update 7d
install -m 0644 pki/crl.pem "$ETC/crl.pem"          # on each node
# Revoking a node: `peermirror certs revoke --name NODE`, then copy crl.pem the same way.
