//! Who may use the registry endpoint: the auth mode, bearer tokens, and the throttle for
//! clients that keep failing. Decided before any containerd, DHT or peer work.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use subtle::ConstantTimeEq;

use crate::pki::Serial;
use crate::server::{ClientCert, ConnInfo};
use crate::sync::{MutexExt, RwLockExt};
use crate::token::SigningKey;

/// How clients prove who they are.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Client certificates from the cluster CA (`--tls-client-ca`).
    Mtls,
    /// `Authorization: Bearer <token>` from `--token-file`.
    Token,
    /// Both.
    #[value(name = "mtls+token")]
    MtlsToken,
    /// Nobody is checked; needs `--insecure-no-auth`.
    None,
}

impl AuthMode {
    pub fn needs_token(self) -> bool {
        matches!(self, AuthMode::Token | AuthMode::MtlsToken)
    }

    pub fn needs_client_cert(self) -> bool {
        matches!(self, AuthMode::Mtls | AuthMode::MtlsToken)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Mtls => "mtls",
            AuthMode::Token => "token",
            AuthMode::MtlsToken => "mtls+token",
            AuthMode::None => "none",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read --token-file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("--token-file {path} holds no token: put one token per line")]
    NoTokens { path: String },
}

/// The accepted tokens: one per line of the token file (several lines let a rotation overlap),
/// and, with a signing key, any token it signed that has not expired.
pub struct Tokens {
    path: Option<PathBuf>,
    tokens: RwLock<Arc<Vec<Token>>>,
    signing: Option<Signing>,
}

/// The signing key and how this node mints its own tokens with it.
struct Signing {
    key: Arc<SigningKey>,
    ttl: Duration,
    /// The subject of the tokens this node mints (`<role>@<name>`).
    name: String,
    /// The last token minted for peer requests, reused for half its lifetime.
    peer: Mutex<Option<(String, Instant)>>,
}

/// One accepted token: kept for sending to peers, compared by its SHA-256 hash.
struct Token {
    text: Vec<u8>,
    hash: [u8; 32],
    id: TokenId,
}

fn token_hash(t: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(t).into()
}

/// What a node tells an authenticated peer about a token it accepts: 8 bytes of a SHA-256
/// of the token under a label of its own (not the hash tokens are compared by), enough to
/// tell lines apart and useless for finding the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenId([u8; 8]);

impl TokenId {
    fn of(token: &[u8]) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"peermirror token id\0");
        h.update(token);
        let d: [u8; 32] = h.finalize().into();
        let mut id = [0; 8];
        id.copy_from_slice(&d[..8]);
        TokenId(id)
    }

    /// The ids of an [`ACCEPTED_TOKENS`] header value (bounded: a peer's header is input);
    /// anything unparsable is left out.
    ///
    /// [`ACCEPTED_TOKENS`]: crate::oci::headers::ACCEPTED_TOKENS
    pub fn parse_list(value: &str) -> Vec<TokenId> {
        value
            .split(',')
            .take(MAX_ACCEPTED_IDS)
            .filter_map(|s| {
                let s = s.trim();
                let mut id = [0u8; 8];
                if s.len() != 16 {
                    return None;
                }
                for (i, b) in id.iter_mut().enumerate() {
                    *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(TokenId(id))
            })
            .collect()
    }
}

