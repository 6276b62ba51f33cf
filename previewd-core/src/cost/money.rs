//! [`Money`]: a non-negative amount of US dollars held as integer micro-dollars
//! (`$1 = 1_000_000`), so sums never drift: adding the parts of a bill always gives
//! exactly its total. `Display` rounds half-up to cents (`$2.35` for 2.345 dollars);
//! the alternate form `{:#}` and serde keep full precision (`$2.345`, `$0.000001`).

use std::borrow::Cow;
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MICROS_PER_DOLLAR: i64 = 1_000_000;
const MICROS_PER_CENT: i64 = 10_000;

/// A non-negative amount of US dollars, in integer micro-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Money(i64);

/// Why a string is not a valid amount of [`Money`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The input was empty.
    #[error("empty amount: expected something like $5.00, 5 or 0.25")]
    Empty,
    /// A minus sign.
    #[error("invalid amount {input:?}: amounts cannot be negative")]
    Negative {
        /// The input.
        input: String,
    },
    /// More than six decimal places.
    #[error("invalid amount {input:?}: at most 6 decimal places (one micro-dollar)")]
    TooPrecise {
        /// The input.
        input: String,
    },
    /// Beyond [`Money::MAX`].
    #[error("amount {input:?} is too large (maximum $9223372036854.775807)")]
    Overflow {
        /// The input.
        input: String,
    },
    /// Anything else.
    #[error("invalid amount {input:?}: {reason} (expected something like $5.00, 5 or 0.25)")]
    Invalid {
        /// The input.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl MoneyError {
    /// Short static category for metrics labels and Event reasons.
    pub const fn category(&self) -> &'static str {
        "InvalidMoney"
    }
}

impl Money {
    /// Zero dollars.
    pub const ZERO: Money = Money(0);
    /// The largest amount: `i64::MAX` micro-dollars.
    pub const MAX: Money = Money(i64::MAX);
    /// The schema pattern of the string form (amounts beyond [`Money::MAX`] match it but
    /// are refused by the parser).
    pub const PATTERN: &'static str = r"^\$?[0-9]+(\.[0-9]{1,6})?$";

    /// An amount in micro-dollars; negative inputs are clamped to zero (amounts are
    /// never negative).
    pub const fn from_micros(micros: i64) -> Money {
        if micros < 0 { Money(0) } else { Money(micros) }
    }

    /// An amount in cents (saturating, negative clamped to zero).
    pub const fn from_cents(cents: i64) -> Money {
        Money::from_micros(cents.saturating_mul(MICROS_PER_CENT))
    }

    /// An amount in whole dollars (saturating, negative clamped to zero).
    pub const fn from_dollars(dollars: i64) -> Money {
        Money::from_micros(dollars.saturating_mul(MICROS_PER_DOLLAR))
    }

    /// The amount in micro-dollars.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// True for zero dollars.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Sum, or `None` on overflow.
    pub const fn checked_add(self, other: Money) -> Option<Money> {
        match self.0.checked_add(other.0) {
            Some(m) => Some(Money(m)),
            None => None,
        }
    }

    /// Difference, or `None` when it would be negative.
    pub const fn checked_sub(self, other: Money) -> Option<Money> {
        if other.0 > self.0 {
            None
        } else {
            Some(Money(self.0 - other.0))
        }
    }

    /// Product with a count, or `None` on overflow.
    pub const fn checked_mul(self, n: u64) -> Option<Money> {
        if n > i64::MAX as u64 {
            return if self.0 == 0 { Some(Money(0)) } else { None };
        }
        match self.0.checked_mul(n as i64) {
            Some(m) => Some(Money(m)),
            None => None,
        }
    }

    /// Sum capped at [`Money::MAX`].
    pub const fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// Difference floored at zero.
    pub const fn saturating_sub(self, other: Money) -> Money {
        Money::from_micros(self.0 - other.0)
    }

    /// Product capped at [`Money::MAX`].
    pub const fn saturating_mul(self, n: u64) -> Money {
        match self.checked_mul(n) {
            Some(m) => m,
            None => Money::MAX,
        }
    }

    /// Exact sum of amounts, or `None` on overflow.
    pub fn checked_sum<I: IntoIterator<Item = Money>>(parts: I) -> Option<Money> {
        parts
            .into_iter()
            .try_fold(Money::ZERO, |acc, m| acc.checked_add(m))
    }

