//! Kubernetes resource quantities (`500m`, `4Gi`, `1.5`, `2e3`) as exact integers.
//!
//! Quotas compare integers, so every quantity is converted once, when tenant data is loaded or
//! an object is read: CPU in millicores, everything else (memory, storage, object counts) in whole
//! units, rounded up the way the API server rounds a quota's usage.

use thiserror::Error;

/// Why a quantity could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("`{0}` is not a Kubernetes quantity (expected e.g. `10`, `500m`, `4Gi`, `1.5`)")]
    Malformed(String),
    #[error("`{0}` is too large")]
    Overflow(String),
    #[error("`{0}` is negative")]
    Negative(String),
}

/// The unit a quota dimension is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Thousandths of the base unit: CPU.
    Milli,
    /// Whole units: bytes, object counts.
    Whole,
}

impl Unit {
    /// The unit of a ResourceQuota resource name: CPU dimensions count millicores.
    pub fn of_resource(name: &str) -> Unit {
        if name == "cpu" || name.ends_with(".cpu") {
            Unit::Milli
        } else {
            Unit::Whole
        }
    }
}

/// Parses a quantity into an integer of `unit`, rounding fractions up.
pub fn parse(text: &str, unit: Unit) -> Result<i64, QuantityError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    let malformed = || QuantityError::Malformed(text.to_string());
    if text.starts_with('-') {
        return Err(QuantityError::Negative(text.to_string()));
    }
    let body = text.strip_prefix('+').unwrap_or(text);
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(malformed());
    }
    // value = mantissa * base^exp10 (decimal) or mantissa * 2^exp2 (binary suffixes)
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits: String = [int_part, frac_part].concat();
    let mantissa: i128 = digits.parse().map_err(|_| malformed())?;
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| malformed())?;
            exp10 += e;
        }
        _ => return Err(malformed()),
    }
    if unit == Unit::Milli {
        exp10 += 3;
    }
    let overflow = || QuantityError::Overflow(text.to_string());
    let mut value = mantissa.checked_mul(1i128 << exp2).ok_or_else(overflow)?;
    if exp10 >= 0 {
        let scale = 10i128.checked_pow(exp10 as u32).ok_or_else(overflow)?;
        value = value.checked_mul(scale).ok_or_else(overflow)?;
    } else {
        let scale = 10i128
            .checked_pow(exp10.unsigned_abs())
            .ok_or_else(overflow)?;
        // Round up: 0.1m of CPU still takes a millicore of quota.
        value = (value + scale - 1) / scale;
    }
    i64::try_from(value).map_err(|_| overflow())
}

/// Formats an integer of `unit` back into a canonical quantity, for messages.
pub fn format(value: i64, unit: Unit) -> String {
    match unit {
        Unit::Milli if value % 1000 == 0 => (value / 1000).to_string(),
        Unit::Milli => format!("{value}m"),
        Unit::Whole => {
            for (suffix, shift) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20)] {
                let base = 1i64 << shift;
                if value >= base && value % base == 0 {
                    return format!("{}{suffix}", value / base);
                }
            }
            value.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_quantities_kubernetes_accepts() {
        let cases = [
            ("2", Unit::Milli, 2000),
            ("500m", Unit::Milli, 500),
            ("0.5", Unit::Milli, 500),
            ("1.5", Unit::Milli, 1500),
            ("100u", Unit::Milli, 1),
            ("4Gi", Unit::Whole, 4 << 30),
            ("256Mi", Unit::Whole, 256 << 20),
            ("1k", Unit::Whole, 1000),
            ("1M", Unit::Whole, 1_000_000),
            ("2e3", Unit::Whole, 2000),
            ("1.5Gi", Unit::Whole, 3 << 29),
            ("10", Unit::Whole, 10),
            ("+3", Unit::Whole, 3),
            ("0.1", Unit::Whole, 1),
        ];
        for (text, unit, want) in cases {
            assert_eq!(parse(text, unit), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for text in ["", "abc", "4GB", "1..2", ".", "4 Gi", "1e", "Gi"] {
            assert!(
                parse(text, Unit::Whole).is_err(),
                "{text:?} should be rejected"
            );
        }
        assert_eq!(
            parse("-1", Unit::Whole),
            Err(QuantityError::Negative("-1".into()))
        );
        assert!(matches!(
            parse("99999Ei", Unit::Whole),
            Err(QuantityError::Overflow(_))
        ));
    }

    #[test]
    fn formats_back_for_messages() {
        assert_eq!(format(2000, Unit::Milli), "2");
        assert_eq!(format(2500, Unit::Milli), "2500m");
        assert_eq!(format(4 << 30, Unit::Whole), "4Gi");
        assert_eq!(format(10, Unit::Whole), "10");
    }

    #[test]
    fn cpu_dimensions_count_millicores() {
        assert_eq!(Unit::of_resource("requests.cpu"), Unit::Milli);
        assert_eq!(Unit::of_resource("limits.cpu"), Unit::Milli);
        assert_eq!(Unit::of_resource("requests.memory"), Unit::Whole);
        assert_eq!(Unit::of_resource("pods"), Unit::Whole);
    }
}
