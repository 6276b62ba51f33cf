//! Money, Kubernetes resource quantities, cost estimates and budgets.
//!
//! # Money
//!
//! [`Money`] is a non-negative amount of US dollars held as integer micro-dollars
//! (`$1 = 1_000_000`), so sums never drift: adding the parts of a bill always gives
//! exactly its total. `Display` rounds half-up to cents (`$2.35` for 2.345 dollars);
//! the alternate form `{:#}` and serde keep full precision (`$2.345`, `$0.000001`).
//!
//! # Prices and units
//!
//! Prices are per hour of a *requested* resource (what the scheduler reserves), and
//! memory and storage are priced per **GiB** (2^30 bytes), the unit Kubernetes
//! quantities use (`512Mi`, `1Gi`) and the unit cloud providers actually bill memory
//! in even where their price lists say "GB". Defaults: $0.04 per core-hour, $0.005 per
//! GiB-hour of memory, $0.0001 per GiB-hour of storage (about $0.07 per GiB-month).
//! Network egress is not metered: the `network` part of a breakdown is zero.
//!
//! A month is 730 hours (365 × 24 / 12), the convention of cloud price lists.
//!
//! # Quantities
//!
//! [`parse_cpu`] and [`parse_memory`] follow the Kubernetes quantity grammar: an
//! optional sign, a decimal number (`1`, `1.5`, `.5`, `1.`), and one suffix: binary
//! `Ki Mi Gi Ti Pi Ei`, decimal `n u m k M G T P E`, or a decimal exponent `e<int>` /
//! `E<int>`. Like Kubernetes, conversion to millicores or bytes rounds up (`0.1m` CPU is
//! `1m`, `1.5m` bytes is 1 byte). Negative quantities are refused (requests cannot be
//! negative), as are values with more than 20 significant digits and values that do not
//! fit in a `u64`.

use std::borrow::Cow;
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MICROS_PER_DOLLAR: i64 = 1_000_000;
const MICROS_PER_CENT: i64 = 10_000;
const GIB: u64 = 1 << 30;
/// Hours in the month used for monthly figures (365 × 24 / 12).
pub const HOURS_PER_MONTH: u64 = 730;
/// A budget is in the warning zone from this percentage of its limit.
pub const BUDGET_WARN_PERCENT: u64 = 80;

// ---------------------------------------------------------------------------------
// Money
// ---------------------------------------------------------------------------------

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
    fn mul_ratio(self, num: u128, den: u128) -> Money {
        Money::from_micros(mul_div_round(self.0 as u128, num, den))
    }
}

/// `round_half_up(a * b / den)` in u128, saturating to `i64::MAX`.
fn mul_div_round(a: u128, b: u128, den: u128) -> i64 {
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
        Cow::Borrowed(concat!(module_path!(), "::Money"))
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": Money::PATTERN,
            "description": "US dollars such as $5.00, 5 or 0.25 (at most 6 decimals).",
        })
    }
}

// ---------------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------
// Requests, pricing, estimates
// ---------------------------------------------------------------------------------

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

/// Hourly prices of requested resources (memory and storage per GiB, see the module
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Pricing {
    /// Price of one requested CPU core for one hour (default $0.04).
    pub cpu_per_core_hour: Money,
    /// Price of one GiB of requested memory for one hour (default $0.005).
    pub memory_per_gib_hour: Money,
    /// Price of one GiB of persistent storage for one hour (default $0.0001).
    pub storage_per_gib_hour: Money,
}

impl Pricing {
    /// The default prices.
    pub const DEFAULT: Pricing = Pricing {
        cpu_per_core_hour: Money::from_micros(40_000),
        memory_per_gib_hour: Money::from_micros(5_000),
        storage_per_gib_hour: Money::from_micros(100),
    };
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing::DEFAULT
    }
}

/// Hourly cost split by kind; the parts add up exactly to [`CostEstimate::hourly`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostBreakdown {
    /// CPU and memory.
    pub compute: Money,
    /// Persistent storage.
    pub storage: Money,
    /// Network egress (not metered: always zero today).
    pub network: Money,
}

impl CostBreakdown {
    /// Sum of the parts.
    pub fn total(&self) -> Money {
        self.compute + self.storage + self.network
    }
}

