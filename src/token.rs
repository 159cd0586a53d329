//! Signed bearer tokens: a standard JWT (HS256, audience `peermirror`, with `sub`, `iat` and
//! `exp`) under a cluster-wide key (`--token-signing-key`, raw bytes). The daemon accepts them
//! besides the static tokens of `--token-file`, mints short-lived ones for its own containerd
//! and its peer requests, and `peermirror token issue` mints one for a person or a robot.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sync::RwLockExt;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `aud` every token carries: a JWT minted for another service is not one of ours.
pub const AUDIENCE: &str = "peermirror";
/// RFC 7518 section 3.2: an HS256 key at least as long as the hash.
pub const MIN_KEY_LEN: usize = 32;
/// Clock skew tolerated between nodes when checking `exp`.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read --token-signing-key {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "--token-signing-key {path} holds {len} bytes: an HS256 key needs at least {MIN_KEY_LEN} (e.g. `head -c 32 /dev/urandom > key`)"
    )]
    ShortKey { path: String, len: usize },
    #[error("subject {0:?}: use 1 to 128 letters, digits and . _ - @ : /")]
    BadSubject(String),
    #[error("--ttl {0:?} is out of range: give one between 1s and 366 days")]
    BadTtl(Duration),
    #[error("cannot sign a token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// What a token says. `sub` names who it was issued to, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// A subject goes into audit lines as is, so it is kept to a plain, printable alphabet.
fn valid_subject(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@:/".contains(&b))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads a key file. Trailing whitespace (the newline of `echo`) is dropped, so the daemon and
/// `token issue` agree however the Secret was written.
pub fn read_key(path: &Path) -> Result<Vec<u8>, TokenError> {
    let mut key = std::fs::read(path).map_err(|source| TokenError::KeyFile {
        path: path.display().to_string(),
        source,
    })?;
    let len = key.trim_ascii_end().len();
    key.truncate(len);
    if key.len() < MIN_KEY_LEN {
        return Err(TokenError::ShortKey {
            path: path.display().to_string(),
            len: key.len(),
        });
    }
    Ok(key)
}

/// A token for `subject`, issued at `iat` (seconds since the epoch), valid for `ttl`.
pub fn mint_at(key: &[u8], subject: &str, iat: u64, ttl: Duration) -> Result<String, TokenError> {
    if !valid_subject(subject) {
        return Err(TokenError::BadSubject(subject.to_owned()));
    }
    if ttl.as_secs() == 0 || ttl > Duration::from_secs(366 * 24 * 3600) {
        return Err(TokenError::BadTtl(ttl));
    }
    let claims = Claims {
        sub: subject.to_owned(),
        aud: AUDIENCE.to_owned(),
        iat,
        exp: iat.saturating_add(ttl.as_secs()),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key),
    )
    .map_err(TokenError::Sign)
}

/// A token for `subject`, valid from now for `ttl`.
pub fn mint(key: &[u8], subject: &str, ttl: Duration) -> Result<String, TokenError> {
    mint_at(key, subject, now_secs(), ttl)
}

/// The claims of a well-signed, unexpired token for us; `None` for anything else (a bad
/// signature, another algorithm, another audience, expired, or a subject we would not log).
pub fn verify(key: &[u8], token: &[u8]) -> Option<Claims> {
    let token = std::str::from_utf8(token).ok()?;
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    v.leeway = LEEWAY_SECS;
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &v).ok()?;
    valid_subject(&data.claims.sub).then_some(data.claims)
}

/// The signing key in force, re-read when its file changes (a broken file keeps the old key).
pub struct SigningKey {
    path: PathBuf,
    key: RwLock<Arc<Vec<u8>>>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        Ok(SigningKey {
            path: path.to_path_buf(),
            key: RwLock::new(Arc::new(read_key(path)?)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn reload(&self) -> Result<(), TokenError> {
        let fresh = read_key(&self.path)?;
        *self.key.writing() = Arc::new(fresh);
        Ok(())
    }

    fn current(&self) -> Arc<Vec<u8>> {
        self.key.reading().clone()
    }

    pub fn mint(&self, subject: &str, ttl: Duration) -> Result<String, TokenError> {
        mint(&self.current(), subject, ttl)
    }

    pub fn verify(&self, token: &[u8]) -> Option<Claims> {
        verify(&self.current(), token)
    }
}

/// `peermirror token`.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum TokenCommand {
    /// Print a signed token for a person or a robot (pass it as `Authorization: Bearer`).
    Issue {
        /// The signing key file (the cluster Secret the daemons read with --token-signing-key).
        #[arg(long, env = "PEERMIRROR_TOKEN_SIGNING_KEY")]
        key: PathBuf,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Who the token is for; the audit log names it.
        #[arg(long)]
        subject: String,
    },
}

/// Runs `peermirror token ...`; returns what to print.
pub fn run(args: &TokenArgs) -> Result<String, TokenError> {
    match &args.command {
        TokenCommand::Issue { key, ttl, subject } => {
            Ok(format!("{}\n", mint(&read_key(key)?, subject, *ttl)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn mint_verify_expire_and_forge() {
        let t = mint(KEY, "robot-1", Duration::from_secs(60)).unwrap();
        let c = verify(KEY, t.as_bytes()).unwrap();
        assert_eq!((c.sub.as_str(), c.aud.as_str()), ("robot-1", AUDIENCE));
        assert_eq!(c.exp - c.iat, 60);
        assert!(verify(b"another key, also 32 bytes long!", t.as_bytes()).is_none());
        let old = mint_at(KEY, "robot-1", now_secs() - 3600, Duration::from_secs(60)).unwrap();
        assert!(verify(KEY, old.as_bytes()).is_none());
        assert!(verify(KEY, b"not.a.jwt").is_none());
        assert!(matches!(
            mint(KEY, "bad subject", Duration::from_secs(60)),
            Err(TokenError::BadSubject(_))
        ));
        assert!(matches!(
            mint(KEY, "x", Duration::ZERO),
            Err(TokenError::BadTtl(_))
        ));
    }

    #[test]
    fn key_file_is_trimmed_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, b"short\n").unwrap();
        assert!(matches!(
            read_key(&f),
            Err(TokenError::ShortKey { len: 5, .. })
        ));
        std::fs::write(&f, [KEY, b"\n"].concat()).unwrap();
        assert_eq!(read_key(&f).unwrap(), KEY);
    }
}
