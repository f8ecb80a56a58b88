//! Validation error type, shared limits and reusable field checks.
//!
//! Every check reports the first problem it finds as a [`ValidationError`]
//! whose `field` is the path a user would edit in a resource document
//! (for example `spec.ports[0].port`), so messages can be shown verbatim.

use std::collections::BTreeMap;
use std::fmt::Display;

use super::string_map::StringMap;

/// Longest DNS-1123 label (names of services, namespaces, ports, subsets).
pub const MAX_NAME_LEN: usize = 63;
/// Longest DNS-1123 subdomain (endpoint ids, host names).
pub const MAX_SUBDOMAIN_LEN: usize = 253;
/// Most labels a single object may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key, including an optional `prefix/`.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 63;
/// Most free-form metadata entries a single object may carry.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest single metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// Largest total size of all metadata keys and values, in bytes.
pub const MAX_METADATA_TOTAL_BYTES: usize = 16 * 1024;

/// Rule text for [`validate_name`], exported so callers and tests agree on it.
pub const NAME_RULE: &str =
    "must be a DNS-1123 label (lowercase letters, digits, '-'; at most 63 characters)";
/// Rule text for [`validate_subdomain`].
pub const SUBDOMAIN_RULE: &str =
    "must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.'; at most 253 characters)";

/// The first rule a value broke, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{field}: {rule}")]
pub struct ValidationError {
    /// Path of the offending field, e.g. `spec.routes[1].destinations[0].weight`.
    pub field: String,
    /// Human-readable description of the rule that was broken.
    pub rule: String,
}

impl ValidationError {
    /// Builds an error for `field` breaking `rule`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// A string did not name any variant of an enumeration (protocols, kinds, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct ParseEnumError {
    /// What was being parsed, e.g. `protocol`.
    pub what: String,
    /// The rejected input.
    pub value: String,
    /// Comma-separated list of accepted spellings.
    pub expected: String,
}

impl ParseEnumError {
    pub(crate) fn new(what: &str, value: &str, expected: &[&str]) -> Self {
        Self {
            what: what.to_string(),
            value: value.to_string(),
            expected: expected.join(", "),
        }
    }
}

/// Checks a DNS-1123 label: 1..=63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn validate_name(field: &str, v: &str) -> Result<(), ValidationError> {
    if is_dns_label(v) {
        Ok(())
    } else {
        Err(ValidationError::new(field, NAME_RULE))
    }
}

/// Checks a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn validate_subdomain(field: &str, v: &str) -> Result<(), ValidationError> {
    if is_dns_subdomain(v) {
        Ok(())
    } else {
        Err(ValidationError::new(field, SUBDOMAIN_RULE))
    }
}

/// Checks `min <= value <= max`, reporting "must be between {min} and {max}".
pub fn validate_range<T>(field: &str, value: T, min: T, max: T) -> Result<(), ValidationError>
where
    T: PartialOrd + Display,
{
    if value < min || value > max {
        Err(ValidationError::new(
            field,
            format!("must be between {min} and {max}"),
        ))
    } else {
        Ok(())
    }
}

/// Checks that a list has at most `max` entries.
pub fn validate_max_entries(field: &str, len: usize, max: usize) -> Result<(), ValidationError> {
    if len > max {
        Err(ValidationError::new(
            field,
            format!("must have at most {max} entries"),
        ))
    } else {
        Ok(())
    }
}

/// Checks a label map: entry count, key syntax and value syntax.
pub fn validate_labels(field: &str, labels: &StringMap) -> Result<(), ValidationError> {
    validate_max_entries(field, labels.len(), MAX_LABELS)?;
    for (k, v) in labels {
        validate_label_key(field, k)?;
        let ok = v.len() <= MAX_LABEL_VALUE_LEN
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(ValidationError::new(
                entry_path(field, k),
                "value must be at most 63 characters of letters, digits, '.', '_', '-'",
            ));
        }
    }
    Ok(())
}

