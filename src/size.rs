//! Sizes as users write them: `10Gi`, `512Mi`, `1Ti`, `4096Ki`, or plain bytes.
//!
//! The API and the CLI parse sizes here, not with `shorthorn_dataplane::volume::ByteSize`
//! (the replica and engine flags): that one also takes `10G` and `10GB` as binary units,
//! which are refused here because a Kubernetes user reads `G` as 10^9 bytes.

/// Parses a size with an optional binary suffix (Ki, Mi, Gi, Ti; a trailing `B` is allowed).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let without_b = trimmed.strip_suffix('B').unwrap_or(trimmed);
    let (digits, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)]
        .iter()
        .find_map(|(suffix, shift)| without_b.strip_suffix(suffix).map(|d| (d, *shift)))
        .unwrap_or((trimmed, 0));
    let number: u64 = digits.trim().parse().map_err(|_| {
        format!("\"{text}\" is not a size: use bytes or a number with Ki, Mi, Gi or Ti (e.g. 10Gi)")
    })?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

/// Formats bytes with the largest binary suffix that divides them exactly.
pub fn format_size(bytes: u64) -> String {
    for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Formats bytes for tables in the largest binary unit they reach: whole when it divides
/// them (`64Mi`), else with one decimal (`252.0Gi`).
pub fn display_size(bytes: u64) -> String {
    let Some((suffix, shift)) = [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)]
        .into_iter()
        .find(|(_, shift)| bytes >= 1u64 << shift)
    else {
        return bytes.to_string();
    };
    let unit = 1u64 << shift;
    if bytes.is_multiple_of(unit) {
        format!("{}{suffix}", bytes / unit)
    } else {
        format!("{:.1}{suffix}", bytes as f64 / unit as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("10Gi"), Ok(10 << 30));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("4096Ki"), Ok(4 << 20));
        assert_eq!(parse_size("2097152"), Ok(2 << 20));
        assert!(parse_size("10GB").unwrap_err().contains("is not a size"));
        assert!(parse_size("-1Gi").is_err());
        assert!(
            parse_size("99999999999Ti")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes_format_back() {
        assert_eq!(format_size(10 << 30), "10Gi");
        assert_eq!(format_size(3 << 20), "3Mi");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(display_size(3 << 30), "3Gi");
        assert_eq!(display_size((5 << 30) + (1 << 29) + 1), "5.5Gi");
        assert_eq!(display_size(1000), "1000");
        assert_eq!(display_size(264_212_084 << 10), "252.0Gi");
        assert_eq!(display_size(3 << 20), "3Mi");
    }
}
