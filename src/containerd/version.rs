//! containerd's own version, as its gRPC Version service reports it. What the daemon can rely on
//! depends on it: `/content/create` events (2.1+), config `version = 3` and the transfer service
//! (2.x), and the colon-separated `config_path` trap (2.2+).

use std::fmt;

/// `major.minor` of a containerd release, with the string it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerdVersion {
    pub major: u32,
    pub minor: u32,
    /// As reported: `v2.1.9`, `1.7.24~ds1`, `2.1.9+unknown`.
    pub raw: String,
}

impl ContainerdVersion {
    /// Reads `major.minor` from a version string (a leading `v` is allowed); `None` if it has none.
    pub fn parse(raw: &str) -> Option<Self> {
        let s = raw.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        let mut parts = s.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ContainerdVersion {
            major,
            minor,
            raw: raw.trim().to_string(),
        })
    }

    /// 2.1+ publishes `/content/create` when each blob is committed.
    pub fn publishes_content_create(&self) -> bool {
        (self.major, self.minor) >= (2, 1)
    }

    /// 2.x: config `version = 3`, pulls through the transfer service.
    pub fn is_v2(&self) -> bool {
        self.major >= 2
    }
}

impl fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_containerd_reports() {
        let v = ContainerdVersion::parse("v2.1.9").unwrap();
        assert_eq!((v.major, v.minor), (2, 1));
        assert!(v.publishes_content_create() && v.is_v2());
        let v = ContainerdVersion::parse("1.7.24~ds1").unwrap();
        assert_eq!((v.major, v.minor), (1, 7));
        assert!(!v.publishes_content_create() && !v.is_v2());
        let v = ContainerdVersion::parse("2.2.0+unknown").unwrap();
        assert!(v.publishes_content_create());
        assert!(
            !ContainerdVersion::parse("2.0")
                .unwrap()
                .publishes_content_create()
        );
        assert!(ContainerdVersion::parse("unknown").is_none());
        assert!(ContainerdVersion::parse("").is_none());
    }
}
