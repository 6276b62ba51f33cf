//! Kubernetes resource quantities and the [`ResourceRequests`] built from them.
//!
//! [`parse_cpu`] and [`parse_memory`] follow the Kubernetes quantity grammar: an
//! optional sign, a decimal number (`1`, `1.5`, `.5`, `1.`), and one suffix: binary
//! `Ki Mi Gi Ti Pi Ei`, decimal `n u m k M G T P E`, or a decimal exponent `e<int>` /
//! `E<int>`. Like Kubernetes, conversion to millicores or bytes rounds up (`0.1m` CPU is
//! `1m`, `1.5m` bytes is 1 byte). Negative quantities are refused (requests cannot be
//! negative), as are values with more than 20 significant digits and values that do not
//! fit in a `u64`.

use std::iter::Sum;
use std::ops::{Add, AddAssign};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a string is not a valid Kubernetes quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The input was empty.
    #[error("empty quantity: expected something like 250m, 1, 512Mi or 1Gi")]
    Empty,
    /// A minus sign.
    #[error("invalid quantity {input:?}: resource quantities cannot be negative")]
    Negative {
        /// The input.
        input: String,
    },
    /// More than 20 significant digits.
    #[error("invalid quantity {input:?}: more than 20 significant digits")]
    TooPrecise {
        /// The input.
        input: String,
    },
    /// The value does not fit in 64 bits in the target unit.
    #[error("quantity {input:?} is too large")]
    Overflow {
        /// The input.
        input: String,
    },
    /// Anything else.
    #[error("invalid quantity {input:?}: {reason}")]
    Invalid {
        /// The input.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl QuantityError {
    /// Short static category for metrics labels and Event reasons.
    pub const fn category(&self) -> &'static str {
        "InvalidQuantity"
    }
}

/// Parses a CPU quantity (`250m`, `1`, `1.5`, `0.1`, `100u`) into millicores,
/// rounding up.
pub fn parse_cpu(input: &str) -> Result<u64, QuantityError> {
    parse_quantity(input, 3)
}

/// Parses a memory or storage quantity (`512Mi`, `1Gi`, `1G`, `128974848`, `129e6`,
/// `1.5Gi`) into bytes, rounding up.
pub fn parse_memory(input: &str) -> Result<u64, QuantityError> {
    parse_quantity(input, 0)
}

/// Formats millicores as a Kubernetes quantity: `250m`, `1`, `1500m`.
pub fn format_cpu(millicores: u64) -> String {
    if millicores.is_multiple_of(1000) {
        (millicores / 1000).to_string()
    } else {
        format!("{millicores}m")
    }
}

/// Formats bytes as a Kubernetes quantity with the largest exact binary suffix:
/// `512Mi`, `1Gi`, `1536Mi`, `1000` (no exact suffix).
pub fn format_memory(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    for (shift, suffix) in [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ] {
        let unit = 1u64 << shift;
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Parses a quantity and returns `ceil(value × 10^target_exp)`.
fn parse_quantity(input: &str, target_exp: i64) -> Result<u64, QuantityError> {
    let invalid = |reason| QuantityError::Invalid {
        input: input.to_owned(),
        reason,
    };
    let overflow = || QuantityError::Overflow {
        input: input.to_owned(),
    };
    if input.is_empty() {
        return Err(QuantityError::Empty);
    }
    let unsigned = match input.as_bytes()[0] {
        b'-' => {
            return Err(QuantityError::Negative {
                input: input.to_owned(),
            });
        }
        b'+' => &input[1..],
        _ => input,
    };

    // Number: digits, optional point, digits.
    let int_len = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    let (int_part, rest) = unsigned.split_at(int_len);
    let (frac_part, suffix) = match rest.strip_prefix('.') {
        Some(after) => {
            let n = after.bytes().take_while(u8::is_ascii_digit).count();
            after.split_at(n)
        }
        None => ("", rest),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(invalid("expected a number such as 250m, 1.5 or 512Mi"));
    }

    // Suffix: (decimal exponent, binary exponent).
    let (exp10, exp2): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => (
            parse_exponent(&s[1..])
                .ok_or_else(|| invalid("a decimal exponent needs an integer, as in 129e6"))?,
            0,
        ),
        _ => {
            return Err(invalid(
                "unknown suffix (use Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or e<exponent>)",
            ));
        }
    };

    // Significant digits: strip leading zeros, fold trailing zeros into the exponent.
    let all_digits = format!("{int_part}{frac_part}");
    let significant = all_digits.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    if trimmed.is_empty() {
        return Ok(0);
    }
    if trimmed.len() > 20 {
        return Err(QuantityError::TooPrecise {
            input: input.to_owned(),
        });
    }
    let trailing_zeros = (significant.len() - trimmed.len()) as i64;
    let mantissa: u128 = trimmed.parse().map_err(|_| invalid("bad digits"))?;
    let power = exp10
        .saturating_sub(frac_part.len() as i64)
        .saturating_add(trailing_zeros)
        .saturating_add(target_exp);

    // mantissa < 10^20 and 2^60 < 1.2·10^18, so the shift stays below 1.2·10^38 < u128::MAX.
    let scaled = mantissa << exp2;
    let value: u128 = if power >= 0 {
        let factor = u32::try_from(power)
            .ok()
            .and_then(|p| 10u128.checked_pow(p))
            .ok_or_else(overflow)?;
        scaled.checked_mul(factor).ok_or_else(overflow)?
    } else {
        match u32::try_from(power.unsigned_abs())
            .ok()
            .and_then(|k| 10u128.checked_pow(k))
        {
            // 0 < value < 1: rounds up to one unit.
            None => 1,
            Some(den) => scaled.div_ceil(den),
        }
    };
    u64::try_from(value).map_err(|_| overflow())
}

/// Parses the signed integer of a decimal exponent; huge magnitudes saturate.
fn parse_exponent(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX);
    Some(if negative { -magnitude } else { magnitude })
}