/// What an environment costs to keep running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostEstimate {
    /// Cost per hour (rounded half-up to the micro-dollar).
    pub hourly: Money,
    /// `hourly × 24`.
    pub daily: Money,
    /// `hourly × 730`.
    pub monthly: Money,
    /// The hourly cost split by kind.
    pub breakdown: CostBreakdown,
}

impl CostEstimate {
    /// Estimate for CPU and memory requests, without storage.
    pub fn estimate(requests: &ResourceRequests, pricing: &Pricing) -> CostEstimate {
        CostEstimate::estimate_with_storage(requests, 0, pricing)
    }

    /// Estimate for CPU and memory requests plus `storage_bytes` of persistent storage.
    pub fn estimate_with_storage(
        requests: &ResourceRequests,
        storage_bytes: u64,
        pricing: &Pricing,
    ) -> CostEstimate {
        // One rounding for compute: cpu·p_cpu/1000 + mem·p_mem/2^30 over a common
        // denominator, so CPU and memory are not rounded separately.
        let den = 1000u128 * GIB as u128;
        let cpu = (requests.cpu_millicores as u128)
            .checked_mul(pricing.cpu_per_core_hour.micros() as u128)
            .and_then(|v| v.checked_mul(GIB as u128));
        let mem = (requests.memory_bytes as u128)
            .checked_mul(pricing.memory_per_gib_hour.micros() as u128)
            .and_then(|v| v.checked_mul(1000));
        let compute = match cpu.zip(mem).and_then(|(c, m)| c.checked_add(m)) {
            Some(num) => Money::from_micros(mul_div_round(num, 1, den)),
            None => Money::MAX,
        };
        let storage = Money::from_micros(mul_div_round(
            storage_bytes as u128,
            pricing.storage_per_gib_hour.micros() as u128,
            GIB as u128,
        ));
        let breakdown = CostBreakdown {
            compute,
            storage,
            network: Money::ZERO,
        };
        let hourly = breakdown.total();
        CostEstimate {
            hourly,
            daily: hourly.saturating_mul(24),
            monthly: hourly.saturating_mul(HOURS_PER_MONTH),
            breakdown,
        }
    }

    /// What running for `running_for` costs at this hourly rate (rounded half-up to the
    /// micro-dollar). One hour gives exactly `hourly`.
    pub fn accrued(&self, running_for: Duration) -> Money {
        self.hourly
            .mul_ratio(running_for.as_nanos(), 3_600 * 1_000_000_000)
    }
}

/// Cost of running `requests` for `running_for` at `pricing` (CPU and memory only).
pub fn actual_cost(requests: &ResourceRequests, pricing: &Pricing, running_for: Duration) -> Money {
    CostEstimate::estimate(requests, pricing).accrued(running_for)
}

// ---------------------------------------------------------------------------------
// Budgets
// ---------------------------------------------------------------------------------

/// Spending limits of one environment (or of a repository's environments).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Limit on the estimated cost per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<Money>,
    /// Limit on the total spent so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Money>,
}

/// Which limit of a [`Budget`] a verdict is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetLimit {
    /// The daily limit (compared with the estimated daily cost).
    Daily,
    /// The total limit (compared with the spend to date).
    Total,
}

impl fmt::Display for BudgetLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetLimit::Daily => "daily",
            BudgetLimit::Total => "total",
        })
    }
}

/// The outcome of checking costs against a [`Budget`].
///
/// A limit is exceeded when the amount is strictly above it; at or above
/// [`BUDGET_WARN_PERCENT`] of a (non-zero) limit the verdict is a warning. When several
/// apply, the most severe wins: total exceeded, daily exceeded, then warnings (total
/// before daily).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "verdict"
)]
pub enum BudgetVerdict {
    /// Comfortably within every limit (or no limits).
    WithinBudget,
    /// At least [`BUDGET_WARN_PERCENT`] of a limit is used.
    Warning {
        /// Which limit.
        limit: BudgetLimit,
        /// Estimated daily cost or spend to date.
        used: Money,
        /// The limit.
        allowed: Money,
    },
    /// The estimated daily cost is above the daily limit.
    DailyExceeded {
        /// Estimated cost per day.
        estimated_daily: Money,
        /// The daily limit.
        limit: Money,
    },
    /// The spend to date is above the total limit.
    TotalExceeded {
        /// Spent so far.
        spent: Money,
        /// The total limit.
        limit: Money,
    },
}