/// Token lines a peer's header is read for: far more than a rotation overlap needs.
const MAX_ACCEPTED_IDS: usize = 64;

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Tokens {
    /// Static tokens only.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let tokens = read_tokens(path)?;
        Ok(Tokens {
            path: Some(path.to_path_buf()),
            tokens: RwLock::new(Arc::new(tokens)),
            signing: None,
        })
    }

    /// Static tokens from `path` (when given) and signed ones under `key` (when given); this
    /// node's own tokens are minted for `ttl` with subjects `containerd@<name>`, `peer@<name>`.
    pub fn new(
        path: Option<&Path>,
        key: Option<Arc<SigningKey>>,
        ttl: Duration,
        name: &str,
    ) -> Result<Self, AuthError> {
        let tokens = path.map(read_tokens).transpose()?.unwrap_or_default();
        Ok(Tokens {
            path: path.map(Path::to_path_buf),
            tokens: RwLock::new(Arc::new(tokens)),
            signing: key.map(|key| Signing {
                key,
                ttl,
                name: name.to_owned(),
                peer: Mutex::new(None),
            }),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn signing_key(&self) -> Option<&Arc<SigningKey>> {
        self.signing.as_ref().map(|s| &s.key)
    }

    /// How long this node's minted tokens live, when it mints them.
    pub fn minted_ttl(&self) -> Option<Duration> {
        self.signing.as_ref().map(|s| s.ttl)
    }

    /// Re-read the file; on any problem the old tokens stay in force.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let fresh = read_tokens(path)?;
        let n = fresh.len();
        *self.tokens.writing() = Arc::new(fresh);
        Ok(n)
    }

    /// The subject of a well-signed, unexpired token (never a static one).
    pub fn verify_signed(&self, presented: &[u8]) -> Option<String> {
        self.signing
            .as_ref()
            .and_then(|s| s.key.verify(presented))
            .map(|c| c.sub)
    }

    /// The token for this node's containerd (written into hosts.toml): a freshly minted one
    /// with a signing key, else the first static line.
    pub fn for_containerd(&self) -> Option<String> {
        match &self.signing {
            Some(s) => match s.key.mint(&format!("containerd@{}", s.name), s.ttl) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot mint a token for containerd");
                    self.first()
                }
            },
            None => self.first(),
        }
    }

    /// The token this node sends to a peer: a minted one (reused for half its lifetime) with
    /// a signing key, else a static line: the first (newest) one the peer is known to accept
    /// (`accepted`, from its answers), and to a peer not known yet the last line, the oldest,
    /// which a node not yet rotated still holds. So a rotation never gets a 401 from a peer:
    /// put the new token first on every node, then drop the old line (see the README).
    pub fn for_peer(&self, accepted: Option<&[TokenId]>) -> Option<String> {
        let Some(s) = &self.signing else {
            return self.static_for_peer(accepted);
        };
        let mut cached = s.peer.locked();
        if let Some((t, at)) = cached.as_ref()
            && at.elapsed() < s.ttl / 2
        {
            return Some(t.clone());
        }
        match s.key.mint(&format!("peer@{}", s.name), s.ttl) {
            Ok(t) => {
                *cached = Some((t.clone(), Instant::now()));
                Some(t)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot mint a token for peer requests");
                self.static_for_peer(accepted)
            }
        }
    }

    fn static_for_peer(&self, accepted: Option<&[TokenId]>) -> Option<String> {
        let tokens = self.tokens.reading().clone();
        let newest_shared = accepted.and_then(|ids| tokens.iter().find(|t| ids.contains(&t.id)));
        newest_shared
            .or(tokens.last())
            .and_then(|t| String::from_utf8(t.text.clone()).ok())
    }

    /// The id of the first (newest) static line.
    pub fn first_id(&self) -> Option<TokenId> {
        self.tokens.reading().first().map(|t| t.id)
    }

    /// The ids of the static lines, in order, for the [`ACCEPTED_TOKENS`] header.
    ///
    /// [`ACCEPTED_TOKENS`]: crate::oci::headers::ACCEPTED_TOKENS
    pub fn accepted_ids(&self) -> String {
        let tokens = self.tokens.reading().clone();
        let ids: Vec<String> = tokens.iter().map(|t| t.id.to_string()).collect();
        ids.join(",")
    }

    /// Forget the cached peer token (the key changed).
    pub fn forget_minted(&self) {
        if let Some(s) = &self.signing {
            *s.peer.locked() = None;
        }
    }

    /// The first (newest) static line: what this node's containerd is handed.
    pub fn first(&self) -> Option<String> {
        let t = self.tokens.reading().clone();
        t.first()
            .and_then(|b| String::from_utf8(b.text.clone()).ok())
    }

    /// Which line (1-based) matches `presented`. Fixed-size hashes of both sides are compared,
    /// every one in constant time, so the timing tells neither which line matched, nor how
    /// much of one, nor how long a token is.
    pub fn check(&self, presented: &[u8]) -> Option<usize> {
        let tokens = self.tokens.reading().clone();
        let presented = token_hash(presented);
        let mut found = None;
        for (i, t) in tokens.iter().enumerate() {
            if bool::from(t.hash.ct_eq(&presented)) && found.is_none() {
                found = Some(i + 1);
            }
        }
        found
    }
}

