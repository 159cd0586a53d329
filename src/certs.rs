//! `peermirror certs`: a small cluster CA with rcgen (being written).
