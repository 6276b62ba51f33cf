//! Durations written by people (`4h`, `7d`, `1h30m`) and the expiry policy of a
//! preview environment.
//!
//! # Duration syntax
//!
//! A [`Ttl`] is one or more `<count><unit>` groups with no spaces, where `count` is a
//! positive decimal integer without leading zeros and `unit` is one of `s`, `m`, `h`,
//! `d` (24 hours) or `w` (7 days). Groups add up: `1h30m` is 90 minutes, `1d12h` is 36
//! hours. Months and years are refused on purpose (their length varies).
//!
//! The CRD schema carries [`Ttl::PATTERN`] (as a CEL rule whose message says what a
//! duration looks like) and [`Ttl::MAX_LENGTH`], which admit exactly the strings the
//! parser accepts, with one exception a regular expression cannot express: totals beyond
//! [`Ttl::MAX`] (520 weeks, about ten years) match the pattern and are refused by the
//! parser with [`TtlError::TooLong`].
//!
//! The parser is hand-written rather than delegated to `humantime`, because humantime
//! accepts far more (`4 hours`, `1M`, `2y`, `500ms`) than a schema pattern can mirror,
//! and a CRD that admits strings the operator then refuses is a poor interface.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Label that opts an environment out of TTL expiry (value `"true"`). The hard cap
/// ([`ExpiryPolicy::max_lifespan`]) still applies.
pub const DO_NOT_EXPIRE_LABEL: &str = "preview.previewd.io/do-not-expire";

/// True when a [`DO_NOT_EXPIRE_LABEL`] value asks to skip TTL expiry (`true`, any case).
pub fn label_requests_no_expiry(value: &str) -> bool {
    value.trim().eq_ignore_ascii_case("true")
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

/// A positive whole-second duration such as `4h` or `7d`, serialised as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ttl(Duration);

/// Why a string or duration is not a valid [`Ttl`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    /// The input was empty.
    #[error("empty duration: expected something like 30m, 4h, 7d or 1h30m")]
    Empty,
    /// A group does not start with a number.
    #[error(
        "invalid duration {input:?}: expected a number before {found:?} (format: 30m, 4h, 7d, 1h30m)"
    )]
    ExpectedNumber {
        /// The whole input.
        input: String,
        /// What was found instead.
        found: String,
    },
    /// A number without a unit.
    #[error("invalid duration {input:?}: {number} has no unit (use s, m, h, d or w)")]
    MissingUnit {
        /// The whole input.
        input: String,
        /// The number lacking a unit.
        number: String,
    },
    /// An unknown unit.
    #[error("invalid duration {input:?}: unknown unit {unit:?} (use s, m, h, d or w)")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit found.
        unit: String,
    },
    /// A group with count zero or a leading zero.
    #[error("invalid duration {input:?}: counts must be positive integers without leading zeros")]
    ZeroOrLeadingZero {
        /// The whole input.
        input: String,
    },
    /// The total exceeds [`Ttl::MAX`].
    #[error("duration {input:?} is too long: the maximum is {max}")]
    TooLong {
        /// The whole input.
        input: String,
        /// [`Ttl::MAX`], formatted.
        max: Ttl,
    },
    /// Longer than [`Ttl::MAX_LENGTH`] characters.
    #[error(
        "invalid duration {input:?}: longer than {} characters",
        Ttl::MAX_LENGTH
    )]
    TooManyCharacters {
        /// The whole input.
        input: String,
    },
    /// A `std::time::Duration` that is zero, has sub-second parts, or exceeds the maximum.
    #[error("duration of {0:?} is not a whole number of seconds between 1s and 520w")]
    OutOfRange(Duration),
}

impl TtlError {
    /// Short static category for metrics labels and Event reasons.
    pub const fn category(&self) -> &'static str {
        "InvalidDuration"
    }
}

