//! Kubernetes resource quantities and the [`ResourceRequests`] built from them.
//!
//! [`parse_cpu`] and [`parse_memory`] accept exactly the strings of
//! [`QUANTITY_PATTERN`] of at most [`QUANTITY_MAX_LENGTH`] characters, the rule the CRD
//! schema carries, so that what the API server admits always parses and what parses is
//! always admitted (a property test checks both directions). The grammar is the
//! Kubernetes quantity grammar without its sign and its corner cases: an optional `+`, a
//! decimal number (`1`, `1.5`, `.5`, `1.`), and at most one suffix: binary
//! `Ki Mi Gi Ti Pi Ei`, decimal `n u m k M G T P E` (a lower-case `k` for thousands:
//! Kubernetes refuses `K`), or a decimal exponent `e<int>` / `E<int>` of at most two
//! digits (the API server takes minutes to write `1e999999999` into a ResourceQuota).
//! Negative quantities are refused (requests cannot be negative).
//!
//! Like Kubernetes, conversion to millicores or bytes rounds up (`0.1m` CPU is `1m`,
//! `1.5m` bytes is 1 byte), and values beyond the range are capped (at `u64::MAX`, where
//! Kubernetes caps at 2^63 - 1) rather than refused: the API server accepts them too.

use std::iter::Sum;
use std::ops::{Add, AddAssign};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The quantities previewd accepts (regular expression, RE2 and Rust `regex` syntax, no
/// backslashes so that it can sit in a CEL string as is).
pub const QUANTITY_PATTERN: &str =
    "^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]{1,2})?$";

/// The longest quantity accepted, in characters.
pub const QUANTITY_MAX_LENGTH: usize = 64;

/// The CEL message of a string that is not a quantity (`self` is the string).
pub const QUANTITY_MESSAGE_EXPRESSION: &str = "\"'\" + self + \"' is not a Kubernetes quantity: write a number and an optional suffix, e.g. 250m, 1.5, 512Mi, 1Gi, 500M or 129e6 (suffixes Ki Mi Gi Ti Pi Ei, n u m k M G T P E; thousands are a lower-case k)\"";

/// The schema of a quantity field (`#[schemars(schema_with = "...")]`): a string of at
/// most [`QUANTITY_MAX_LENGTH`] characters that the CEL rule `matches(QUANTITY_PATTERN)`
/// admits, refused with a message saying what a quantity looks like.
pub fn quantity_schema(_generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": QUANTITY_MAX_LENGTH,
        "x-kubernetes-validations": [{
            "rule": format!("self.matches('{QUANTITY_PATTERN}')"),
            "messageExpression": QUANTITY_MESSAGE_EXPRESSION,
        }],
    })
}

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
    /// Longer than [`QUANTITY_MAX_LENGTH`].
    #[error("invalid quantity {input:?}: longer than {QUANTITY_MAX_LENGTH} characters")]
    TooLong {
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

/// The parts of a quantity: its decimal digits with the position of the decimal point,
/// and its suffix as (decimal exponent, binary exponent).
struct Parts<'a> {
    int_part: &'a str,
    frac_part: &'a str,
    exp10: i64,
    exp2: u32,
}

/// Checks `input` against the grammar (the same as [`QUANTITY_PATTERN`]).
fn split(input: &str) -> Result<Parts<'_>, QuantityError> {
    let invalid = |reason| QuantityError::Invalid {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(QuantityError::Empty);
    }
    if input.len() > QUANTITY_MAX_LENGTH {
        return Err(QuantityError::TooLong {
            input: input.to_owned(),
        });
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
        "K" => return Err(invalid("unknown suffix K (thousands are a lower-case k)")),
        s if s.starts_with(['e', 'E']) => (
            parse_exponent(&s[1..]).ok_or_else(|| {
                invalid("a decimal exponent is an integer of at most two digits, as in 129e6")
            })?,
            0,
        ),
        _ => {
            return Err(invalid(
                "unknown suffix (use Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or e<exponent>)",
            ));
        }
    };
    Ok(Parts {
        int_part,
        frac_part,
        exp10,
        exp2,
    })
}

/// Parses a quantity and returns `ceil(value × 10^target_exp)`, capped at `u64::MAX`.
fn parse_quantity(input: &str, target_exp: i64) -> Result<u64, QuantityError> {
    let parts = split(input)?;
    Ok(scaled_ceiling(&parts, target_exp))
}