/// Checks a free-form metadata map: keys as for labels, bounded value sizes.
pub fn validate_metadata(field: &str, metadata: &StringMap) -> Result<(), ValidationError> {
    validate_max_entries(field, metadata.len(), MAX_METADATA_ENTRIES)?;
    let mut total = 0usize;
    for (k, v) in metadata {
        validate_label_key(field, k)?;
        if v.len() > MAX_METADATA_VALUE_BYTES {
            return Err(ValidationError::new(
                entry_path(field, k),
                format!("value must be at most {MAX_METADATA_VALUE_BYTES} bytes"),
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_METADATA_TOTAL_BYTES {
        return Err(ValidationError::new(
            field,
            format!("keys and values must total at most {MAX_METADATA_TOTAL_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Path of one map entry; the key is quoted because keys may contain `.` and `/`.
pub(crate) fn entry_path(field: &str, key: &str) -> String {
    format!("{field}[{key:?}]")
}

fn validate_label_key(field: &str, key: &str) -> Result<(), ValidationError> {
    let name = match key.split_once('/') {
        Some((_, name)) => name,
        None => key,
    };
    let ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_LEN
        && key.matches('/').count() <= 1
        && key.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            entry_path(field, key),
            "key must be 1-63 characters of letters, digits, '.', '_', '-' with an optional \
             'prefix/', starting with a letter or digit",
        ))
    }
}

pub(crate) fn is_dns_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_NAME_LEN
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-')
}

pub(crate) fn is_dns_subdomain(v: &str) -> bool {
    v.len() <= MAX_SUBDOMAIN_LEN && v.split('.').all(is_dns_label)
}

/// HTTP header / cookie names are RFC 7230 tokens; a leading ':' admits
/// HTTP/2 pseudo-headers such as `:authority`.
pub(crate) fn is_http_token(v: &str) -> bool {
    let body = v.strip_prefix(':').unwrap_or(v);
    !body.is_empty()
        && v.len() <= 256
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Finds the first repeated `key`, returning `(earlier, later)` indices so a
/// message can point at the entry to fix and at the one it collides with.
pub(crate) fn first_duplicate<T, K: Ord>(
    items: &[T],
    key: impl Fn(&T) -> K,
) -> Option<(usize, usize)> {
    let mut seen = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(&first) = seen.get(&key(item)) {
            return Some((first, i));
        }
        seen.insert(key(item), i);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> StringMap {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names() {
        for ok in ["a", "web", "web-1", "0abc", &"a".repeat(63)] {
            assert!(validate_name("metadata.name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(64)] {
            let err = validate_name("metadata.name", bad).unwrap_err();
            assert_eq!(err.field, "metadata.name");
            assert_eq!(err.rule, NAME_RULE);
        }
        assert_eq!(
            validate_name("metadata.name", "A").unwrap_err().to_string(),
            format!("metadata.name: {NAME_RULE}")
        );
    }

    #[test]
    fn subdomains() {
        assert!(validate_subdomain("f", "a.b-c.d").is_ok());
        assert!(validate_subdomain("f", &format!("{}.a", "b".repeat(63))).is_ok());
        assert!(validate_subdomain("f", &["a"; 127].join(".")).is_ok());
        for bad in ["", "a..b", ".a", "a.", "A.b", &["a"; 128].join(".")] {
            assert!(validate_subdomain("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert!(validate_range("p", 1u32, 1, 65535).is_ok());
        let err = validate_range("spec.ports[0].port", 0u32, 1, 65535).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.ports[0].port: must be between 1 and 65535"
        );
    }

    #[test]
    fn labels() {
        let ok = map(&[
            ("app", "web"),
            ("example.com/tier", "Front_end-1.0"),
            ("empty", ""),
            ("A_b.c-d", "x"),
        ]);
        assert!(validate_labels("metadata.labels", &ok).is_ok());

        for bad_key in ["", "-a", "a/b/c", "a/", "a/-b", "a b", &"k".repeat(64)] {
            let err = validate_labels("metadata.labels", &map(&[(bad_key, "v")])).unwrap_err();
            assert_eq!(err.field, format!("metadata.labels[{bad_key:?}]"));
            assert!(err.rule.starts_with("key must be"), "{bad_key}");
        }
        for bad_value in ["a b", "a/b", &"v".repeat(64)] {
            let err = validate_labels("l", &map(&[("k", bad_value)])).unwrap_err();
            assert!(err.rule.starts_with("value must be"), "{bad_value}");
        }

        let too_many: StringMap = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(
            validate_labels("l", &too_many).unwrap_err().rule,
            "must have at most 64 entries"
        );
    }

    #[test]
    fn metadata() {
        let long = "x".repeat(MAX_METADATA_VALUE_BYTES);
        assert!(validate_metadata("spec.metadata", &map(&[("owner", &long)])).is_ok());
        let err = validate_metadata("spec.metadata", &map(&[("owner", &format!("{long}x"))]))
            .unwrap_err();
        assert_eq!(err.field, "spec.metadata[\"owner\"]");

        let err = validate_metadata("spec.metadata", &map(&[("bad key", "v")])).unwrap_err();
        assert!(err.rule.starts_with("key must be"));

        let big: StringMap = (0..20).map(|i| (format!("k{i}"), long.clone())).collect();
        let err = validate_metadata("spec.metadata", &big).unwrap_err();
        assert_eq!(err.field, "spec.metadata");
        assert!(err.rule.contains("16384 bytes"));

        let too_many: StringMap = (0..=MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(validate_metadata("m", &too_many).is_err());
    }

    #[test]
    fn http_tokens() {
        assert!(is_http_token("x-user"));
        assert!(is_http_token(":authority"));
        assert!(!is_http_token(""));
        assert!(!is_http_token(":"));
        assert!(!is_http_token("a b"));
        assert!(!is_http_token("a:b"));
    }

    #[test]
    fn duplicates() {
        assert_eq!(first_duplicate(&[1, 2, 3], |x| *x), None);
        assert_eq!(first_duplicate(&[1, 2, 1], |x| *x), Some((0, 2)));
    }
}