/// CPU and memory requested by one or more containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequests {
    /// CPU in millicores (`1000` = one core).
    pub cpu_millicores: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl ResourceRequests {
    /// Nothing requested.
    pub const ZERO: ResourceRequests = ResourceRequests {
        cpu_millicores: 0,
        memory_bytes: 0,
    };

    /// Parses Kubernetes quantities, e.g. `from_quantities("250m", "512Mi")`.
    pub fn from_quantities(cpu: &str, memory: &str) -> Result<Self, QuantityError> {
        Ok(ResourceRequests {
            cpu_millicores: parse_cpu(cpu)?,
            memory_bytes: parse_memory(memory)?,
        })
    }

    /// The requests of `n` replicas (saturating).
    pub const fn scaled(self, n: u64) -> Self {
        ResourceRequests {
            cpu_millicores: self.cpu_millicores.saturating_mul(n),
            memory_bytes: self.memory_bytes.saturating_mul(n),
        }
    }

    /// CPU as a Kubernetes quantity.
    pub fn cpu_quantity(&self) -> String {
        format_cpu(self.cpu_millicores)
    }

    /// Memory as a Kubernetes quantity.
    pub fn memory_quantity(&self) -> String {
        format_memory(self.memory_bytes)
    }
}

impl Add for ResourceRequests {
    type Output = ResourceRequests;

    /// Saturating sum.
    fn add(self, rhs: Self) -> Self {
        ResourceRequests {
            cpu_millicores: self.cpu_millicores.saturating_add(rhs.cpu_millicores),
            memory_bytes: self.memory_bytes.saturating_add(rhs.memory_bytes),
        }
    }
}

impl AddAssign for ResourceRequests {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl Sum for ResourceRequests {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(ResourceRequests::ZERO, Add::add)
    }
}

impl<'a> Sum<&'a ResourceRequests> for ResourceRequests {
    fn sum<I: Iterator<Item = &'a ResourceRequests>>(iter: I) -> Self {
        iter.copied().sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MI: u64 = 1 << 20;

    #[test]
    fn quantity_table() {
        let cpu = [
            ("250m", 250),
            ("1", 1000),
            ("1.5", 1500),
            ("0.1", 100),
            (".5", 500),
            ("2.", 2000),
            ("100u", 1),
            ("0.1m", 1),
            ("1500000n", 2),
            ("1e3", 1_000_000),
            ("+1", 1000),
            ("0", 0),
            ("0.000", 0),
            ("1k", 1_000_000),
        ];
        for (input, expected) in cpu {
            assert_eq!(parse_cpu(input).unwrap(), expected, "cpu {input}");
        }
        let memory = [
            ("512Mi", 512 * MI),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129E6", 129_000_000),
            ("123Mi", 123 * MI),
            ("1.5Gi", 3 << 29),
            ("128974848000m", 128_974_848),
            ("1500m", 2),
            ("1Ki", 1024),
            ("1k", 1000),
            ("8Ei", 8 << 60),
            ("1E", 1_000_000_000_000_000_000),
            ("1e-3", 1),
            ("12e-1000000000", 1),
            ("0e99999999999999999999", 0),
        ];
        for (input, expected) in memory {
            assert_eq!(parse_memory(input).unwrap(), expected, "memory {input}");
        }
    }

    #[test]
    fn quantity_rejections_say_why() {
        let cases = [
            ("", "empty quantity"),
            ("-1", "cannot be negative"),
            ("abc", "expected a number"),
            ("Mi", "expected a number"),
            (".", "expected a number"),
            ("1x", "unknown suffix"),
            ("1mi", "unknown suffix"),
            ("1 Gi", "unknown suffix"),
            ("1.5.5", "unknown suffix"),
            ("1e", "decimal exponent"),
            ("1e3.5", "decimal exponent"),
            ("16Ei", "too large"),
            ("1e30", "too large"),
            ("1e99999999999999999999", "too large"),
            ("123456789012345678901", "more than 20 significant digits"),
        ];
        for (input, expected) in cases {
            let err = parse_memory(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
        assert!(parse_cpu("18446744073709552").is_err());
    }

    #[test]
    fn format_round_trips() {
        for m in [0, 1, 250, 1000, 1500, 2000] {
            assert_eq!(parse_cpu(&format_cpu(m)).unwrap(), m);
        }
        for b in [0, 1, 1000, 1024, 512 * MI, 1536 * MI, 1 << 30, 3 << 40] {
            assert_eq!(parse_memory(&format_memory(b)).unwrap(), b);
        }
        assert_eq!(format_memory(1536 * MI), "1536Mi");
        assert_eq!(format_cpu(1500), "1500m");
    }

    #[test]
    fn requests_add_and_parse() {
        let a = ResourceRequests::from_quantities("250m", "512Mi").unwrap();
        let b = ResourceRequests::from_quantities("1", "1Gi").unwrap();
        let sum: ResourceRequests = [a, b].iter().sum();
        assert_eq!(sum.cpu_millicores, 1250);
        assert_eq!(sum.memory_bytes, 1536 * MI);
        assert_eq!(a.scaled(3), a + a + a);
        assert!(ResourceRequests::from_quantities("250x", "1Gi").is_err());
    }
}