impl Ttl {
    /// The schema pattern (see the module documentation).
    pub const PATTERN: &'static str = "^([1-9][0-9]*[smhdw])+$";
    /// The longest duration text accepted, in characters.
    pub const MAX_LENGTH: usize = 32;
    /// The CEL message of a string that is not a duration (`self` is the string).
    pub const MESSAGE_EXPRESSION: &'static str = "\"'\" + self + \"' is not a duration: write a number and a unit (s, m, h, d or w), e.g. 30m, 4h, 7d or 1h30m\"";
    /// Default time to live of an environment: 4 hours.
    pub const DEFAULT: Ttl = Ttl(Duration::from_secs(4 * HOUR));
    /// Default hard cap on an environment's lifespan: 7 days.
    pub const MAX_LIFESPAN_DEFAULT: Ttl = Ttl(Duration::from_secs(7 * DAY));
    /// The shortest duration: one second.
    pub const MIN: Ttl = Ttl(Duration::from_secs(1));
    /// The longest duration accepted: 520 weeks (about ten years).
    pub const MAX: Ttl = Ttl(Duration::from_secs(520 * WEEK));

    /// Builds a TTL from whole seconds (1 ..= `Ttl::MAX`).
    pub const fn from_secs(secs: u64) -> Result<Ttl, TtlError> {
        if secs == 0 || secs > Ttl::MAX.0.as_secs() {
            return Err(TtlError::OutOfRange(Duration::from_secs(secs)));
        }
        Ok(Ttl(Duration::from_secs(secs)))
    }

    /// Builds a TTL from hours.
    pub const fn from_hours(hours: u64) -> Result<Ttl, TtlError> {
        match hours.checked_mul(HOUR) {
            Some(secs) => Ttl::from_secs(secs),
            None => Err(TtlError::OutOfRange(Duration::MAX)),
        }
    }

    /// The duration.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// Whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// The duration as a jiff signed duration.
    pub const fn as_signed_duration(self) -> jiff::SignedDuration {
        // Ttl::MAX is far below i64::MAX seconds, so the cast is lossless.
        jiff::SignedDuration::from_secs(self.0.as_secs() as i64)
    }
}

impl Default for Ttl {
    fn default() -> Self {
        Ttl::DEFAULT
    }
}

impl TryFrom<Duration> for Ttl {
    type Error = TtlError;

    fn try_from(d: Duration) -> Result<Self, Self::Error> {
        if d.subsec_nanos() != 0 {
            return Err(TtlError::OutOfRange(d));
        }
        Ttl::from_secs(d.as_secs()).map_err(|_| TtlError::OutOfRange(d))
    }
}

impl From<Ttl> for Duration {
    fn from(t: Ttl) -> Self {
        t.0
    }
}

impl fmt::Display for Ttl {
    /// Canonical form: largest units first, each unit at most once, zero groups
    /// omitted (`90m` prints `1h30m`, `168h` prints `1w`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0.as_secs();
        if rest == 0 {
            // Unreachable through the constructors; printed for completeness.
            return f.write_str("0s");
        }
        let mut out = String::new();
        for (size, unit) in [
            (WEEK, 'w'),
            (DAY, 'd'),
            (HOUR, 'h'),
            (MINUTE, 'm'),
            (1, 's'),
        ] {
            let n = rest / size;
            rest %= size;
            if n > 0 {
                out.push_str(&n.to_string());
                out.push(unit);
            }
        }
        f.pad(&out)
    }
}