    /// Rounded half-up to whole cents (what `Display` prints).
    pub const fn round_to_cents(self) -> Money {
        let cents = (self.0 as i128 + (MICROS_PER_CENT as i128) / 2) / MICROS_PER_CENT as i128;
        let micros = cents * MICROS_PER_CENT as i128;
        if micros > i64::MAX as i128 {
            // Rounding MAX up would overflow; round it down instead.
            Money((self.0 / MICROS_PER_CENT) * MICROS_PER_CENT)
        } else {
            Money(micros as i64)
        }
    }

    /// `self` as a whole percentage of `whole` (rounded down), `None` when `whole` is zero.
    pub fn percent_of(self, whole: Money) -> Option<u64> {
        if whole.0 == 0 {
            return None;
        }
        let pct = (self.0 as i128 * 100) / whole.0 as i128;
        Some(u64::try_from(pct).unwrap_or(u64::MAX))
    }

    /// The full-precision string form used by serde: `$2.34`, `$2.345`, `$0.000001`.
    pub fn to_exact_string(self) -> String {
        format!("{self:#}")
    }

    /// Multiplies by `num / den` and rounds half-up, saturating at [`Money::MAX`].
    pub(super) fn mul_ratio(self, num: u128, den: u128) -> Money {
        Money::from_micros(mul_div_round(self.0 as u128, num, den))
    }
}

/// `round_half_up(a * b / den)` in u128, saturating to `i64::MAX`.
pub(super) fn mul_div_round(a: u128, b: u128, den: u128) -> i64 {
    if den == 0 {
        return 0;
    }
    let Some(product) = a.checked_mul(b) else {
        return i64::MAX;
    };
    let q = product / den;
    let r = product % den;
    let rounded = if r >= den - r { q + 1 } else { q };
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

impl fmt::Display for Money {
    /// `{}` prints dollars rounded half-up to cents (`$2.35`); `{:#}` prints full
    /// precision with at least two decimals (`$2.345`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if f.alternate() {
            let dollars = self.0 / MICROS_PER_DOLLAR;
            let frac = format!("{:06}", self.0 % MICROS_PER_DOLLAR);
            let trimmed = frac.trim_end_matches('0');
            let decimals = if trimmed.len() < 2 {
                &frac[..2]
            } else {
                trimmed
            };
            format!("${dollars}.{decimals}")
        } else {
            let cents = (self.0 as i128 + (MICROS_PER_CENT as i128) / 2) / MICROS_PER_CENT as i128;
            format!("${}.{:02}", cents / 100, cents % 100)
        };
        f.pad(&s)
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    /// Accepts `$5.00`, `5`, `5.5`, `$0.000001`: an optional `$`, digits, and up to six
    /// decimals.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| MoneyError::Invalid {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(MoneyError::Empty);
        }
        let body = input.strip_prefix('$').unwrap_or(input);
        if input.starts_with('-') || body.starts_with('-') {
            return Err(MoneyError::Negative {
                input: input.to_owned(),
            });
        }
        let (whole, frac) = match body.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (body, None),
        };
        if whole.is_empty() {
            return Err(invalid("expected digits before the decimal point"));
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "expected only digits, an optional $ and a decimal point",
            ));
        }
        let frac_micros = match frac {
            None => 0,
            Some("") => return Err(invalid("expected digits after the decimal point")),
            Some(f) if !f.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(invalid("expected only digits after the decimal point"));
            }
            Some(f) if f.len() > 6 => {
                return Err(MoneyError::TooPrecise {
                    input: input.to_owned(),
                });
            }
            Some(f) => {
                let padded = format!("{f:0<6}");
                padded.parse::<i64>().map_err(|_| invalid("bad decimals"))?
            }
        };
        let overflow = || MoneyError::Overflow {
            input: input.to_owned(),
        };
        let digits = whole.trim_start_matches('0');
        let dollars: i64 = if digits.is_empty() {
            0
        } else if digits.len() > 19 {
            return Err(overflow());
        } else {
            digits.parse().map_err(|_| overflow())?
        };
        dollars
            .checked_mul(MICROS_PER_DOLLAR)
            .and_then(|m| m.checked_add(frac_micros))
            .map(Money)
            .ok_or_else(overflow)
    }
}

