//! Repository names, tags, references and fully qualified tag keys, as the distribution spec defines them.

use std::fmt;
use std::str::FromStr;

use super::Digest;

/// A repository name as the distribution spec defines it: path components of
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Name(String);

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Tag(String);

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name is empty or longer than 255 characters")]
    Length,
    #[error("repository name component {0:?} is not [a-z0-9]+ separated by '.', '_', '__' or '-'")]
    Component(String),
    #[error("tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    Tag,
    #[error("registry host {0:?} is not a valid host[:port]")]
    Host(String),
}

const MAX_NAME_LEN: usize = 255;

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    // Separators are '.', '_', '__' or any run of '-'; never two different ones in a row.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(NameError::Length);
        }
        for c in s.split('/') {
            if !valid_component(c) {
                return Err(NameError::Component(c.to_string()));
            }
        }
        Ok(Name(s.to_string()))
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::Tag)
        }
    }
}

impl FromStr for Reference {
    type Err = NameError;

    /// Anything containing ':' must be a digest; otherwise it is a tag.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            return s
                .parse::<Digest>()
                .map(Reference::Digest)
                .map_err(|_| NameError::Tag);
        }
        s.parse().map(Reference::Tag)
    }
}

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// A fully qualified tag, `registry/repository:tag`, the way containerd names images
/// (`docker.io/library/nginx:1.27`, `127.0.0.1:5000/test/app:v1`). It is the key tags are
/// indexed and advertised under.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct TagKey(String);

impl TagKey {
    /// Build the key for a mirror request: `ns` is the upstream registry host[:port] that
    /// containerd passes as the `ns` query parameter.
    pub fn new(registry: &str, name: &Name, tag: &Tag) -> Result<Self, NameError> {
        if !valid_host(registry) {
            return Err(NameError::Host(registry.to_string()));
        }
        Ok(TagKey(format!("{registry}/{name}:{tag}")))
    }

    /// Parse a containerd image name into a key, if it names a tag (digest-only names don't).
    /// A name with no registry part gets docker.io, as containerd's normalisation does.
    pub fn from_image_name(image: &str) -> Option<Self> {
        let without_digest = image.split('@').next()?;
        let (repo, tag) = match without_digest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => return None,
        };
        let (registry, path) = match repo.split_once('/') {
            Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (h, p),
            _ => ("docker.io", repo),
        };
        let name: Name = path.parse().ok()?;
        let tag: Tag = tag.parse().ok()?;
        TagKey::new(registry, &name, &tag).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The registry part (`host[:port]`), what containerd sends as `ns`.
    pub fn registry(&self) -> &str {
        self.0.split_once('/').map(|(r, _)| r).unwrap_or_default()
    }

    /// The repository name part, between the registry and the tag.
    pub fn name(&self) -> &str {
        let rest = self.0.split_once('/').map(|(_, r)| r).unwrap_or_default();
        rest.rsplit_once(':').map(|(n, _)| n).unwrap_or_default()
    }

    /// The tag part.
    pub fn tag(&self) -> &str {
        self.0.rsplit_once(':').map(|(_, t)| t).unwrap_or_default()
    }
}

impl FromStr for TagKey {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (registry, rest) = s.split_once('/').ok_or(NameError::Length)?;
        let (name, tag) = rest.rsplit_once(':').ok_or(NameError::Tag)?;
        TagKey::new(registry, &name.parse()?, &tag.parse()?)
    }
}

impl fmt::Display for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// host or host:port, where host is a DNS name or an IPv4 literal (or a bracketed IPv6 literal).
fn valid_host(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => {
                if h.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, p.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        }
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return false;
    }
    match host {
        None => true,
        Some(h) => {
            !h.is_empty()
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "library/nginx", "test/app", "a0/b-c/d__e/f.g", "x--y"] {
            assert!(ok.parse::<Name>().is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a/../b", "..", "a/.", "-a", "a-", "a___b", "a._b",
            "a%2Fb", "a b", "a\0b",
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?} accepted");
        }
        assert!("a".repeat(256).parse::<Name>().is_err());
    }

    #[test]
    fn tags_and_references() {
        assert!(matches!("v1.0".parse(), Ok(Reference::Tag(_))));
        assert!(matches!("_x".parse(), Ok(Reference::Tag(_))));
        assert!(matches!(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse(),
            Ok(Reference::Digest(_))
        ));
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "sha256:xyz",
            "x".repeat(129).as_str(),
            "a b",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tag_keys() {
        let k = TagKey::new(
            "127.0.0.1:5000",
            &"test/app".parse().unwrap(),
            &"v1".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(k.as_str(), "127.0.0.1:5000/test/app:v1");
        assert_eq!(k.tag(), "v1");
        assert_eq!(k.registry(), "127.0.0.1:5000");
        assert_eq!(k.name(), "test/app");
        assert_eq!(k.as_str().parse::<TagKey>().unwrap(), k);
        assert_eq!(
            TagKey::from_image_name("127.0.0.1:5000/test/app:v1"),
            Some(k)
        );
        assert_eq!(
            TagKey::from_image_name("nginx:1.27").unwrap().as_str(),
            "docker.io/nginx:1.27"
        );
        assert_eq!(TagKey::from_image_name("127.0.0.1:5000/test/app"), None);
        assert_eq!(
            TagKey::from_image_name(
                "docker.io/library/x@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            None
        );
        for bad in ["", "a b", "host:99999", "-a.b", "a..b", "[zz]:1"] {
            assert!(
                TagKey::new(bad, &"a".parse().unwrap(), &"t".parse().unwrap()).is_err(),
                "{bad:?}"
            );
        }
        assert!(TagKey::new("[::1]:5000", &"a".parse().unwrap(), &"t".parse().unwrap()).is_ok());
    }
}
