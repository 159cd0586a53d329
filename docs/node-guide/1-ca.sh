# On the machine that keeps the cluster CA (not a node), once: the CA, its CRL and the
# DHT's private-network key. `pki/` (ca.key above all) stays on this machine.
peermirror certs init-ca          # pki/ca.crt, pki/ca.key, pki/crl.pem (valid 7 days: step 5)
(umask 077 && printf '/key/swarm/psk/1.0.0/\n/base16/\n%s\n' "$(openssl rand -hex 32)" > pki/swarm.key)
