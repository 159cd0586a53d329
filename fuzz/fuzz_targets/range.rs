//! Range handling: a client's `Range` header (`oci::RangeSpec::parse`, `resolve`, `window`) and
//! a peer's `Content-Range` (`oci::ContentRange::parse`). Input: `SIZE\nHEADER`.
//! Properties: no panic; a resolved range lies within the size; `window` agrees with `resolve`;
//! the range's own `Range` and `Content-Range` forms parse back to it; an accepted
//! `Content-Range` is all digits, consistent (start <= end < size) and prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peermirror::oci::{ContentRange, RangeError, RangeSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (size, header) = match text.split_once('\n') {
        Some((s, h)) => (s.trim().parse::<u64>().unwrap_or(s.len() as u64), h),
        None => (100, text),
    };

    if let Some(c) = ContentRange::parse(header) {
        assert!(
            c.start <= c.end && c.end < c.size,
            "{header:?}: inconsistent Content-Range accepted: {c:?}"
        );
        let numbers = &header["bytes ".len()..];
        assert!(
            numbers
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'-' || b == b'/'),
            "{header:?}: accepted with something other than digits"
        );
        let printed = format!("bytes {}-{}/{}", c.start, c.end, c.size);
        assert_eq!(
            ContentRange::parse(&printed),
            Some(c),
            "does not print back"
        );
    }

    let Ok(spec) = RangeSpec::parse(header) else {
        return;
    };
    let resolved = spec.resolve(size);
    let window = RangeSpec::window(Some(&spec), size);
    match resolved {
        Ok(r) => {
            assert!(
                r.start <= r.end && r.end < size,
                "{header:?} in {size}: {r:?}"
            );
            assert_eq!(r.len(), r.end - r.start + 1);
            assert_eq!(window, Ok(Some(r)));
            let again = RangeSpec::parse(&r.to_string()).and_then(|s| s.resolve(size));
            assert_eq!(again, Ok(r), "{r} does not parse back");
            let cr = ContentRange::parse(&r.content_range(size));
            assert_eq!(
                cr.map(|c| (c.start, c.end, c.size)),
                Some((r.start, r.end, size))
            );
        }
        Err(RangeError::Unsatisfiable) => assert_eq!(window, Err(RangeError::Unsatisfiable)),
        Err(RangeError::Malformed) => assert_eq!(window, Ok(None)),
    }
});
