//! `--seeds A..B` (B excluded, like Rust ranges) and `--seeds A..=B` (B included).

use std::num::IntErrorKind;

use drill_reports::SeedRange;

/// Parses a seed range; the error explains what was expected.
pub fn parse_seed_range(text: &str) -> Result<SeedRange, String> {
    let text = text.trim();
    let (first, end, inclusive) = if let Some((a, b)) = text.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = text.split_once("..") {
        (a, b, false)
    } else {
        return Err(format!("expected A..B (B excluded) or A..=B (B included), got '{text}'"));
    };
    let (first, end) = (parse_seed(first)?, parse_seed(end)?);
    let last = if inclusive { Some(end) } else { end.checked_sub(1) };
    let range = match last {
        Some(last) if last >= first => SeedRange { first, last },
        _ => {
            let hint = if inclusive { "" } else { " (A..B excludes B; A..=B includes it)" };
            return Err(format!("'{text}' holds no seeds{hint}"));
        }
    };
    // Only 0..=u64::MAX overflows, but its seed count must fit in the counters.
    range.len().ok_or_else(|| format!("'{text}' holds more seeds than a sweep can count"))?;
    Ok(range)
}

/// Parses one seed, a whole number that fits in 64 bits.
pub fn parse_seed(text: &str) -> Result<u64, String> {
    let text = text.trim();
    text.parse::<u64>().map_err(|e| match e.kind() {
        IntErrorKind::Empty => "a seed is missing".to_string(),
        IntErrorKind::PosOverflow => format!("seed {text} does not fit in 64 bits"),
        _ => format!("'{text}' is not a seed (a whole number from 0 to {})", u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u64, last: u64) -> Result<SeedRange, String> {
        Ok(SeedRange { first, last })
    }

    #[test]
    fn reads_exclusive_and_inclusive_ranges() {
        assert_eq!(parse_seed_range("0..10"), range(0, 9));
        assert_eq!(parse_seed_range("5..=5"), range(5, 5));
        assert_eq!(parse_seed_range(" 3..4 "), range(3, 3));
        let top = format!("{}..={}", u64::MAX - 1, u64::MAX);
        assert_eq!(parse_seed_range(&top), range(u64::MAX - 1, u64::MAX));
    }

    #[test]
    fn refuses_empty_backwards_and_malformed_ranges() {
        for bad in ["5..2", "5..5", "5..=4", "abc", "", "..", "1..", "..3", "1...3", "a..b", "-1..3"] {
            assert!(parse_seed_range(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn refuses_overflow() {
        let err = parse_seed_range("0..18446744073709551616").unwrap_err();
        assert!(err.contains("64 bits"), "{err}");
        assert!(parse_seed_range(&format!("0..={}", u64::MAX)).is_err());
    }
}