/// `ceil(digits × 10^(exp10 + target_exp) × 2^exp2)`, capped at `u64::MAX`, exactly, for
/// any number of digits.
fn scaled_ceiling(parts: &Parts<'_>, target_exp: i64) -> u64 {
    let digits: Vec<u8> = parts
        .int_part
        .bytes()
        .chain(parts.frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let Some(first) = digits.iter().position(|d| *d != 0) else {
        return 0;
    };
    // Position of the decimal point in `digits` once the exponent is applied.
    let point = parts.int_part.len() as i64 + parts.exp10 + target_exp;
    let first = first as i64;
    // The integer part has more than 20 significant digits: at least 10^20.
    if point - first > 20 {
        return u64::MAX;
    }
    let digit = |i: i64| -> u8 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0)
    };
    // Integer part: at most 20 digits, so below 10^20.
    let mut integer: u128 = 0;
    for i in first.min(point)..point {
        integer = integer * 10 + u128::from(digit(i));
    }
    let multiplier = 1u128 << parts.exp2;
    // Below 10^20 × 2^60 < u128::MAX.
    let mut value = integer * multiplier;
    // Fraction: the digits after the point. Starting with 20 zeros or more, it is below
    // 10^-20 and times at most 2^60 below one: it only rounds up.
    let frac_start = point.max(first);
    let frac_end = digits.len() as i64;
    if frac_start < frac_end {
        if point < -20 {
            value += 1;
        } else {
            let mut fraction: Vec<u128> = (point.min(frac_start)..frac_end)
                .map(|i| u128::from(digit(i)))
                .collect();
            // fraction × 2^exp2, digit by digit from the least significant: the carry out
            // is the integer part of the product, what remains its fraction.
            let mut carry: u128 = 0;
            for d in fraction.iter_mut().rev() {
                let t = *d * multiplier + carry;
                *d = t % 10;
                carry = t / 10;
            }
            value += carry;
            if fraction.iter().any(|d| *d != 0) {
                value += 1;
            }
        }
    }
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Parses the signed integer of a decimal exponent: an optional sign and one or two
/// digits.
fn parse_exponent(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.parse::<i64>().ok()?;
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
            ("18446744073709551615m", u64::MAX),
            ("18446744073709551616m", u64::MAX),
        ];
        for (input, expected) in cpu {
            assert_eq!(parse_cpu(input).unwrap(), expected, "cpu {input}");
        }
        let memory = [
            ("512Mi", 512 * MI),
            ("512k", 512_000),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129E6", 129_000_000),
            ("1.5e+3", 1500),
            ("123Mi", 123 * MI),
            ("1.5Gi", 3 << 29),
            ("0.0000001Ei", 115_292_150_461),
            ("128974848000m", 128_974_848),
            ("1500m", 2),
            ("1Ki", 1024),
            ("1k", 1000),
            ("8Ei", 8 << 60),
            ("1E", 1_000_000_000_000_000_000),
            ("1e-3", 1),
            ("12e-99", 1),
            ("0e99", 0),
            ("1e99", u64::MAX),
            (
                "0.000000000000000000000000000000000000000000000000000001",
                1,
            ),
            ("123456789012345678901234567890e-28", 13),
            // Beyond the range: capped, as Kubernetes caps.
            ("16Ei", u64::MAX),
            ("1e30", u64::MAX),
            ("123456789012345678901", u64::MAX),
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
            ("+", "expected a number"),
            ("512K", "thousands are a lower-case k"),
            ("1x", "unknown suffix"),
            ("1mi", "unknown suffix"),
            ("1 Gi", "unknown suffix"),
            ("1.5.5", "unknown suffix"),
            ("1e", "decimal exponent"),
            ("1e3.5", "decimal exponent"),
            ("1e100", "decimal exponent"),
            ("1e99999999999999999999", "decimal exponent"),
        ];
        for (input, expected) in cases {
            let err = parse_memory(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
        let long = "1".repeat(QUANTITY_MAX_LENGTH + 1);
        assert!(
            parse_cpu(&long)
                .unwrap_err()
                .to_string()
                .contains("longer than 64")
        );
        assert_eq!(
            parse_cpu(&"1".repeat(QUANTITY_MAX_LENGTH)).unwrap(),
            u64::MAX
        );
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