fn read_tokens(path: &Path) -> Result<Vec<Token>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::TokenFile {
        path: path.display().to_string(),
        source,
    })?;
    let tokens: Vec<Token> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Token {
            text: l.as_bytes().to_vec(),
            hash: token_hash(l.as_bytes()),
            id: TokenId::of(l.as_bytes()),
        })
        .collect();
    if tokens.is_empty() {
        return Err(AuthError::NoTokens {
            path: path.display().to_string(),
        });
    }
    Ok(tokens)
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MissingToken,
    WrongToken,
    NoClientCert,
    /// The certificate of an already established connection has since been revoked.
    Revoked,
    /// The CRL in force is past its nextUpdate and `--crl-expired deny` is set: no
    /// certificate's status is known.
    CrlExpired,
    /// Too many failures from this address lately: 429.
    Throttled,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::WrongToken => "wrong_token",
            Refusal::NoClientCert => "no_certificate",
            Refusal::Revoked => "revoked",
            Refusal::CrlExpired => "expired_crl",
            Refusal::Throttled => "throttled",
        }
    }
}

/// Counts recent failures per address and slows down those with too many.
pub struct FailureThrottle {
    window: Duration,
    max_failures: u32,
    state: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Bound on remembered addresses, so a flood of sources cannot grow the map without limit.
const MAX_TRACKED: usize = 10_000;

impl FailureThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        FailureThrottle {
            window,
            max_failures,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// How long a throttled address waits (what `Retry-After` says).
    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn is_throttled(&self, ip: IpAddr) -> bool {
        let map = self.state.locked();
        map.get(&ip)
            .is_some_and(|(n, since)| *n >= self.max_failures && since.elapsed() < self.window)
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut map = self.state.locked();
        if map.len() >= MAX_TRACKED {
            let window = self.window;
            map.retain(|_, (_, since)| since.elapsed() < window);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

/// Answers whether a certificate serial may be served now: `Some` refusal when it is revoked,
/// or when its status is unknown under a fail-closed policy.
pub type RevocationCheck = Arc<dyn Fn(&Serial) -> Option<Refusal> + Send + Sync>;

/// The registry endpoint's gatekeeper.
pub struct Guard {
    pub mode: AuthMode,
    pub tokens: Option<Arc<Tokens>>,
    pub throttle: FailureThrottle,
    /// Tells whether a client certificate serial is revoked now (the current CRLs).
    pub revocation: Option<RevocationCheck>,
}

/// Who a request was accepted as, for the audit log (never the token itself). Displays as
/// `cert:<subject> serial=<hex> token:line<n>` (or `token:sub=<subject>` for a signed token),
/// or `anonymous`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The verified client certificate, on an mTLS connection.
    pub cert: Option<ClientCert>,
    /// Which line of the token file matched (1-based), when a token was checked.
    pub token_line: Option<usize>,
    /// The subject of the signed token, when one was accepted.
    pub token_subject: Option<String>,
}

impl Identity {
    fn of(conn: &ConnInfo, token_line: Option<usize>, token_subject: Option<String>) -> Self {
        Identity {
            cert: conn.client_cert.clone(),
            token_line,
            token_subject,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(c) = &self.cert {
            write!(f, "cert:{} serial=", c.subject)?;
            if let Some(serial) = &c.serial {
                write!(f, "{serial}")?;
            }
            sep = " ";
        }
        if let Some(l) = self.token_line {
            write!(f, "{sep}token:line{l}")?;
        }
        if let Some(s) = &self.token_subject {
            write!(f, "{sep}token:sub={s}")?;
        }
        if self.cert.is_none() && self.token_line.is_none() && self.token_subject.is_none() {
            f.write_str("anonymous")?;
        }
        Ok(())
    }
}

impl Guard {
    pub fn open() -> Self {
        Guard {
            mode: AuthMode::None,
            tokens: None,
            throttle: FailureThrottle::new(10, Duration::from_secs(60)),
            revocation: None,
        }
    }

    /// Accept or refuse a request from its headers and connection; returns the identity.
    pub fn check(&self, headers: &http::HeaderMap, conn: &ConnInfo) -> Result<Identity, Refusal> {
        if self.mode == AuthMode::None {
            return Ok(Identity::of(conn, None, None));
        }
        let ip = conn.remote.ip();
        // Loopback is where containerd itself connects from: throttling it would let any local
        // process push the node's pulls to the upstream, so only remote sources are slowed.
        let throttled = !ip.is_loopback();
        if throttled && self.throttle.is_throttled(ip) {
            return Err(Refusal::Throttled);
        }
        let result = self.decide(headers, conn);
        if result.is_err() && throttled {
            self.throttle.record_failure(ip);
        }
        result
    }

    fn decide(&self, headers: &http::HeaderMap, conn: &ConnInfo) -> Result<Identity, Refusal> {
        if self.mode.needs_client_cert() && conn.client_cert.is_none() {
            return Err(Refusal::NoClientCert);
        }
        if let (Some(serial), Some(check)) = (
            conn.client_cert.as_ref().and_then(|c| c.serial.as_ref()),
            &self.revocation,
        ) && let Some(refusal) = check(serial)
        {
            return Err(refusal);
        }
        let (mut line, mut subject) = (None, None);
        if self.mode.needs_token() {
            let presented = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| bearer_token(v.as_bytes()))
                .ok_or(Refusal::MissingToken)?;
            let tokens = self.tokens.as_ref().ok_or(Refusal::WrongToken)?;
            // Static tokens first, every line compared in constant time; then the signature.
            line = tokens.check(presented);
            if line.is_none() {
                subject = Some(tokens.verify_signed(presented).ok_or(Refusal::WrongToken)?);
            }
        }
        Ok(Identity::of(conn, line, subject))
    }
}

/// The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive
/// (RFC 9110 section 11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(cert: bool) -> ConnInfo {
        ConnInfo {
            remote: "10.0.0.9:1234".parse().unwrap(),
            client_cert: cert.then(|| ClientCert {
                subject: "CN=node1".into(),
                serial: Some(Serial::from_be_bytes(&[0x0a])),
            }),
        }
    }

