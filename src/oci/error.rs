//! The OCI distribution error body (`{"errors":[...]}`) and the status code of each error.

use http::StatusCode;
use serde::Serialize;

/// The error codes of the OCI distribution spec that a read-only mirror can answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ErrorCode {
    BlobUnknown,
    ManifestUnknown,
    NameInvalid,
    TagInvalid,
    DigestInvalid,
    ManifestInvalid,
    RangeInvalid,
    Unsupported,
    Unauthorized,
    Denied,
    TooManyRequests,
    Unavailable,
    NotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::NotFound => "NOT_FOUND",
        }
    }

    /// The HTTP status each code is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown | ErrorCode::NotFound => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::NameInvalid
            | ErrorCode::TagInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An OCI error response: `{"errors":[{"code":"...","message":"..."}]}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}

#[derive(Serialize)]
struct Entry<'a> {
    code: &'a str,
    message: &'a str,
}

impl OciError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OciError {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn to_json(&self) -> String {
        let body = Body {
            errors: [Entry {
                code: self.code.as_str(),
                message: &self.message,
            }],
        };
        // Serialising two strings cannot fail; fall back to a fixed body rather than panic.
        serde_json::to_string(&body).unwrap_or_else(|_| r#"{"errors":[]}"#.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_has_code_and_message() {
        let e = OciError::new(ErrorCode::BlobUnknown, "blob \"x\" unknown");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "blob \"x\" unknown");
    }
}
