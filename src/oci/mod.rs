//! Pure OCI distribution types: digests, names, references, byte ranges, media types,
//! manifest walking and the OCI error body. No I/O here; everything is parsed once at the edge.

mod digest;
mod error;
pub mod headers;
mod manifest;
mod range;
mod reference;

pub use digest::{Digest, DigestError, Sha256Verifier};
pub use error::{ErrorCode, OciError};
pub use manifest::{ManifestError, children, is_manifest_media_type, media_types};
pub use range::{ByteRange, ContentRange, RangeError, RangeSpec};
pub use reference::{Name, NameError, Reference, Tag, TagKey};