impl FromStr for Ttl {
    type Err = TtlError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(TtlError::Empty);
        }
        if input.len() > Ttl::MAX_LENGTH {
            return Err(TtlError::TooManyCharacters {
                input: input.to_owned(),
            });
        }
        let owned = || input.to_owned();
        let max = Ttl::MAX.as_secs();
        let mut total: u64 = 0;
        let mut rest = input;
        while !rest.is_empty() {
            let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits_len == 0 {
                let found: String = rest.chars().take(8).collect();
                return Err(TtlError::ExpectedNumber {
                    input: owned(),
                    found,
                });
            }
            let (digits, after) = rest.split_at(digits_len);
            if digits.starts_with('0') {
                return Err(TtlError::ZeroOrLeadingZero { input: owned() });
            }
            let mut chars = after.chars();
            let unit = match chars.next() {
                None => {
                    return Err(TtlError::MissingUnit {
                        input: owned(),
                        number: digits.to_owned(),
                    });
                }
                Some(c) => c,
            };
            let followed_by_letter = chars.clone().next().is_some_and(char::is_alphabetic);
            let size = match unit {
                's' if !followed_by_letter => 1,
                'm' if !followed_by_letter => MINUTE,
                'h' if !followed_by_letter => HOUR,
                'd' if !followed_by_letter => DAY,
                'w' if !followed_by_letter => WEEK,
                other => {
                    // Report the whole alphabetic run (`ms`, `hours`) for a clearer message.
                    let run: String = std::iter::once(other)
                        .chain(chars.clone().take_while(|c| c.is_alphabetic()))
                        .take(16)
                        .collect();
                    return Err(TtlError::UnknownUnit {
                        input: owned(),
                        unit: run,
                    });
                }
            };
            // Any count beyond Ttl::MAX seconds makes the whole total too long; parse
            // leniently (saturating) so that huge numbers report TooLong, not garbage.
            // TooLong is reported only once the whole input is well-formed, so that the
            // parser and `Ttl::PATTERN` agree on what is malformed.
            let count = digits.parse::<u64>().unwrap_or(u64::MAX);
            total = count
                .checked_mul(size)
                .and_then(|secs| total.checked_add(secs))
                .unwrap_or(u64::MAX);
            rest = chars.as_str();
        }
        if total > max {
            return Err(TtlError::TooLong {
                input: owned(),
                max: Ttl::MAX,
            });
        }
        Ok(Ttl(Duration::from_secs(total)))
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Ttl {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Ttl")
    }

    fn schema_id() -> Cow<'static, str> {
        Cow::Borrowed(concat!(module_path!(), "::Ttl"))
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": Ttl::MAX_LENGTH,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{}')", Ttl::PATTERN),
                "messageExpression": Ttl::MESSAGE_EXPRESSION,
            }],
            "description": "Duration such as 30m, 4h, 7d or 1h30m (units s, m, h, d, w; at most 520w).",
        })
    }
}

/// A time to live as configured: a fixed duration, or `auto` for the lifespan predictor's
/// answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TtlChoice {
    /// This duration.
    Fixed(Ttl),
    /// The lifespan predictor's answer for the PR ([`TtlChoice::resolve`]).
    Auto,
}

impl TtlChoice {
    /// The schema pattern: `auto` or a [`Ttl`].
    pub const PATTERN: &'static str = "^(auto|([1-9][0-9]*[smhdw])+)$";
    /// The CEL message of a string that is neither `auto` nor a duration.
    pub const MESSAGE_EXPRESSION: &'static str = "\"'\" + self + \"' is not a duration or auto: write a number and a unit (s, m, h, d or w), e.g. 30m, 4h, 7d or 1h30m, or auto for the lifespan predictor's answer\"";

    /// The TTL to apply: the fixed one; for `auto` the prediction, never past
    /// `max_lifespan`, and [`Ttl::DEFAULT`] (capped the same way) until there is one.
    pub fn resolve(self, predicted: Option<Ttl>, max_lifespan: Ttl) -> Ttl {
        match self {
            TtlChoice::Fixed(ttl) => ttl,
            TtlChoice::Auto => predicted.unwrap_or(Ttl::DEFAULT).min(max_lifespan),
        }
    }

    /// True for `auto`.
    pub const fn is_auto(self) -> bool {
        matches!(self, TtlChoice::Auto)
    }
}

impl From<Ttl> for TtlChoice {
    fn from(ttl: Ttl) -> Self {
        TtlChoice::Fixed(ttl)
    }
}

impl fmt::Display for TtlChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TtlChoice::Fixed(ttl) => ttl.fmt(f),
            TtlChoice::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for TtlChoice {
    type Err = TtlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(TtlChoice::Auto)
        } else {
            s.parse().map(TtlChoice::Fixed)
        }
    }
}

impl Serialize for TtlChoice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TtlChoice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for TtlChoice {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("TtlChoice")
    }

    fn schema_id() -> Cow<'static, str> {
        Cow::Borrowed(concat!(module_path!(), "::TtlChoice"))
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": Ttl::MAX_LENGTH,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{}')", TtlChoice::PATTERN),
                "messageExpression": TtlChoice::MESSAGE_EXPRESSION,
            }],
            "description": "Duration such as 30m, 4h, 7d or 1h30m (units s, m, h, d, w; at most 520w), or auto for the lifespan predictor's answer.",
        })
    }
}