    fn bearer(t: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn tokens_rotate_with_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "# comment\nold-token\n\nnew-token\n").unwrap();
        let t = Tokens::load(&f).unwrap();
        assert_eq!(t.check(b"old-token"), Some(1));
        assert_eq!(t.check(b"new-token"), Some(2));
        assert_eq!(t.check(b"new-toke"), None);
        assert_eq!(t.first().as_deref(), Some("old-token"));
        std::fs::write(&f, "new-token\n").unwrap();
        assert_eq!(t.reload().unwrap(), 1);
        assert_eq!(t.check(b"old-token"), None);
        // A broken rewrite keeps the old tokens.
        std::fs::write(&f, "\n\n").unwrap();
        assert!(t.reload().is_err());
        assert_eq!(t.check(b"new-token"), Some(1));
    }

    /// A rotation: the new token first on this node. A peer known to accept it gets it; a
    /// peer known to hold only the old one, or not known yet, gets the old (last) line.
    #[test]
    fn peers_get_the_newest_token_they_accept() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "new-token\nold-token\n").unwrap();
        let t = Tokens::load(&f).unwrap();
        let ids = TokenId::parse_list(&t.accepted_ids());
        assert_eq!(ids, [TokenId::of(b"new-token"), TokenId::of(b"old-token")]);
        assert_eq!(t.for_peer(Some(&ids)).as_deref(), Some("new-token"));
        let old_only = [TokenId::of(b"old-token")];
        assert_eq!(t.for_peer(Some(&old_only)).as_deref(), Some("old-token"));
        assert_eq!(t.for_peer(None).as_deref(), Some("old-token"));
        assert_eq!(t.for_peer(Some(&[])).as_deref(), Some("old-token"));
        // The ids say nothing a token could be read from, and bad input is dropped.
        assert!(!t.accepted_ids().contains("token"));
        assert_eq!(
            TokenId::parse_list("zz,0102030405060708,abc"),
            [TokenId([1, 2, 3, 4, 5, 6, 7, 8])]
        );
        // A peer that refused the old one (it dropped it early) is tried with the newest.
        let retry: Vec<TokenId> = t.first_id().into_iter().collect();
        assert_eq!(t.for_peer(Some(&retry)).as_deref(), Some("new-token"));
        // After the rotation, one line: everyone gets it.
        std::fs::write(&f, "new-token\n").unwrap();
        t.reload().unwrap();
        assert_eq!(t.for_peer(Some(&old_only)).as_deref(), Some("new-token"));
    }

    #[test]
    fn guard_modes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "s3cret\n").unwrap();
        let g = Guard {
            mode: AuthMode::MtlsToken,
            tokens: Some(Arc::new(Tokens::load(&f).unwrap())),
            throttle: FailureThrottle::new(3, Duration::from_secs(60)),
            revocation: Some(Arc::new(|serial: &Serial| {
                (*serial == "0b").then_some(Refusal::Revoked)
            })),
        };
        let ok = g.check(&bearer("s3cret"), &conn(true)).unwrap();
        assert_eq!(ok.to_string(), "cert:CN=node1 serial=0a token:line1");
        assert!(!ok.to_string().contains("s3cret"));
        // The scheme is case-insensitive.
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                format!("{scheme} s3cret").parse().unwrap(),
            );
            assert!(g.check(&h, &conn(true)).is_ok(), "{scheme}");
        }
        assert_eq!(
            g.check(&bearer("s3cret"), &conn(false)),
            Err(Refusal::NoClientCert)
        );
        assert_eq!(
            g.check(&http::HeaderMap::new(), &conn(true)),
            Err(Refusal::MissingToken)
        );
        assert_eq!(
            g.check(&bearer("nope"), &conn(true)),
            Err(Refusal::WrongToken)
        );
        let open = Guard::open();
        assert_eq!(
            open.check(&bearer("x"), &conn(false)).unwrap().to_string(),
            "anonymous"
        );
        assert_eq!(
            open.check(&bearer("x"), &conn(true)).unwrap().to_string(),
            "cert:CN=node1 serial=0a"
        );
        // Three failures so far from this address: now throttled, even with the right token.
        assert_eq!(
            g.check(&bearer("s3cret"), &conn(true)),
            Err(Refusal::Throttled)
        );
    }

    #[test]
    fn signed_tokens_name_their_subject_and_static_ones_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let (f, k) = (dir.path().join("tokens"), dir.path().join("key"));
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::write(&k, "k".repeat(32)).unwrap();
        let key = Arc::new(SigningKey::load(&k).unwrap());
        let tokens =
            Tokens::new(Some(&f), Some(key.clone()), Duration::from_secs(60), "n1").unwrap();
        let peer = tokens.for_peer(None).unwrap();
        assert_eq!(
            tokens.for_peer(None).as_deref(),
            Some(peer.as_str()),
            "reused"
        );
        assert_eq!(key.verify(peer.as_bytes()).unwrap().sub, "peer@n1");
        let ctd = tokens.for_containerd().unwrap();
        assert_eq!(key.verify(ctd.as_bytes()).unwrap().sub, "containerd@n1");
        let g = Guard {
            mode: AuthMode::Token,
            tokens: Some(Arc::new(tokens)),
            throttle: FailureThrottle::new(100, Duration::from_secs(60)),
            revocation: None,
        };
        let robot = key.mint("robot", Duration::from_secs(60)).unwrap();
        assert_eq!(
            g.check(&bearer(&robot), &conn(false)).unwrap().to_string(),
            "token:sub=robot"
        );
        assert_eq!(
            g.check(&bearer("s3cret"), &conn(false))
                .unwrap()
                .to_string(),
            "token:line1"
        );
        let forged = crate::token::mint(&[b'x'; 32], "robot", Duration::from_secs(60)).unwrap();
        assert_eq!(
            g.check(&bearer(&forged), &conn(false)),
            Err(Refusal::WrongToken)
        );
        // Without a token file, only signed tokens.
        let only = Tokens::new(None, Some(key), Duration::from_secs(60), "n1").unwrap();
        assert_eq!(only.first(), None);
        assert_eq!(only.reload().unwrap(), 0);
        assert!(only.verify_signed(robot.as_bytes()).is_some());
    }
}
