//! PEM armour for what `certs` writes.

/// PEM-armours `der` under `label` (64-column base64, as openssl and rcgen write it).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

    use super::*;

    #[test]
    fn to_pem_matches_base64_vectors_and_reads_back() {
        // RFC 4648 test vectors, through the PEM reader.
        for (input, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            let pem = to_pem("X509 CRL", input);
            assert!(pem.contains(&format!("\n{b64}")), "{pem}");
            if !input.is_empty() {
                let back = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
                assert_eq!(back.as_ref(), input);
            }
        }
        let long: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = to_pem("CERTIFICATE", &long);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), &long[..]);
    }
}