/// An expiry policy whose TTL exceeds its hard cap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryPolicyError {
    /// `ttl > maxLifespan`.
    #[error("ttl {ttl} exceeds maxLifespan {max_lifespan}")]
    TtlExceedsMaxLifespan {
        /// The TTL.
        ttl: Ttl,
        /// The hard cap.
        max_lifespan: Ttl,
    },
}

impl ExpiryPolicyError {
    /// Short static category for metrics labels and Event reasons.
    pub const fn category(&self) -> &'static str {
        "InvalidExpiryPolicy"
    }
}

/// When an environment expires.
///
/// - `expiresAt = createdAt + ttl`;
/// - with `autoExtend`, activity pushes it to `lastActivity + ttl` (never earlier than
///   `createdAt + ttl`);
/// - whatever happens, never later than `createdAt + maxLifespan` (the hard cap);
/// - `doNotExpire` (or the [`DO_NOT_EXPIRE_LABEL`] label) skips the TTL, **but the hard
///   cap still applies**: the environment expires at exactly `createdAt + maxLifespan`.
///   Users asked for a cap that nobody can escape with a label; platform teams that need
///   longer-lived environments raise `maxLifespan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ExpiryPolicy {
    /// Time to live after creation (or after the last activity with `autoExtend`).
    pub ttl: Ttl,
    /// Extend the expiry on activity (pushes, comments, deployments).
    pub auto_extend: bool,
    /// Hard cap on the lifespan, counted from creation.
    pub max_lifespan: Ttl,
    /// Skip TTL expiry; the hard cap still applies.
    pub do_not_expire: bool,
}

impl Default for ExpiryPolicy {
    /// 4h TTL, extended on activity, 7 days hard cap.
    fn default() -> Self {
        ExpiryPolicy {
            ttl: Ttl::DEFAULT,
            auto_extend: true,
            max_lifespan: Ttl::MAX_LIFESPAN_DEFAULT,
            do_not_expire: false,
        }
    }
}

fn add(ts: Timestamp, ttl: Ttl) -> Timestamp {
    ts.checked_add(ttl.as_signed_duration())
        .unwrap_or(Timestamp::MAX)
}

impl ExpiryPolicy {
    /// Checks that `ttl <= max_lifespan`.
    pub fn validate(&self) -> Result<(), ExpiryPolicyError> {
        if self.ttl > self.max_lifespan {
            return Err(ExpiryPolicyError::TtlExceedsMaxLifespan {
                ttl: self.ttl,
                max_lifespan: self.max_lifespan,
            });
        }
        Ok(())
    }

    /// The hard cap: `created_at + max_lifespan`.
    pub fn hard_cap(&self, created_at: Timestamp) -> Timestamp {
        add(created_at, self.max_lifespan)
    }

    /// The exact expiry time (see the type documentation).
    pub fn expires_at(&self, created_at: Timestamp, last_activity: Option<Timestamp>) -> Timestamp {
        let cap = self.hard_cap(created_at);
        if self.do_not_expire {
            return cap;
        }
        let mut expiry = add(created_at, self.ttl);
        if self.auto_extend
            && let Some(activity) = last_activity
        {
            expiry = expiry.max(add(activity, self.ttl));
        }
        expiry.min(cap)
    }

    /// True once `now` reaches the expiry time.
    pub fn is_expired(
        &self,
        now: Timestamp,
        created_at: Timestamp,
        last_activity: Option<Timestamp>,
    ) -> bool {
        now >= self.expires_at(created_at, last_activity)
    }