impl BudgetVerdict {
    /// True when a limit is exceeded (the environment should not be (re)created).
    pub const fn is_exceeded(&self) -> bool {
        matches!(
            self,
            BudgetVerdict::DailyExceeded { .. } | BudgetVerdict::TotalExceeded { .. }
        )
    }

    /// CamelCase reason word for conditions and Events.
    pub const fn reason(&self) -> &'static str {
        match self {
            BudgetVerdict::WithinBudget => "WithinBudget",
            BudgetVerdict::Warning { .. } => "BudgetWarning",
            BudgetVerdict::DailyExceeded { .. } => "DailyBudgetExceeded",
            BudgetVerdict::TotalExceeded { .. } => "TotalBudgetExceeded",
        }
    }
}

impl fmt::Display for BudgetVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetVerdict::WithinBudget => f.write_str("within budget"),
            BudgetVerdict::Warning {
                limit,
                used,
                allowed,
            } => {
                let pct = used.percent_of(*allowed).unwrap_or(0);
                write!(f, "{used} is {pct}% of the {limit} budget of {allowed}")
            }
            BudgetVerdict::DailyExceeded {
                estimated_daily,
                limit,
            } => write!(
                f,
                "estimated daily cost {estimated_daily} exceeds the daily budget of {limit}"
            ),
            BudgetVerdict::TotalExceeded { spent, limit } => {
                write!(f, "spent {spent}, above the total budget of {limit}")
            }
        }
    }
}

fn in_warning_zone(used: Money, limit: Money) -> bool {
    !limit.is_zero()
        && (used.micros() as i128) * 100 >= (limit.micros() as i128) * BUDGET_WARN_PERCENT as i128
}

impl Budget {
    /// No limits.
    pub const UNLIMITED: Budget = Budget {
        daily: None,
        total: None,
    };

