//! `Idempotency-Key` on `POST /images/process`: a client that retries after a timeout gets the
//! job of its first attempt. The key decides the job's name (a hash of it), so the apiserver
//! itself refuses a second job for the same key, whichever facade replica the retry reaches;
//! annotations record the key's and the request's hashes, so a retry with another body is told
//! apart (409) from a true retry (202 with the same workflow id).

use super::error::ApiError;
use crate::crd::{ImageJob, ImageJobSpec};
use crate::digest::sha256_hex as sha256;
use axum::http::HeaderMap;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Annotation with the SHA-256 of the key.
pub const KEY_ANNOTATION: &str = "imagejob.dev/idempotency-key-sha256";
/// Annotation with the SHA-256 of the request's job spec.
pub const REQUEST_ANNOTATION: &str = "imagejob.dev/request-sha256";
/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;

/// How to create the job of a keyed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    /// The job's name, derived from the key.
    pub name: String,
    /// The annotations that identify key and request.
    pub annotations: BTreeMap<String, String>,
}

/// The keyed creation for these headers and this spec; `None` without the header.
pub fn keyed(headers: &HeaderMap, spec: &ImageJobSpec) -> Result<Option<Keyed>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let invalid = |message: &str| ApiError::field_error("Idempotency-Key", message);
    let key = value.as_bytes();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(invalid(&format!("must be 1 to {MAX_KEY_LEN} characters")));
    }
    // Printable ASCII; spaces only inside (HTTP strips them at the ends).
    let printable = key.iter().all(|b| (0x20..=0x7E).contains(b));
    if !printable || key.first() == Some(&b' ') || key.last() == Some(&b' ') {
        return Err(invalid(
            "must be printable ASCII, without spaces at the ends",
        ));
    }
    let key_hash = sha256(key);
    let request = serde_json::to_vec(spec).map_err(|e| invalid(&e.to_string()))?;
    Ok(Some(Keyed {
        name: format!("image-{}", &key_hash[..40]),
        annotations: BTreeMap::from([
            (KEY_ANNOTATION.to_owned(), key_hash),
            (REQUEST_ANNOTATION.to_owned(), sha256(&request)),
        ]),
    }))
}

/// Checks that `existing` (the job already under the keyed name) came from the same request.
pub fn same_request(existing: &ImageJob, keyed: &Keyed) -> Result<(), ApiError> {
    let annotations = existing.annotations();
    let matches = |name: &str| annotations.get(name) == keyed.annotations.get(name);
    if matches(KEY_ANNOTATION) && matches(REQUEST_ANNOTATION) {
        Ok(())
    } else {
        Err(ApiError::IdempotencyKeyReused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, key.parse().unwrap());
        h
    }

    fn spec(url: &str) -> ImageJobSpec {
        ImageJobSpec {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_same_key_and_body_give_the_same_name_and_annotations() {
        let a = keyed(&headers("k-1"), &spec("https://a/x.jpg"))
            .unwrap()
            .unwrap();
        let b = keyed(&headers("k-1"), &spec("https://a/x.jpg"))
            .unwrap()
            .unwrap();
        assert_eq!(a, b);
        assert!(a.name.len() <= 63 && a.name.starts_with("image-"));
        let other_key = keyed(&headers("k-2"), &spec("https://a/x.jpg"))
            .unwrap()
            .unwrap();
        assert_ne!(a.name, other_key.name);
    }

    #[test]
    fn a_reused_key_with_another_body_is_a_conflict() {
        let first = keyed(&headers("k"), &spec("https://a/x.jpg"))
            .unwrap()
            .unwrap();
        let mut job = ImageJob::new(&first.name, spec("https://a/x.jpg"));
        job.metadata.annotations = Some(first.annotations.clone());
        assert!(same_request(&job, &first).is_ok());
        let second = keyed(&headers("k"), &spec("https://a/y.jpg"))
            .unwrap()
            .unwrap();
        assert!(matches!(
            same_request(&job, &second),
            Err(ApiError::IdempotencyKeyReused)
        ));
    }

    #[test]
    fn keys_that_cannot_work_are_refused_naming_the_header() {
        assert_eq!(keyed(&HeaderMap::new(), &spec("u")).unwrap(), None);
        for bad in [String::new(), "k".repeat(MAX_KEY_LEN + 1)] {
            let err = keyed(&headers(&bad), &spec("u")).unwrap_err();
            assert!(
                matches!(err, ApiError::InvalidField { ref field, .. } if field == "Idempotency-Key")
            );
        }
    }
}
