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

impl ByteRange {
    /// Parse a `Range` header value for a blob of `size` bytes. Only one range is served:
    /// containerd never asks for more, and multipart responses are an abuse vector.
    pub fn parse(header: &str, size: u64) -> Result<Self, RangeError> {
        use http_range_header::RangeUnsatisfiableError as E;
        let parsed =
            http_range_header::parse_range_header(header).map_err(|_| RangeError::Malformed)?;
        if parsed.len() != 1 {
            return Err(RangeError::Malformed);
        }
        let ranges = parsed.validate(size).map_err(|e| match e {
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

    #[test]
    fn single_ranges() {
        assert_eq!(
            ByteRange::parse("bytes=0-9", 100),
            Ok(ByteRange { start: 0, end: 9 })
        );
        assert_eq!(
            ByteRange::parse("bytes=90-", 100),
            Ok(ByteRange { start: 90, end: 99 })
        );
        assert_eq!(
            ByteRange::parse("bytes=-10", 100),
            Ok(ByteRange { start: 90, end: 99 })
        );
        // An end past the size is clamped (RFC 9110).
        assert_eq!(
            ByteRange::parse("bytes=50-1000", 100),
            Ok(ByteRange { start: 50, end: 99 })
        );
        let r = ByteRange::parse("bytes=10-19", 100).unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r.content_range(100), "bytes 10-19/100");
    }

    #[test]
    fn unsatisfiable_and_malformed() {
        assert_eq!(
            ByteRange::parse("bytes=100-", 100),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            ByteRange::parse("bytes=200-300", 100),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            ByteRange::parse("bytes=0-", 0),
            Err(RangeError::Unsatisfiable)
        );
        for bad in [
            "",
            "bytes=",
            "bytes=9-0",
            "items=0-1",
            "bytes=a-b",
            "bytes=0-1,5-6",
            "bytes=--1",
        ] {
            assert_eq!(
                ByteRange::parse(bad, 100),
                Err(RangeError::Malformed),
                "{bad}"
            );
        }
    }
}