    /// Checks the estimated daily cost and the spend to date against the limits.
    pub fn evaluate(&self, estimated_daily: Money, spent_to_date: Money) -> BudgetVerdict {
        if let Some(limit) = self.total
            && spent_to_date > limit
        {
            return BudgetVerdict::TotalExceeded {
                spent: spent_to_date,
                limit,
            };
        }
        if let Some(limit) = self.daily
            && estimated_daily > limit
        {
            return BudgetVerdict::DailyExceeded {
                estimated_daily,
                limit,
            };
        }
        if let Some(limit) = self.total
            && in_warning_zone(spent_to_date, limit)
        {
            return BudgetVerdict::Warning {
                limit: BudgetLimit::Total,
                used: spent_to_date,
                allowed: limit,
            };
        }
        if let Some(limit) = self.daily
            && in_warning_zone(estimated_daily, limit)
        {
            return BudgetVerdict::Warning {
                limit: BudgetLimit::Daily,
                used: estimated_daily,
                allowed: limit,
            };
        }
        BudgetVerdict::WithinBudget
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MI: u64 = 1 << 20;

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

    #[test]
    fn three_small_services_with_default_prices() {
        let small = ResourceRequests {
            cpu_millicores: 250,
            memory_bytes: 512 * MI,
        };
        let total: ResourceRequests = std::iter::repeat_n(small, 3).sum();
        let est = CostEstimate::estimate(&total, &Pricing::default());
        // 0.75 core × $0.04 = $0.03; 1.5 GiB × $0.005 = $0.0075; per hour $0.0375.
        assert_eq!(est.hourly, money("0.0375"));
        assert_eq!(est.breakdown.compute, money("0.0375"));
        assert_eq!(est.breakdown.storage, Money::ZERO);
        assert_eq!(est.breakdown.network, Money::ZERO);
        // Per day 24 × $0.0375 = $0.90; per month 730 × $0.0375 = $27.375.
        assert_eq!(est.daily, money("0.90"));
        assert_eq!(est.monthly, money("27.375"));
        assert_eq!(est.monthly.to_string(), "$27.38");
        // Two and a half hours: $0.09375.
        assert_eq!(
            actual_cost(&total, &Pricing::default(), Duration::from_secs(9000)),
            money("0.09375")
        );
        assert_eq!(est.accrued(Duration::from_secs(3600)), est.hourly);
    }

    #[test]
    fn storage_is_priced_per_gib_hour() {
        let est = CostEstimate::estimate_with_storage(
            &ResourceRequests::ZERO,
            10 << 30,
            &Pricing::default(),
        );
        assert_eq!(est.breakdown.storage, money("0.001"));
        assert_eq!(est.hourly, est.breakdown.total());
    }

    #[test]
    fn rounding_is_half_up_at_the_micro_dollar() {
        // 1 millicore × $0.04 = $0.00004 = 40 micros exactly; 1 byte of memory is
        // 5000/2^30 micros, rounds to zero.
        let est = CostEstimate::estimate(
            &ResourceRequests {
                cpu_millicores: 1,
                memory_bytes: 1,
            },
            &Pricing::default(),
        );
        assert_eq!(est.hourly.micros(), 40);
        // 1 millicore at $0.0005/core-hour is 0.5 micros: rounds up.
        let pricing = Pricing {
            cpu_per_core_hour: money("0.0005"),
            ..Pricing::default()
        };
        let est = CostEstimate::estimate(
            &ResourceRequests {
                cpu_millicores: 1,
                memory_bytes: 0,
            },
            &pricing,
        );
        assert_eq!(est.hourly.micros(), 1);
    }

    #[test]
    fn pricing_serde_defaults() {
        let p: Pricing = serde_json::from_str(r#"{"cpuPerCoreHour":"$0.05"}"#).unwrap();
        assert_eq!(p.cpu_per_core_hour, money("0.05"));
        assert_eq!(p.memory_per_gib_hour, money("0.005"));
        let json = serde_json::to_value(Pricing::default()).unwrap();
        assert_eq!(json["memoryPerGibHour"], "$0.005");
    }

    #[test]
    fn schemas_inline_money_as_patterned_strings() {
        let schema = serde_json::to_value(schemars::schema_for!(Pricing)).unwrap();
        let cpu = &schema["properties"]["cpuPerCoreHour"];
        assert_eq!(cpu["type"], "string");
        assert_eq!(cpu["pattern"], Money::PATTERN);
        assert!(!schema.to_string().contains("$ref"), "{schema}");
    }

    #[test]
    fn verdict_serde_is_camel_case() {
        let v = BudgetVerdict::DailyExceeded {
            estimated_daily: Money::from_cents(101),
            limit: Money::from_dollars(1),
        };
        let json = serde_json::to_value(v).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"verdict": "dailyExceeded", "estimatedDaily": "$1.01", "limit": "$1.00"})
        );
        assert_eq!(serde_json::from_value::<BudgetVerdict>(json).unwrap(), v);
    }

    #[test]
    fn budget_verdicts() {
        let budget = Budget {
            daily: Some(money("1.00")),
            total: Some(money("10.00")),
        };
        assert_eq!(
            budget.evaluate(money("0.50"), money("1")),
            BudgetVerdict::WithinBudget
        );
        assert_eq!(
            budget.evaluate(money("0.80"), money("1")),
            BudgetVerdict::Warning {
                limit: BudgetLimit::Daily,
                used: money("0.80"),
                allowed: money("1.00"),
            }
        );
        assert_eq!(
            budget.evaluate(money("0.79"), money("1")),
            BudgetVerdict::WithinBudget
        );
        // Equal to the limit is not exceeded.
        assert!(!budget.evaluate(money("1.00"), money("10")).is_exceeded());
        let daily = budget.evaluate(money("1.01"), money("1"));
        assert_eq!(
            daily,
            BudgetVerdict::DailyExceeded {
                estimated_daily: money("1.01"),
                limit: money("1.00"),
            }
        );
        assert_eq!(
            daily.to_string(),
            "estimated daily cost $1.01 exceeds the daily budget of $1.00"
        );
        // Total wins over daily.
        let total = budget.evaluate(money("5"), money("10.01"));
        assert_eq!(total.reason(), "TotalBudgetExceeded");
        assert!(total.is_exceeded());
        // Total warning wins over daily warning.
        match budget.evaluate(money("0.9"), money("9")) {
            BudgetVerdict::Warning { limit, .. } => assert_eq!(limit, BudgetLimit::Total),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            Budget::UNLIMITED.evaluate(Money::MAX, Money::MAX),
            BudgetVerdict::WithinBudget
        );
        let zero = Budget {
            daily: Some(Money::ZERO),
            total: None,
        };
        assert_eq!(
            zero.evaluate(Money::ZERO, Money::ZERO),
            BudgetVerdict::WithinBudget
        );
        assert!(
            zero.evaluate(Money::from_micros(1), Money::ZERO)
                .is_exceeded()
        );
    }
}
