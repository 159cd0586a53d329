//! Byte ranges: a client's `Range` header, checked against the blob size once known, and a peer's `Content-Range`.

use std::fmt;

/// One satisfiable byte range of a blob, inclusive at both ends, already checked against its size.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    /// The header is not one well-formed `bytes=` range; such a header may be ignored (RFC 9110).
    #[error("range header is not a single well-formed bytes range")]
    Malformed,
    /// Well formed, but outside the blob: 416.
    #[error("range not satisfiable")]
    Unsatisfiable,
}

/// A client's `Range` header: one well-formed `bytes=` range, parsed once at the edge and
/// checked against a size only once that size is known (for a peer's blob, after the first
/// provider answers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSpec(http_range_header::ParsedRanges);

impl RangeSpec {
    /// Parse a `Range` header value. Only one range is served: containerd never asks for more,
    /// and multipart responses are an abuse vector.
    pub fn parse(header: &str) -> Result<Self, RangeError> {
        let parsed =
            http_range_header::parse_range_header(header).map_err(|_| RangeError::Malformed)?;
        if parsed.len() != 1 {
            return Err(RangeError::Malformed);
        }
        Ok(RangeSpec(parsed))
    }

    /// The range within a blob of `size` bytes.
    pub fn resolve(&self, size: u64) -> Result<ByteRange, RangeError> {
        use http_range_header::RangeUnsatisfiableError as E;
        let ranges = self.0.clone().validate(size).map_err(|e| match e {
            E::Unsatisfiable => RangeError::Unsatisfiable,
            _ => RangeError::Malformed,
        })?;
        match ranges.as_slice() {
            [r] => Ok(ByteRange {
                start: *r.start(),
                end: *r.end(),
            }),
            // An empty blob has no satisfiable byte range.
            _ => Err(RangeError::Unsatisfiable),
        }
    }

    /// What to send of a blob of `size` bytes: `None` for all of it (no range asked, or one
    /// that may be ignored per RFC 9110), or the one range; `Err` only when unsatisfiable (416).
    pub fn window(spec: Option<&Self>, size: u64) -> Result<Option<ByteRange>, RangeError> {
        match spec.map(|s| s.resolve(size)) {
            None | Some(Err(RangeError::Malformed)) => Ok(None),
            Some(Ok(r)) => Ok(Some(r)),
            Some(Err(RangeError::Unsatisfiable)) => Err(RangeError::Unsatisfiable),
        }
    }
}

/// A peer's `Content-Range: bytes START-END/SIZE`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
    pub size: u64,
}

impl ContentRange {
    /// Only a consistent range (`START <= END < SIZE`, digits only as RFC 9110 has it, no sign)
    /// is accepted: anything else is a peer's mistake, not a range to act on.
    pub fn parse(value: &str) -> Option<Self> {
        let (range, size) = value.strip_prefix("bytes ")?.rsplit_once('/')?;
        let (start, end) = range.split_once('-')?;
        let r = ContentRange {
            start: digits(start)?,
            end: digits(end)?,
            size: digits(size)?,
        };
        (r.start <= r.end && r.end < r.size).then_some(r)
    }
}

/// `u64::from_str` also takes a leading `+`.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` value for a blob of `size` bytes.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, size)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes={}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(header: &str, size: u64) -> Result<ByteRange, RangeError> {
        RangeSpec::parse(header)?.resolve(size)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(parse("bytes=0-9", 100), Ok(ByteRange { start: 0, end: 9 }));
        assert_eq!(
            parse("bytes=90-", 100),
            Ok(ByteRange { start: 90, end: 99 })
        );
        assert_eq!(
            parse("bytes=-10", 100),
            Ok(ByteRange { start: 90, end: 99 })
        );
        // An end past the size is clamped (RFC 9110).
        assert_eq!(
            parse("bytes=50-1000", 100),
            Ok(ByteRange { start: 50, end: 99 })
        );
        let r = parse("bytes=10-19", 100).unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r.content_range(100), "bytes 10-19/100");
    }

    #[test]
    fn windows_and_content_ranges() {
        let spec = RangeSpec::parse("bytes=10-").unwrap();
        assert_eq!(
            RangeSpec::window(Some(&spec), 100),
            Ok(Some(ByteRange { start: 10, end: 99 }))
        );
        assert_eq!(
            RangeSpec::window(Some(&spec), 10),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(RangeSpec::window(None, 10), Ok(None));
        // Well formed but backwards: ignored, the whole blob is sent.
        let backwards = RangeSpec::parse("bytes=9-0");
        if let Ok(b) = backwards {
            assert_eq!(RangeSpec::window(Some(&b), 100), Ok(None));
        }
        assert_eq!(
            ContentRange::parse("bytes 5-9/10"),
            Some(ContentRange {
                start: 5,
                end: 9,
                size: 10
            })
        );
        for bad in ["bytes */10", "5-9/10", "bytes 5-9", "bytes a-9/10"] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
    }

    /// Found by the `range` fuzz target: `bytes 50-9/10918224` was accepted.
    #[test]
    fn content_range_must_be_consistent_digits() {
        for bad in [
            "bytes 50-9/100",
            "bytes 5-10/10",
            "bytes 0-0/0",
            "bytes +5-9/10",
            "bytes 5-+9/10",
            "bytes 5-9/+10",
            "bytes -5-9/10",
            "bytes 5--9/10",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
        assert_eq!(
            ContentRange::parse("bytes 0-0/1"),
            Some(ContentRange {
                start: 0,
                end: 0,
                size: 1
            })
        );
    }

    #[test]
    fn unsatisfiable_and_malformed() {
        assert_eq!(parse("bytes=100-", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse("bytes=200-300", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse("bytes=0-", 0), Err(RangeError::Unsatisfiable));
        for bad in [
            "",
            "bytes=",
            "bytes=9-0",
            "items=0-1",
            "bytes=a-b",
            "bytes=0-1,5-6",
            "bytes=--1",
        ] {
            assert_eq!(parse(bad, 100), Err(RangeError::Malformed), "{bad}");
        }
    }
}