impl Add for Money {
    type Output = Money;

    /// Saturating at [`Money::MAX`]; use [`Money::checked_add`] to detect overflow.
    fn add(self, rhs: Money) -> Money {
        self.saturating_add(rhs)
    }
}

impl AddAssign for Money {
    fn add_assign(&mut self, rhs: Money) {
        *self = self.saturating_add(rhs);
    }
}

impl Sum for Money {
    /// Saturating sum; exact unless the total exceeds [`Money::MAX`].
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Money::saturating_add)
    }
}

impl<'a> Sum<&'a Money> for Money {
    fn sum<I: Iterator<Item = &'a Money>>(iter: I) -> Money {
        iter.copied().sum()
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_exact_string())
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Money {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Money")
    }

    fn schema_id() -> Cow<'static, str> {
        // The path the type is re-exported at (`previewd_core::cost::Money`), as before
        // the module was split.
        Cow::Borrowed(concat!(env!("CARGO_CRATE_NAME"), "::cost::Money"))
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": Money::PATTERN,
            "description": "US dollars such as $5.00, 5 or 0.25 (at most 6 decimals).",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn money(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn money_parses_common_forms() {
        assert_eq!(money("$5.00").micros(), 5_000_000);
        assert_eq!(money("5").micros(), 5_000_000);
        assert_eq!(money("5.5").micros(), 5_500_000);
        assert_eq!(money("$0.000001").micros(), 1);
        assert_eq!(money("$0.04").micros(), 40_000);
        assert_eq!(money("007.10").micros(), 7_100_000);
        assert_eq!(money("$9223372036854.775807"), Money::MAX);
    }

    #[test]
    fn money_rejections_say_why() {
        let cases = [
            ("", "empty amount"),
            ("-5", "cannot be negative"),
            ("$-5", "cannot be negative"),
            ("-$5", "cannot be negative"),
            ("abc", "expected only digits"),
            ("$", "expected digits before"),
            (".5", "expected digits before"),
            ("5.", "expected digits after"),
            ("5.1234567", "at most 6 decimal places"),
            ("1,000", "expected only digits"),
            ("5 USD", "expected only digits"),
            ("$9223372036854.775808", "too large"),
            ("99999999999999999999999", "too large"),
            ("5.5.5", "expected only digits after"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Money>().unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn money_display_rounds_half_up_to_cents() {
        assert_eq!(money("2.34").to_string(), "$2.34");
        assert_eq!(money("2.345").to_string(), "$2.35");
        assert_eq!(money("2.344999").to_string(), "$2.34");
        assert_eq!(money("0.005").to_string(), "$0.01");
        assert_eq!(Money::ZERO.to_string(), "$0.00");
        assert_eq!(format!("{:#}", money("2.345")), "$2.345");
        assert_eq!(format!("{:#}", money("$0.000001")), "$0.000001");
        assert_eq!(format!("{:#}", money("3")), "$3.00");
        assert_eq!(format!("{:#}", money("3.1")), "$3.10");
        assert_eq!(format!("{:>8}", money("3")), "   $3.00");
        assert_eq!(Money::MAX.round_to_cents().to_string(), "$9223372036854.77");
    }

    #[test]
    fn money_serde_keeps_full_precision() {
        let m = money("0.0375");
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"$0.0375\"");
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), m);
        assert!(serde_json::from_str::<Money>("\"-1\"").is_err());
    }

    #[test]
    fn money_arithmetic() {
        assert_eq!(Money::from_cents(150), money("1.50"));
        assert_eq!(Money::from_dollars(2), money("2"));
        assert_eq!(Money::from_micros(-5), Money::ZERO);
        assert_eq!(money("1").checked_sub(money("2")), None);
        assert_eq!(money("1").saturating_sub(money("2")), Money::ZERO);
        assert_eq!(Money::MAX.checked_add(Money::from_micros(1)), None);
        assert_eq!(Money::MAX + Money::from_micros(1), Money::MAX);
        assert_eq!(money("0.5").checked_mul(3), Some(money("1.5")));
        assert_eq!(Money::MAX.checked_mul(2), None);
        assert_eq!(money("1").percent_of(money("4")), Some(25));
        assert_eq!(money("1").percent_of(Money::ZERO), None);
    }
}
