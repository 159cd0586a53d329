//! Request paths parsed into a typed [`Route`]; any `%` escape is refused, never decoded.

use crate::oci::{Digest, ErrorCode, Name, OciError, Reference};

/// A parsed registry API path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: Name,
        reference: Reference,
    },
    Blob {
        name: Name,
        digest: Digest,
    },
}

/// What a request was about, for metrics, logs and error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Base,
    Manifest,
    Blob,
    /// The path did not parse.
    Invalid,
    /// Refused before routing (authentication).
    Refused,
}

impl RouteKind {
    /// The `route` label of `peermirror_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Base => "base",
            RouteKind::Manifest => "manifest",
            RouteKind::Blob => "blob",
            RouteKind::Invalid => "invalid",
            RouteKind::Refused => "refused",
        }
    }
}

impl Route {
    pub fn kind(&self) -> RouteKind {
        match self {
            Route::Base => RouteKind::Base,
            Route::Manifest { .. } => RouteKind::Manifest,
            Route::Blob { .. } => RouteKind::Blob,
        }
    }
}

/// Parse the raw (still percent-encoded) request path. Names, tags and digests only ever
/// contain unreserved characters, so any `%` escape, empty or dot segment is refused outright:
/// nothing is decoded, so `%2F` and `..` cannot change what a path means.
pub fn parse(path: &str) -> Result<Route, OciError> {
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Base);
    }
    let rest = path
        .strip_prefix("/v2/")
        .ok_or_else(|| OciError::new(ErrorCode::NotFound, "not a registry API path"))?;
    if rest.contains('%') {
        return Err(OciError::new(
            ErrorCode::NameInvalid,
            "percent-encoded characters are not allowed in repository paths",
        ));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.len() < 3 {
        return Err(OciError::new(
            ErrorCode::NotFound,
            "unknown registry API path",
        ));
    }
    let (head, tail) = segments.split_at(segments.len() - 2);
    let (kind, reference) = (tail[0], tail[1]);
    if kind != "manifests" && kind != "blobs" {
        return Err(OciError::new(
            ErrorCode::NotFound,
            "unknown registry API path",
        ));
    }
    let name: Name = head
        .join("/")
        .parse()
        .map_err(|e: crate::oci::NameError| OciError::new(ErrorCode::NameInvalid, e.to_string()))?;
    if kind == "blobs" {
        let digest = reference.parse().map_err(|e: crate::oci::DigestError| {
            OciError::new(ErrorCode::DigestInvalid, e.to_string())
        })?;
        return Ok(Route::Blob { name, digest });
    }
    let reference = reference.parse().map_err(|_| {
        if reference.contains(':') {
            OciError::new(ErrorCode::DigestInvalid, "invalid manifest digest")
        } else {
            OciError::new(ErrorCode::TagInvalid, "invalid tag")
        }
    })?;
    Ok(Route::Manifest { name, reference })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn code(path: &str) -> ErrorCode {
        parse(path).unwrap_err().code
    }

    #[test]
    fn good_paths() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert!(matches!(
            parse("/v2/library/nginx/manifests/1.27").unwrap(),
            Route::Manifest {
                reference: Reference::Tag(_),
                ..
            }
        ));
        assert!(matches!(
            parse(&format!("/v2/a/b/c/manifests/{D}")).unwrap(),
            Route::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        match parse(&format!("/v2/test/app/blobs/{D}")).unwrap() {
            Route::Blob { name, digest } => {
                assert_eq!(name.as_str(), "test/app");
                assert_eq!(digest.to_string(), D);
            }
            other => panic!("{other:?}"),
        }
        // A repository may itself be called "blobs".
        assert!(matches!(
            parse(&format!("/v2/blobs/blobs/{D}")).unwrap(),
            Route::Blob { .. }
        ));
    }

    #[test]
    fn bad_paths() {
        assert_eq!(
            code(&format!("/v2/a/../b/blobs/{D}")),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(&format!("/v2/a%2Fb/blobs/{D}")),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code(&format!("/v2/a/%2e%2e/blobs/{D}")),
            ErrorCode::NameInvalid
        );
        assert_eq!(code(&format!("/v2//a/blobs/{D}")), ErrorCode::NameInvalid);
        assert_eq!(code(&format!("/v2/A/blobs/{D}")), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/blobs/sha256:123"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/latest"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/manifests/sha256:zz"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/manifests/-bad"), ErrorCode::TagInvalid);
        assert_eq!(code("/v2/a/manifests/"), ErrorCode::TagInvalid);
        assert_eq!(code("/v2/_catalog"), ErrorCode::NotFound);
        assert_eq!(code("/v2/a/tags/list"), ErrorCode::NotFound);
        assert_eq!(code("/etc/passwd"), ErrorCode::NotFound);
        assert_eq!(code("/v2/a/uploads/x"), ErrorCode::NotFound);
    }
}
