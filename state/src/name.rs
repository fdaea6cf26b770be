//! Validation of names and sizes that commands carry.

use crate::Rejection;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// Volume sizes are multiples of this (2 MiB), the backup block size.
pub const VOLUME_SIZE_ALIGNMENT: u64 = 2 * MIB;

/// A DNS-1123 label: 1 to 63 of `a-z 0-9 -`, starting and ending with a letter or digit.
pub fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS-1123 subdomain (what Kubernetes node names are): dot-separated labels, ≤ 253 chars.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

pub(crate) fn check_label(what: &str, name: &str) -> Result<(), Rejection> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(Rejection::invalid(format!(
            "{what} name \"{name}\" is invalid: it must be a DNS-1123 label \
             (1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)"
        )))
    }
}

pub(crate) fn check_subdomain(what: &str, name: &str) -> Result<(), Rejection> {
    if is_dns1123_subdomain(name) {
        Ok(())
    } else {
        Err(Rejection::invalid(format!(
            "{what} name \"{name}\" is invalid: it must be a DNS-1123 subdomain \
             (dot-separated labels of a-z, 0-9 and '-', at most 253 characters)"
        )))
    }
}

pub(crate) fn check_volume_size(size: u64) -> Result<(), Rejection> {
    if size == 0 {
        return Err(Rejection::invalid("volume size must be positive"));
    }
    if !size.is_multiple_of(VOLUME_SIZE_ALIGNMENT) {
        return Err(Rejection::invalid(format!(
            "volume size {size} bytes is not a multiple of 2 MiB ({VOLUME_SIZE_ALIGNMENT} bytes)"
        )));
    }
    Ok(())
}

pub(crate) fn check_replica_count(count: u8) -> Result<(), Rejection> {
    if (1..=20).contains(&count) {
        Ok(())
    } else {
        Err(Rejection::invalid(format!(
            "number of replicas {count} is out of range: it must be between 1 and 20"
        )))
    }
}

/// Labels: keys of 1 to 253 visible characters, values of at most 253 with no control
/// characters.
pub(crate) fn check_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), Rejection> {
    for (key, value) in labels {
        if key.is_empty() || key.len() > 253 || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Rejection::invalid(format!(
                "label key \"{key}\" is invalid: it must be 1 to 253 visible ASCII characters"
            )));
        }
        if value.len() > 253 || value.chars().any(char::is_control) {
            return Err(Rejection::invalid(format!(
                "label \"{key}\" has an invalid value: at most 253 characters, no control characters"
            )));
        }
    }
    Ok(())
}
