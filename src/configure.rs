//! `peermirror configure`: writes containerd `hosts.toml` files naming this node's mirror.
//! (Being written.)