    /// Time left before expiry; zero once expired.
    pub fn remaining(
        &self,
        now: Timestamp,
        created_at: Timestamp,
        last_activity: Option<Timestamp>,
    ) -> Duration {
        let left = self
            .expires_at(created_at, last_activity)
            .duration_since(now);
        Duration::try_from(left).unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {

    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ttl_choice_is_a_duration_or_auto() {
        let auto: TtlChoice = "auto".parse().unwrap();
        assert!(auto.is_auto());
        assert_eq!(auto.to_string(), "auto");
        let fixed: TtlChoice = "2h".parse().unwrap();
        assert_eq!(fixed, TtlChoice::Fixed(ttl("2h")));
        assert!("automatic".parse::<TtlChoice>().is_err());
        assert!("0h".parse::<TtlChoice>().is_err());
        let pattern = regex::Regex::new(TtlChoice::PATTERN).unwrap();
        let re = |s: &str| pattern.is_match(s);
        for ok in ["auto", "4h", "1h30m"] {
            assert!(re(ok), "{ok}");
        }
        for bad in ["Auto ", "auto4h", "", "4"] {
            assert!(!re(bad), "{bad}");
        }
        assert_eq!(
            serde_json::from_str::<TtlChoice>("\"auto\"").unwrap(),
            TtlChoice::Auto
        );
        assert_eq!(serde_json::to_string(&fixed).unwrap(), "\"2h\"");
    }

    #[test]
    fn auto_takes_the_prediction_capped_by_the_lifespan() {
        let cap = ttl("1d");
        assert_eq!(TtlChoice::Auto.resolve(Some(ttl("6h")), cap), ttl("6h"));
        assert_eq!(TtlChoice::Auto.resolve(Some(ttl("3d")), cap), cap);
        assert_eq!(TtlChoice::Auto.resolve(None, cap), Ttl::DEFAULT);
        assert_eq!(TtlChoice::Auto.resolve(None, ttl("1h")), ttl("1h"));
        assert_eq!(
            TtlChoice::Fixed(ttl("2d")).resolve(Some(ttl("6h")), cap),
            ttl("2d"),
            "a fixed TTL is never replaced (validation reports it past the cap)"
        );
    }

    fn ttl(s: &str) -> Ttl {
        s.parse().unwrap()
    }

    #[test]
    fn parses_common_durations() {
        assert_eq!(ttl("30m").as_secs(), 30 * 60);
        assert_eq!(ttl("4h"), Ttl::DEFAULT);
        assert_eq!(ttl("7d"), Ttl::MAX_LIFESPAN_DEFAULT);
        assert_eq!(ttl("1w"), Ttl::MAX_LIFESPAN_DEFAULT);
        assert_eq!(ttl("1h30m").as_secs(), 90 * 60);
        assert_eq!(ttl("30m1h").as_secs(), 90 * 60);
        assert_eq!(ttl("520w"), Ttl::MAX);
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(ttl("90m").to_string(), "1h30m");
        assert_eq!(ttl("168h").to_string(), "1w");
        assert_eq!(ttl("1w1d1h1m1s").to_string(), "1w1d1h1m1s");
        assert_eq!(Ttl::MAX.to_string(), "520w");
    }

    #[test]
    fn rejections_say_why() {
        let cases = [
            ("", "empty duration"),
            ("0", "positive integers"),
            ("0h", "positive integers"),
            ("01h", "positive integers"),
            ("-1h", "expected a number"),
            ("abc", "expected a number"),
            ("4x", "unknown unit \"x\""),
            ("500ms", "unknown unit \"ms\""),
            ("4 h", "unknown unit"),
            ("4hours", "unknown unit \"hours\""),
            ("1h30mx", "unknown unit \"mx\""),
            ("4", "has no unit"),
            ("1h30", "30 has no unit"),
            ("521w", "too long"),
            (
                "1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1",
                "longer than 32 characters",
            ),
            ("99999999999999999999999h", "too long"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Ttl>().unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn serde_is_a_string() {
        let t: Ttl = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"1h30m\"");
        assert!(serde_json::from_str::<Ttl>("\"0h\"").is_err());
        assert!(serde_json::from_str::<Ttl>("3600").is_err());
    }

    #[test]
    fn schema_is_a_string_with_the_rule() {
        let schema = serde_json::to_value(schemars::schema_for!(Ttl)).unwrap();
        assert_eq!(schema["type"], "string");
        assert_eq!(schema["maxLength"], Ttl::MAX_LENGTH);
        let rule = &schema["x-kubernetes-validations"][0];
        assert_eq!(rule["rule"], format!("self.matches('{}')", Ttl::PATTERN));
        assert!(
            rule["messageExpression"]
                .as_str()
                .unwrap()
                .contains("e.g. 30m")
        );
    }

    #[test]
    fn policy_schema_inlines_durations() {
        let schema = serde_json::to_value(schemars::schema_for!(ExpiryPolicy)).unwrap();
        assert_eq!(schema["properties"]["ttl"]["maxLength"], Ttl::MAX_LENGTH);
        assert_eq!(schema["properties"]["maxLifespan"]["type"], "string");
        assert!(!schema.to_string().contains("$ref"), "{schema}");
    }

    #[test]
    fn from_duration_requires_whole_seconds_in_range() {
        assert!(Ttl::try_from(Duration::from_millis(1500)).is_err());
        assert!(Ttl::try_from(Duration::ZERO).is_err());
        assert_eq!(
            Ttl::try_from(Duration::from_secs(60)).unwrap().to_string(),
            "1m"
        );
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn expiry_rules() {
        let created = ts("2025-01-01T00:00:00Z");
        let policy = ExpiryPolicy::default();
        assert_eq!(policy.expires_at(created, None), ts("2025-01-01T04:00:00Z"));
        // Activity extends.
        assert_eq!(
            policy.expires_at(created, Some(ts("2025-01-01T03:00:00Z"))),
            ts("2025-01-01T07:00:00Z")
        );
        // Activity before creation does not shorten.
        assert_eq!(
            policy.expires_at(created, Some(ts("2024-12-31T00:00:00Z"))),
            ts("2025-01-01T04:00:00Z")
        );
        // Capped at 7 days.
        assert_eq!(
            policy.expires_at(created, Some(ts("2025-01-07T23:00:00Z"))),
            ts("2025-01-08T00:00:00Z")
        );
        // Without auto-extend, activity is ignored.
        let fixed = ExpiryPolicy {
            auto_extend: false,
            ..policy
        };
        assert_eq!(
            fixed.expires_at(created, Some(ts("2025-01-01T03:00:00Z"))),
            ts("2025-01-01T04:00:00Z")
        );
        // Opt-out still hits the hard cap.
        let forever = ExpiryPolicy {
            do_not_expire: true,
            ..policy
        };
        assert_eq!(
            forever.expires_at(created, None),
            ts("2025-01-08T00:00:00Z")
        );
    }

    #[test]
    fn expired_and_remaining() {
        let created = ts("2025-01-01T00:00:00Z");
        let policy = ExpiryPolicy::default();
        let now = ts("2025-01-01T03:30:00Z");
        assert!(!policy.is_expired(now, created, None));
        assert_eq!(
            policy.remaining(now, created, None),
            Duration::from_secs(1800)
        );
        let later = ts("2025-01-01T04:00:00Z");
        assert!(policy.is_expired(later, created, None));
        assert_eq!(policy.remaining(later, created, None), Duration::ZERO);
        assert_eq!(
            policy.remaining(ts("2025-02-01T00:00:00Z"), created, None),
            Duration::ZERO
        );
    }

    #[test]
    fn validation_rejects_ttl_above_cap() {
        let bad = ExpiryPolicy {
            ttl: ttl("8d"),
            ..ExpiryPolicy::default()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.to_string(), "ttl 1w1d exceeds maxLifespan 1w");
        assert!(ExpiryPolicy::default().validate().is_ok());
    }

    #[test]
    fn policy_serde_camel_case_with_defaults() {
        let p: ExpiryPolicy = serde_json::from_str(r#"{"ttl":"2h","doNotExpire":true}"#).unwrap();
        assert_eq!(p.ttl, ttl("2h"));
        assert!(p.do_not_expire);
        assert!(p.auto_extend);
        assert_eq!(p.max_lifespan, Ttl::MAX_LIFESPAN_DEFAULT);
    }

    #[test]
    fn label_values() {
        assert!(label_requests_no_expiry("true"));
        assert!(label_requests_no_expiry("True"));
        assert!(!label_requests_no_expiry("false"));
        assert!(!label_requests_no_expiry(""));
    }
}
